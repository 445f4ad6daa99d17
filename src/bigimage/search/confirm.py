"""The search's last stage: train its ``confirm.top`` best configurations again over ``confirm.seeds``
other seeds and name the winner by mean with a 95% t-interval, as the best single trial overstates its
configuration (docs/search.md). The values are kept in the study (user attribute ``confirmation``), so a
continued search re-runs only the missing runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bigimage.analysis_lib.common import Interval, mean_interval

if TYPE_CHECKING:
    import optuna
    from hydra.core.utils import JobReturn
    from hydra.plugins.launcher import Launcher

    from bigimage.search.study import Search

log = logging.getLogger(__name__)

ATTR_CONFIRMATION = "confirmation"  # study user attribute: {trial number: {seed: [value, epochs]}}


@dataclass(frozen=True)
class Confirm:
    """``hydra.sweeper.confirm``: how many of the best trials to train again, with how many seeds each."""

    top: int = 0
    seeds: int = 3


@dataclass(frozen=True)
class Confirmed:
    """One configuration trained again: its trial, params, the runs' values by seed and their interval."""

    trial: int
    params: dict[str, Any]
    values: dict[int, float]
    interval: Interval


def candidates(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` best finished trials, one per configuration (a repeated configuration counts once)."""
    from optuna.trial import TrialState

    maximize = study.direction.name == "MAXIMIZE"
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ranked = sorted(finished, key=lambda t: (-t.value if maximize else t.value, t.number))  # type: ignore[operator]
    chosen: list[optuna.trial.FrozenTrial] = []
    for trial in ranked:
        if len(chosen) < top and all(trial.params != other.params for other in chosen):
            chosen.append(trial)
    return chosen


def job_overrides(search: Search, trial: optuna.trial.FrozenTrial, seed: int) -> list[str]:
    """A confirmation run's overrides: the trial's configuration with another seed, named as its repeat."""
    from bigimage.search.space import trial_overrides

    fixed = [item for item in search.space.fixed if not item.startswith("seed=")]
    where = search.where(confirm_of=trial.number, prune="false")
    return [*fixed, *trial_overrides(trial.params), f"seed={seed}", *where]


def recorded(study: optuna.Study) -> dict[str, dict[str, list[float]]]:
    """The confirmation runs so far: trial number -> seed -> [value, epochs] (as text keys, as stored)."""
    return dict(study.user_attrs.get(ATTR_CONFIRMATION) or {})


def compute_epochs(study: optuna.Study) -> int:
    """The epochs every confirmation run of the study trained."""
    return sum(int(run[1]) for runs in recorded(study).values() for run in runs.values())


def confirm(
    search: Search, settings: Confirm, base_seed: int, launcher: Launcher, first_job: int
) -> tuple[list[Confirmed], list[JobReturn]]:
    """Train the best trials again over seeds (the missing runs only); each one's values and interval,
    best mean first, and the jobs' returns. A failed run stops the search, as a failed trial does."""
    study = search.study
    if settings.top <= 0 or len(study.directions) > 1:
        return [], []
    chosen = candidates(study, settings.top)
    seeds = [base_seed + k for k in range(1, settings.seeds + 1)]
    runs = recorded(study)
    missing = [(t, s) for t in chosen for s in seeds if str(s) not in runs.get(str(t.number), {})]
    results: list[JobReturn] = []
    if missing:
        log.info("confirming %d configuration(s) over %d seed(s): %d run(s)", len(chosen), len(seeds), len(missing))
        results = list(launcher.launch([job_overrides(search, t, s) for t, s in missing], initial_job_idx=first_job))
        for (trial, seed), result in zip(missing, results):
            value = float(result.return_value)  # raises a failed run's error
            epochs = int(result.cfg.epochs) if result.cfg is not None else 0  # a Hydra job's return holds its config
            runs.setdefault(str(trial.number), {})[str(seed)] = [value, epochs]
            study.set_user_attr(ATTR_CONFIRMATION, runs)
    confirmed = []
    for trial in chosen:
        values = {seed: float(runs[str(trial.number)][str(seed)][0]) for seed in seeds}
        confirmed.append(Confirmed(trial.number, dict(trial.params), values, mean_interval(list(values.values()))))
    maximize = study.direction.name == "MAXIMIZE"
    return sorted(confirmed, key=lambda c: -c.interval.mean if maximize else c.interval.mean), results
