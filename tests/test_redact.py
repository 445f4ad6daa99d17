"""The one rule for secrets (:mod:`bigimage.tracking.redact`) and the places that apply it without a run:
which keys are secret, what free text, configs and Hydra's files become, the tracking login moved to
the environment, the log records of the process, and what a training worker is started with."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bigimage.tracking import redact
from bigimage.tracking.runs import flatten_config, run_tags
from bigimage.train.launch import WorkerJob
from bigimage.train.task import save_private


@pytest.mark.parametrize(
    "key",
    [
        "spark.authenticate.secret", "api_key", "apiKey", "APIKey", "spark.ssl.keyPassword", "AWS_SECRET_ACCESS_KEY",
        "something.token", "db-password", "passwd", "credentials", "credentials.user", "passphrase",
    ],
)  # fmt: skip
def test_keys_with_a_secret_word_part_are_secret(key: str) -> None:
    assert redact.is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "keras", "monkey", "turkey", "tokenizer", "keyboard", "spark.authenticate", "tracking.uri", "optimized_metric",
        "hydra.job.config.override_dirname.exclude_keys", "secretary",
    ],
)  # fmt: skip
def test_words_that_only_contain_a_secret_word_are_not(key: str) -> None:
    assert not redact.is_secret_key(key)


def test_the_project_config_has_no_secret_key() -> None:
    """Nothing the project itself configures is masked: the analysis reads its params back."""
    from tests.conftest import compose_config

    for task in ("pipeline", "train"):
        cfg = compose_config([f"task={task}"])
        assert redact.config(cfg) == OmegaConf.to_container(cfg, resolve=True)


def test_text_masks_url_userinfo_secret_pairs_and_nested_pairs() -> None:
    line = (
        "+cluster.spark_conf={spark.authenticate: 'true', spark.authenticate.secret: S3CRET} "
        "tracking.uri=http://user:PW123@127.0.0.1:5055 +x.token=ab a=http://h/?api_key=K1 "
        '+x.credentials={user: a, pass: b} {"password": "p w"} keras=1'
    )
    assert redact.text(line) == (
        "+cluster.spark_conf={spark.authenticate: 'true', spark.authenticate.secret: ***} "
        "tracking.uri=http://***@127.0.0.1:5055 +x.token=*** a=http://h/?api_key=*** "
        '+x.credentials=*** {"password": ***} keras=1'
    )
    assert redact.url("postgresql://me:secret@db/optuna") == "postgresql://***@db/optuna"
    assert redact.url("https://TOKEN@github.com/x.git") == "https://***@github.com/x.git"
    assert redact.url(r"tracking.uri=http\://u\:p@h\:1") == r"tracking.uri=http\://***@h\:1"  # a sweep job's
    assert redact.url("sqlite:////tmp/mlflow.db gs://bucket/a") == "sqlite:////tmp/mlflow.db gs://bucket/a"


def test_a_config_keeps_its_shape_with_secrets_masked() -> None:
    cfg = OmegaConf.create(
        {
            "cluster": {"spark_conf": {"spark.authenticate": "true", "spark.authenticate.secret": "S3CRET"}},
            "credentials": {"user": "me", "password": "pw"},
            "search": {"storage": "postgresql://me:pw@db/optuna", "token": None},
            "batch_size": 32,
        }
    )
    assert redact.config(cfg) == {
        "cluster": {"spark_conf": {"spark.authenticate": "true", "spark.authenticate.secret": "***"}},
        "credentials": "***",
        "search": {"storage": "postgresql://***@db/optuna", "token": None},
        "batch_size": 32,
    }
    params = flatten_config(cfg)
    assert params["cluster.spark_conf.spark.authenticate.secret"] == "***"
    assert params["search.storage"] == "postgresql://***@db/optuna" and params["batch_size"] == "32"
    tags = run_tags("train", ["tracking.uri=http://u:PW@h:1", "+a.token=T"])
    assert tags["overrides"] == "tracking.uri=http://***@h:1 +a.token=***"


def test_remembered_secrets_are_masked_in_log_records_as_whole_words(caplog: pytest.LogCaptureFixture) -> None:
    redact.protect({"deep": {"api_token": "R3MEMBERED"}, "db": "postgresql://me:DBPASS9@db/x"})
    log = logging.getLogger("tests.redact")
    with caplog.at_level(logging.INFO):
        log.info("sent %s to %s; R3MEMBEREDX stays", "R3MEMBERED", "postgresql://me:DBPASS9@db/x")
        log.info("DBPASS9 alone")
        try:
            raise RuntimeError("failed with R3MEMBERED")
        except RuntimeError:
            log.exception("boom")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["sent *** to postgresql://***@db/x; R3MEMBEREDX stays", "*** alone", "boom"]
    assert "failed with ***" in caplog.text and "failed with R3MEMBERED" not in caplog.text


def test_a_tracking_servers_login_moves_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (redact.ENV_TRACKING_USERNAME, redact.ENV_TRACKING_PASSWORD):
        monkeypatch.delenv(name, raising=False)
    assert redact.login_to_environment("http://me:p%40ss@127.0.0.1:5055/x") == "http://127.0.0.1:5055/x"
    assert os.environ[redact.ENV_TRACKING_USERNAME] == "me"
    assert os.environ[redact.ENV_TRACKING_PASSWORD] == "p@ss"
    # A database's URI keeps its login (its driver reads it there); so does a lone user name.
    assert redact.login_to_environment("postgresql://me:pw@db/mlflow") == "postgresql://me:pw@db/mlflow"
    assert redact.login_to_environment("https://me@host") == "https://me@host"


def test_hydra_files_are_rewritten_masked_with_their_mode(tmp_path: Path) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text("- tracking.uri=http://u:PW@h:1\n- +something.token=T0K\n- batch_size=16\n")
    path.chmod(0o640)
    redact.rewrite_yaml(path)
    assert OmegaConf.to_container(OmegaConf.load(path)) == [
        "tracking.uri=http://***@h:1",
        "+something.token=***",
        "batch_size=16",
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    redact.rewrite_yaml(tmp_path / "absent.yaml")  # nothing to do


def test_a_worker_gets_the_tracking_uri_and_login_through_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "me")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "PW123")
    job = WorkerJob("/w/config.yaml", 2, "/w", 60.0, tracking_uri="postgresql://me:DB@db/m", run_id="abc")
    argv = job.argv(0, "/w/result.json")
    assert "--tracking-uri" not in argv and not any("PW123" in word or "DB@" in word for word in argv)
    assert job.environment() == {
        "MLFLOW_TRACKING_USERNAME": "me",
        "MLFLOW_TRACKING_PASSWORD": "PW123",
        "MLFLOW_TRACKING_URI": "postgresql://me:DB@db/m",
    }
    assert "PW123" not in repr(job)


def test_the_workers_config_is_private_from_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("old")
    path.chmod(0o644)
    save_private(OmegaConf.create({"search": {"storage": "postgresql://me:pw@db/x"}}), str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert OmegaConf.load(path).search.storage == "postgresql://me:pw@db/x"  # the workers need it as it is
