"""The best training configuration's model in the MLflow Model Registry, under the alias ``champion``.

The winning configuration (:mod:`.best_config`) may have several runs; its best-scoring run that logged
the MLflow Model ``model`` (task 3 does, :mod:`bigimage.train.export`) is registered under a name
(``bigimage-classifier`` by default), and the alias ``champion`` points at that version, so
``mlflow.pyfunc.load_model("models:/bigimage-classifier@champion")`` loads the current best.

Idempotent: a run is registered once (its existing version is reused, looked up by run id), and the
alias moves only when another run wins. The alias follows the winner of the runs analysed: analysing
a single pipeline (``--parent-run``) crowns that pipeline's best.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass

from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bigimage.config import TrackingConfig
from bigimage.tracking.names import MODEL_NAME
from bigimage.tracking.store import retry_busy

log = logging.getLogger(__name__)

DEFAULT_NAME = TrackingConfig.registered_model
ALIAS = "champion"


@dataclass(frozen=True)
class Champion:
    """The registered version the alias points at after :func:`register_champion`."""

    name: str
    version: str
    run_id: str
    model_id: str
    created: bool  # a new version was made for this run (False: its existing one was reused)
    moved: bool  # the alias was set or moved to this version (False: it already pointed there)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{ALIAS}"

    def as_dict(self) -> dict:
        return {**asdict(self), "alias": ALIAS, "uri": self.uri}


def logged_model(client: MlflowClient, experiment_id: str, run_id: str) -> LoggedModel | None:
    """The newest MLflow Model named ``model`` that ``run_id`` logged, or None."""
    found = retry_busy(
        lambda: client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
        )
    )
    return max(found, key=lambda model: model.creation_timestamp) if found else None


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    versions = retry_busy(lambda: client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'"))
    return min(versions, key=lambda version: int(version.version)) if versions else None


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        retry_busy(
            lambda: client.create_registered_model(
                name, description="The best bigimage training configuration's model (analysis/best_config.py)."
            )
        )
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(client: MlflowClient, name: str) -> str | None:
    try:
        return retry_busy(lambda: client.get_model_version_by_alias(name, ALIAS)).version
    except MlflowException:
        return None


def register_champion(
    client: MlflowClient, experiment_id: str, candidates: list[str], name: str, tags: dict[str, str] | None = None
) -> Champion | None:
    """Register the first of ``candidates`` (run ids, best first) that logged a model, as ``name``, and
    point ``champion`` at it; None when none of them logged one."""
    chosen = next(
        (
            (run_id, model)
            for run_id in candidates
            if (model := logged_model(client, experiment_id, run_id)) is not None
        ),
        None,
    )
    if chosen is None:
        return None
    run_id, model = chosen
    _ensure_registered_model(client, name)
    version = _version_of_run(client, name, run_id)
    created = version is None
    if version is None:
        version = retry_busy(
            lambda: client.create_model_version(
                name, source=f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id, tags=tags or {}
            )
        )
    moved = _alias_version(client, name) != version.version
    if moved:
        retry_busy(lambda: client.set_registered_model_alias(name, ALIAS, version.version))
    champion = Champion(name, str(version.version), run_id, model.model_id, created, moved)
    change = "alias moved here" if moved else "alias unchanged"
    log.info("champion: %s (version %s, run %s; %s)", champion.uri, champion.version, run_id, change)
    return champion


def add_registry_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registered-model",
        default=DEFAULT_NAME,
        help=f"register the winning training run's model under this name, alias {ALIAS} (default: {DEFAULT_NAME})",
    )
    parser.add_argument("--no-register", action="store_true", help="do not register a model")


def model_name(args: argparse.Namespace) -> str | None:
    """The name to register under, from :func:`add_registry_args`'s options (None: do not register)."""
    return None if args.no_register else args.registered_model
