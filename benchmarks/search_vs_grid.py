"""Search against grid at equal compute: regret against epochs trained, replayed from the truth table.

    python benchmarks/search_vs_grid.py [--seeds 20] [--budget 1.0] [--live] [--json]

The truth table (``benchmarks/data/search_truth.csv``, made by ``benchmarks/search_truth.py``) holds
every point of a grid over the shipped space (``conf/hparams_search/space/train.yaml``) trained over
several seeds, each epoch's validation accuracy recorded. A point's **truth** is the mean over its seeds
of its best validation accuracy (``best_val_accuracy``, the judged epoch's); the best point's seed
standard deviation is the noise floor.

Each method searches the shipped space, once per seed in ``--seeds``, until it has trained ``--budget``
times the grid's epochs. A trial is answered from the table: its params snapped to the nearest grid
point (the learning rate on a log scale; every strategy is the same point, as ``search_truth.py``
says), one of that point's seeds drawn at random, its curve reported epoch by epoch to the pruner
(step = epochs trained, as in a real search), the epochs it trained counted as compute, pruned or not.
The search's choice is its best finished trial; **regret** = truth of the best point - truth of the
chosen point (before any finished trial: the worst point's regret). Methods:

* ``tpe+hyperband``, ``tpe+successive_halving``, ``tpe+median``: ``hparams_search=train_optuna``'s
  sampler with each pruner of ``conf/hydra/sweeper/pruner/`` (the shipped search: the one it takes),
  ``tpe`` (no pruner), ``random`` (Optuna's RandomSampler), ``grid`` (every point once, in a seeded
  random order: at the whole grid's compute it has tried each);
* ``<shipped>+confirm``: the shipped search with its confirmation stage (``hydra.sweeper.confirm``:
  the top few trained again over other seeds, the winner by mean), the confirmation's epochs counted
  against the budget; a candidate's confirmation runs are its point's other seeds in the table (the
  trial's own seed left out, as the stage leaves its value out).

Printed: each method's median regret (and quartiles) at 1/9, 1/3, 2/3 and 1 of the grid's compute;
the goal at 1/3 for the search as it ships (with its confirmation stage when ``confirm.top`` > 0): its
median regret <= half of random search's and <= the best point's seed standard deviation; and how far the shipped search's best single value lies above its choice's
truth (the winner's curse its confirmation stage corrects). Written: ``benchmarks/data/search_vs_grid.csv`` (the table) and
``search_vs_grid.png`` (median regret against compute, quartile bands). ``--live``: one small search
through ``run.py`` (``hparams_search=train_optuna``, strategy ``default``) on the table's data, its
confirmed winner and that winner's regret by the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from search_truth import TABLE, shipped_space

from bigimage.config import PROJECT_ROOT, register_configs
from bigimage.search.confirm import Confirm
from bigimage.search.space import parse, trial_overrides
from bigimage.tracking.store import connect

log = logging.getLogger("search_vs_grid")

OUT = TABLE.parent
FRACTIONS = (1 / 9, 1 / 3, 2 / 3, 1.0)
GOAL_FRACTION = 1 / 3
LIVE = "search_live"  # the live search's MLflow experiment
PRUNERS = ("hyperband", "successive_halving", "median")  # conf/hydra/sweeper/pruner/


@dataclass
class Truth:
    """The table: point -> its seeds' curves (val accuracy per epoch) and the grid's values per key."""

    curves: dict[str, np.ndarray]  # point -> seeds x epochs
    levels: dict[str, list[Any]]
    log_keys: set[str]

    @property
    def epochs(self) -> int:
        return int(next(iter(self.curves.values())).shape[1])

    def truth(self) -> dict[str, float]:
        return {point: float(c.max(axis=1).mean()) for point, c in self.curves.items()}

    def seed_std(self, point: str) -> float:
        return float(self.curves[point].max(axis=1).std(ddof=1))

    def snap(self, params: dict[str, Any]) -> str:
        """The grid point nearest to a trial's params (log distance for log-scaled keys)."""
        point = {}
        for key, values in self.levels.items():
            value = float(params[key])
            scale: Callable[[float], float] = math.log if key in self.log_keys else float
            point[key] = min(values, key=lambda v: abs(scale(float(v)) - scale(value)))
        return " ".join(trial_overrides(point))


def load_truth(path: Path) -> Truth:
    """The table's rows grouped by point; only points with the most seeds any point has (a complete grid)."""
    rows: dict[str, list[list[float]]] = {}
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(row["point"], []).append([float(v) for v in row["val_accuracy"].split(";")])
    seeds = max(len(curves) for curves in rows.values())
    curves = {point: np.array(c[:seeds]) for point, c in rows.items() if len(c) >= seeds}
    levels: dict[str, set[float]] = {}
    for point in curves:
        for item in point.split():
            key, value = item.split("=", 1)
            levels.setdefault(key, set()).add(int(value) if value.isdigit() else float(value))  # as the space wrote it
    distributions = parse(shipped_space(), []).distributions
    log_keys = {key for key, d in distributions.items() if getattr(d, "log", False)}
    ordered: dict[str, list[Any]] = {key: sorted(values) for key, values in levels.items()}
    if len(curves) != math.prod(len(values) for values in ordered.values()):
        raise SystemExit(f"{path}: {len(curves)} complete points of a {math.prod(len(v) for v in ordered.values())}-point "
                         "grid: finish it with benchmarks/search_truth.py (it resumes)")  # fmt: skip
    return Truth(curves, ordered, log_keys)


def shipped_config(epochs: int, pruner: str | None = None) -> tuple[dict[str, Any], dict[str, Any], str, Confirm]:
    """``hparams_search=train_optuna``'s sampler and pruner (``pruner``: that of ``hydra/sweeper/pruner=``
    instead) as ``_target_`` dicts for trainings of ``epochs``, the pruner's name and the confirmation stage."""
    register_configs()
    overrides = ["hparams_search=train_optuna", f"epochs={epochs}"]
    overrides += [f"hydra/sweeper/pruner={pruner}"] if pruner else []
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    sampler, spec = (
        OmegaConf.to_container(node, resolve=True) for node in (cfg.hydra.sweeper.sampler, cfg.hydra.sweeper.pruner)
    )
    confirm = Confirm(int(cfg.hydra.sweeper.confirm.top), int(cfg.hydra.sweeper.confirm.seeds))
    return dict(sampler), dict(spec), str(cfg.hydra.runtime.choices["hydra/sweeper/pruner"]), confirm  # type: ignore[arg-type]


@dataclass
class Replay:
    """One search's path: after each trial, the compute so far and the regret of its choice."""

    compute: list[int] = field(default_factory=list)
    regret: list[float] = field(default_factory=list)
    confirmed_regret: list[float] = field(default_factory=list)  # choosing by the top 3's confirmation
    overstated: list[float] = field(default_factory=list)  # the choice's best single value - its truth
    trials: int = 0
    pruned: int = 0

    def at(self, budget: float, confirm: bool = False, shift: int = 0, worst: float = math.nan) -> float:
        """The regret of the choice made within ``budget`` epochs (``worst`` before any finished trial)."""
        values = self.confirmed_regret if confirm else self.regret
        index = int(np.searchsorted(np.asarray(self.compute) + shift, budget, side="right")) - 1
        return values[index] if index >= 0 else worst

    def overstatement(self, budget: float) -> float:
        index = int(np.searchsorted(np.asarray(self.compute), budget, side="right")) - 1
        return self.overstated[index] if index >= 0 else math.nan


def confirmed_mean(truth: Truth, point: str, drawn: int, confirm: Confirm) -> float:
    """A candidate's confirmed value: the mean best value of ``confirm.seeds`` of the table's other seeds
    of its point (the trial's own seed, ``drawn``, left out as the confirmation stage leaves it out)."""
    others = [seed for seed in range(len(truth.curves[point])) if seed != drawn][: confirm.seeds]
    return float(truth.curves[point][others].max(axis=1).mean())


def replay(truth: Truth, method: str, seed: int, budget: int, specs: dict[str, Any], confirm: Confirm) -> Replay:
    """One search of ``method`` with ``seed`` until ``budget`` epochs are trained (module doc)."""
    values = truth.truth()
    best = max(values.values())
    distributions = parse(shipped_space(), []).distributions
    sampler_spec, pruner_spec = specs.get(method, (None, None))
    order: list[str] = []
    if method == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    elif method != "grid":
        sampler = instantiate({**sampler_spec, "seed": seed})
    else:  # every point once, in a seeded order (Optuna's GridSampler stops the study at the end: not in ask/tell)
        sampler = optuna.samplers.RandomSampler(seed=seed)
        order = [str(p) for p in np.random.default_rng(seed).permutation(list(truth.curves))]
    pruner = instantiate(pruner_spec) if pruner_spec else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=f"{method}-{seed}", direction="maximize", sampler=sampler, pruner=pruner)
    rng = np.random.default_rng(10_000 + seed)
    out = Replay()
    observed: dict[str, tuple[float, int]] = {}  # point -> its best finished trial's value and the seed drawn
    compute = 0
    while compute < budget and not (method == "grid" and out.trials == len(order)):
        trial = study.ask(distributions)
        point = order[out.trials] if method == "grid" else truth.snap(trial.params)
        curves = truth.curves[point]
        drawn = int(rng.integers(len(curves)))
        curve = curves[drawn]
        pruned = False
        for step, value in enumerate(curve, 1):
            trial.report(float(value), step)
            compute += 1
            if trial.should_prune():
                pruned = True
                break
        out.trials += 1
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            out.pruned += 1
        else:
            study.tell(trial, float(curve.max()))
            if float(curve.max()) > observed.get(point, (-math.inf, 0))[0]:
                observed[point] = (float(curve.max()), drawn)
        if observed:
            top = sorted(observed, key=lambda p: -observed[p][0])[: max(confirm.top, 1)]
            out.compute.append(compute)
            out.regret.append(best - values[top[0]])
            out.confirmed_regret.append(
                best - values[max(top, key=lambda p: confirmed_mean(truth, p, observed[p][1], confirm))]
            )
            out.overstated.append(observed[top[0]][0] - values[top[0]])
    return out


def summarise(runs: dict[str, list[Replay]], grid_compute: int, shipped: str, shift: int, worst: float) -> pd.DataFrame:
    """Median and quartiles of each method's regret at each fraction of the grid's compute (``worst``, the
    regret of the worst point, while a search has chosen nothing; ``shift``: the confirmation's epochs)."""
    rows = []
    for method, replays in runs.items():
        for name, confirm in (
            ((method, False), (f"{method}+confirm", True)) if method == shipped else ((method, False),)
        ):
            for fraction in FRACTIONS:
                budget = fraction * grid_compute
                regrets = np.array([r.at(budget, confirm, shift if confirm else 0, worst) for r in replays])
                q1, median, q3 = np.percentile(regrets, [25, 50, 75])
                rows.append({"method": name, "fraction_of_grid": round(fraction, 4), "epochs": round(budget),
                             "median_regret": median, "q1": q1, "q3": q3, "searches": len(replays)})  # fmt: skip
    return pd.DataFrame(rows)


def plot(
    runs: dict[str, list[Replay]],
    grid_compute: int,
    shipped: str,
    shift: int,
    worst: float,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = np.linspace(grid_compute / 30, max(r.compute[-1] for rs in runs.values() for r in rs), 120)
    fig, ax = plt.subplots(figsize=(8, 5))
    lines = [(m, rs, False) for m, rs in runs.items()] + [(f"{shipped}+confirm", runs[shipped], True)]
    for name, replays, confirm in lines:
        table = np.array([[r.at(b, confirm, shift if confirm else 0, worst) for b in budgets] for r in replays])
        ax.plot(budgets, np.median(table, axis=0), label=name, lw=2.2 if name.startswith(shipped) else 1.4)
        q1, q3 = np.percentile(table, [25, 75], axis=0)
        ax.fill_between(budgets, q1, q3, alpha=0.12)
    ax.axvline(grid_compute * GOAL_FRACTION, color="gray", ls=":", label="1/3 of the grid's compute")
    ax.set_xlabel("compute: epochs trained (pruned trials' included)")
    ax.set_ylabel("regret: best truth - truth of the choice")
    ax.set_yscale("symlog", linthresh=0.005)
    ax.set_ylim(bottom=0)
    ax.set_title(f"Median regret over {len(next(iter(runs.values())))} seeds (bands: quartiles)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_live(folder: Path, image_size: int, epochs: int, seed: int) -> None:
    """``run.py -m hparams_search=train_optuna`` (6 trials, the top 2 confirmed over 2 seeds, strategy
    ``default``) on the table's data and epochs, into the MLflow store in ``folder``: run again on the
    same folder, it continues the same study (nothing left to train: only a new parent and summary)."""
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    command = [sys.executable, "run.py", "-m", "hparams_search=train_optuna", "hydra.sweeper.n_trials=6",
               "hydra.sweeper.confirm.top=2", "hydra.sweeper.confirm.seeds=2", f"seed={seed}", "strategy=default",
               f"image_size={image_size}", f"epochs={epochs}", f"tracking.uri={uri}", f"tracking.experiment={LIVE}",
               "tracking.system_metrics=false", f"paths.output_dir={folder}", f"hydra.sweep.dir={folder}/multirun",
               f"paths.data_dir={PROJECT_ROOT / 'data'}"]  # fmt: skip
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the live search failed:\n{result.stderr[-3000:]}")


def live_search(truth: Truth, folder: Path, image_size: int, seed: int) -> dict[str, Any]:
    """The live search (:func:`run_live`; not again when ``folder`` holds it finished): its parent's
    confirmed winner, compute, and regret by the table."""
    uri = f"sqlite:///{folder}/mlruns/mlflow.db"
    query = "tags.`search.best_by` = 'confirmation' and attributes.status = 'FINISHED'"
    client = mlflow.MlflowClient(uri)
    parents = client.search_runs([connect(uri, LIVE)[1]], query) if (folder / "mlruns").exists() else []
    if not parents:
        run_live(folder, image_size, truth.epochs, seed)
        parents = client.search_runs([connect(uri, LIVE)[1]], query)
    parent = parents[0]  # the newest summary of the study
    params = {
        key.removeprefix("search.best."): value
        for key, value in parent.data.params.items()
        if key.startswith("search.best.")
    }
    point = truth.snap(params)
    values = truth.truth()
    m = parent.data.metrics
    return {
        "winner": params,
        "confirmed_mean": m["search.best_value"],
        "interval": [m.get("search.best_value_low"), m.get("search.best_value_high")],
        "trials_pruned": m["search.trials_pruned"],
        "compute_epochs": m["search.compute_epochs"],
        "pruned_epochs": m["search.compute_epochs_pruned"],
        "confirm_epochs": m["search.compute_epochs_confirm"],
        "table_point": point,
        "table_truth": values[point],
        "regret": max(values.values()) - values[point],
        "seconds": round((parent.info.end_time - parent.info.start_time) / 1000),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--budget", type=float, default=1.0, help="compute per search, a fraction of the grid's")
    parser.add_argument("--live", action="store_true", help="also one small search through run.py")
    parser.add_argument("--live-store", type=Path, default=None, help="its MLflow store's folder (continued)")
    parser.add_argument("--image-size", type=int, default=32, help="the table's (for --live)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    truth = load_truth(args.table)
    values = truth.truth()
    best = max(values, key=values.__getitem__)
    grid_compute = len(truth.curves) * truth.epochs
    budget = math.ceil(args.budget * grid_compute)
    sampler, _, shipped, confirm = shipped_config(truth.epochs)
    specs: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {"tpe": (sampler, None)}
    for name in PRUNERS:
        specs[f"tpe+{name}"] = shipped_config(truth.epochs, name)[:2]
    shipped = f"tpe+{shipped}"
    runs: dict[str, list[Replay]] = {}
    for method in [*specs, "random", "grid"]:
        started = time.perf_counter()
        runs[method] = [replay(truth, method, seed, budget, specs, confirm) for seed in range(args.seeds)]
        log.info("%s: %d searches in %.0f s", method, args.seeds, time.perf_counter() - started)
    worst = values[best] - min(values.values())
    shift = confirm.top * confirm.seeds * truth.epochs
    table = summarise(runs, grid_compute, shipped, shift, worst)
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "search_vs_grid.csv", index=False, float_format="%.5f")
    plot(runs, grid_compute, shipped, shift, worst, OUT / "search_vs_grid.png")
    at = table[table["fraction_of_grid"] == round(GOAL_FRACTION, 4)].set_index("method")["median_regret"]
    noise = truth.seed_std(best)
    judged = f"{shipped}+confirm" if confirm.top else shipped  # the search as it ships
    figures: dict[str, Any] = {
        "shipped": judged,
        "confirm": {
            "top": confirm.top,
            "seeds": confirm.seeds,
            "epochs": shift,
            "seeds_modelled": min(confirm.seeds, int(truth.curves[best].shape[0]) - 1),
        },
        "points": len(truth.curves),
        "seeds_per_point": int(truth.curves[best].shape[0]),
        "epochs": truth.epochs,
        "grid_compute_epochs": grid_compute,
        "best_point": best,
        "best_truth": values[best],
        "best_seed_std": noise,
        "median_truth": float(np.median(list(values.values()))),
        "median_regret_at_third": at.to_dict(),
        "shipped_over_random": at[judged] / at["random"] if at["random"] > 0 else None,
        "goal_half_of_random": bool(at[judged] <= 0.5 * at["random"]),
        "goal_within_seed_std": bool(at[judged] <= noise),
        # the winner's curse: how far the chosen point's best single value lies above its truth
        "overstated_at_third": float(
            np.nanmedian([r.overstatement(grid_compute * GOAL_FRACTION) for r in runs[shipped]])
        ),
        "trials_per_search_at_full_budget": {m: float(np.median([r.trials for r in rs])) for m, rs in runs.items()},
        "pruned_share": {m: float(np.mean([r.pruned / max(r.trials, 1) for r in rs])) for m, rs in runs.items()},
        "load_average": list(os.getloadavg()),
    }
    if args.live:
        store = args.live_store or Path(tempfile.mkdtemp(prefix="bigimage-search-live-"))
        figures["live"] = live_search(truth, store, args.image_size, seed=0)
    print(json.dumps(figures, indent=1, default=str) if args.json else render(table, figures))
    return 0 if figures["goal_half_of_random"] and figures["goal_within_seed_std"] else 1


def render(table: pd.DataFrame, f: dict[str, Any]) -> str:
    lines = [
        f"truth table: {f['points']} points x {f['seeds_per_point']} seeds, {f['epochs']} epochs; the grid's compute "
        f"{f['grid_compute_epochs']} epochs",
        f"best point {f['best_point']}: truth {f['best_truth']:.4f}, seed std {f['best_seed_std']:.4f} "
        f"(median point's truth {f['median_truth']:.4f})",
        "",
        "median regret [quartiles] by compute (fraction of the grid's epochs):",
    ]
    pivot = table.pivot(index="method", columns="fraction_of_grid", values=["median_regret", "q1", "q3"])
    for method in pivot.index:
        cells = [f"{pivot.loc[method, ('median_regret', c)]:.4f} [{pivot.loc[method, ('q1', c)]:.4f}, "
                 f"{pivot.loc[method, ('q3', c)]:.4f}]" for c in sorted(table["fraction_of_grid"].unique())]  # fmt: skip
        lines.append(f"  {method:28s} " + "  ".join(cells))
    lines.append(f"  (columns: {', '.join(f'{c:.3f}' for c in sorted(table['fraction_of_grid'].unique()))})")
    lines.append("")
    lines.append("at a third of the grid's compute, median regret: " + ", ".join(
        f"{m} {v:.4f}" for m, v in f["median_regret_at_third"].items()))  # fmt: skip
    ratio = f["shipped_over_random"]
    lines.append(
        f"goal: {f['shipped']} <= half of random: {'met' if f['goal_half_of_random'] else 'NOT met'} (ratio "
        f"{'n/a' if ratio is None else f'{ratio:.3f}'}); <= the best point's seed std {f['best_seed_std']:.4f}: "
        f"{'met' if f['goal_within_seed_std'] else 'NOT met'}"
    )
    lines.append(
        f"{f['shipped']} at a third: its best single trial's value lies {f['overstated_at_third']:.4f} above the "
        "chosen point's truth (median): what its confirmation stage reports instead"
    )
    c = f["confirm"]
    lines.append(
        f"confirmation stage: top {c['top']} x {c['seeds']} seeds = {c['epochs']} epochs counted; each candidate's "
        f"confirmed mean modelled by {c['seeds_modelled']} of its point's other seeds in the table"
    )
    lines.append(f"trials per search at the full budget: {f['trials_per_search_at_full_budget']}")
    lines.append(f"pruned share: {f['pruned_share']}")
    if "live" in f:
        lines.append(f"live search (run.py): {json.dumps(f['live'], default=str)}")
    lines.append(f"load average {f['load_average']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
