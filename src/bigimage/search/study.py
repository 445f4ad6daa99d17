"""Where a study lives and how it is opened: one sqlite file per MLflow store, resumable by name (where:
docs/search.md). Several processes write to one study at once, so sqlite connections wait up to
:data:`SQLITE_TIMEOUT_SECONDS` for a lock instead of failing at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from bigimage.search.space import SearchSpaceError, Space
from bigimage.tracking.store import DEFAULT_STORE, resolve_tracking_uri, sqlite_database

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.db"  # beside the usual mlflow.db; optuna-<name> beside any other store file
STUDY_PREFIX = "optuna-"
SQLITE_TIMEOUT_SECONDS = 60
# Study user attributes: the MLflow parent run of the search, and the pruner the workers rebuild.
ATTR_PARENT_RUN = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment_id"
ATTR_PRUNER = "pruner"


def default_storage(tracking_uri: str | None) -> str:
    """The study storage of the MLflow store that ``tracking_uri`` resolves to, one per store (module doc)."""
    uri = resolve_tracking_uri(tracking_uri)
    database = sqlite_database(uri)
    if database is None:
        return f"sqlite:///{DEFAULT_STORE.parent / f'{STUDY_PREFIX}{store_key(uri)}.db'}"
    name = STUDY_FILE if database.name == DEFAULT_STORE.name else f"{STUDY_PREFIX}{database.name}"
    return f"sqlite:///{database.parent / name}"


def store_key(uri: str) -> str:
    """A file-name part naming a store that is not a sqlite file: its scheme, host, port and path
    (readable), and a hash of them (``http://a/b-c`` and ``http://a/b/c`` differ); never the user or
    password of the URI."""
    parts = urlsplit(uri)
    location = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    plain = urlunsplit((parts.scheme, location, parts.path, parts.query, ""))
    readable = re.sub(r"[^A-Za-z0-9.]+", "-", f"{parts.scheme}-{location}{parts.path}").strip("-")[:80]
    return f"{readable}-{hashlib.sha256(plain.encode()).hexdigest()[:8]}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; sqlite connections wait for a busy database rather than failing."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_SECONDS}})
    return optuna.storages.RDBStorage(url)


def directions(direction: str | Sequence[str]) -> list[str]:
    """``maximize`` or ``[maximize, minimize]`` as a list, each checked."""
    values = [direction] if isinstance(direction, str) else [str(item) for item in direction]
    bad = [value for value in values if value not in ("maximize", "minimize")]
    if not values or bad:
        raise SearchSpaceError(f"hydra.sweeper.direction={values} must be maximize or minimize, or a list of them")
    return values


def open_study(
    name: str,
    storage: optuna.storages.RDBStorage,
    direction: str | Sequence[str],
    sampler: Any = None,
    pruner: Any = None,
) -> optuna.Study:
    """The study ``name`` in ``storage``, created or loaded (same name: the same study, continued)."""
    import optuna

    wanted = directions(direction)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=wanted,  # type: ignore[arg-type]  # checked: maximize or minimize
        sampler=sampler,
        pruner=pruner if pruner is not None else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    found = [d.name.lower() for d in study.directions]
    if found != wanted:
        raise SearchSpaceError(
            f"study {name!r} in {storage.url} optimises {found}, not {wanted}: give another hydra.sweeper.study_name"
        )
    return study


def load_for_trial(name: str, storage_url: str) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """The study as a training worker sees it, with the pruner the sweeper recorded (none: no pruning),
    and its storage."""
    import optuna
    from hydra.utils import instantiate

    storage = open_storage(storage_url)
    spec = optuna.load_study(study_name=name, storage=storage).user_attrs.get(ATTR_PRUNER)
    pruner = instantiate(spec) if spec else optuna.pruners.NopPruner()
    return optuna.load_study(study_name=name, storage=storage, pruner=pruner), storage


@dataclass
class Search:
    """A study being searched, with what every trial's job is given."""

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    storage_url: str
    space: Space
    prune: bool

    def where(self, **search: Any) -> list[str]:
        """The ``search.*`` overrides that tell a job its study (and ``search``: its trial) (:mod:`.trial`)."""
        keys = {"study_name": self.study.study_name, "storage": f"'{self.storage_url}'", **search}
        return [f"search.{key}={value}" for key, value in keys.items()]
