"""``analysis/predict.py``: the forecast's command line, text and Markdown, and its analysis run
(:mod:`.scaling` is the model, :mod:`.forecast` the predictions)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from bigimage.analysis_lib import common, forecast, pricing, scaling
from bigimage.tracking import query
from bigimage.tracking.store import log_batch, retry_busy

EXIT_CANNOT_FIT = 4
MODEL_ARTIFACT = "forecast/model.json"
METRIC_KEYS = (
    "predicted_seconds",
    "predicted_seconds_low",
    "predicted_seconds_high",
    pricing.JOB,
    pricing.CLUSTER_LIFE,
)


# --- MLflow -----------------------------------------------------------------------------------


def metrics(result: forecast.Forecast) -> dict[str, float]:
    """The headline numbers as MLflow metrics: per task and shape, and each fit's leave-one-out error."""
    out: dict[str, float] = {}
    for task, task_forecast in result.tasks.items():
        for name, shape in task_forecast.as_dict()["shapes"].items():
            out |= {f"forecast.{task}.{name}.{key}": shape[key] for key in METRIC_KEYS if shape.get(key) is not None}
        for deploy, fit in task_forecast.fits.items():
            out[f"forecast.{task}.{deploy}.loo_mean_relative_error"] = fit.loo_error()[0]
    return out


def log_forecast(client, run_id: str, result: forecast.Forecast) -> None:
    """Log the forecast into an open analysis run (its metrics and the model JSON)."""
    log_batch(client, run_id, metrics=metrics(result))
    retry_busy(lambda: client.log_text(run_id, common.dump_json(result.as_dict()), MODEL_ARTIFACT))


# --- text -------------------------------------------------------------------------------------


def coefficient_rows(fit: scaling.Fit) -> list[dict]:
    pct = int(round(fit.confidence * 100))
    return [
        {
            "term": c["term"],
            "formula": scaling.TERM_FORMULA[c["term"]],
            "value": c["value"],
            f"{pct}% low": c["low"],
            f"{pct}% high": c["high"],
        }
        for c in fit.as_dict()["coefficients"]
    ]


def covers(result: forecast.Forecast) -> str:
    """What the forecast's two costs cover (:func:`pricing.covers`)."""
    return (
        pricing.covers(result.prices.dataproc_create_delete_seconds)
        + " In the forecast, the start-up and the rest of a run are the fitted runs' median (each shape's "
        "'cluster life includes' says how much)."
    )


def shape_rows(task: forecast.TaskForecast, currency: str) -> list[dict]:
    """One row per shape: the prediction, its interval and cost, and the assumption it carries (or why none)."""
    rows = []
    for shape in task.shapes:
        d = shape.as_dict(task.images)
        if "refused" in d:
            rows.append({"shape": shape.shape.name, "fitted on": "", "notes": f"refused: {d['refused']}"})
            continue
        ratio = d["core_speed_ratio"]
        rows.append(
            {
                "shape": shape.shape.name,
                "fitted on": d["fitted_on"],
                "cores": d["cores"],
                "executors": d["machines"],
                "seconds": d["predicted_seconds"],
                "low": d["predicted_seconds_low"],
                "high": d["predicted_seconds_high"],
                "images/s": d["predicted_images_per_second"],
                f"{currency} / 1,000 images, job": d[pricing.JOB] or shape.cost_note,
                f"{currency} / 1,000 images, cluster life": d[pricing.CLUSTER_LIFE] or "",
                "cluster life includes": d[pricing.LIFE_INCLUDES],
                "core speed ratio": f"{ratio['value']:.3g} ({ratio['source']})" if ratio else "",
                "notes": "; ".join(d["notes"]),
            }
        )
    return rows


def _segments_text(segments: list[dict], what: str) -> str:
    """The winner by data size, then every size at which the full order changes."""
    if not segments:
        return f"{what}: no shape to rank"
    winners = [s for i, s in enumerate(segments) if i == 0 or s["ranking"][0] != segments[i - 1]["ranking"][0]]
    if len(winners) == 1:
        text = f"{what} at every size: {winners[0]['ranking'][0]}"
    else:
        text = f"{what} by data size: " + "; ".join(
            f"{s['ranking'][0]} " + (f"from {s['from_images']:,.0f} images" if s["from_images"] else "first")
            for s in winners
        )
    changes = [f"{s['from_images']:,.0f} ({' < '.join(s['ranking'])})" for s in segments[1:]]
    return text + (f"; the order changes at {', '.join(changes)} images" if changes else "; the order never changes")


def conclusions(task: forecast.TaskForecast) -> list[str]:
    """One line each: fastest and cheapest at the size, and the sizes from which the ranking changes."""
    fastest, cheapest = task.fastest(), task.cheapest()
    return [
        f"at {task.images:,} images the fastest shape is {fastest or 'none (no prediction)'} and the cheapest "
        f"over the cluster's life (the bill) {cheapest or 'none (no priced prediction)'}",
        _segments_text(task.time_segments(), "fastest"),
        _segments_text(task.cost_segments(), "cheapest over the cluster's life"),
    ]


def fit_lines(task: forecast.TaskForecast) -> list[str]:
    lines = []
    for deploy, fit in task.fits.items():
        mean, worst = fit.loo_error()
        lines.append(
            f"{deploy}: {len(fit.points)} runs, terms {', '.join(fit.terms)}; leave-one-out error "
            f"mean {mean:.1%}, max {worst:.1%}" + "".join(f"; {n}" for n in fit.notes)
        )
    lines += [f"{deploy}: refused: {why}" for deploy, why in task.refusals.items()]
    return lines


def task_lines(result: forecast.Forecast, heading: str) -> list[str]:
    """Each task's fits, coefficients, predictions and conclusions under ``heading`` (a format of its name)."""
    out = []
    for name, task in result.tasks.items():
        out += [heading.format(name), "", *[f"- {line}" for line in fit_lines(task)], ""]
        for deploy, fit in task.fits.items():
            out += [f"Coefficients fitted on {deploy} runs:", "", common.markdown_table(coefficient_rows(fit))]
        out += [
            f"At {task.images:,} images (prices: {result.options.region}, {result.prices.date}):",
            "",
            common.markdown_table(shape_rows(task, result.prices.currency)),
            *[f"- {c}" for c in conclusions(task)],
            "",
        ]
    return out


def render_text(result: forecast.Forecast) -> str:
    out = [f"Runs: {result.selection.describe()}", f"{forecast.LABEL}.", covers(result), ""]
    out += task_lines(result, "== {} ==")
    out += ["Left out:", *[f"  {e.text()}" for e in result.excluded]] if result.excluded else []
    return "\n".join(out) + "\n"


def markdown(result: forecast.Forecast) -> list[str]:
    """The report's "Forecast" section, but its figure."""
    out = [
        "## Forecast",
        "",
        f"_{forecast.LABEL}._ Model: Ernest's (NSDI'16) with a per-executor data term, fitted per task and "
        "deployment kind (docs/forecast.md); each fit's terms, coefficients and leave-one-out error are below.",
        "",
    ]
    return out + [covers(result), "", *task_lines(result, "### {}")]


# --- command line -----------------------------------------------------------------------------


def add_forecast_args(parser: argparse.ArgumentParser) -> None:
    """The forecast's options, shared by analysis/predict.py and analysis/report.py (its Forecast section)."""
    parser.add_argument(
        "--images",
        type=int,
        default=forecast.DEFAULT_IMAGES,
        help=f"data size to predict for (default: {forecast.DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--shapes",
        type=lambda text: tuple(name.strip() for name in text.split(",") if name.strip()),
        default=",".join(forecast.DEFAULT_SHAPES),
        help="comma-separated names of the cluster group (default: the seed's single,maximal,four; "
        "'local' is this machine with its cores)",
    )
    parser.add_argument("--region", default=forecast.Options.region, help="Dataproc region of the prices")
    parser.add_argument(
        "--core-speed-ratio",
        type=float,
        default=1.0,
        help="assumed speed of a Dataproc vCPU over a core of this machine (default 1.0); used only "
        "for Dataproc shapes predicted from local runs when the store has no Dataproc run to calibrate it",
    )
    parser.add_argument(
        "--local-cores",
        type=int,
        default=forecast.host_cores(),
        help="cores of the machine that ran the local and standalone runs (default: this machine's)",
    )
    parser.add_argument(
        "--source",
        default=forecast.Options.source,
        choices=("tfrecord", "files"),
        help="speed-test source to model (default: tfrecord)",
    )
    parser.add_argument(
        "--scaling-points-only",
        dest="scaling_only",
        action="store_true",
        help="use only runs tagged scaling_point=true",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default: 2000)")


def options_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> forecast.Options:
    """The options :func:`add_forecast_args` (with ``--prices`` and ``--confidence``) parsed, checked."""
    if args.images < 1 or args.local_cores < 1 or args.bootstrap < 100:
        parser.error("--images and --local-cores must be >= 1 and --bootstrap >= 100")
    if args.core_speed_ratio <= 0 or not 0 < args.confidence < 1:
        parser.error("--core-speed-ratio must be > 0 and --confidence between 0 and 1")
    named = {item.name: getattr(args, item.name) for item in fields(forecast.Options) if item.name != "prices_path"}
    return forecast.Options(prices_path=args.prices, **named)


def add_plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print a D-optimal design of scaling points (experiments/scaling_points.yaml) and exit",
    )
    parser.add_argument("--plan-sizes", default=",".join(map(str, forecast.PLAN_SIZES)), help="candidate data sizes")
    parser.add_argument(
        "--plan-executors",
        default=",".join(map(str, forecast.PLAN_EXECUTORS)),
        help="candidate executor counts (one core each): what the machine or cluster offers",
    )
    parser.add_argument("--plan-runs", type=int, default=forecast.PLAN_RUNS, help="points to choose")


def print_plan(args: argparse.Namespace) -> int:
    """The design as the experiment's ``scaling.points`` and sweep list, ready to paste or override."""
    import yaml

    sizes = [int(v) for v in args.plan_sizes.split(",")]
    executors = [int(v) for v in args.plan_executors.split(",")]
    try:
        plan = forecast.design_plan(sizes, executors, args.plan_runs)
    except ValueError as exc:
        return common.fail(str(exc), 2)
    sys.stdout.write(yaml.safe_dump({"scaling": {"points": plan}}, sort_keys=False, default_flow_style=None))
    sys.stdout.write(f"# sweep: scaling.point={','.join(plan)}\n")
    return 0


@common.exits_without_runs
def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 a forecast, 2 bad input, 3 no runs, 4 the runs cannot fit any task (stderr says what to add)."""
    parser = common.source_parser(
        "predict.py",
        "Fit the scaling model (Ernest) on the task 1 and task 2 runs and forecast the time and cost "
        "of each cluster shape at a data size; log the forecast as an analysis run.",
    )
    add_forecast_args(parser)
    parser.add_argument("--prices", default=str(pricing.DEFAULT_PRICES), help="price table YAML")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of the intervals (default: 0.95)")
    parser.add_argument("--no-log-run", action="store_true", help="do not log the forecast as an MLflow analysis run")
    add_plan_args(parser)
    args = parser.parse_args(argv)
    if args.plan:
        return print_plan(args)
    options = options_from_args(parser, args)
    try:
        selection, runs = query.load_runs(args.tracking_uri, args.experiment, args.parent_run)
        result = forecast.build(selection, runs, options)
    except (OSError, ValueError) as exc:
        return common.fail(str(exc), 2)
    if not result.usable():
        for name, task in result.tasks.items():
            for line in fit_lines(task) or [f"no usable {name} runs"]:
                print(f"cannot forecast {name}: {line}", file=sys.stderr)
        return EXIT_CANNOT_FIT
    if not args.no_log_run:
        with common.analysis_run(selection, args.parent_run, "forecast", {"analysis": "predict"}) as (client, run_id):
            log_forecast(client, run_id, result)
        print(f"logged as MLflow run {run_id} (task=analysis)", file=sys.stderr)
    return common.emit(args, result, render_text)
