"""The Keras callbacks of a training process: per-epoch timing, progress files and MLflow logging (metrics:
docs/training.md), and a search trial's pruning. Only the chief logs, into the run its launcher holds open
(never starting, ending or changing it); every worker appends its progress to a JSON-lines file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import tf_keras as keras

from bigimage.data import storage
from bigimage.search.trial import REPORTED_METRIC, TAG_PRUNED, TAG_PRUNED_EPOCH, TrialReporter, in_search
from bigimage.tracking import names
from bigimage.tracking.names import EPOCH_METRICS
from bigimage.tracking.store import log_batch
from bigimage.train.progress import METRICS

log = logging.getLogger(__name__)

HISTORY_NAME = "history.json"  # the chief's running history, kept next to the BackupAndRestore checkpoint


class RunLogger:
    """Logs into one existing MLflow run by id; ``RunLogger(None, None)`` logs nothing."""

    def __init__(self, tracking_uri: str | None, run_id: str | None):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.client: Any = None
        if run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=tracking_uri)

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def _batch(self, **values: Any) -> None:
        if self.enabled:
            log_batch(self.client, str(self.run_id), **values)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        self._batch(metrics=values, step=step or 0)

    def params(self, values: dict[str, Any]) -> None:
        self._batch(params=values)

    def tags(self, values: dict[str, Any]) -> None:
        self._batch(tags=values)

    def figure(self, figure: Any, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_figure(self.run_id, figure, artifact_file)

    def artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        if self.enabled:
            upload = self.client.log_artifacts if os.path.isdir(local_path) else self.client.log_artifact
            upload(self.run_id, local_path, artifact_path)


def read_history(checkpoint_dir: str) -> dict[str, Any] | None:
    """The history a previous, interrupted attempt left next to its checkpoint (None if there is none)."""
    path = os.path.join(checkpoint_dir, HISTORY_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class TrainingObserver(keras.callbacks.Callback):
    """Times each epoch, writes this worker's progress, and (chief only) logs epochs to MLflow; after
    ``BackupAndRestore``, so an epoch shows once its checkpoint is written. ``history`` holds every epoch,
    a resumed run's earlier ones included."""

    def __init__(
        self,
        *,
        task_index: int,
        global_batch_size: int,
        steps_per_epoch: int,
        work_dir: str | None,
        run_logger: RunLogger,
        checkpoint_dir: str,
    ):
        super().__init__()
        self.task_index = task_index
        self.is_chief = task_index == 0
        self.global_batch_size = global_batch_size
        self.steps_per_epoch = steps_per_epoch
        self.progress_path = os.path.join(work_dir, "progress", f"worker-{task_index}.jsonl") if work_dir else None
        if work_dir:
            os.makedirs(os.path.join(work_dir, "progress"), exist_ok=True)
        self.run_logger = run_logger if self.is_chief else RunLogger(None, None)
        self.checkpoint_dir = checkpoint_dir
        self.history: list[dict[str, float]] = []
        self.first_epoch: int | None = None
        self.steps_done = 0
        self._epoch_start = 0.0
        self._train_end: float | None = None

    def _progress(self, event: str, **values: Any) -> None:
        if not self.progress_path:
            return
        line = {"event": event, "pid": os.getpid(), "task_index": self.task_index, "time": time.time(), **values}
        with open(self.progress_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
            self._start_attempt(epoch)
        self._epoch_start = time.perf_counter()
        self._train_end = None
        self._progress("epoch_begin", epoch=epoch, steps_done=self.steps_done)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.steps_done += 1

    def on_test_begin(self, logs: dict | None = None) -> None:
        if self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        end = time.perf_counter()
        train_seconds = (self._train_end or end) - self._epoch_start
        logs = dict(logs or {})
        entry: dict[str, float] = {"epoch": epoch}
        entry.update({key: float(logs[key]) for key in METRICS if key in logs})
        entry["epoch_seconds"] = end - self._epoch_start
        entry["images_per_second"] = self.steps_per_epoch * self.global_batch_size / max(train_seconds, 1e-9)
        self.history.append(entry)
        log.info("epoch %d/%d: %s", epoch + 1, self.params.get("epochs", 0), _epoch_line(entry))
        if self.is_chief:
            self.run_logger.metrics({key: entry[key] for key in EPOCH_METRICS if key in entry}, step=epoch)
            storage.write_bytes(
                os.path.join(self.checkpoint_dir, HISTORY_NAME),
                json.dumps({"run_id": self.run_logger.run_id, "epochs": self.history}, indent=1).encode(),
            )
        self._progress(
            "epoch_end", epoch=epoch, steps_done=self.steps_done, **{k: v for k, v in entry.items() if k != "epoch"}
        )

    def _start_attempt(self, epoch: int) -> None:
        """First epoch of this attempt: > 0 means BackupAndRestore restored a checkpoint."""
        self._progress("train_begin", first_epoch=epoch)
        if epoch == 0:
            return
        saved = read_history(self.checkpoint_dir) or {}
        prior = [entry for entry in saved.get("epochs", []) if entry.get("epoch", epoch) < epoch]
        self.history = list(prior)
        if not self.is_chief:
            return
        tags = {names.RESUMED_FROM_EPOCH: epoch}
        previous_run = saved.get("run_id")
        if previous_run and previous_run != self.run_logger.run_id:
            # A new MLflow run resumed another run's checkpoint: copy the earlier epochs so its curves are whole.
            tags["resumed_history_from_run"] = previous_run
            for entry in prior:
                self.run_logger.metrics(
                    {key: entry[key] for key in EPOCH_METRICS if key in entry}, step=int(entry["epoch"])
                )
        self.run_logger.tags(tags)
        log.info("resumed from epoch %d (checkpoint in %s)", epoch, self.checkpoint_dir)


def _epoch_line(entry: dict[str, float]) -> str:
    """An epoch's metrics in one log line (the fit itself prints nothing: ``verbose=0``)."""
    values = [f"{key} {entry[key]:.4f}" for key in METRICS if key in entry]
    return ", ".join([*values, f"{entry['epoch_seconds']:.1f} s", f"{entry['images_per_second']:.0f} images/s"])


class PruningCallback(keras.callbacks.Callback):
    """Stops a hopeless search trial: after each epoch the chief reports to the pruner, and its verdict is
    summed over the workers so that all stop after the same epoch (one that left would hang the others)."""

    def __init__(self, strategy: Any, reporter: TrialReporter | None, run_logger: Any, num_workers: int):
        super().__init__()
        self.strategy = strategy
        self.reporter = reporter
        self.run_logger = run_logger
        self.num_workers = num_workers
        self.pruned_epoch: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(REPORTED_METRIC)
        prune = self.reporter is not None and value is not None and self.reporter.report(epoch, float(value))
        if self.num_workers > 1:
            prune = self._agree(prune)
        if prune:
            self.pruned_epoch = epoch
            self.model.stop_training = True
            self.run_logger.tags({TAG_PRUNED: "true", TAG_PRUNED_EPOCH: epoch})

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.pruned_epoch is None:
            self.run_logger.tags({TAG_PRUNED: "false"})

    def _agree(self, prune: bool) -> bool:
        """The chief's verdict on every worker: each adds its own (only the chief's can be 1)."""
        import tensorflow as tf

        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, tf.constant(1.0 if prune else 0.0), axis=None)
        return float(total) > 0.5


def pruning_callbacks(cfg: Any, strategy: Any, is_chief: bool, run_logger: Any, num_workers: int) -> list[Any]:
    """The pruning callback of a search trial whose study prunes (``search.prune``); none otherwise."""
    if not in_search(cfg) or not cfg.search.prune:
        return []
    reporter = None
    if is_chief:
        reporter = TrialReporter(str(cfg.search.study_name), str(cfg.search.storage), int(cfg.search.trial))
    return [PruningCallback(strategy, reporter, run_logger, num_workers)]
