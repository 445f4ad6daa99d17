"""Search against grid: how many training runs does TPE need to reach what the full grid finds best?

    python benchmarks/search_vs_grid.py [--image-size 48] [--epochs 3] [--seeds 20] [--live-seeds 1] [--json]

1. The grid: every point of a space of 18 (``train.learning_rate`` x ``batch_size`` x ``model.width``,
   strategy ``default``) trained once on the default data through ``run.py -m`` (one sweep), at a small
   ``image_size`` and few epochs to stay within minutes. Its best point is trained ``--repeats`` more
   times with other seeds: with its grid run, they give the best point's 95% t-interval of
   ``best_val_accuracy``. A run "reaches" the best when its value is at least that interval's low end.
2. The search, over the same space, with the sampler of ``hparams_search=train_optuna`` (seeded TPE,
   its startup trials random), once per seed in ``--seeds``: trials are scored by the grid's measured
   value of their point (a tabular benchmark: each point's accuracy as the grid measured it, so many
   seeds cost no training), until one reaches the best. Runs needed per seed, and their median.
3. ``--live-seeds``: the same search for real, ``run.py -m hparams_search=train_optuna`` over the same
   space with a third of the grid's runs as ``n_trials``: did its best trial reach the interval?

Goal: the search's median runs needed <= a third of the grid's runs. Everything goes to a fresh MLflow
store in a temporary folder (``--tracking-uri`` to keep it elsewhere); the TFRecords of the default data
at ``--image-size`` are made once under ``data/`` as ``python run.py task=preprocess`` makes them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bigimage.analysis_lib.common import mean_interval
from bigimage.config import PROJECT_ROOT, register_configs
from bigimage.tracking.query import load_runs, metric, param

log = logging.getLogger("search_vs_grid")

SPACE: dict[str, list[Any]] = {
    "train.learning_rate": [0.0003, 0.001, 0.003],
    "batch_size": [16, 32, 64],
    "model.width": [16, 32],
}
EXPERIMENT = "search_vs_grid"
GOAL = 1 / 3
TOP_K = 3


@dataclass
class Figures:
    grid_runs: int
    best_point: dict[str, Any]
    best_interval: dict[str, Any]
    points_reaching: int
    runs_needed: list[int | None]
    median_runs_needed: float | None
    ratio: float | None
    live: list[dict[str, Any]]
    load_average: list[float]
    # stricter: a point among the grid's top TOP_K by its measured value (random order: (N+1)/(k+1) runs)
    top_k_runs_needed: list[int | None]
    top_k_median: float | None
    top_k_random_expectation: float


def run_py(*args: str) -> None:
    """``python run.py args...`` from the project root; stops the benchmark if it fails."""
    command = [sys.executable, "run.py", *args]
    log.info("running %s", " ".join(command[1:]))
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"run.py failed ({result.returncode}):\n{result.stderr[-3000:]}")


def common_args(uri: str, image_size: int, epochs: int, out: str) -> list[str]:
    return [
        f"image_size={image_size}",
        f"epochs={epochs}",
        f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}",
        "tracking.system_metrics=false",
        f"paths.output_dir={out}",
        f"hydra.sweep.dir={out}/multirun",
        "strategy=default",
    ]


def point_of(row: Any) -> tuple:
    return tuple(float(param(row, key)) for key in SPACE)


def grid_table(uri: str) -> dict[tuple, list[float]]:
    """Point -> best_val_accuracy of each of its runs, from the store, the grid's own run (seed 42) first."""
    _, runs = load_runs(uri, EXPERIMENT, None)
    table: dict[tuple, list[tuple[bool, float]]] = {}
    for _, row in runs[(runs["task"] == "train") & (runs["status"] == "FINISHED")].iterrows():
        if str(row.get("tags.search.study", "nan")) in ("None", "nan"):  # the grid's runs, not a live search's
            repeat = str(param(row, "seed")) != "42"
            value = float(metric(row, "best_val_accuracy") or 0.0)
            table.setdefault(point_of(row), []).append((repeat, value))
    return {point: [value for _, value in sorted(entries, key=lambda e: e[0])] for point, entries in table.items()}


def sampler_config() -> dict[str, Any]:
    """The sampler ``hparams_search=train_optuna`` uses, as configured."""
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=train_optuna"], return_hydra_config=True)
    from omegaconf import OmegaConf

    return dict(OmegaConf.to_container(cfg.hydra.sweeper.sampler, resolve=True))  # type: ignore[arg-type]


def runs_to_reach(values: dict[tuple, float], threshold: float, seed: int, cap: int) -> int | None:
    """Trials a seeded TPE search over the grid's points needs until one scores >= ``threshold``."""
    spec = {**sampler_config(), "seed": seed}
    study = optuna.create_study(direction="maximize", sampler=instantiate(spec))
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        key: optuna.distributions.CategoricalDistribution(choices) for key, choices in SPACE.items()
    }
    for count in range(1, cap + 1):
        trial = study.ask(distributions)
        value = values[tuple(float(trial.params[key]) for key in SPACE)]
        study.tell(trial, value)
        if value >= threshold:
            return count
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="extra runs of the grid's best point")
    parser.add_argument("--seeds", type=int, default=20, help="tabular TPE searches")
    parser.add_argument("--live-seeds", type=int, default=1, help="real searches through run.py")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument(
        "--reuse", action="store_true", help="the grid and repeats are in --tracking-uri already: only search"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = tempfile.mkdtemp(prefix="bigimage-search-vs-grid-")
    uri = args.tracking_uri or f"sqlite:///{folder}/mlruns/mlflow.db"
    base = common_args(uri, args.image_size, args.epochs, folder)
    if not args.reuse:
        run_grid(base, args.repeats, uri)
    table = grid_table(uri)
    best = max(table, key=lambda point: table[point][0])
    interval = mean_interval(table[best], 0.95)
    threshold = interval.low if interval.low is not None else interval.mean
    values = {point: runs[0] for point, runs in table.items()}  # each point as the grid measured it
    grid_runs = len(list(itertools.product(*SPACE.values())))
    needed = [runs_to_reach(values, threshold, seed, cap=3 * grid_runs) for seed in range(args.seeds)]
    reached = [n for n in needed if n is not None]
    median = statistics.median(reached) if len(reached) == len(needed) else None
    top_value = sorted(values.values(), reverse=True)[TOP_K - 1]
    top_needed = [runs_to_reach(values, top_value, seed, cap=3 * grid_runs) for seed in range(args.seeds)]
    top_median = statistics.median(top_needed) if None not in top_needed else None  # type: ignore[type-var]
    live = [live_search(base, seed, grid_runs, threshold, uri) for seed in range(args.live_seeds)]
    figures = Figures(
        grid_runs,
        dict(zip(SPACE, best)),
        {"mean": interval.mean, "low": interval.low, "high": interval.high, "n": interval.n},
        sum(value >= threshold for value in values.values()),
        needed,
        median,
        median / grid_runs if median is not None else None,
        live,
        list(os.getloadavg()),
        top_needed,
        top_median,
        (grid_runs + 1) / (TOP_K + 1),
    )
    print(json.dumps(asdict(figures), indent=1, default=str) if args.json else render(figures))
    return 0 if figures.ratio is not None and figures.ratio <= GOAL else 1


def run_grid(base: list[str], repeats: int, uri: str) -> None:
    """The data, the grid as one sweep, then ``repeats`` more runs of its best point (other seeds)."""
    run_py("task=preprocess", *base)
    grid = [f"{key}={','.join(str(v) for v in values)}" for key, values in SPACE.items()]
    run_py("-m", "task=train", *base, *grid)
    table = grid_table(uri)
    best = max(table, key=lambda point: table[point][0])
    best_args = [f"{key}={value:g}" for key, value in zip(SPACE, best)]
    for seed in range(1, repeats + 1):
        run_py("task=train", *base, *best_args, f"seed={seed + 100}")


def live_search(base: list[str], seed: int, grid_runs: int, threshold: float, uri: str) -> dict[str, Any]:
    """One real search over the grid's space with a third of its runs; its best and whether it reached."""
    space = [f"{key}=choice({','.join(str(v) for v in values)})" for key, values in SPACE.items()]
    name = f"live-{seed}"
    budget = max(1, round(grid_runs * GOAL))
    run_py("hparams_search=train_optuna", *base, *space, f"seed={seed}", f"hydra.sweeper.study_name={name}",
           f"hydra.sweeper.n_trials={budget}", "hydra.sweeper.pruner=null")  # fmt: skip
    study = optuna.load_study(study_name=name, storage=uri.replace("mlflow.db", "optuna.db"))
    values = [t.value for t in study.trials if t.value is not None]
    best = max(values) if values else None
    first = next((i + 1 for i, v in enumerate(values) if v >= threshold), None)
    return {
        "seed": seed,
        "trials": budget,
        "best": best,
        "reached": best is not None and best >= threshold,
        "at_trial": first,
    }


def render(f: Figures) -> str:
    lines = [
        f"grid: {f.grid_runs} runs; best point {f.best_point}: best_val_accuracy {f.best_interval['mean']:.4f} "
        f"(95% interval {f.best_interval['low']}..{f.best_interval['high']}, n={f.best_interval['n']}); "
        f"{f.points_reaching} of {f.grid_runs} points reach its low end",
        f"TPE (tabular, {len(f.runs_needed)} seeds): runs needed per seed {f.runs_needed}",
        f"median {f.median_runs_needed} of {f.grid_runs} = {f.ratio if f.ratio is None else round(f.ratio, 3)} "
        f"(goal <= {GOAL:.3f})",
    ]
    lines.append(
        f"stricter, one of the grid's top {TOP_K} points: runs needed per seed {f.top_k_runs_needed}, median "
        f"{f.top_k_median} (random order: {f.top_k_random_expectation:.2f} expected)"
    )
    for live in f.live:
        lines.append(f"live search seed {live['seed']}: {live['trials']} trials, best {live['best']}, reached: "
                     f"{live['reached']} (first at trial {live['at_trial']})")  # fmt: skip
    lines.append(f"load average {f.load_average}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
