"""Read runs back from any MLflow tracking store into tidy pandas tables, through the public MLflow API
only; nothing here imports Spark or TensorFlow, or starts or ends a run.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import mlflow
import pandas as pd
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from bigimage.config import PROJECT_ROOT, TrackingConfig  # noqa: F401 - PROJECT_ROOT: for analysis modules
from bigimage.tracking import names
from bigimage.tracking.store import log_batch, resolve_tracking_uri, retry_busy

DEFAULT_EXPERIMENT = TrackingConfig.experiment

PARENT_TAG = MLFLOW_PARENT_RUN_ID  # "mlflow.parentRunId"
RUN_COLUMNS = (
    "run_id",
    "run_name",
    "experiment_id",
    "status",
    "start_time",
    "end_time",
    "parent_run_id",
    "task",
    "metric_keys",
)


class NoRunsError(LookupError):
    """The experiment or parent run does not exist, or holds no runs."""


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the project's default store ``sqlite:///<root>/mlruns/mlflow.db``."""
    return resolve_tracking_uri(None)


def client_for(tracking_uri: str | None = None) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())


@dataclass(frozen=True)
class RunSelection:
    """What was loaded: an experiment, or one parent run and all its descendants."""

    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str | None = None

    def describe(self) -> str:
        where = f"experiment '{self.experiment_name}' (id {self.experiment_id})"
        if self.parent_run_id:
            where = f"descendants of run {self.parent_run_id} in {where}"
        return f"{where} at {self.tracking_uri}"

    def as_dict(self) -> dict:
        return asdict(self)


def search_all(client: MlflowClient, experiment_ids: Sequence[str], filter_string: str = "") -> list[Run]:
    """Every run matching ``filter_string``, page by page, each page retried while the store is busy."""
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = retry_busy(
            functools.partial(
                client.search_runs,
                list(experiment_ids),
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                page_token=token,
            )
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def children(client: MlflowClient, experiment_ids: Sequence[str], parent_run_id: str) -> list[Run]:
    """The runs whose tag ``mlflow.parentRunId`` is ``parent_run_id`` (all pages)."""
    return search_all(client, experiment_ids, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")


def _descendants(client: MlflowClient, experiment_ids: Sequence[str], parent_run_id: str) -> list[Run]:
    """Children, grandchildren, ... of ``parent_run_id`` (a pipeline's child may itself be a sweep parent):
    one :func:`children` search per run found."""
    found: dict[str, Run] = {}
    frontier = [parent_run_id]
    while frontier:
        for run in children(client, experiment_ids, frontier.pop()):
            if run.info.run_id not in found and run.info.run_id != parent_run_id:
                found[run.info.run_id] = run
                frontier.append(run.info.run_id)
    return list(found.values())


def _runs_to_frame(runs: Iterable[Run]) -> pd.DataFrame:
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row = {
            "run_id": info.run_id,
            "run_name": info.run_name,
            "experiment_id": info.experiment_id,
            "status": info.status,
            "start_time": info.start_time,
            "end_time": info.end_time,
            "parent_run_id": data.tags.get(PARENT_TAG),
            "task": data.tags.get(names.TAG_TASK),
            "metric_keys": tuple(sorted(data.metrics)),
        }
        row.update({f"params.{k}": v for k, v in data.params.items()})
        row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in data.tags.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else list(RUN_COLUMNS))
    if not frame.empty:
        frame = frame.sort_values(["start_time", "run_id"], kind="stable").reset_index(drop=True)
    return frame


def select(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> RunSelection:
    """Resolve ``--experiment`` / ``--parent-run`` to an experiment id; raises :class:`NoRunsError`."""
    uri = tracking_uri or default_tracking_uri()
    client = client_for(uri)
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException as exc:
            raise NoRunsError(f"no run with id {parent_run_id} at {uri}: {exc.message}") from None
        parent_experiment = client.get_experiment(parent.info.experiment_id)
        return RunSelection(uri, parent_experiment.experiment_id, parent_experiment.name, parent_run_id)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise NoRunsError(f"no experiment named '{name}' at {uri}; experiments there: {known or 'none'}")
    return RunSelection(uri, exp.experiment_id, exp.name, None)


def load_runs(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
) -> tuple[RunSelection, pd.DataFrame]:
    """Runs of an experiment (by name), or all descendants of a parent run, as a tidy table sorted by
    start time: :data:`RUN_COLUMNS`, then ``params.<key>``, ``metrics.<key>`` (the last value) and
    ``tags.<key>``; deleted runs left out. Raises :class:`NoRunsError` if nothing matches."""
    selection = select(tracking_uri, experiment, parent_run_id)
    client = client_for(selection.tracking_uri)
    if parent_run_id:
        runs = _descendants(client, [selection.experiment_id], parent_run_id)
    else:
        runs = search_all(client, [selection.experiment_id])
    frame = _runs_to_frame(runs)
    if frame.empty:
        raise NoRunsError(f"no runs in {selection.describe()}")
    return selection, frame


def load_histories(
    tracking_uri: str | None,
    run_ids: Sequence[str],
    keys: Sequence[str] = names.EPOCH_METRICS,
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Full per-step histories of ``keys`` for ``run_ids``, in long format (run_id, key, step, value,
    timestamp): one ``get_metric_history`` per (run, key), skipping keys a run never logged when ``runs`` is given."""
    client = client_for(tracking_uri)
    logged: dict[str, set[str]] = {}
    if runs is not None and not runs.empty and "metric_keys" in runs.columns:
        logged = {r: set(keys) for r, keys in zip(runs["run_id"], runs["metric_keys"])}
    rows = []
    for run_id in run_ids:
        for key in keys:
            if run_id in logged and key not in logged[run_id]:
                continue
            for m in client.get_metric_history(run_id, key):
                rows.append((run_id, key, int(m.step), float(m.value), int(m.timestamp)))
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])


def histories_wide(histories: pd.DataFrame) -> pd.DataFrame:
    """One row per (run_id, step), one column per metric key; the last value wins on a repeated step."""
    if histories.empty:
        return pd.DataFrame(columns=["run_id", "step"])
    ordered = histories.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    last = ordered.drop_duplicates(["run_id", "key", "step"], keep="last")
    wide = last.pivot(index=["run_id", "step"], columns="key", values="value").reset_index()
    wide.columns.name = None
    return wide.sort_values(["run_id", "step"]).reset_index(drop=True)


def load_run_table(
    tracking_uri: str | None, artifact_file: str, run_ids: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, str]]:
    """An MLflow table artifact (``log_table``) of each run, concatenated with a ``run_id`` column; a run
    missing it is reported (second value: run id -> problem) instead of failing the load."""
    # MLflow draws a download progress bar on stderr for every file it fetches: noise in a script's and
    # the pipeline's report output, one bar per run. An explicit setting of the variable still wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or default_tracking_uri()
    frames, problems = [], {}
    for run_id in run_ids:
        with tempfile.TemporaryDirectory() as folder:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=artifact_file, dst_path=folder, tracking_uri=uri
                )
                frame = pd.read_json(path, orient="split")
            except (MlflowException, OSError) as exc:
                problems[run_id] = f"no table artifact {artifact_file}: {getattr(exc, 'message', exc)}"
                continue
            except ValueError as exc:
                problems[run_id] = f"table artifact {artifact_file} unreadable: {exc}"
                continue
        if frame.empty:
            problems[run_id] = f"table artifact {artifact_file} is empty"
            continue
        frames.append(frame.assign(run_id=run_id))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id"])
    return table, problems


def set_tags(tracking_uri: str | None, run_id: str, tags: dict[str, str]) -> None:
    """Set tags on a run (never metrics) in one batch, retrying while a sqlite store is busy."""
    log_batch(client_for(tracking_uri), run_id, tags=tags)


def _cell(row: pd.Series, column: str, default=None):
    value = row.get(column, default)
    return default if value is None or (isinstance(value, float) and pd.isna(value)) else value


def param(row: pd.Series, key: str, default=None):
    """A run's param from a :func:`load_runs` row (``None``/``default`` if absent)."""
    return _cell(row, f"params.{key}", default)


def tag(row: pd.Series, key: str) -> str | None:
    """A run's tag from a :func:`load_runs` row (``None`` if absent)."""
    value = _cell(row, f"tags.{key}")
    return None if value is None else str(value)


def metric(row: pd.Series, key: str) -> float | None:
    """A run's metric (its last value) from a :func:`load_runs` row (``None`` if absent or NaN)."""
    value = _cell(row, f"metrics.{key}")
    return None if value is None else float(value)
