"""Which function runs each task, and the wrapper that gives every task its MLflow run."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, cast

from hydra.utils import get_method
from omegaconf import DictConfig

from bigimage import termination
from bigimage.config import ON_DATAPROC_ENV, Config, Strategy, validate
from bigimage.search.trial import search_tags
from bigimage.tracking.runs import tracked_run
from bigimage.tracking.store import connect

log = logging.getLogger(__name__)

# task name -> its function; imported on use (hydra.utils.get_method) so a task never pays for another's imports.
TASK_FUNCTIONS = {
    "preprocess": "bigimage.spark.preprocess.run_preprocess",
    "speedtest": "bigimage.speedtest.task.run_speedtest",
    "train": "bigimage.train.task.run_train",
    "pipeline": "bigimage.pipeline.run_pipeline",
}


# task name -> the config keys it reads, logged as its params (a key selects everything below it); the
# analysis reads them back. Training logs all of cluster only when its workers run on it (param_keys).
_DATA = ("dataset", "tfrecord_dir", "image_size")
_PREPROCESS = ("cluster", *_DATA, "num_shards", "seed", "preprocess")
_TRAINING = ("model", "strategy", "batch_size", "epochs", "seed", "train")
TASK_PARAMS: dict[str, tuple[str, ...]] = {
    "preprocess": _PREPROCESS,
    "speedtest": ("cluster", *_DATA, "speedtest"),
    "train": ("cluster.name", "dataset.name", "tfrecord_dir", "image_size", *_TRAINING),
    # the steps' keys; strategy comes from pipeline.strategies, one training per entry
    "pipeline": (*_PREPROCESS, "speedtest", "model", "batch_size", "epochs", "train", "pipeline"),
}


def param_keys(cfg: DictConfig) -> tuple[str, ...]:
    keys = TASK_PARAMS[cfg.task.name]
    if cfg.task.name == "train" and cfg.strategy.launcher == "spark_barrier":
        keys += ("cluster",)
    return keys


def run_task(cfg: DictConfig, extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate, then run ``cfg.task.name`` inside its own MLflow run (or on Dataproc); returns its metrics."""
    validate(cfg)
    if cfg.cluster.deploy == "dataproc" and not os.environ.get(ON_DATAPROC_ENV):
        from bigimage.cloud.dataproc import run_on_dataproc

        with termination.signals_raise():  # SIGTERM cancels the cloud job, as Ctrl-C does
            run_on_dataproc(cast(Config, cfg))
        return {}  # the job's metrics are in its own run, logged on the cluster
    if cfg.task.name != "train" or cfg.strategy.launcher == "spark_barrier":
        from bigimage.spark.session import check_java

        check_java()  # before any data is generated: a missing Java must fail at once
    uri, experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    started = time.perf_counter()
    tags = {**dict(cfg.tracking.tags), **search_tags(cfg), **(extra_tags or {})}
    metrics, run_id = tracked_task(cfg, experiment_id, extra_tags=tags)
    log.info("%s finished in %.1f s; MLflow run %s in %s", cfg.task.name, time.perf_counter() - started, run_id, uri)
    if cfg.task.name == "pipeline":  # the main job's last line: where to look at what it did
        from bigimage.analysis_lib.ui import command

        print(f"[pipeline] MLflow UI on this experiment's runs: {command(uri, cfg.tracking.experiment)}", flush=True)
    return metrics


def tracked_task(
    cfg: DictConfig,
    experiment_id: str,
    *,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Run ``cfg.task.name`` inside an MLflow run of its own (a child of ``parent_run_id`` when given);
    returns the task's metrics and the run's id."""
    with tracked_run(
        cfg,
        task=cfg.task.name,
        run_name=run_name(cfg),
        parent_run_id=parent_run_id,
        experiment_id=experiment_id,
        extra_tags=extra_tags,
        param_keys=param_keys(cfg),
    ) as run:
        return get_method(TASK_FUNCTIONS[cfg.task.name])(cfg), run.info.run_id


def run_name(cfg: DictConfig) -> str:
    """A name that tells runs apart in the MLflow UI's list, what differs most first:
    ``train mirrored bs=32 local small_cnn synthetic-192``, ``preprocess four standalone synthetic-192``."""
    cluster = cfg.cluster.name if cfg.cluster.deploy == "local" else f"{cfg.cluster.name} {cfg.cluster.deploy}"
    data = f"{cfg.dataset.name}-{cfg.image_size}"
    if cfg.task.name == "train":
        workers = f" x{cfg.strategy.num_workers}" if Strategy(cfg.strategy.name).multi_worker else ""
        parts = [cfg.task.name, f"{cfg.strategy.name}{workers}", f"bs={cfg.batch_size}", cluster, cfg.model.name, data]
    else:
        parts = [cfg.task.name, cluster, data]
    if cfg.get("scaling") and cfg.scaling.point:
        parts.append(f"scaling={cfg.scaling.point}")
    return " ".join(parts)
