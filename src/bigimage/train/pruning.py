"""Stop a hopeless search trial early: the chief reports each epoch to the pruner, and its verdict is
summed over the workers so that all stop after the same epoch (one that left would hang the others)."""

from __future__ import annotations

import logging
from typing import Any

import tf_keras as keras

from bigimage.search.trial import REPORTED_METRIC, TAG_PRUNED, TAG_PRUNED_EPOCH, TrialReporter, in_search

log = logging.getLogger(__name__)


class PruningCallback(keras.callbacks.Callback):
    """After each epoch: report (chief), agree on the verdict (all workers), stop when pruned."""

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
