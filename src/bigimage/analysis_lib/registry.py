"""The best training configuration's model in the MLflow Model Registry under the alias ``champion``,
tested once on the test split (docs/analysis.md, "The model and the registry")."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow.entities import LoggedModel
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from bigimage.analysis_lib.common import wilson_interval
from bigimage.config import TrackingConfig
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
    scores: dict[str, Any] = field(default_factory=dict)  # the version's tags: TESTED_TAGS, or test_note

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{ALIAS}"

    def as_dict(self) -> dict:
        return {**asdict(self), "alias": ALIAS, "uri": self.uri}


TESTED_TAGS = (
    "val_accuracy",
    "val_records",
    "test_accuracy",
    "test_accuracy_low",
    "test_accuracy_high",
    "test_records",
)
SELECTED_ON = "validation: the run's judged epoch and the configuration's mean over its runs; test read once, after"


def register_champion(
    tracking_uri: str,
    experiment_id: str,
    candidates: list[str],
    name: str,
    tags: dict[str, str] | None = None,
    run_tags: dict[str, dict[str, str]] | None = None,
) -> Champion | None:
    """Register the first of ``candidates`` (run ids, best first) that logged a model as ``name``, test it
    once and point ``champion`` at it; None when none of them logged a model."""
    client = MlflowClient(tracking_uri)
    for run_id in candidates:
        where = f"source_run_id = '{run_id}'"
        found = retry_busy(functools.partial(client.search_logged_models, [experiment_id], filter_string=where))
        if found:
            model = max(found, key=lambda logged: logged.creation_timestamp)  # the newest
            break
    else:
        return None
    try:
        description = "The best bigimage training configuration's model (analysis/best_config.py)."
        retry_busy(lambda: client.create_registered_model(name, description=description))
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    versions = retry_busy(lambda: client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'"))
    created = not versions
    if versions:
        version = min(versions, key=lambda version: int(version.version))
    else:
        version = _register(client, name, run_id, model, {**(tags or {}), **(run_tags or {}).get(run_id, {})})
    scores = _tested(client, tracking_uri, name, version, run_id)
    try:
        moved = retry_busy(lambda: client.get_model_version_by_alias(name, ALIAS)).version != version.version
    except MlflowException:  # no alias yet
        moved = True
    if moved:
        retry_busy(lambda: client.set_registered_model_alias(name, ALIAS, version.version))
    champion = Champion(name, str(version.version), run_id, model.model_id, created, moved, scores)
    change = "alias moved here" if moved else "alias unchanged"
    log.info("champion: %s (version %s, run %s; %s)", champion.uri, champion.version, run_id, change)
    return champion


def _register(client: MlflowClient, name: str, run_id: str, model: LoggedModel, tags: dict[str, str]) -> ModelVersion:
    """A new version of ``name`` from the logged model, recorded as ``mlflow.register_model`` records one,
    but through this client's store (``models:/<id>`` would resolve through the global tracking URI)."""
    version = retry_busy(
        lambda: client.create_model_version(
            name, source=model.artifact_location, run_id=run_id, tags=tags, model_id=model.model_id
        )
    )
    current = retry_busy(lambda: client.get_logged_model(model.model_id)).tags.get(MLFLOW_MODEL_VERSIONS)
    listed = [*json.loads(current or "[]"), {"name": name, "version": int(version.version)}]
    retry_busy(lambda: client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)}))
    return version


def _tested(client: MlflowClient, tracking_uri: str, name: str, version: ModelVersion, run_id: str) -> dict[str, Any]:
    """The version's validation and test scores: from its tags when it was tested before, else measured
    now (:mod:`bigimage.train.evaluate`) and written to its tags; ``test_note`` says why there are none."""
    current = retry_busy(lambda: client.get_model_version(name, version.version)).tags
    if "test_accuracy" in current or "test_note" in current:
        return {key: current[key] for key in (*TESTED_TAGS, "test_note") if key in current}
    scores = _evaluate(tracking_uri, f"models:/{name}/{version.version}", run_id)
    tags = {key: str(value) for key, value in scores.items()} | {"selected_on": SELECTED_ON}
    for key, value in tags.items():
        retry_busy(functools.partial(client.set_model_version_tag, name, version.version, key, value))
    return {key: tags[key] for key in scores}


def _evaluate(tracking_uri: str, model_uri: str, run_id: str, confidence: float = 0.95) -> dict[str, Any]:
    """Run :mod:`bigimage.train.evaluate` on the model; its scores as tag values (module doc)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    command = [sys.executable, "-m", "bigimage.train.evaluate", "--model-uri", model_uri, "--run-id", run_id]
    log.info("testing %s on run %s's validation and test subsets", model_uri, run_id)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        why = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        return {"test_note": f"not tested: {why.removeprefix('error: ')[:4000]}"}
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    validation, test = measured["validation"], measured["test"]
    scores: dict[str, Any] = {"val_accuracy": validation["accuracy"], "val_records": validation["records"]}
    if not test["records"]:
        return scores | {"test_note": "not tested: the run's split has no test records (train.test_fraction=0)"}
    low, high = wilson_interval(test["correct"], test["records"], confidence)
    return scores | {
        "test_accuracy": test["accuracy"],
        "test_accuracy_low": low,
        "test_accuracy_high": high,
        "test_records": test["records"],
    }


def champion_sentence(champion: dict) -> str:
    """The registered model, what it was selected on and what it scored on data no choice saw."""
    scores = champion.get("scores", {})
    text = (
        f"Its best run's model, the weights of its judged epoch, is registered as `{champion['uri']}` (version "
        f"{champion['version']}, run {champion['run_id']}). Selected on validation, tested on test:"
    )
    if "val_accuracy" in scores:
        text += (
            f" validation accuracy {float(scores['val_accuracy']):.4f} ({scores['val_records']} records, selected on),"
        )
    if "test_accuracy" in scores:
        return text + (
            f" test accuracy {float(scores['test_accuracy']):.4f} [{float(scores['test_accuracy_low']):.4f}, "
            f"{float(scores['test_accuracy_high']):.4f}] (95% Wilson interval, {scores['test_records']} records "
            "held out from every choice)."
        )
    return text + f" {scores.get('test_note', 'not tested')}."


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
