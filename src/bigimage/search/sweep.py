"""The search loop: ask the study for trials, launch them as Hydra jobs (``n_jobs`` at a time), tell the
study what they gave (PRUNED when the chief recorded a pruned epoch), then :mod:`.confirm` the best.

``n_trials`` counts finished and pruned trials, so a rerun continues the study (docs/search.md); trials a
dead sweeper left RUNNING on this machine are failed first, and a failed job stops the search, as in
Hydra's own sweeper. The trials are child runs of the sweep's parent run, which :mod:`.summary` keeps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bigimage import processes
from bigimage.search import confirm as search_confirm
from bigimage.search import space as search_space
from bigimage.search import study as search_study
from bigimage.search.study import Search
from bigimage.search.trial import ATTR_EPOCHS, ATTR_PRUNED_EPOCH

if TYPE_CHECKING:
    import optuna
    from hydra.core.utils import JobReturn
    from hydra.plugins.launcher import Launcher

log = logging.getLogger(__name__)

ATTR_HOST = "sweeper_host"
ATTR_PID = "sweeper_pid"
ATTR_FAILED = "failed_reason"


@dataclass
class Settings:
    """``hydra.sweeper.*`` as the sweeper plugin got it (sampler and pruner already made by Hydra)."""

    study_name: str
    storage: str | None
    direction: str | Sequence[str]
    n_trials: int
    n_jobs: int
    sampler: Any
    pruner: Any
    params: Mapping[str, str]
    pruner_spec: dict[str, Any] | None = None  # the pruner's config, for the workers to rebuild it (setup)
    confirm: search_confirm.Confirm = search_confirm.Confirm()


def open_search(settings: Settings, arguments: Sequence[str], config: Any, config_loader: Any) -> Search:
    """Parse the space, open (or continue) the study, record the pruner and fail stale trials."""
    space = search_space.parse(settings.params, arguments, config_loader)
    url = settings.storage or search_study.default_storage(config.tracking.get("uri"))
    storage = search_study.open_storage(url)
    study = search_study.open_study(settings.study_name, storage, settings.direction, settings.sampler, settings.pruner)
    multi = len(study.directions) > 1
    prune = settings.pruner is not None and not multi
    if settings.pruner is not None and multi:
        log.warning("a study of %d objectives cannot prune (Optuna reports one value per step)", len(study.directions))
    study.set_user_attr(search_study.ATTR_PRUNER, settings.pruner_spec if prune else None)
    fail_stale_trials(study)
    return Search(study, storage, url, space, prune)


def counted(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: finished or pruned."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a sweeper of this machine that is gone (killed, crashed) are failed."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, pid = trial.user_attrs.get(ATTR_HOST), trial.user_attrs.get(ATTR_PID)
        recorded = trial.datetime_start.timestamp() if trial.datetime_start else None  # its sweeper ran then
        if host == socket.gethostname() and pid is not None and processes.gone(int(pid), recorded=recorded):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d was left running by process %s, which is gone: marked FAIL", trial.number, pid)


def job_overrides(search: Search, trial: optuna.Trial) -> list[str]:
    """The overrides of one trial's job: fixed ones, the sampled params, and where its trial is."""
    where = search.where(trial=trial.number, prune="true" if search.prune else "false")
    return [*search.space.fixed, *search_space.trial_overrides(trial.params), *where]


def ask(search: Search) -> optuna.Trial:
    trial = search.study.ask(search.space.distributions)
    trial.set_user_attr(ATTR_HOST, socket.gethostname())
    trial.set_user_attr(ATTR_PID, os.getpid())
    return trial


def tell(search: Search, trial: optuna.Trial, result: JobReturn) -> BaseException | None:
    """Tell the study what a trial's job gave; returns the job's error, if it failed."""
    from hydra.core.utils import JobStatus
    from optuna.trial import TrialState

    study = search.study
    if result.status != JobStatus.COMPLETED:
        try:
            _ = result.return_value  # raises the job's error
        except Exception as error:
            trial.set_user_attr(ATTR_FAILED, f"{type(error).__name__}: {error}"[:2000])
            study.tell(trial, state=TrialState.FAIL)
            return error
    # Read from the storage itself: the chief worker, another process, wrote it.
    study_id = search.storage.get_study_id_from_name(study.study_name)
    attrs = search.storage.get_trial_user_attrs(
        search.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    )
    pruned_epoch = attrs.get(ATTR_PRUNED_EPOCH)
    if pruned_epoch is not None:
        trial.set_user_attr(ATTR_EPOCHS, int(pruned_epoch) + 1)
        study.tell(trial, state=TrialState.PRUNED)
        return None
    if result.cfg is not None:  # a Hydra job's return holds its config
        trial.set_user_attr(ATTR_EPOCHS, int(result.cfg.epochs))
    value = result.return_value
    values = [value] if not isinstance(value, (list, tuple)) else list(value)
    if any(v is None or not math.isfinite(float(v)) for v in values) or len(values) != len(study.directions):
        trial.set_user_attr(ATTR_FAILED, f"the job returned {value!r}, not {len(study.directions)} finite value(s)")
        study.tell(trial, state=TrialState.FAIL)
        return None
    study.tell(trial, [float(v) for v in values])
    return None


def run(search: Search, n_trials: int, n_jobs: int, launcher: Launcher) -> list[Sequence[JobReturn]]:
    """Launch batches of trials until the study holds ``n_trials`` finished or pruned ones."""
    from optuna.trial import TrialState

    returns: list[Sequence[JobReturn]] = []
    job_index = 0
    while (missing := n_trials - counted(search.study)) > 0:
        trials = [ask(search) for _ in range(min(max(n_jobs, 1), missing))]
        try:
            results = launcher.launch([job_overrides(search, t) for t in trials], initial_job_idx=job_index)
        except BaseException:  # Ctrl-C, SIGTERM, a launcher error: the asked trials did not finish
            for trial in trials:
                search.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        job_index += len(trials)
        errors = [tell(search, trial, result) for trial, result in zip(trials, results)]
        returns.append(results)
        first_error = next((error for error in errors if error is not None), None)
        if first_error is not None:
            raise first_error
    return returns


def parent_tags(settings: Settings, search: Search, objectives: Sequence[str]) -> dict[str, str]:
    from bigimage.tracking import redact

    study = search.study
    space = {key: repr(value) for key, value in search.space.distributions.items()}
    return {
        "search.study": study.study_name,
        "search.storage": redact.url(search.storage_url),
        "search.sampler": type(study.sampler).__name__,
        "search.pruner": type(settings.pruner).__name__ if search.prune else "none",
        "search.objectives": ",".join(objectives),
        "search.directions": ",".join(d.name.lower() for d in study.directions),
        "search.n_trials": str(settings.n_trials),
        "search.space": json.dumps(space)[:5000],
    }


def sweep(
    settings: Settings, arguments: Sequence[str], config: Any, launcher: Launcher, config_loader: Any
) -> list[Sequence[JobReturn]]:
    """The whole search of one ``run.py -m hparams_search=...`` (module doc)."""
    import mlflow

    from bigimage.search import summary
    from bigimage.search.trial import metric_names
    from bigimage.tracking import names, redact
    from bigimage.tracking.runs import ENV_EXPERIMENT_ID, ENV_PARENT_RUN_ID
    from bigimage.tracking.store import log_batch

    objectives = metric_names(config)
    if len(objectives) != len(search_study.directions(settings.direction)):
        raise search_space.SearchSpaceError(
            f"optimized_metric={objectives} and hydra.sweeper.direction={settings.direction} must name as many "
            "objectives as directions"
        )
    search = open_search(settings, arguments, config, config_loader)
    parent, experiment = os.environ.get(ENV_PARENT_RUN_ID), os.environ.get(ENV_EXPERIMENT_ID)
    client = mlflow.MlflowClient() if parent and experiment else None
    if client is not None and parent and experiment:
        summary.prepare_parent(client, search.study, parent, experiment, parent_tags(settings, search, objectives))
    log.info(
        "study %r in %s: %d of %d trials done; searching %s",
        search.study.study_name,
        redact.url(search.storage_url),
        counted(search.study),
        settings.n_trials,
        ", ".join(search.space.distributions),
    )
    interrupted = False
    confirmed: list[search_confirm.Confirmed] = []
    try:
        returns = run(search, settings.n_trials, settings.n_jobs, launcher)
        first_job = sum(len(batch) for batch in returns)
        confirmed, results = search_confirm.confirm(search, settings.confirm, int(config.seed), launcher, first_job)
        if client is not None and parent and not returns and not results:
            done = f"the study already holds {counted(search.study)} of {settings.n_trials} trials; nothing to confirm"
            log.info("nothing to run: %s", done)
            log_batch(client, parent, tags={names.TAG_NOTHING_TO_RUN: done})
        return [*returns, results] if results else returns
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if client is not None and parent and not interrupted:
            try:
                summary.summarise(client, search.study, objectives, parent, confirmed)
            except Exception as error:  # the trials are recorded; a figure must not fail the search
                log.warning("could not write the search summary on run %s: %s", parent, error)
