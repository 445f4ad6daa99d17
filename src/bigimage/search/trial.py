"""A trial as its job sees it: the objective ``run.py`` returns, the run's tags, the pruning reporter.

The sweeper gives every trial's job ``search.*`` (:class:`bigimage.config.SearchConfig`), which the
resolved config the training workers read carries, so a worker process started anywhere finds its trial.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bigimage.errors import UserError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

TAG_STUDY = "search.study"
TAG_TRIAL = "search.trial"
TAG_CONFIRM_OF = "search.confirm_of"  # on a confirmation run: the trial whose configuration it trains again
TAG_PRUNED = "pruned"
TAG_PRUNED_EPOCH = "pruned_epoch"
ATTR_PRUNED_EPOCH = "pruned_epoch"  # the trial's user attribute: the sweeper tells the study PRUNED
ATTR_EPOCHS = "epochs_run"  # a trial's compute: the epochs it trained, pruned or not
REPORTED_METRIC = "val_accuracy"  # what the pruner sees per epoch (step = epochs trained: 1, 2, ...)


def in_search(cfg: Any) -> bool:
    search = cfg.get("search")
    return bool(search) and search.get("trial") is not None and bool(search.get("study_name"))


def search_tags(cfg: Any) -> dict[str, str]:
    """``search.study`` and ``search.trial`` for a trial's run, ``search.study`` and ``search.confirm_of``
    for a confirmation run's (nothing outside a search)."""
    if in_search(cfg):
        return {TAG_STUDY: str(cfg.search.study_name), TAG_TRIAL: str(cfg.search.trial)}
    search = cfg.get("search")
    if search and search.get("study_name") and search.get("confirm_of") is not None:
        return {TAG_STUDY: str(search.study_name), TAG_CONFIRM_OF: str(search.confirm_of)}
    return {}


def metric_names(cfg: Any) -> list[str]:
    """``optimized_metric`` as a list (one name, or one per objective)."""
    value = cfg.get("optimized_metric")
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(item) for item in value]


def objective(cfg: Any, metrics: Mapping[str, Any]) -> float | list[float] | None:
    """What the task function returns: the ``optimized_metric`` value(s) of a training run, else None."""
    names = metric_names(cfg)
    if cfg.task.name != "train" or not names:
        return None
    missing = [name for name in names if name not in metrics]
    if missing:
        raise UserError(
            f"optimized_metric={names} names {missing}, which a training run does not return; "
            f"choose among: {', '.join(sorted(metrics))}"
        )
    values = [float(metrics[name]) for name in names]
    return values[0] if isinstance(cfg.optimized_metric, str) else values


class TrialReporter:
    """Reports a training's per-epoch validation accuracy to its trial and asks the pruner; only the chief
    worker makes one, the others learn the verdict from it (:class:`bigimage.train.callbacks.PruningCallback`)."""

    def __init__(self, study_name: str, storage_url: str, trial_number: int):
        import optuna

        from bigimage.search.study import load_for_trial

        self.study, storage = load_for_trial(study_name, storage_url)
        study_id = storage.get_study_id_from_name(study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.trial: optuna.Trial = optuna.trial.Trial(self.study, trial_id)
        self.number = trial_number

    def report(self, epoch: int, value: float) -> bool:
        """Report ``value`` after ``epoch`` (0-based; the step is the epochs trained, the resource of the
        multi-fidelity pruners); whether the pruner stops this trial now."""
        self.trial.report(float(value), step=int(epoch) + 1)
        prune = bool(self.trial.should_prune())
        if prune:
            self.trial.set_user_attr(ATTR_PRUNED_EPOCH, int(epoch))
            log.info("trial %d pruned after epoch %d (val_accuracy %.4f)", self.number, epoch, value)
        return prune
