"""Where a study lives and how it is opened: one sqlite file beside the MLflow store, resumable by name.

The default storage is ``sqlite:///<folder of the MLflow sqlite store>/optuna.db`` (the project's
``mlruns/optuna.db``, git-ignored with the rest of ``mlruns/``; a test's temporary store gets its own),
and for a tracking server the project's ``mlruns/optuna.db``. ``hydra.sweeper.storage`` names any
other Optuna RDB URL. Opening a study that exists loads it (``load_if_exists``): rerunning the same
search continues it.

Several processes write to one study at once (parallel trials, the training chief reporting epochs, the
sweeper telling results), so sqlite connections wait up to :data:`SQLITE_TIMEOUT_SECONDS` for a lock
instead of failing at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigimage.search.space import SearchSpaceError
from bigimage.tracking.store import DEFAULT_STORE, resolve_tracking_uri

if TYPE_CHECKING:
    import optuna

STUDY_FILE = "optuna.db"
SQLITE_TIMEOUT_SECONDS = 60
# Study user attributes: the MLflow parent run of the search, and the pruner the workers rebuild.
ATTR_PARENT_RUN = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment_id"
ATTR_PRUNER = "pruner"


def default_storage(tracking_uri: str | None) -> str:
    """The study storage beside the MLflow store that ``tracking_uri`` resolves to."""
    uri = resolve_tracking_uri(tracking_uri)
    folder = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else DEFAULT_STORE.parent
    return f"sqlite:///{folder / STUDY_FILE}"


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
