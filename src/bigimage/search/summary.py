"""The search's parent run: one per study, holding every trial as a child and the study's outcome.

:func:`prepare_parent` makes a new parent the study's, moving the runs of a continued search's earlier
parent under it (a study whose parent this MLflow store does not hold is refused); :func:`summarise`
writes the outcome on it at the end (its metrics, params, tags and artifacts: docs/search.md).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from mlflow.exceptions import MlflowException

from bigimage.errors import UserError
from bigimage.search import confirm, figures
from bigimage.search.study import ATTR_EXPERIMENT, ATTR_PARENT_RUN
from bigimage.search.trial import ATTR_EPOCHS, TAG_STUDY, TAG_TRIAL
from bigimage.tracking.query import PARENT_TAG, search_all
from bigimage.tracking.store import log_batch, retry_busy

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PARETO_TABLE = "search/pareto_front.json"
TAG_MOVED_FROM = "search.moved_from"  # on an earlier trial's run: the parent it was started under


class ForeignStudyError(UserError):
    """The study's parent run is not in this MLflow store: the study belongs to another store."""


def study_runs(client: MlflowClient, experiment_id: str, study_name: str) -> pd.DataFrame:
    """The study's runs in the experiment, trials and confirmation runs: ``run_id``, ``number`` (the
    trial; -1 for a confirmation run), ``parent``, ``status``."""
    runs = search_all(client, [experiment_id], f"tags.`{TAG_STUDY}` = '{study_name}'")  # every page
    rows = [
        (run.info.run_id, int(run.data.tags.get(TAG_TRIAL, -1)), run.data.tags.get(PARENT_TAG), run.info.status)
        for run in runs
    ]
    return pd.DataFrame(rows, columns=["run_id", "number", "parent", "status"])


def prepare_parent(
    client: MlflowClient, study: optuna.Study, parent_run_id: str, experiment_id: str, tags: dict[str, str]
) -> None:
    """Tag the parent and make it the study's: the earlier runs of a continued search move under it."""
    previous = study.user_attrs.get(ATTR_PARENT_RUN)
    if previous and previous != parent_run_id:
        check_same_store(client, study.study_name, previous)
        moved = study_runs(client, experiment_id, study.study_name)
        moved = moved[moved["parent"] == previous]
        for run_id in moved["run_id"]:  # the status stays the run's own
            log_batch(client, str(run_id), tags={PARENT_TAG: parent_run_id, TAG_MOVED_FROM: previous})
        log_batch(client, previous, tags={"search.continued_in": parent_run_id})
        tags = {**tags, "search.resumed_from": previous}
        log.info("study %s continues: %d earlier run(s) moved from %s", study.study_name, len(moved), previous)
    log_batch(client, parent_run_id, tags=tags)
    study.set_user_attr(ATTR_PARENT_RUN, parent_run_id)
    study.set_user_attr(ATTR_EXPERIMENT, experiment_id)


def check_same_store(client: MlflowClient, study_name: str, previous_parent: str) -> None:
    """Refuse a study whose earlier parent run this store does not hold: its trials' runs, and the
    trials it counts, are in another store (two stores given one ``hydra.sweeper.storage``)."""
    try:
        retry_busy(lambda: client.get_run(previous_parent))
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ForeignStudyError(
            f"study {study_name!r} belongs to MLflow run {previous_parent}, which this MLflow store does not "
            "hold (one study storage for two stores?): give another hydra.sweeper.study_name, or leave "
            "hydra.sweeper.storage unset for a storage of this store's own"
        ) from None


def trials_table(study: optuna.Study, objectives: Sequence[str], runs: pd.DataFrame) -> pd.DataFrame:
    """``study.trials_dataframe()`` with the objectives by name, the pruned epoch and each trial's run id."""
    table = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if len(objectives) > 1:
        table = table.rename(columns={f"values_{i}": name for i, name in enumerate(objectives)})
    table["run_id"] = table["number"].map(dict(zip(runs["number"], runs["run_id"])))  # confirmation runs: -1
    return table


def importances(study: optuna.Study, objectives: Sequence[str]) -> dict[str, dict[str, float]]:
    """Parameter importance per objective (empty when too few finished trials vary)."""
    import optuna

    out: dict[str, dict[str, float]] = {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # fANOVA: the same figure every time
    for index, name in enumerate(objectives):

        def target(trial: optuna.trial.FrozenTrial, i: int = index) -> float:
            return trial.values[i]

        try:
            out[name] = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
        except (RuntimeError, ValueError) as error:
            log.info("no parameter importance for %s: %s", name, error)
    return {name: values for name, values in out.items() if values}


def pareto(study: optuna.Study, table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``table`` on the study's Pareto front (``study.best_trials``)."""
    numbers = {trial.number for trial in study.best_trials}
    return table[table["number"].isin(numbers)].reset_index(drop=True)


def counts(study: optuna.Study) -> dict[str, float]:
    """Trials by state, and the epochs trained: by every trial (a pruned one's until it stopped), by
    the pruned ones, by the confirmation runs."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states = [trial.state for trial in trials]
    epochs = [int(trial.user_attrs.get(ATTR_EPOCHS, 0)) for trial in trials]
    pruned = sum(e for e, state in zip(epochs, states) if state == TrialState.PRUNED)
    confirming = confirm.compute_epochs(study)
    return {
        "search.trials_finished": float(states.count(TrialState.COMPLETE)),
        "search.trials_pruned": float(states.count(TrialState.PRUNED)),
        "search.trials_failed": float(states.count(TrialState.FAIL)),
        "search.compute_epochs": float(sum(epochs) + confirming),
        "search.compute_epochs_pruned": float(pruned),
        "search.compute_epochs_confirm": float(confirming),
    }


def summarise(
    client: MlflowClient,
    study: optuna.Study,
    objectives: Sequence[str],
    parent_run_id: str,
    confirmed: Sequence[confirm.Confirmed] = (),
) -> None:
    """Write the study's outcome on its parent run (module doc); ``confirmed``: the confirmation stage's
    configurations, best mean first (none: the best single trial wins)."""
    experiment_id = retry_busy(lambda: client.get_run(parent_run_id)).info.experiment_id
    table = trials_table(study, objectives, study_runs(client, experiment_id, study.study_name))
    log_batch(client, parent_run_id, metrics=counts(study))
    finished = table[table["state"] == "COMPLETE"]
    with tempfile.TemporaryDirectory(prefix="bigimage-search-") as folder:
        table.to_csv(os.path.join(folder, "trials.csv"), index=False)
        if len(objectives) == 1 and not finished.empty:
            _log_best(client, study, objectives[0], parent_run_id, table, confirmed)
            if confirmed:
                confirmation_table(confirmed).to_csv(os.path.join(folder, "confirmation.csv"), index=False)
            maximize = study.direction.name == "MAXIMIZE"
            _save(figures.optimization_history(table, objectives[0], maximize), folder, "optimization_history.png")
        if len(objectives) > 1 and not finished.empty:
            front = pareto(study, table)
            retry_busy(lambda: client.log_table(parent_run_id, _json_ready(front), PARETO_TABLE))
            fig = figures.pareto_front(finished, objectives[1], objectives[0], front)
            _save(fig, folder, "pareto_front.png")
            pareto_trials = ",".join(str(int(number)) for number in sorted(front["number"]))
            log_batch(client, parent_run_id, tags={"search.pareto_trials": pareto_trials})
        found = importances(study, objectives)
        if found:
            _save(figures.param_importances(found), folder, "param_importances.png")
            with open(os.path.join(folder, "param_importances.json"), "w", encoding="utf-8") as handle:
                json.dump(found, handle, indent=1)
        retry_busy(lambda: client.log_artifacts(parent_run_id, folder, "search"))


def confirmation_table(confirmed: Sequence[confirm.Confirmed]) -> pd.DataFrame:
    """One row per confirmed configuration, best mean first: trial, params, mean, interval, runs' values."""
    rows = [
        {
            "trial": c.trial,
            **c.params,
            "mean": c.interval.mean,
            "low": c.interval.low,
            "high": c.interval.high,
            "std": c.interval.sd,
            "runs": c.interval.n,
            "values": ";".join(f"{v:.6g}" for v in c.values.values()),
        }
        for c in confirmed
    ]
    return pd.DataFrame(rows)


def _log_best(
    client: MlflowClient,
    study: optuna.Study,
    metric: str,
    parent_run_id: str,
    table: pd.DataFrame,
    confirmed: Sequence[confirm.Confirmed],
) -> None:
    """The winner on the parent: the best confirmed mean with its interval, else the best single trial."""
    if confirmed:
        winner = confirmed[0]
        number, params, value = winner.trial, winner.params, winner.interval.mean
        spread = {"low": winner.interval.low, "high": winner.interval.high, "std": winner.interval.sd}
        metrics = {f"search.best_value_{key}": v for key, v in spread.items() if v is not None}
        metrics["search.best_value_runs"] = float(winner.interval.n)
        tags: dict[str, Any] = {"search.best_by": "confirmation"}
    else:
        best = study.best_trial
        number, params, value = best.number, best.params, float(best.values[0])
        metrics, tags = {}, {"search.best_by": "single_trial"}
    run_id = table.loc[table["number"] == number, "run_id"]
    tags["search.best_trial"] = number
    if not run_id.empty and isinstance(run_id.iloc[0], str):
        tags["search.best_run_id"] = run_id.iloc[0]
    metrics.update({"search.best_value": value, f"best_{metric}".replace("best_best_", "best_"): value})
    log_batch(
        client, parent_run_id, metrics=metrics, params={f"search.best.{k}": p for k, p in params.items()}, tags=tags
    )


def _json_ready(table: pd.DataFrame) -> pd.DataFrame:
    """Columns MLflow's table artifact can hold: durations and times as text."""
    kept = (pd.api.types.is_numeric_dtype, pd.api.types.is_string_dtype)
    return table.astype({column: str for column in table.columns if not any(is_(table[column]) for is_ in kept)})


def _save(fig: Any, folder: str, name: str) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(os.path.join(folder, name), dpi=110)
    plt.close(fig)
