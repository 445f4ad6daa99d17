"""``task=pipeline`` (the default): preprocess, speed test, a short training sweep and the report.

The pipeline's own run is the parent; each step is a child run with its own full config, so the
analysis and the MLflow UI see the steps exactly as if they had been run one by one.
"""

from __future__ import annotations

import logging
import math
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import mlflow
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bigimage.config import compose_option, validate
from bigimage.spark.cluster import one_session
from bigimage.tasks import tracked_task
from bigimage.tracking import judged, names

log = logging.getLogger(__name__)

TRAININGS_TABLE = "trainings.json"
TRAINING_COLUMNS = (judged.VALUE_METRIC, judged.EPOCH_METRIC, names.IMAGES_PER_SECOND, names.TRAINING_SECONDS)


def step_config(cfg: DictConfig, task: str, overrides: list[str], strategy: str | None = None) -> DictConfig:
    step = cast(DictConfig, OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"task.name={task}", *overrides])))
    if strategy is not None:
        step.strategy = compose_option("strategy", strategy)
    validate(step)
    return step


def run_step(step: DictConfig, parent_run_id: str, experiment_id: str) -> dict[str, Any]:
    metrics, run_id = tracked_task(step, experiment_id, parent_run_id=parent_run_id)
    return {**metrics, "run_id": run_id}


def trainings_use_spark(cfg: DictConfig) -> bool:
    """Whether a training step runs its workers as Spark barrier tasks (``strategy.launcher``)."""
    overrides = list(cfg.pipeline.train_overrides)
    return any(
        step_config(cfg, "train", overrides, strategy=strategy).strategy.launcher == "spark_barrier"
        for strategy in cfg.pipeline.strategies
    )


def run_pipeline(cfg: DictConfig) -> dict[str, Any]:
    """Run every step as a child of the active run; returns a few headline numbers."""
    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("run_pipeline needs an active MLflow run to hang its steps under")
    parent_id, experiment_id = parent.info.run_id, parent.info.experiment_id
    summary: dict[str, Any] = {}
    # One Spark start for the pipeline; it stops before training unless a training runs on it.
    with ExitStack() as spark:
        spark.enter_context(one_session(f"bigimage-pipeline-{cfg.cluster.name}"))
        log.info("1/4 preprocess")
        metrics = run_step(step_config(cfg, "preprocess", []), parent_id, experiment_id)
        summary["preprocess.images_per_second"] = metrics[names.IMAGES_PER_SECOND]

        log.info("2/4 speed test")
        speedtest = step_config(cfg, "speedtest", list(cfg.pipeline.speedtest_overrides))
        metrics = run_step(speedtest, parent_id, experiment_id)
        if names.TFRECORD_SPEEDUP in metrics:
            summary["speedtest.tfrecord_speedup"] = metrics[names.TFRECORD_SPEEDUP]

        if not trainings_use_spark(cfg):
            spark.close()
        summary.update(train_steps(cfg, parent_id, experiment_id))
    mlflow.log_metrics({key: float(value) for key, value in summary.items()})

    if cfg.pipeline.report:
        log.info("4/4 report")
        summary.update(report_step(cfg, parent_id))
    print_step_times(parent_id)
    return summary  # bigimage.tasks.run_task prints the command that opens the UI, as the last line


def train_steps(cfg: DictConfig, parent_id: str, experiment_id: str) -> dict[str, float]:
    """One training per ``pipeline.strategies``, a row each of the parent's ``trainings.json``; the parent's
    ``train.best_val_accuracy`` and tag ``train.best_strategy`` are the best of them."""
    rows = []
    for index, strategy in enumerate(cfg.pipeline.strategies):
        log.info("3/4 train, strategy %s (%d/%d)", strategy, index + 1, len(cfg.pipeline.strategies))
        step = step_config(cfg, "train", list(cfg.pipeline.train_overrides), strategy=strategy)
        metrics = run_step(step, parent_id, experiment_id)
        values = {key: float(metrics.get(key, math.nan)) for key in TRAINING_COLUMNS}
        rows.append({"strategy": str(strategy), "run_id": metrics["run_id"], **values})
    if rows:
        mlflow.log_table(pd.DataFrame(rows), TRAININGS_TABLE)
    scored = [row for row in rows if math.isfinite(row[judged.VALUE_METRIC])]
    if not scored:
        return {}
    best = max(scored, key=lambda row: row[judged.VALUE_METRIC])
    mlflow.set_tag("train.best_strategy", best["strategy"])
    return {"train.best_val_accuracy": best[judged.VALUE_METRIC]}


def report_step(cfg: DictConfig, parent_id: str) -> dict[str, str]:
    """The analysis of the pipeline's runs, which registers the best training's model as ``champion``."""
    from bigimage.analysis_lib.report import make_report

    report = make_report(
        tracking_uri=mlflow.get_tracking_uri(),
        parent_run_id=parent_id,
        output_dir=Path(cfg.paths.output_dir) / "reports" / parent_id,
        registered_model=cfg.tracking.registered_model,
    )
    mlflow.set_tag(names.TAG_REPORT, str(report.path))
    print(f"[pipeline] report: {report.path}")
    out = {names.TAG_REPORT: str(report.path)}
    champion = report.result.champion
    if champion:
        mlflow.set_tag(names.REGISTERED_MODEL, champion["uri"])
        print(f"[pipeline] model: {champion['uri']} (version {champion['version']}, run {champion['run_id']})")
        out[names.REGISTERED_MODEL] = champion["uri"]
    return out


def print_step_times(parent_id: str) -> None:
    """Each step's wall-clock seconds, from its MLflow run, and the time around them."""
    from mlflow.tracking import MlflowClient

    from bigimage.tracking.steps import describe_step_times, step_times

    print(f"[pipeline] {describe_step_times(*step_times(MlflowClient(), parent_id))}")
