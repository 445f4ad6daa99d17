"""Does the scaling model predict a run ten times bigger than the runs it was fitted on? Measured in one run.

    python benchmarks/predict_accuracy.py [--rounds 3] [--store DIR] [--json]

Each round, on this machine, in this order (prospective: a prediction is made before its run):
1. Points: task 1 (preprocess) and task 2 (the speed test reading that set, 3 repetitions) with 1 and 2
   executors of one core (local mode: ``local[1]``, ``local[2]``) at 250, 500, 1,000 and 2,000 images,
   through experiments/scaling_points.yaml, each run in its own process (as a user runs them), into a
   fresh MLflow store, tagged ``scaling_point=true``.
2. Fit and predict: :func:`bigimage.analysis_lib.forecast.build` on all points so far (what
   analysis/predict.py does); task 1 on 20,000 images, task 2 reading 19,776 images (206 batches of 32,
   3 repetitions, from the 20,000-image TFRecords), both on 2 executors of one core.
3. Run both (not tagged ``scaling_point``) and compare: the error of the seconds (task 1) and of the
   read throughput, images / timed seconds (task 2), relative to the measured value. Goal: <= 15%.

The machine is shared: the 1-minute load average is recorded at every run, points and validation runs
alternate so drifting load touches both, and the noise floor is reported beside the errors: the
spread (max / min - 1) of the repeated runs of the same job. The synthetic sets of 250 ... 20,000 images
are generated once under data/synthetic (minutes for 20,000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bigimage.analysis_lib import forecast, scaling
from bigimage.config import PROJECT_ROOT
from bigimage.tracking import query

EXPERIMENT = "predict-accuracy"
SIZES, EXECUTORS = (250, 500, 1000, 2000), (1, 2)
BIG = {"num_images": 20000, "executors": 2, "batches": 206}  # task 2 reads 206 x 32 x 3 = 19,776 images
GOAL = 0.15


def run_job(store: str, overrides: list[str], log: list[dict]) -> None:
    """One ``run.py`` job in its own process (a failure stops the benchmark with its output)."""
    load = os.getloadavg()[0]
    command = [
        sys.executable,
        "run.py",
        *overrides,
        f"tracking.uri={store}",
        f"tracking.experiment={EXPERIMENT}",
        f"hydra.run.dir={tempfile.gettempdir()}/predict-accuracy-hydra/{time.time_ns()}",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
    )
    if done.returncode:
        sys.exit(f"failed: {' '.join(overrides)}\n{done.stderr[-3000:]}")
    log.append({"job": " ".join(overrides), "load_1min": load, "wall_seconds": time.perf_counter() - started})
    print(f"  load {load:5.2f}  {time.perf_counter() - started:6.1f} s  {' '.join(overrides)}", file=sys.stderr)


def point_overrides(task: str, images: int, executors: int) -> list[str]:
    """A point of the experiment given on the command line (any size, not only the design's)."""
    batches = images // forecast.PLAN_BATCH_SIZE - forecast.PLAN_WARMUP
    return [
        f"task={task}",
        "+experiment=scaling_points",
        "scaling.point=p",
        f"+scaling.points.p={{num_images: {images}, executors: {executors}, batches: {batches}}}",
    ]


def collect_points(store: str, round_: int, log: list[dict]) -> None:
    """One round: task 1 at every point first (task 2 reads each size's TFRecords), then task 2."""
    for task in ("preprocess", "speedtest"):
        for images in SIZES:
            for executors in EXECUTORS:
                run_job(store, [*point_overrides(task, images, executors), f"seed={42 + round_}"], log)


def validation_overrides(task: str) -> list[str]:
    """The 20,000-image point, not tagged scaling_point (it must never be one of the fitted runs)."""
    return [
        f"task={task}",
        "+experiment=scaling_points",
        "scaling.point=big",
        f"+scaling.points.big={{num_images: {BIG['num_images']}, executors: {BIG['executors']}, batches: {BIG['batches']}}}",
        "tracking.tags.scaling_point=false",
        "+tracking.tags.benchmark=validation",
    ]


def predicted(store: str, images: dict[str, float]) -> tuple[dict[str, scaling.Prediction], dict[str, dict]]:
    """Each task's prediction on 2 cores of one executor from the local-mode fit, and the fits."""
    selection, runs = query.load_runs(store, EXPERIMENT)
    result = forecast.build(selection, runs, forecast.Options(shapes=("local",), local_cores=2, scaling_only=True))
    out, fits = {}, {}
    for task, n in images.items():
        fit = result.tasks[task].fits.get("local")
        if fit is None:
            sys.exit(f"no {task} fit: {result.tasks[task].refusals}")
        out[task], fits[task] = fit.predict(n, 2, 1), fit.as_dict()
    return out, fits


def latest_validations(store: str) -> dict[str, tuple[float, float]]:
    """(images, seconds) of the newest validation run of each task: task 1's metrics, task 2's timed
    tfrecord rows."""
    selection, runs = query.load_runs(store, EXPERIMENT)
    mine = runs[runs["tags.benchmark"] == "validation"].sort_values("start_time")
    pre = mine[mine["task"] == "preprocess"].iloc[-1]
    speed = mine[mine["task"] == "speedtest"].iloc[-1]
    table, _ = query.load_run_table(store, selection.experiment_id, "speedtest.json", [speed["run_id"]])
    rows = table[table["source"] == "tfrecord"]
    return {
        "preprocess": (float(pre["metrics.images"]), float(pre["metrics.seconds"])),
        "speedtest": (float(rows["images"].sum()), float(rows["seconds"].sum())),
    }


def compare(round_: int, task: str, p: scaling.Prediction, images: float, seconds: float) -> dict:
    """Task 1: error of the seconds; task 2: of the throughput (predicted / measured - 1 = measured
    seconds / predicted seconds - 1)."""
    error = abs(p.seconds - seconds) / seconds if task == "preprocess" else abs(seconds / p.seconds - 1.0)
    return {
        "round": round_,
        "task": task,
        "images": images,
        "measured_seconds": seconds,
        "predicted_seconds": p.seconds,
        "predicted_low": p.low,
        "predicted_high": p.high,
        "in_interval": p.low <= seconds <= p.high,
        "compared": "seconds" if task == "preprocess" else "images/s",
        "measured_images_per_second": images / seconds,
        "predicted_images_per_second": images / p.seconds,
        "error": error,
        "goal_met": error <= GOAL,
    }


def noise_floor(store: str, rows: list[dict]) -> dict[str, dict]:
    """Spread (max / min - 1) of the same job repeated: each point over the rounds, and the validations."""
    selection, runs = query.load_runs(store, EXPERIMENT)
    options = forecast.Options(local_cores=2, scaling_only=True)
    points = {
        "preprocess": forecast.preprocess_points(runs, options)[0].get("local", []),
        "speedtest": forecast.speedtest_points(selection, runs, options)[0].get("local", []),
    }
    out = {}
    for task, mine in points.items():
        groups: dict[tuple[float, float], list[float]] = {}
        for point in mine:
            groups.setdefault((point.images, point.cores), []).append(point.seconds)
        spreads = sorted(max(v) / min(v) - 1.0 for v in groups.values() if len(v) > 1)
        validations = [r["measured_seconds"] for r in rows if r["task"] == task]
        out[task] = {
            "points_median_spread": spreads[len(spreads) // 2] if spreads else None,
            "points_max_spread": spreads[-1] if spreads else None,
            "validation_spread": max(validations) / min(validations) - 1.0 if len(validations) > 1 else None,
        }
    return out


def run_rounds(store: str, rounds: int, log: list[dict]) -> tuple[list[dict], dict]:
    """Points, fit, predict, then the 20,000-image runs, ``rounds`` times; the comparisons and last fits."""
    reads = BIG["batches"] * forecast.PLAN_BATCH_SIZE * 3
    rows: list[dict] = []
    fits: dict[str, dict] = {}
    for round_ in range(rounds):
        collect_points(store, round_, log)
        predictions, fits = predicted(store, {"preprocess": BIG["num_images"], "speedtest": reads})
        for task, p in predictions.items():
            print(f"round {round_}: predicted {task}: {p.seconds:.2f} s [{p.low:.2f}, {p.high:.2f}]", file=sys.stderr)
        for task in ("preprocess", "speedtest"):
            run_job(store, validation_overrides(task), log)
        for task, (images, seconds) in latest_validations(store).items():
            rows.append(compare(round_, task, predictions[task], images, seconds))
    return rows, fits


def render(rows: list[dict], fits: dict, noise: dict, log: list[dict]) -> str:
    """The figures for the terminal: the last fits, every comparison, the noise floor and the load."""
    out = []
    for task, fit in fits.items():
        out.append(
            f"{task} fit (last round): "
            + ", ".join(f"{c['term']} {c['value']:.4g} [{c['low']:.4g}, {c['high']:.4g}]" for c in fit["coefficients"])
            + f"; leave-one-out error mean {fit['loo_mean_relative_error']:.1%}, max {fit['loo_max_relative_error']:.1%}"
        )
    for r in rows:
        out.append(
            f"round {r['round']} {r['task']:10s} {r['images']:>6.0f} images: measured {r['measured_seconds']:6.2f} s "
            f"({r['measured_images_per_second']:6.1f} images/s), predicted {r['predicted_seconds']:6.2f} s "
            f"[{r['predicted_low']:.2f}, {r['predicted_high']:.2f}]: error of {r['compared']} {r['error']:.1%}"
            f" ({'goal met' if r['goal_met'] else 'goal missed'})"
        )
    for task, n in noise.items():
        out.append(
            f"noise floor {task}: identical points differ by {_pct(n['points_median_spread'])} (median), "
            f"{_pct(n['points_max_spread'])} (max); the validation runs by {_pct(n['validation_spread'])}"
        )
    loads = [j["load_1min"] for j in log]
    out.append(
        f"load average (1 min) at the {len(log)} job starts: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} cores"
    )
    return "\n".join(out) + "\n"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def main() -> int:
    """Exit code 0 when every comparison met the goal, else 1."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of points + fit + validation runs (default 3)")
    parser.add_argument("--store", default=None, help="directory of the MLflow store (default: a new temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    root = Path(args.store or tempfile.mkdtemp(prefix="predict-accuracy-"))
    root.mkdir(parents=True, exist_ok=True)
    store, log = f"sqlite:///{root / 'mlflow.db'}", list[dict]()
    print(f"store {store}; {os.cpu_count()} cores", file=sys.stderr)
    rows, fits = run_rounds(store, args.rounds, log)
    noise = noise_floor(store, rows)
    if args.json:
        print(
            json.dumps(
                {"store": store, "fits": fits, "comparisons": rows, "noise": noise, "jobs": log, "goal": GOAL},
                indent=2,
                default=str,
            )
        )
    else:
        sys.stdout.write(render(rows, fits, noise, log))
    return 0 if all(r["goal_met"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
