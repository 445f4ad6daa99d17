"""The analysis report: seaborn figures + a Markdown report, logged to a new MLflow run (task=analysis).

:func:`make_report` is what the project's main job calls in-process; ``analysis/report.py`` is
the command-line wrapper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display, ever: runs unattended

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from mlflow.entities import Param

from bigimage.analysis_lib import (
    best_config,
    common,
    comparable,
    forecast,
    headline,
    html_report,
    overfitting,
    predict,
    pricing,
    registry,
)
from bigimage.tracking import curves, names, query

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


def default_output_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return query.PROJECT_ROOT / "reports" / stamp


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


def _winners_group(result: best_config.BestConfigResult, section: str) -> tuple[set[str], str]:
    """The runs of the comparable group the section's winner comes from (what its figure shows), and
    `` (runs with images=2000)`` for the figure's title when the section has several groups."""
    groups = result.groups.get(section, [])
    chosen = next((group for group in groups if group.chosen), None)
    if chosen is None:
        return set(), ""
    return set(chosen.run_ids), f" (runs with {chosen.label})" if len(groups) > 1 else ""


def _throughput_figure(result: best_config.BestConfigResult, path: Path) -> str | None:
    data = best_config.speedtest_by_batch(result.speedtest_rows)
    if data.empty:
        return "no usable speed-test table: no throughput figure"
    runs, group = _winners_group(result, "speedtest")
    data = data[data["run_id"].isin(runs)]
    grid = sns.catplot(
        data=data.assign(batch_size=data["batch_size"].astype(int), shape=_shape_labels(data)),
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


def _shape_labels(data: pd.DataFrame) -> list[str]:
    """Each row's shape (:data:`comparable.SHAPE_KEYS`) as :func:`comparable.shape_text` says it."""
    keys = comparable.SHAPE_KEYS
    return [comparable.shape_text({key: comparable.plain(row[key]) for key in keys}) for _, row in data.iterrows()]


def _preprocess_figure(result: best_config.BestConfigResult, path: Path) -> str | None:
    data = result.preprocess_table
    if data.empty:
        return "no usable preprocess run: no preprocessing figure"
    runs, group = _winners_group(result, "preprocess")
    data = data[data["run_id"].isin(runs)]
    data = data.assign(shape=_shape_labels(data))
    order = [comparable.shape_text(r.key) for r in result.preprocess["by_speed"]]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.barplot(data=data, x="shape", y="seconds", order=order, errorbar=("ci", 95), ax=ax, color="steelblue")
    sns.stripplot(data=data, x="shape", y="seconds", order=order, ax=ax, color="black", size=4)
    ax.set_xlabel("cluster shape")
    ax.set_ylabel("preprocessing time (s)")
    ax.set_title(f"Preprocessing time by cluster (bars: mean, 95% bootstrap CI; dots: runs){group}", fontsize=9)
    common.save_figure(fig, path)
    return None


# --- Markdown ---------------------------------------------------------------------------------


def _overfitting_rows(result: best_config.BestConfigResult) -> list[dict]:
    by_id = result.overfitting.runs.set_index("run_id")
    return [
        {
            "run": v.label,
            "strategy": query.param(by_id.loc[v.run_id], "strategy.name"),
            "batch_size": query.param(by_id.loc[v.run_id], "batch_size"),
            **v.row(),
        }
        for v in result.overfitting.verdicts
    ]


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
            if ranking["by_cost"]:
                cheapest = ranking["by_cost"][0]
                text += f"; cheapest: {comparable.item_text(cheapest.key)} at {_cost_text(cheapest, result.prices.currency)}"
            winner = result.winners.get(section, {}).get("key")
            out.append(
                text + f". Winner by {result.rank_by}: {comparable.item_text(winner) if winner else 'none'}; "
                f"{st[section]['statement']}."
            )
    out += [f"Compared like with like ({section}): {why}." for section, why in _several_groups(result).items()]
    if result.excluded:
        out.append(f"{len(result.excluded)} run(s) were left out; the table below says why.")
    return out


def _cost_text(item: common.Ranked, currency: str) -> str:
    """An item's costs per 1,000 images in a sentence, each saying what it covers (:mod:`.pricing`)."""
    life = item.extra.get(pricing.CLUSTER_LIFE)
    text = f"{item.score.text('{:.3g}')} {currency} per 1,000 images for the job alone"
    if life is None:
        return text
    return f"{text} ({life:.3g} over the cluster's life, what the bill charges: {item.extra[pricing.LIFE_INCLUDES]})"


def _several_groups(result: best_config.BestConfigResult) -> dict[str, str]:
    """section -> why its winner comes from the group it does, for the sections with several groups."""
    return {section: why for section, why in result.group_choice.items() if len(result.groups.get(section, [])) > 1}


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
        predict.markdown(forecast_result, FIG_FORECAST, figures.get(FIG_FORECAST)) if forecast_result else [],
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
        f"- With the figures inside: `{html_report.HTML_FILE}` (what MLflow's artifact viewer shows them in)",
        "",
        "## Conclusions",
        "",
        *[f"- {c}" for c in _conclusions(result)],
        "",
    ]


def _overfitting_md(result: best_config.BestConfigResult, figures: dict[str, str | None]) -> list[str]:
    thresholds = result.overfitting.thresholds
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
        common.markdown_table(_overfitting_rows(result)),
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
    problem = figures.get(name)
    if problem:
        return [f"_{title}: {problem}._", ""]
    return [f"![{title}]({name})", ""]


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
    """Analyse the runs, write figures, ``report.md`` and ``analysis.json`` to ``output_dir`` (default
    ``reports/<timestamp>``), tag the runs, register the champion and log it all as an analysis run, as
    the flags say; raises :class:`query.NoRunsError` when there is no run to analyse."""
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
        figures[FIG_FORECAST] = predict.figure(forecast_result, out / FIG_FORECAST)
    document = {
        "overfitting": result.overfitting.as_dict(),
        "best_config": result.as_dict(),
        "forecast": forecast_result.as_dict() if forecast_result else None,
        "figures": {k: (None if v else k) for k, v in figures.items()},
        "figure_notes": figures,
    }
    (out / JSON_FILE).write_text(common.dump_json(document))
    run_id = None
    if log_run:
        params = _analysed(selection, thresholds, rank_by, registered_model)
        run_id = _log_report_run(selection, parent_run_id, result, figures, out, forecast_result, params)
    else:
        _write_markdown(render_markdown(result, figures, None, forecast_result), out)
    return Report(out / REPORT_FILE, out, run_id, result, figures)


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


def _log_report_run(
    selection: query.RunSelection,
    parent_run_id: str | None,
    result: best_config.BestConfigResult,
    figures: dict[str, str | None],
    out: Path,
    forecast_result: forecast.Forecast | None = None,
    params: dict[str, str] | None = None,
) -> str:
    """The analysis run: created first, since the report names it, then what it analysed (``params``),
    the files (and the forecast's metrics and model, :func:`.predict.log_forecast`) are logged into it."""
    with common.analysis_run(selection, parent_run_id, "analysis") as (client, run_id):
        client.log_batch(run_id, params=[Param(key, value) for key, value in (params or {}).items()])
        _write_markdown(render_markdown(result, figures, run_id, forecast_result), out)
        client.log_artifacts(run_id, str(out))
        headline.log(client, run_id, result)
        if forecast_result:
            predict.log_forecast(client, run_id, forecast_result)
    return run_id


def _analysed(
    selection: query.RunSelection, thresholds: overfitting.Thresholds, rank_by: str, registered_model: str | None
) -> dict[str, str]:
    """What the analysis run read and judged by, as its params: the experiment, the parent run whose
    descendants it took (when one was given), the overfitting thresholds, the ranking, the registered model."""
    params = {
        "experiment": selection.experiment_name,
        "parent_run_id": selection.parent_run_id,
        **{f"overfitting.{key}": value for key, value in asdict(thresholds).items()},
        "rank_by": rank_by,
        names.REGISTERED_MODEL: registered_model,
    }
    return {key: str(value) for key, value in params.items() if value is not None}


def _write_markdown(markdown: str, out: Path) -> None:
    """``report.md``, and ``report.html`` with the figures inside (what MLflow's artifact viewer shows)."""
    (out / REPORT_FILE).write_text(markdown)
    html_report.write_html(markdown, out)


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
        forecast_options=predict.options_from_args(args),
        registered_model=registry.model_name(args),
    )
    if args.json:
        common.print_json(report.as_dict())
    else:
        print(f"report: {report.path}")
        if report.run_id:
            print(f"logged as MLflow run {report.run_id} (task=analysis)")
        for line in _conclusions(report.result):
            print(f"- {line}")
    return 0
