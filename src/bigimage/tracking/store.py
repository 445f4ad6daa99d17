"""Where runs go: the tracking URI, the experiment, and retries around a busy sqlite store.

Paths are resolved against the project root, never Hydra's per-run output folder (hydra #830), and
the experiment gets an explicit artifact location: with a sqlite URI MLflow would otherwise put
artifacts in ``./mlruns`` relative to whatever the current directory is.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from bigimage.config import PROJECT_ROOT

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_STORE = PROJECT_ROOT / "mlruns" / "mlflow.db"
DEFAULT_ARTIFACTS = PROJECT_ROOT / "mlruns" / "artifacts"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else the project's sqlite store."""
    uri = (uri or os.environ.get(ENV_TRACKING_URI, "").strip()) or f"sqlite:///{DEFAULT_STORE}"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        uri = f"sqlite:///{path if path.is_absolute() else PROJECT_ROOT / path}"
    elif "://" not in uri:  # a bare folder is MLflow's file store
        uri = str((PROJECT_ROOT / uri).resolve())
    return uri


def default_artifact_location(uri: str, artifact_root: str | None = None) -> str | None:
    """Artifacts of a local store live under the project's ``mlruns/``; a server picks its own."""
    if artifact_root:
        return artifact_root if "://" in artifact_root else Path(artifact_root).resolve().as_uri()
    if uri.startswith("sqlite:"):
        return DEFAULT_ARTIFACTS.as_uri()
    return None


# What MLflow says when the sqlite store is locked by a parallel job (mlflow #10334).
BUSY = ("database is locked",)
# What it says when a parallel job logged the same dataset (experiment, name, digest) between this job's
# lookup and its insert (``SqlAlchemyStore._log_inputs_impl``), in sqlite's, PostgreSQL's and MySQL's
# words: a second try finds the row and links to it.
DATASET_RACE = ("unique constraint failed: datasets.", '"dataset_pk"', "for key 'datasets.primary'")


def retry_busy(action: Callable[[], T], attempts: int = 8, transient: tuple[str, ...] = BUSY) -> T:
    """Run ``action``, retrying while it fails on what a parallel job did (``transient``, default: the
    store is locked).

    The one retry loop for every MLflow call of the project: MLflow raises these as an
    ``MlflowException`` or as the SQLAlchemy error it wraps, so the message is what tells them apart.
    """
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:
            message = str(error).lower()
            if not any(words in message for words in transient) or attempt == attempts - 1:
                raise
            log.warning("MLflow call failed on what a parallel job did (%s); retrying", error)
        time.sleep(0.2 * 2**attempt * (0.5 + random.random()))
    raise AssertionError("unreachable")


def log_batch(
    client: mlflow.MlflowClient,
    run_id: str,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> None:
    """Metrics (now, at step 0), params and tags on ``run_id`` in one ``log_batch``, retried while busy."""
    stamp = int(time.time() * 1000)
    metric_batch = [Metric(key, float(value), stamp, 0) for key, value in (metrics or {}).items()]
    param_batch = [Param(key, str(value)) for key, value in (params or {}).items()]
    tag_batch = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    retry_busy(lambda: client.log_batch(run_id, metrics=metric_batch, params=param_batch, tags=tag_batch))


def ensure_experiment(name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if needed; safe when another process creates it too."""
    client = mlflow.MlflowClient()

    def get_or_create() -> str:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = client.get_experiment_by_name(name)
            if created is None:  # deleted again in between: let the retry or the caller see it
                raise
            return created.experiment_id

    return retry_busy(get_or_create)


def connect(uri: str | None, experiment: str, artifact_root: str | None = None) -> tuple[str, str]:
    """Point this process (and its child processes) at the store; returns (uri, experiment id)."""
    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    os.environ[ENV_TRACKING_URI] = uri
    return uri, ensure_experiment(experiment, default_artifact_location(uri, artifact_root))
