"""Which function runs each task, and the wrapper that gives every task its MLflow run."""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from bigimage import termination
from bigimage.config import ON_DATAPROC_ENV, validate
from bigimage.tracking.runs import tracked_run
from bigimage.tracking.store import connect

log = logging.getLogger(__name__)

# task name -> "module:function"; imported on use so a task never pays for another's imports.
TASK_FUNCTIONS = {
    "preprocess": "bigimage.spark.preprocess:run_preprocess",
    "speedtest": "bigimage.speedtest.task:run_speedtest",
    "train": "bigimage.train.task:run_train",
    "pipeline": "bigimage.pipeline:run_pipeline",
}


def task_function(name: str) -> Callable[[DictConfig], dict[str, Any]]:
    module, function = TASK_FUNCTIONS[name].split(":")
    return getattr(importlib.import_module(module), function)


def run_task(cfg: DictConfig, extra_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Validate, then run ``cfg.task.name`` inside its own MLflow run; returns the task's metrics.

    ``cluster.deploy=dataproc`` hands the run to Dataproc instead, unless this is that job already.
    """
    validate(cfg)
    if cfg.cluster.deploy == "dataproc" and not os.environ.get(ON_DATAPROC_ENV):
        from bigimage.cloud.dataproc import run_on_dataproc

        with termination.signals_raise():  # SIGTERM cancels the cloud job, as Ctrl-C does
            return run_on_dataproc(cfg)
    if cfg.task.name != "train" or cfg.strategy.launcher == "spark_barrier":
        from bigimage.spark.session import check_java

        check_java()  # before any data is generated: a missing Java must fail at once
    function = task_function(cfg.task.name)
    uri, experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    started = time.perf_counter()
    tags = {**dict(cfg.tracking.tags), **(extra_tags or {})}  # the config's own (tracking.tags) first
    with tracked_run(cfg, task=cfg.task.name, run_name=run_name(cfg), experiment_id=experiment_id, extra_tags=tags) as run:
        metrics = function(cfg)
    log.info("%s finished in %.1f s; MLflow run %s in %s", cfg.task.name, time.perf_counter() - started, run.info.run_id, uri)
    return metrics


def run_name(cfg: DictConfig) -> str:
    """A name that tells runs apart in the MLflow UI's list."""
    parts = [cfg.task.name, f"cluster={cfg.cluster.name}"]
    if cfg.task.name == "train":
        parts += [f"strategy={cfg.strategy.name}", f"bs={cfg.batch_size}"]
    if cfg.get("scaling") and cfg.scaling.point:
        parts.append(f"scaling={cfg.scaling.point}")
    return " ".join(parts)
