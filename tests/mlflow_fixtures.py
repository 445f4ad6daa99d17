"""Build MLflow stores with synthetic runs whose curves and timings are known, for the analysis tests.

Everything goes through ``MlflowClient`` (no fluent active run), so no test leaves a run active.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

SHAPES = {
    "single": {
        "cluster.shape.single_node": "true",
        "cluster.shape.master_machine_type": "n1-standard-8",
        "cluster.shape.master_boot_disk_type": "pd-ssd",
        "cluster.shape.master_boot_disk_size_gb": "500",
        "cluster.shape.worker_count": "0",
    },
    "maximal": {
        "cluster.shape.single_node": "false",
        "cluster.shape.master_machine_type": "n1-standard-1",
        "cluster.shape.master_boot_disk_type": "pd-ssd",
        "cluster.shape.master_boot_disk_size_gb": "500",
        "cluster.shape.worker_count": "7",
        "cluster.shape.worker_machine_type": "n1-standard-1",
        "cluster.shape.worker_boot_disk_type": "pd-standard",
        "cluster.shape.worker_boot_disk_size_gb": "585",
    },
    "four": {
        "cluster.shape.single_node": "false",
        "cluster.shape.master_machine_type": "n1-standard-2",
        "cluster.shape.master_boot_disk_type": "pd-ssd",
        "cluster.shape.master_boot_disk_size_gb": "500",
        "cluster.shape.worker_count": "3",
        "cluster.shape.worker_machine_type": "n1-standard-2",
        "cluster.shape.worker_boot_disk_type": "pd-standard",
        "cluster.shape.worker_boot_disk_size_gb": "1365",
    },
}

# What a run that really ran on Dataproc records: the config's deploy and region, and the deploy read back from Spark.
ON_DATAPROC = {
    "params": {"cluster.deploy": "dataproc", "cluster.dataproc.region": "us-central1"},
    "tags": {"spark.deploy": "dataproc", "spark.master": "yarn"},
}


@dataclass
class Store:
    uri: str
    experiment_id: str
    experiment_name: str
    artifact_dir: Path
    client: MlflowClient
    ids: dict[str, str] = field(default_factory=dict)  # fixture name -> run id


def make_store(root: Path, experiment: str = "analysis-test") -> Store:
    """A fresh sqlite store in ``root`` with one experiment whose artifacts also live under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    artifacts = root / "artifacts"
    exp_id = client.create_experiment(experiment, artifact_location=artifacts.as_uri())
    return Store(uri, exp_id, experiment, artifacts, client)


def _train_params(strategy: str, batch_size: int, cluster: str, extra: dict | None = None) -> dict:
    params = {
        "strategy.name": strategy,
        "batch_size": str(batch_size),
        "cluster.name": cluster,
        "model.name": "small_cnn",
        "epochs": "?",
        "strategy.num_workers": "1",
    }
    params.update(SHAPES.get(cluster, {}))
    params.update(extra or {})
    return params


def log_run(
    store: Store,
    name: str,
    *,
    task: str | None,
    params: dict | None = None,
    histories: dict[str, list[float]] | None = None,
    metrics: dict[str, float] | None = None,
    status: str = "FINISHED",
    parent: str | None = None,
    table: pd.DataFrame | None = None,
    tags: dict | None = None,
) -> str:
    """One run: params, per-step histories (step = index), final metrics, an optional speedtest table."""
    tags = {"mlflow.runName": name, **(tags or {})}
    if task:
        tags["task"] = task
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = store.client.create_run(store.experiment_id, tags=tags, run_name=name)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now + i, i) for k, vals in (histories or {}).items() for i, v in enumerate(vals)]
    ms += [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    ps = [Param(k, str(v)) for k, v in (params or {}).items()]
    for i in range(0, max(len(ms), 1), 900):  # log_batch takes at most 1000 metrics
        store.client.log_batch(run_id, metrics=ms[i : i + 900], params=ps if i == 0 else [], tags=[])
    if table is not None:
        store.client.log_table(run_id, data=table, artifact_file="speedtest.json")
    if status != "RUNNING":
        store.client.set_terminated(run_id, status)
    store.ids[name] = run_id
    return run_id


def train_histories(val_loss: list[float], loss: list[float], acc: list[float], val_acc: list[float]) -> dict:
    n = len(val_loss)
    return {
        "loss": loss,
        "val_loss": val_loss,
        "accuracy": acc,
        "val_accuracy": val_acc,
        "epoch_seconds": [1.0] * n,
        "images_per_second": [100.0] * n,
    }


def _final(h: dict) -> dict:
    va = h["val_accuracy"]
    finite = [(v, i) for i, v in enumerate(va) if not math.isnan(v)]
    best = max(finite) if finite else (float("nan"), 0)
    return {"best_val_accuracy": best[0], "best_epoch": best[1]}


# Curves with known answers (10 epochs unless said otherwise) ---------------------------------

# Overfits: val_loss minimum at epoch 4, rises for 5 epochs, training loss keeps falling.
OVERFIT = train_histories(
    val_loss=[1.0, 0.8, 0.6, 0.5, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8],
    loss=[1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05],
    acc=[0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98],
    val_acc=[0.5, 0.6, 0.68, 0.72, 0.74, 0.73, 0.72, 0.71, 0.70, 0.69],
)
OVERFIT_ONSET = 4

# Healthy: both losses fall to the end, small gap.
HEALTHY = train_histories(
    val_loss=[1.0, 0.85, 0.7, 0.6, 0.52, 0.46, 0.42, 0.39, 0.37, 0.36],
    loss=[1.0, 0.84, 0.69, 0.58, 0.5, 0.44, 0.4, 0.37, 0.35, 0.33],
    acc=[0.5, 0.58, 0.65, 0.7, 0.74, 0.77, 0.79, 0.81, 0.82, 0.83],
    val_acc=[0.5, 0.57, 0.64, 0.69, 0.73, 0.76, 0.78, 0.8, 0.81, 0.815],
)
HEALTHY_BEST = 9


def healthy_shifted(delta: float) -> dict:
    h = {k: list(v) for k, v in HEALTHY.items()}
    h["val_accuracy"] = [x + delta for x in h["val_accuracy"]]
    return h


# Validation above training (dropout-like): val accuracy above train accuracy, losses fall.
VAL_ABOVE = train_histories(
    val_loss=[0.9, 0.7, 0.55, 0.45, 0.4, 0.36, 0.33, 0.31, 0.3, 0.29],
    loss=[1.1, 0.95, 0.8, 0.7, 0.62, 0.56, 0.52, 0.49, 0.47, 0.46],
    acc=[0.40, 0.46, 0.5, 0.54, 0.56, 0.58, 0.59, 0.6, 0.61, 0.62],
    val_acc=[0.5, 0.56, 0.6, 0.64, 0.67, 0.69, 0.7, 0.71, 0.72, 0.73],
)

# Final accuracy gap only: val_loss keeps (barely) falling, but train accuracy runs away from epoch 6 on.
GAP_ONLY = train_histories(
    val_loss=[1.0, 0.9, 0.8, 0.75, 0.7, 0.68, 0.67, 0.66, 0.655, 0.65],
    loss=[1.0, 0.85, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
    acc=[0.5, 0.6, 0.65, 0.7, 0.74, 0.8, 0.86, 0.9, 0.95, 0.99],
    val_acc=[0.5, 0.58, 0.62, 0.66, 0.7, 0.72, 0.73, 0.74, 0.745, 0.75],
)
GAP_ONLY_ONSET = 5  # last epoch with gap <= 0.10 (epoch 5: 0.08; epoch 6: 0.13)

NAN = train_histories(
    val_loss=[1.0, 0.9, float("nan"), float("nan")],
    loss=[1.0, 0.8, float("nan"), float("nan")],
    acc=[0.5, 0.6, float("nan"), float("nan")],
    val_acc=[0.5, 0.55, float("nan"), float("nan")],
)
ONE_EPOCH = train_histories(val_loss=[0.9], loss=[1.0], acc=[0.5], val_acc=[0.55])


def speedtest_table(rate: float, reps: int = 3, jitter: float = 0.03) -> pd.DataFrame:
    """A speedtest.json grid whose images/s is ``rate`` (files) and 2 x ``rate`` (tfrecord), +- jitter."""
    rows = []
    for source, mult in (("files", 1.0), ("tfrecord", 2.0)):
        for bs in (8, 32):
            for nb in (2, 4):
                for rep in range(reps):
                    r = rate * mult * (1.0 + jitter * (rep - (reps - 1) / 2)) * (1.0 + 0.1 * (bs == 32))
                    images = bs * nb
                    seconds = images / r
                    rows.append(
                        {
                            "source": source,
                            "batch_size": bs,
                            "batch_number": nb,
                            "repetition": rep,
                            "images": images,
                            "bytes": images * 1000,
                            "seconds": seconds,
                            "images_per_second": images / seconds,
                            "bytes_per_second": images * 1000 / seconds,
                        }
                    )
    return pd.DataFrame(rows)


def build_scenario(root: Path, experiment: str = "analysis-test") -> Store:
    """The full scenario: a pipeline parent > a train sweep parent > training runs, plus preprocess and
    speedtest runs over three cluster shapes with repetitions, plus every kind of bad run."""
    s = make_store(root, experiment)
    pipeline = log_run(s, "pipeline", task="pipeline", params={"task.name": "pipeline"})
    sweep = log_run(s, "train-sweep", task=None, parent=pipeline)
    mk = lambda n, h, strat, bs, **kw: log_run(  # noqa: E731
        s,
        n,
        task="train",
        params=_train_params(strat, bs, "local"),
        histories=h,
        metrics=_final(h),
        parent=kw.pop("parent", sweep),
        **kw,
    )
    # Expected training ranking (val_accuracy at the judged epoch): mirrored/32 0.815 (n=3, interval),
    # default/16 0.75 (n=1, gap-only onset 5, best at 9), multi_worker_mirrored/32 0.74 (n=2, identical repeats:
    # zero-width interval, best = onset 4), default/64 0.73 (n=1). Top vs next: cannot tell (n=1).
    mk("mirrored-32-a", healthy_shifted(0.0), "mirrored", 32)
    mk("mirrored-32-b", healthy_shifted(0.005), "mirrored", 32)
    mk("mirrored-32-c", healthy_shifted(-0.005), "mirrored", 32)
    mk("mwms-32-a", OVERFIT, "multi_worker_mirrored", 32)
    mk("mwms-32-b", OVERFIT, "multi_worker_mirrored", 32)
    mk("default-64", VAL_ABOVE, "default", 64)  # n=1
    mk("default-16-gap", GAP_ONLY, "default", 16)
    # bad runs
    mk("failed", OVERFIT, "mirrored", 8, status="FAILED")
    mk("running", HEALTHY, "mirrored", 8, status="RUNNING")
    mk("nan", NAN, "mirrored", 8)
    mk("one-epoch", ONE_EPOCH, "mirrored", 8)
    log_run(
        s,
        "no-val-loss",
        task="train",
        params=_train_params("mirrored", 8, "local"),
        histories={"loss": [1.0, 0.8, 0.6]},
        parent=sweep,
    )
    log_run(s, "foreign", task="train", params={"optimizer": "sgd", "lr": "0.1"}, histories=HEALTHY, parent=sweep)
    # preprocess: 3 shapes x 3 repeats on Dataproc (so they are priced); speed single 300, four 200, maximal 100 images/s
    for cluster, rate in (("single", 300.0), ("four", 200.0), ("maximal", 100.0)):
        for rep in range(3):
            ips = rate * (1 + 0.02 * (rep - 1))
            images = 1000.0
            params = {"cluster.name": cluster, **SHAPES[cluster], **ON_DATAPROC["params"]}
            log_run(
                s,
                f"pre-{cluster}-{rep}",
                task="preprocess",
                params=params,
                tags=ON_DATAPROC["tags"],
                metrics={"images_per_second": ips, "seconds": images / ips, "images": images},
                parent=pipeline,
            )
            log_run(
                s,
                f"speed-{cluster}-{rep}",
                task="speedtest",
                params=params,
                tags=ON_DATAPROC["tags"],
                table=speedtest_table(rate / 2 * (1 + 0.01 * rep)),
                parent=pipeline,
            )
    log_run(
        s,
        "pre-failed",
        task="preprocess",
        params={"cluster.name": "single", **SHAPES["single"]},
        metrics={"images_per_second": 1e9, "seconds": 1e-6, "images": 1000.0},
        status="FAILED",
        parent=pipeline,
    )
    log_run(
        s,
        "pre-no-metrics",
        task="preprocess",
        params={"cluster.name": "maximal", **SHAPES["maximal"]},
        metrics={"images": 10.0},
        parent=pipeline,
    )
    log_run(s, "speed-no-table", task="speedtest", params={"cluster.name": "four", **SHAPES["four"]}, parent=pipeline)
    s.ids["_pipeline"], s.ids["_sweep"] = pipeline, sweep
    return s


# --- pytest helpers ------------------------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python analysis/<name>.py args...`` from the repository root, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, f"analysis/{name}.py", *args],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def runs_by_name(store: Store) -> dict[str, mlflow.entities.Run]:
    return {r.info.run_name: r for r in store.client.search_runs([store.experiment_id], max_results=1000)}


_BUILT: dict[str, tuple[Path, Store]] = {}


def scenario_store(tmp_path_factory) -> Store:
    """A private copy of the :func:`build_scenario` store (built once per test session, then copied:
    building it costs seconds on a busy machine). Artifacts of the original runs are shared read-only;
    new runs of the copy log their artifacts under the same artifact root, in their own run folders."""
    if "scenario" not in _BUILT:
        root = tmp_path_factory.mktemp("scenario-src")
        _BUILT["scenario"] = (root, build_scenario(root))
    root, src = _BUILT["scenario"]
    dst = tmp_path_factory.mktemp("scenario")
    shutil.copy2(root / "mlflow.db", dst / "mlflow.db")
    uri = f"sqlite:///{dst / 'mlflow.db'}"
    return Store(
        uri, src.experiment_id, src.experiment_name, src.artifact_dir, MlflowClient(tracking_uri=uri), dict(src.ids)
    )
