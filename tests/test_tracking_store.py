"""The sqlite store under load and where its files go: first runs started together on a fresh store all
finish (the store is created and migrated once, under its lock), and its artifacts sit beside it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import mlflow
import pytest
from omegaconf import OmegaConf

from bigimage.tracking.runs import CONFIG_ARTIFACT, tracked_run
from bigimage.tracking.store import connect, default_artifact_location, prepare_store

PROCESSES = 8
EXPERIMENT = "load"


def first_run(uri: str, barrier: Any, index: int) -> None:
    """One process's first run: wait for the others, then open the store and log a run as a task does."""
    barrier.wait(timeout=120)  # imports done everywhere: all open the fresh store at the same instant
    _, experiment_id = connect(uri, EXPERIMENT)
    cfg = OmegaConf.create({"index": index, "tracking": {"system_metrics": False}})
    with tracked_run(cfg, task="load", experiment_id=experiment_id):
        mlflow.log_metric("index", index)


def test_eight_first_runs_at_once_on_a_fresh_store_all_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")  # real, separate interpreters, as run.py starts them
    barrier = context.Barrier(PROCESSES)
    processes = [context.Process(target=first_run, args=(uri, barrier, index)) for index in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=240)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.metrics["index"] for run in runs) == list(range(PROCESSES))
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert (tmp_path / "store" / "mlflow.db.lock").exists()


def test_a_sqlite_stores_artifacts_sit_beside_its_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'x' / 'mlflow.db'}"
    _, experiment_id = connect(uri, "beside")
    with tracked_run(OmegaConf.create({"tracking": {"system_metrics": False}}), task="t", experiment_id=experiment_id):
        mlflow.log_text("hello", "note.txt")
        run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]  # inside the run
    client = mlflow.MlflowClient(uri)
    assert client.get_experiment(experiment_id).artifact_location == (tmp_path / "x" / "artifacts").as_uri()
    assert client.get_experiment("0").artifact_location == (tmp_path / "x" / "artifacts" / "0").as_uri()
    folder = tmp_path / "x" / "artifacts" / run_id / "artifacts"
    assert (folder / "note.txt").read_text() == "hello"
    assert (folder / CONFIG_ARTIFACT).is_file()
    assert default_artifact_location(f"sqlite:///{tmp_path}/y/other.db") == (tmp_path / "y" / "artifacts").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000") is None  # a server picks its own


def test_preparing_a_store_makes_it_once_and_leaves_servers_alone(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'p' / 'mlflow.db'}"
    prepare_store(uri)
    prepare_store(uri)
    prepare_store("http://127.0.0.1:9")  # nothing to make: no connection is tried
    assert mlflow.MlflowClient(uri).get_experiment("0").name == "Default"
