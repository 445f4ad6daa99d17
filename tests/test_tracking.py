"""The MLflow tracking layer: where runs go, what every run records, and failure."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from bigimage.config import PROJECT_ROOT
from bigimage.tracking.runs import CONFIG_ARTIFACT, flatten_config, tracked_run
from bigimage.tracking.store import connect, resolve_tracking_uri
from tests.conftest import compose_config


def test_tracking_uri_default_env_and_relative(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///mlruns/other.db") == f"sqlite:///{PROJECT_ROOT / 'mlruns' / 'other.db'}"


def test_flattened_params_use_dotted_keys_and_leave_out_what_no_one_reads() -> None:
    params = flatten_config(compose_config(["cluster=maximal", "batch_size=16"]))
    assert params["cluster.name"] == "maximal"
    assert params["batch_size"] == "16"
    assert not any(
        key.endswith("._target_") or key.startswith(("cluster.shape.", "cluster.dataproc.")) for key in params
    )
    assert "strategy.worker_timeout_seconds" not in params and "model.name" in params
    on_dataproc = flatten_config(compose_config(["cluster=maximal", "cluster.deploy=dataproc"]))
    assert on_dataproc["cluster.shape.worker_count"] == "7" and "cluster.dataproc.region" in on_dataproc
    assert params["speedtest.batch_sizes"] == "[8, 16, 32, 64]"
    assert params["tfrecord_dir"].startswith(str(PROJECT_ROOT))
    assert not any(key.startswith("hydra") for key in params)


def test_run_logs_config_tags_and_artifact(mlflow_store: str, tmp_path: Path) -> None:
    cfg = compose_config(
        ["task=preprocess", f"tracking.uri={mlflow_store}", f"tracking.artifact_root={tmp_path / 'art'}"]
    )
    _, experiment_id = connect(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    with tracked_run(cfg, task="preprocess", experiment_id=experiment_id) as run:
        mlflow.log_metric("images", 3)
    stored = mlflow.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params["cluster.name"] == "local"
    assert stored.data.params["task.name"] == "preprocess"
    assert stored.data.tags["task"] == "preprocess"
    assert len(stored.data.tags["git_commit"]) >= 7
    assert "overrides" in stored.data.tags
    assert stored.data.metrics["images"] == 3
    assert stored.info.artifact_uri.startswith((tmp_path / "art").as_uri())
    config_text = mlflow.artifacts.load_text(f"{stored.info.artifact_uri}/{CONFIG_ARTIFACT}")
    assert "name: preprocess" in config_text


def test_failed_run_keeps_what_it_logged(mlflow_store: str) -> None:
    cfg = compose_config(["task=train", f"tracking.uri={mlflow_store}"])
    _, experiment_id = connect(cfg.tracking.uri, "failures", None)
    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(cfg, task="train", experiment_id=experiment_id) as run:
            mlflow.log_metric("loss", 1.5, step=0)
            raise RuntimeError("boom")
    stored = mlflow.get_run(run.info.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags["error"] == "RuntimeError: boom"
    assert stored.data.metrics["loss"] == 1.5
    assert stored.data.params["strategy.name"] == "default"
    traceback_text = mlflow.artifacts.load_text(f"{stored.info.artifact_uri}/error/traceback.txt")
    assert "boom" in traceback_text


def test_experiment_creation_is_idempotent(mlflow_store: str, tmp_path: Path) -> None:
    first = connect(mlflow_store, "same", str(tmp_path / "a"))[1]
    second = connect(mlflow_store, "same", str(tmp_path / "a"))[1]
    assert first == second
