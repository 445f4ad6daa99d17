"""The analysis report: seaborn figures + a Markdown report, logged to a new MLflow run (task=analysis);
the main job calls :func:`make_report`, ``analysis/report.py`` wraps it."""

from __future__ import annotations

import base64
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, ever: runs unattended

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from markdown_it import MarkdownIt

from bigimage.analysis_lib import best_config, common, comparable, forecast, overfitting, predict, pricing, registry
from bigimage.tracking import curves, names, query
from bigimage.tracking.store import log_batch, retry_busy

SCRIPT_HELP = (
    "Figures and a Markdown report over the runs (overfitting, best configuration, throughput, "
    "preprocessing time), logged as the artifacts of a new MLflow run tagged task=analysis."
)
REPORT_FILE = "report.md"
JSON_FILE = "analysis.json"
FIG_CURVES = "learning_curves.png"
FIG_THROUGHPUT = "throughput_by_batch_size.png"
FIG_PREPROCESS = "preprocess_time_by_cluster.png"
FIG_FORECAST = "forecast.png"
HTML_FILE = "report.html"
HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 1em auto; padding: 0 1em; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""
PNG_LINK = re.compile(r"!\[([^\]]*)\]\(([^/()\s]+\.png)\)")  # an image naming a PNG file of the report's folder


def default_output_dir() -> Path:
    return query.PROJECT_ROOT / "reports" / datetime.now().strftime("%Y%m%d-%H%M%S")


# --- figures ----------------------------------------------------------------------------------


def _curves_figure(result: best_config.BestConfigResult, path: Path) -> str | None:
    of = result.overfitting
    if not of.verdicts or of.histories.empty:
        return "no judged training run: no learning curves"
    rows = of.runs.set_index("run_id").loc[[v.run_id for v in of.verdicts]]
    panel = {  # run id -> its panel, one per strategy and batch size
        run_id: f"{query.param(row, 'strategy.name', '?')} / batch {query.param(row, 'batch_size', '?')}"
        for run_id, row in rows.iterrows()
    }
    order = sorted(set(panel.values()), key=lambda p: (p.split(" / ")[0], _as_int(p.rsplit(" ", 1)[-1])))
    data = of.histories[of.histories["run_id"].isin(panel)]
    data = data.assign(panel=data["run_id"].map(panel), epoch=data["step"])
    long = curves.long_frame(data, (names.LOSS, names.VAL_LOSS), ("run_id", "panel", "epoch"))
    grid = sns.relplot(
        data=long,
        x="epoch",
        y="value",
        hue="metric",
        col="panel",
        kind="line",
        units="run_id",
        estimator=None,
        alpha=0.8,
        height=2.6,
        aspect=1.3,
        col_order=order,
        col_wrap=min(3, len(order)),
        facet_kws={"sharey": False},
    )
    grid.set_axis_labels("epoch (0-based)", "loss")
    grid.set_titles("{col_name}")
    for v in of.verdicts:  # a dashed line at each overfitting run's onset epoch, in its panel
        if v.overfitting and v.onset_epoch is not None:
            ax = grid.axes_dict[panel[v.run_id]]
            ax.axvline(v.onset_epoch, color="crimson", linestyle="--", linewidth=1)
            onset = (v.onset_epoch, ax.get_ylim()[1])
            ax.annotate(f"onset {v.onset_epoch}", onset, fontsize=7, color="crimson", ha="left", va="top")
    title = "Learning curves by strategy and batch size (dashed: overfitting onset)"
    common.save_figure(grid.figure, path, title, title_y=1.02)
    return None


def _as_int(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return 1 << 30


def _winners_group(result: best_config.BestConfigResult, section: str, data: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows of ``data`` of the winner's group, with their ``shape``, and `` (runs with images=2000)``."""
    groups = result.groups.get(section, [])
    chosen = next((group for group in groups if group.chosen), None)
    data = data[data["run_id"].isin(chosen.run_ids if chosen else [])]
    keys = comparable.SHAPE_KEYS
    shapes = [comparable.shape_text({key: comparable.plain(row[key]) for key in keys}) for _, row in data.iterrows()]
    return data.assign(shape=shapes), f" (runs with {chosen.label})" if chosen and len(groups) > 1 else ""


def _throughput_figure(result: best_config.BestConfigResult, path: Path) -> str | None:
    data = best_config.speedtest_by_batch(result.speedtest_rows)
    if data.empty:
        return "no usable speed-test table: no throughput figure"
    data, group = _winners_group(result, "speedtest", data)
    grid = sns.catplot(
        data=data.assign(batch_size=data["batch_size"].astype(int)),
        x="batch_size",
        y=names.IMAGES_PER_SECOND,
        hue="source",
        col="shape",
        kind="point",
        errorbar=("ci", 95),
        dodge=0.2,
        height=3,
        aspect=1.1,
    )
    grid.set_axis_labels("batch size", "images / s")
    grid.set_titles("{col_name}")
    title = (
        "Read throughput by batch size and source (each run: the mean of its repetitions; mean over runs, "
        f"95% bootstrap CI over runs){group}"
    )
    common.save_figure(grid.figure, path, title, title_y=1.03)
    return None


def _preprocess_figure(result: best_config.BestConfigResult, path: Path) -> str | None:
    data = result.preprocess_table
    if data.empty:
        return "no usable preprocess run: no preprocessing figure"
    data, group = _winners_group(result, "preprocess", data)
    order = [comparable.shape_text(r.key) for r in result.preprocess["by_speed"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.barplot(data=data, x="shape", y="seconds", order=order, errorbar=("ci", 95), ax=ax, color="steelblue")
    sns.stripplot(data=data, x="shape", y="seconds", order=order, ax=ax, color="black", size=4)
    ax.set(xlabel="cluster shape", ylabel="preprocessing time (s)")
    ax.set_title(f"Preprocessing time by cluster (bars: mean, 95% bootstrap CI; dots: runs){group}", fontsize=9)
    common.save_figure(fig, path)
    return None


def _forecast_curves(result: forecast.Forecast, steps: int = 40) -> pd.DataFrame:
    """Each predicted shape's fitted time (and interval) from 1% of the size to the size."""
    rows = []
    for name, task in result.tasks.items():
        for shape in task.shapes:
            if shape.fit is None:
                continue
            cores, machines = shape.shape.model_inputs(name)
            ratio = shape.ratio.value if shape.ratio else 1.0
            for images in np.geomspace(max(1.0, task.images / 100), task.images, steps):
                prediction = shape.fit.predict(images, cores, machines, ratio)
                rows.append({"task": name, "shape": shape.shape.name, "images": images, **asdict(prediction)})
    return pd.DataFrame(rows)


def _forecast_figure(result: forecast.Forecast, path: Path) -> str | None:
    """Measured points and fitted curves per shape, one panel per task (log-log)."""
    lines = _forecast_curves(result)
    if lines.empty:
        return "no task could be fitted: no forecast figure"
    points = pd.DataFrame(
        {"task": name, "deploy": deploy, "images": p.images, "seconds": p.seconds}
        for name, task in result.tasks.items()
        for deploy, fit in task.fits.items()
        for p in fit.points
    )
    tasks = list(lines["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = lines[lines["task"] == task]
        sns.lineplot(data=mine, x="images", y="seconds", hue="shape", ax=ax)
        for _, group in mine.groupby("shape"):
            ax.fill_between(group["images"], group["low"], group["high"], alpha=0.15)
        dots = points[points["task"] == task]
        if not dots.empty:
            sns.scatterplot(data=dots, x="images", y="seconds", style="deploy", color="black", ax=ax, legend="brief")
        ax.set(
            xscale="log", yscale="log", title=f"{task}: measured runs, fitted curves", xlabel="images", ylabel="seconds"
        )
    common.save_figure(fig, path, f"Forecast (bands: {int(result.options.confidence * 100)}% prediction intervals)")
    return None


# --- Markdown ---------------------------------------------------------------------------------


def _conclusions(result: best_config.BestConfigResult) -> list[str]:
    out = []
    of = result.overfitting
    n_over = [v for v in of.verdicts if v.overfitting]
    if of.verdicts:
        onsets = ", ".join(f"{v.label} after epoch {v.onset_epoch}" for v in n_over)
        out.append(f"{len(n_over)} of {len(of.verdicts)} judged training runs overfit{': ' if onsets else ''}{onsets}.")
    above = [v for v in of.verdicts if v.val_above_train]
    if above:
        out.append(
            f"{len(above)} run(s) have validation accuracy above training accuracy "
            f"({', '.join(v.label for v in above)}). This is not overfitting; "
            + overfitting.VAL_ABOVE_TRAIN_EXPLANATION.split("; ", 1)[1]
            + "."
        )
    st = result.statements()
    if result.training:
        top = result.training[0]
        out.append(
            f"Best training configuration: strategy {top.key['strategy.name']}, batch size {top.key['batch_size']}, "
            f"cluster {top.key['cluster.name']}, validation accuracy at the judged epoch {top.score.text()}; "
            f"{st['training']['statement']}."
        )
    if result.champion:
        out.append(registry.champion_sentence(result.champion))
    for section, label in (("preprocess", "preprocessing"), ("speedtest", "the speed test")):
        ranking = getattr(result, section)
        if ranking["by_speed"]:
            fastest = ranking["by_speed"][0]
            text = f"Fastest cluster shape for {label}: {comparable.item_text(fastest.key)} at {fastest.score.text()} images/s"
            if ranking["by_cost"]:  # its costs per 1,000 images, each saying what it covers (:mod:`.pricing`)
                cheapest, currency = ranking["by_cost"][0], result.prices.currency
                text += f"; cheapest: {comparable.item_text(cheapest.key)} at {cheapest.score.text('{:.3g}')} "
                text += f"{currency} per 1,000 images for the job alone"
                if (life := cheapest.extra.get(pricing.CLUSTER_LIFE)) is not None:
                    includes = cheapest.extra[pricing.LIFE_INCLUDES]
                    text += f" ({life:.3g} over the cluster's life, what the bill charges: {includes})"
            winner = result.winners.get(section, {}).get("key")
            out.append(
                text + f". Winner by {result.rank_by}: {comparable.item_text(winner) if winner else 'none'}; "
                f"{st[section]['statement']}."
            )
    several = {section: why for section, why in result.group_choice.items() if len(result.groups.get(section, [])) > 1}
    out += [f"Compared like with like ({section}): {why}." for section, why in several.items()]
    if result.excluded:
        out.append(f"{len(result.excluded)} run(s) were left out; the table below says why.")
    return out


def render_markdown(
    result: best_config.BestConfigResult,
    figures: dict[str, str | None],
    run_id: str | None,
    forecast_result: forecast.Forecast | None = None,
) -> str:
    tables = best_config.tables(result)
    sections = [
        _header_md(result, run_id),
        _overfitting_md(result, figures),
        _training_md(result, tables),
        *(_shapes_md(result, tables, figures, section) for section in _SHAPE_SECTIONS),
        [*predict.markdown(forecast_result), *_figure_md(figures, FIG_FORECAST, "Forecast")] if forecast_result else [],
        [
            "## Runs left out",
            "",
            common.markdown_table([e.as_dict() for e in result.excluded], ["run_name", "run_id", "task", "reason"]),
        ],
    ]
    if result.notes:
        sections.append(["## Notes", "", *[f"- {n}" for n in result.notes], ""])
    return "\n".join(line for section in sections for line in section) + "\n"


def _header_md(result: best_config.BestConfigResult, run_id: str | None) -> list[str]:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "# Analysis report",
        "",
        f"- Runs: {result.selection.describe()}",
        f"- Generated: {now}" + (f", logged as MLflow run `{run_id}` (tag task=analysis)" if run_id else ""),
        f"- Prices: {result.prices.source} ({result.prices.region}, {result.prices.currency}, dated {result.prices.date})",
        f"- With the figures inside: `{HTML_FILE}` (what MLflow's artifact viewer shows them in)",
        "",
        "## Conclusions",
        "",
        *[f"- {c}" for c in _conclusions(result)],
        "",
    ]


def _overfitting_md(result: best_config.BestConfigResult, figures: dict[str, str | None]) -> list[str]:
    thresholds = result.overfitting.thresholds
    by_id = result.overfitting.runs.set_index("run_id")
    rows = [
        {
            "run": v.label,
            "strategy": query.param(by_id.loc[v.run_id], "strategy.name"),
            "batch_size": query.param(by_id.loc[v.run_id], "batch_size"),
            **v.row(),
        }
        for v in result.overfitting.verdicts
    ]
    return [
        "## Overfitting",
        "",
        f"A run overfits when, after the epoch of minimum validation loss, validation loss stays above that minimum "
        f"(by more than {thresholds.min_delta:g}) for at least {thresholds.patience} epochs while training loss keeps "
        f"falling, or when the final training-minus-validation accuracy gap exceeds {thresholds.gap_threshold:g}. The "
        f"onset epoch is the last good epoch (0-based, the metric step); it is reported, not used to score the run. "
        f"Validation accuracy above training accuracy "
        f"(by more than {thresholds.val_above_margin:g}) is flagged separately: it is not overfitting.",
        "",
        common.markdown_table(rows),
        *_figure_md(figures, FIG_CURVES, "Learning curves"),
    ]


def _training_md(result: best_config.BestConfigResult, tables: dict) -> list[str]:
    confidence = result.training[0].score.confidence if result.training else 0.95
    return [
        "## Best training configuration",
        "",
        "Validation accuracy at each run's judged epoch (its best val_accuracy, the earliest on ties: the epoch whose "
        "weights the run logged as its model), "
        f"mean over repeated runs with a {int(round(100 * confidence))}% Student-t interval (n=1: no interval).",
        "",
        *_groups_md(result, "train"),
        common.markdown_table(tables["training"]),
        f"_{result.statements()['training']['statement']}._",
        "",
    ]


def _groups_md(result: best_config.BestConfigResult, section: str) -> list[str]:
    """Which runs are compared (:mod:`.comparable`) and which group the winner comes from, under a title."""
    why = result.group_choice.get(section)
    return [f"Compared like with like: {why}.", ""] if why else []


# section -> title, figure, its title, the explanation under the title, what the cost is made of
_SHAPE_SECTIONS = {
    "preprocess": (
        "Preprocessing: cluster shapes",
        FIG_PREPROCESS,
        "Preprocessing time by cluster",
        "",
        "machines + Dataproc fee + disks; ",
    ),
    "speedtest": (
        "Speed test: cluster shapes",
        FIG_THROUGHPUT,
        "Throughput by batch size and source",
        "Images/s per repetition = images / seconds over all grid rows of that repetition; each run counts "
        "once, with the mean of its repetitions (repetitions in one process are not independent), so n is "
        "the number of runs and the intervals are over runs.",
        "",
    ),
}


def _shapes_md(
    result: best_config.BestConfigResult, tables: dict, figures: dict[str, str | None], section: str
) -> list[str]:
    """One task's ranking of cluster shapes: by speed, then by cost for the runs that are priced."""
    title, figure, figure_title, explanation, cost_parts = _SHAPE_SECTIONS[section]
    return [
        f"## {title}",
        "",
        *([explanation, ""] if explanation else []),
        *_groups_md(result, section),
        common.markdown_table(tables[f"{section}_by_speed"]),
        f"By the job's cost per 1,000 images, `{pricing.JOB}` ({result.prices.currency}; {cost_parts}"
        f"{pricing.PRICED_RUNS}), with the cost over the cluster's life, `{pricing.CLUSTER_LIFE}`, beside it:",
        "",
        common.markdown_table(tables[f"{section}_by_cost"]),
        f"_{pricing.covers(result.prices.dataproc_create_delete_seconds)}_",
        "",
        *_figure_md(figures, figure, figure_title),
    ]


def _figure_md(figures: dict[str, str | None], name: str, title: str) -> list[str]:
    return [f"_{title}: {problem}._" if (problem := figures.get(name)) else f"![{title}]({name})", ""]


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    path: Path  # report.md
    output_dir: Path
    run_id: str | None  # the analysis run, if logged
    result: best_config.BestConfigResult
    figures: dict[str, str | None]  # file name -> None if written, else why not

    def as_dict(self) -> dict:
        return {
            "report": str(self.path),
            "output_dir": str(self.output_dir),
            "analysis_run_id": self.run_id,
            "figures": sorted(k for k, v in self.figures.items() if v is None),
            "figure_notes": {k: v for k, v in self.figures.items() if v},
            "conclusions": _conclusions(self.result),
            "winners": self.result.winners,
            "champion": self.result.champion,
            "excluded": [e.as_dict() for e in self.result.excluded],
        }

    def text(self) -> str:
        logged = f"logged as MLflow run {self.run_id} (task=analysis)\n" if self.run_id else ""
        return f"report: {self.path}\n{logged}" + "".join(f"- {line}\n" for line in _conclusions(self.result))


def make_report(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    output_dir: str | Path | None = None,
    *,
    thresholds: overfitting.Thresholds = overfitting.Thresholds(),
    prices_path: str | Path | None = None,
    rank_by: str = "speed",
    write_tags: bool = True,
    log_run: bool = True,
    forecast_options: forecast.Options | None = None,
    registered_model: str | None = registry.DEFAULT_NAME,
) -> Report:
    """Analyse the runs, write figures, ``report.md`` and ``analysis.json`` to ``output_dir``, tag the runs,
    register the champion and log it all as an analysis run, as the flags say (NoRunsError: no run)."""
    selection, result = _analyse(tracking_uri, experiment, parent_run_id, thresholds, prices_path, rank_by)
    if write_tags:
        overfitting.write_tags(result.overfitting)
        best_config.write_tags(result)
        best_config.register_winner(result, registered_model)
    out = Path(output_dir) if output_dir else default_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    forecast_result = None  # the "Forecast" section, when a task 1 or task 2 run was loaded
    if result.overfitting.runs["task"].isin(forecast.TASKS).any():
        options = forecast_options or forecast.Options(prices_path=prices_path)
        forecast_result = forecast.build(selection, result.overfitting.runs, options)
    sns.set_theme(style="whitegrid", context="paper")
    figures = {  # file name -> None when written, else why not
        FIG_CURVES: _curves_figure(result, out / FIG_CURVES),
        FIG_THROUGHPUT: _throughput_figure(result, out / FIG_THROUGHPUT),
        FIG_PREPROCESS: _preprocess_figure(result, out / FIG_PREPROCESS),
    }
    if forecast_result:
        figures[FIG_FORECAST] = _forecast_figure(forecast_result, out / FIG_FORECAST)
    document = {
        "overfitting": result.overfitting.as_dict(),
        "best_config": result.as_dict(),
        "forecast": forecast_result.as_dict() if forecast_result else None,
        "figures": {k: (None if v else k) for k, v in figures.items()},
        "figure_notes": figures,
    }
    (out / JSON_FILE).write_text(common.dump_json(document))
    report = Report(out / REPORT_FILE, out, None, result, figures)
    if not log_run:
        _write_markdown(report, forecast_result)
        return report
    with common.analysis_run(selection, parent_run_id, "analysis") as (client, run_id):
        report.run_id = run_id  # before the Markdown: the report names its run
        analysed = _analysed(selection, thresholds, rank_by, registered_model)
        log_batch(client, run_id, _headline_metrics(result), analysed, _headline_tags(result))
        retry_busy(lambda: client.update_run(run_id, name=_run_name(result)))
        _write_markdown(report, forecast_result)
        client.log_artifacts(run_id, str(out))
        if forecast_result:
            predict.log_forecast(client, run_id, forecast_result)
    return report


def _analyse(
    tracking_uri: str | None,
    experiment: str | None,
    parent_run_id: str | None,
    thresholds: overfitting.Thresholds,
    prices_path: str | Path | None,
    rank_by: str,
) -> tuple[query.RunSelection, best_config.BestConfigResult]:
    selection, runs = query.load_runs(tracking_uri, experiment, parent_run_id)
    runs = runs[runs["task"] != "analysis"].reset_index(drop=True)  # earlier reports are not data
    if runs.empty:
        raise query.NoRunsError(f"no runs other than analysis runs in {selection.describe()}")
    result = best_config.analyse(selection, runs, thresholds, pricing.load_prices(prices_path), rank_by)
    if not (result.overfitting.verdicts or result.preprocess["by_speed"] or result.speedtest["by_speed"]):
        reasons = "; ".join(e.text() for e in result.excluded) or "no task runs"
        raise query.NoRunsError(f"no run that can be analysed in {selection.describe()} ({reasons})")
    return selection, result


def _headline_metrics(result: best_config.BestConfigResult) -> dict[str, float]:
    """The analysis run's headline as metrics of their own names, so runs sort and filter in the UI."""
    verdicts = result.overfitting.verdicts
    values = {
        "runs_judged": float(len(verdicts)),
        "runs_overfitting": float(sum(1 for verdict in verdicts if verdict.overfitting)),
        "runs_excluded": float(len(result.excluded)),
    }
    if result.training:
        values["top_config.mean_val_accuracy"] = float(result.training[0].score.mean)
    scores = (result.champion or {}).get("scores", {})
    tested = [key for key in registry.TESTED_TAGS if "accuracy" in key]  # not the record counts
    return values | {f"champion.{key}": float(scores[key]) for key in tested if key in scores}


def _headline_tags(result: best_config.BestConfigResult) -> dict[str, str]:
    out = {}
    if result.training:
        top = result.training[0]
        out.update({f"best.{key}": str(value) for key, value in top.key.items()})
        out["best.run_ids"] = ",".join(top.run_ids)[:5000]
    for section in ("preprocess", "speedtest"):
        winner = result.winners.get(section, {}).get("key", {})
        if "cluster.name" in winner:
            out[f"best.{section}.cluster.name"] = str(winner["cluster.name"])
    if result.champion:
        out[names.REGISTERED_MODEL] = result.champion["uri"]
        out["registered_model.version"] = result.champion["version"]
    return out


def _run_name(result: best_config.BestConfigResult) -> str:
    """``analysis <what was analysed>: <winner>``, e.g. ``analysis parent 1a2b3c4d: mirrored bs=32 local``."""
    selection = result.selection
    scope = (
        f"parent {selection.parent_run_id[:8]}"
        if selection.parent_run_id
        else f"experiment {selection.experiment_name}"
    )
    if not result.training:
        return f"analysis {scope}"
    key = result.training[0].key
    return f"analysis {scope}: {key['strategy.name']} bs={key['batch_size']} {key['cluster.name']}"


def _analysed(
    selection: query.RunSelection, thresholds: overfitting.Thresholds, rank_by: str, registered_model: str | None
) -> dict[str, str]:
    """What the analysis run read and judged by, as its params."""
    params = {
        "experiment": selection.experiment_name,
        "parent_run_id": selection.parent_run_id,
        **{f"overfitting.{key}": value for key, value in asdict(thresholds).items()},
        "rank_by": rank_by,
        names.REGISTERED_MODEL: registered_model,
    }
    return {key: value for key, value in params.items() if value is not None}


def _write_markdown(report: Report, forecast_result: forecast.Forecast | None) -> None:
    """``report.md``, and ``report.html`` with the figures inside (what MLflow's artifact viewer shows)."""
    markdown = render_markdown(report.result, report.figures, report.run_id, forecast_result)
    report.path.write_text(markdown)
    (report.output_dir / HTML_FILE).write_text(_html(markdown, report.output_dir), encoding="utf-8")


def _html(markdown: str, directory: Path) -> str:
    """``markdown`` as one page, its figures from ``directory`` inside (MLflow's viewer resolves no relative link)."""

    def embed(image: re.Match) -> str:
        path = directory / image[2]
        if not path.is_file():
            return image[0]
        return f"![{image[1]}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(PNG_LINK.sub(embed, markdown))
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Analysis report</title>'
        f"<style>{HTML_STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


@common.exits_without_runs
def main(argv: list[str] | None = None) -> int:
    parser = common.source_parser("report.py", SCRIPT_HELP)
    overfitting.add_threshold_args(parser)
    best_config.add_ranking_args(parser)
    predict.add_forecast_args(parser)
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write the report (default: reports/<timestamp> under the project root)",
    )
    parser.add_argument("--no-write-tags", action="store_true", help="do not tag the analysed runs")
    parser.add_argument("--no-log-run", action="store_true", help="do not log the report as an MLflow analysis run")
    registry.add_registry_args(parser)
    args = parser.parse_args(argv)
    report = make_report(
        args.tracking_uri,
        args.experiment,
        args.parent_run,
        args.output_dir,
        thresholds=overfitting.thresholds_from_args(args),
        prices_path=args.prices,
        rank_by=args.rank_by,
        write_tags=not args.no_write_tags,
        log_run=not args.no_log_run,
        forecast_options=predict.options_from_args(parser, args),
        registered_model=registry.model_name(args),
    )
    return common.emit(args, report, Report.text)
