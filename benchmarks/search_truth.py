"""The truth table the search benchmark replays: every point of a grid over the shipped search space,
trained over several seeds, with each epoch's validation accuracy and seconds.

    python benchmarks/search_truth.py [--image-size 32] [--epochs 9] [--seeds 3] [--levels 4] [--linear-levels 2]
        [--subset batch_size=8,32,128 model.width=16,64] [--shard i/n] [--out FILE]

The space is ``conf/hparams_search/space/train.yaml`` itself (:func:`grid`): a choice gives its values
(``--subset``: only some of them, spanning it), an interval points from end to end (``--levels``
geometric ones on a log scale, else ``--linear-levels``), ``strategy`` aside. The strategies of the
space compute the same update from the same global batch (the replicas' gradients are summed;
``small_cnn`` has no batch statistics), so they differ in seconds, not in accuracy: the table trains
each point under ``default`` and a replay maps every strategy to it. Seeds go in order: every point's
first seed before any second one, so a table cut short still covers the grid once.

Each training goes through the project's own worker (:func:`bigimage.train.worker.train_worker`, in
this process, no MLflow run) on the default data at ``--image-size`` (its TFRecords made first as
``run.py task=preprocess`` makes them); its per-epoch ``val_accuracy`` and ``epoch_seconds`` come from
the worker's progress file. A row (one point, one seed, every epoch as ``;``-joined lists) is appended
to ``--out`` as soon as its training ends, and a rerun skips the rows already there: a crash loses at
most the training under way.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bigimage.config import PROJECT_ROOT, register_configs

log = logging.getLogger("search_truth")

TABLE = Path(__file__).resolve().parent / "data" / "search_truth.csv"
SPACE_KEY = "hydra.sweeper.params"
ACCURACY_ONLY = ("strategy",)  # keys that change seconds, not what is learnt (module doc)
COLUMNS = ("point", "seed", "val_accuracy", "epoch_seconds")


def shipped_space() -> dict[str, str]:
    """``hparams_search=train_optuna``'s ``hydra.sweeper.params``: the space file the search uses."""
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hparams_search=train_optuna"], return_hydra_config=True)
    return {str(key): str(value) for key, value in cfg.hydra.sweeper.params.items()}


def levels(distribution: Any, log_count: int, linear_count: int) -> list[Any]:
    """A grid over one Optuna distribution: every choice, or points spanning an interval from end to end
    (``log_count`` of them, geometric, on a log scale; else ``linear_count``)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    low, high = distribution.low, distribution.high
    if distribution.log:
        values = np.geomspace(low, high, log_count)
    else:
        values = np.linspace(low, high, linear_count)
    if isinstance(low, int):
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.4g}") for v in values]


def grid(params: dict[str, str], log_count: int, linear_count: int, subset: Sequence[str] = ()) -> dict[str, list[Any]]:
    """Key -> its grid values, for every key of the space but :data:`ACCURACY_ONLY` ones; ``subset``:
    ``key=a,b`` entries keeping only those of a choice's values."""
    from bigimage.search.space import parse

    space = parse(params, [])
    values = {
        key: levels(d, log_count, linear_count) for key, d in space.distributions.items() if key not in ACCURACY_ONLY
    }
    for entry in subset:
        key, kept = entry.split("=", 1)
        values[key] = [v for v in values[key] if str(v) in kept.split(",")]
    return values


def point_name(point: dict[str, Any]) -> str:
    """A point as the overrides that make it: ``batch_size=8 model.width=16 ...`` (the table's key)."""
    from bigimage.search.space import trial_overrides

    return " ".join(trial_overrides(point))


def done_rows(path: Path) -> set[tuple[str, int]]:
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as handle:
        return {(row["point"], int(row["seed"])) for row in csv.DictReader(handle)}


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One finished training, written and flushed at once (header first in a new file)."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        handle.flush()
        os.fsync(handle.fileno())


def base_config(image_size: int, epochs: int) -> Any:
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            "config",
            overrides=["task=train", "strategy=default", f"image_size={image_size}", f"epochs={epochs}",
                       "tracking.system_metrics=false"],
        )  # fmt: skip


def train_point(base: Any, overrides: Sequence[str], seed: int, folder: str) -> tuple[list[float], list[float]]:
    """One training of ``base`` with ``overrides`` and ``seed`` through the project's worker; its
    per-epoch validation accuracy and seconds."""
    from bigimage.train.task import worker_config
    from bigimage.train.worker import train_worker

    cfg = base.copy()
    for override in [*overrides, f"seed={seed}"]:
        key, value = override.split("=", 1)
        OmegaConf.update(cfg, key, OmegaConf.create({"v": value}).v if value != "null" else None, merge=False)
    work = tempfile.mkdtemp(prefix="truth-", dir=folder)
    resolved = worker_config(cfg, str(cfg.tfrecord_dir))
    resolved.train.checkpoint_dir = os.path.join(work, "checkpoint")
    try:
        train_worker(resolved, work_dir=work)
        epochs = []
        with open(os.path.join(work, "progress", "worker-0.jsonl"), encoding="utf-8") as handle:
            for line in handle:
                event = json.loads(line)
                if event.get("event") == "epoch_end":
                    epochs.append((float(event["val_accuracy"]), float(event["epoch_seconds"])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        import tf_keras as keras

        keras.backend.clear_session()
    return [a for a, _ in epochs], [s for _, s in epochs]


def ensure_data(image_size: int) -> None:
    """The default data's TFRecords at ``image_size``, as ``run.py task=preprocess`` makes them."""
    folder = tempfile.mkdtemp(prefix="truth-preprocess-")
    command = [sys.executable, "run.py", "task=preprocess", f"image_size={image_size}",
               f"tracking.uri=sqlite:///{folder}/mlflow.db", "tracking.system_metrics=false"]  # fmt: skip
    subprocess.run(command, cwd=PROJECT_ROOT, check=True, capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--levels", type=int, default=4, help="grid points across an interval on a log scale")
    parser.add_argument("--linear-levels", type=int, default=2, help="grid points across any other interval")
    parser.add_argument("--out", type=Path, default=TABLE)
    parser.add_argument("--subset", nargs="*", default=[], help="key=a,b: only these of a choice's values")
    parser.add_argument("--shard", default="0/1", help="i/n: this process trains every n-th missing row")
    parser.add_argument("--limit", type=int, default=0, help="stop after this many trainings (0: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    base = base_config(args.image_size, args.epochs)
    if not Path(str(base.tfrecord_dir)).exists():
        ensure_data(args.image_size)
    values = grid(shipped_space(), args.levels, args.linear_levels, args.subset)
    points = [point_name(dict(zip(values, combo))) for combo in itertools.product(*values.values())]
    random.Random(0).shuffle(points)  # a partial table covers the space evenly
    done = done_rows(args.out)
    index, shards = (int(part) for part in args.shard.split("/"))
    missing = [(p, seed) for seed in range(args.seeds) for p in points if (p, seed) not in done]  # seed 0 first
    mine = missing[index::shards][: args.limit or None]
    log.info("%d points x %d seeds: %d done, %d to train here", len(points), args.seeds, len(done), len(mine))
    folder = tempfile.mkdtemp(prefix="truth-runs-")
    started = time.perf_counter()
    for number, (name, seed) in enumerate(mine, 1):
        accuracy, seconds = train_point(base, name.split(), seed, folder)
        if len(accuracy) != args.epochs or not all(math.isfinite(a) for a in accuracy):
            log.warning("%s seed %d: %d epochs, skipped", name, seed, len(accuracy))
            continue
        append_row(args.out, {"point": name, "seed": seed, "val_accuracy": ";".join(f"{a:.4f}" for a in accuracy),
                              "epoch_seconds": ";".join(f"{s:.3f}" for s in seconds)})  # fmt: skip
        elapsed = time.perf_counter() - started
        log.info("%d/%d %s seed %d: %.3f (%.1f s; %.0f s left)", number, len(mine), name, seed, max(accuracy),
                 sum(seconds), elapsed / number * (len(mine) - number))  # fmt: skip
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
