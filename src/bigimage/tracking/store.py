"""Where runs go: the tracking URI, the experiment, a sqlite store created and migrated once under a
lock, and retries around a busy store (docs/mlflow.md, docs/pitfalls.md).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from bigimage.config import PROJECT_ROOT
from bigimage.tracking.redact import login_to_environment

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_STORE = PROJECT_ROOT / "mlruns" / "mlflow.db"
ARTIFACTS_FOLDER = "artifacts"  # beside a sqlite store's database file
LOCK_SUFFIX = ".lock"  # <database>.lock: held while the store is created and migrated
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
SQLITE_PREFIX = "sqlite:///"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The configured URI, else ``$MLFLOW_TRACKING_URI``, else the project's sqlite store."""
    uri = (uri or os.environ.get(ENV_TRACKING_URI, "").strip()) or f"{SQLITE_PREFIX}{DEFAULT_STORE}"
    if uri.startswith(SQLITE_PREFIX):
        path = Path(uri.removeprefix(SQLITE_PREFIX))
        uri = f"{SQLITE_PREFIX}{path if path.is_absolute() else PROJECT_ROOT / path}"
    elif "://" not in uri:  # a bare folder is MLflow's file store
        uri = str((PROJECT_ROOT / uri).resolve())
    return uri


def sqlite_database(uri: str) -> Path | None:
    """The database file of a resolved ``sqlite:///`` URI (:func:`resolve_tracking_uri`); None for any
    other store."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0])


def default_artifact_location(uri: str, artifact_root: str | None = None) -> str | None:
    """``artifact_root`` if given; else a sqlite store's artifacts sit beside its database file
    (``<folder of the .db>/artifacts``: the project's ``mlruns/artifacts`` for its own store), so a
    store elsewhere keeps its runs' files with it; a server picks its own (None)."""
    if artifact_root:
        return artifact_root if "://" in artifact_root else Path(artifact_root).resolve().as_uri()
    database = sqlite_database(uri)
    if database is not None:
        return (database.resolve().parent / ARTIFACTS_FOLDER).as_uri()
    return None


# What MLflow says when the sqlite store is locked by a parallel job (mlflow #10334).
BUSY = ("database is locked",)
# What it says when a parallel job logged the same dataset (experiment, name, digest) between this job's
# lookup and its insert (``SqlAlchemyStore._log_inputs_impl``), in sqlite's, PostgreSQL's and MySQL's
# words: a second try finds the row and links to it.
DATASET_RACE = ("unique constraint failed: datasets.", '"dataset_pk"', "for key 'datasets.primary'")


def retry_busy(action: Callable[[], T], attempts: int = 8, transient: tuple[str, ...] = BUSY) -> T:
    """Run ``action``, retrying while it fails on what a parallel job did (``transient``, default: the
    store is locked): the one retry loop for every MLflow call, told apart by the error's message."""
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
    step: int = 0,
) -> None:
    """Metrics (now, at ``step``), params and tags on ``run_id`` in one ``log_batch``, retried while busy:
    the one batch logger of the project (MLflow's client splits a batch beyond the store's limits)."""
    stamp = int(time.time() * 1000)
    metric_batch = [Metric(key, float(value), stamp, step) for key, value in (metrics or {}).items()]
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


@contextmanager
def store_lock(database: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<database>.lock`` (made if missing, kept afterwards: removing a
    lock file another process is waiting on would let a third one lock a new file beside it)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + LOCK_SUFFIX), "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the kernel drops it if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_prepared: set[str] = set()
_prepared_lock = threading.Lock()


def prepare_store(uri: str) -> None:
    """Create and migrate the sqlite store of ``uri`` once, under :func:`store_lock`, before this process
    opens it otherwise (MLflow migrates in every process that finds tables missing, with nothing between
    processes); nothing for other stores, and nothing again in this process."""
    database = sqlite_database(uri)
    if database is None or uri in _prepared:
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    artifacts = default_artifact_location(uri)
    with _prepared_lock, store_lock(database):
        if uri not in _prepared:
            retry_busy(lambda: SqlAlchemyStore(uri, artifacts))
            _prepared.add(uri)


def connect(uri: str | None, experiment: str, artifact_root: str | None = None) -> tuple[str, str]:
    """Point this process (and its child processes) at the store, created and migrated once under
    its lock (:func:`prepare_store`); returns (uri, experiment id)."""
    uri = login_to_environment(resolve_tracking_uri(uri))  # a server's user:password@ goes to the environment
    prepare_store(uri)
    mlflow.set_tracking_uri(uri)
    os.environ[ENV_TRACKING_URI] = uri
    return uri, ensure_experiment(experiment, default_artifact_location(uri, artifact_root))
