"""Secrets never written down (issue 26): planted through every route docs/security.md offers, found nowhere
but where they must be.

Two real runs of ``run.py`` against a real ``mlflow server`` behind a proxy that demands the planted
login: a preprocessing (local Spark with ``spark.authenticate.secret``) and a one-job sweep of a 2-worker
``multi_worker_mirrored`` training. Each gets a Spark secret through ``cluster.spark_conf``, a tracking
URI with ``user:password@`` and a ``+something.token=`` override. Afterwards every file under the test's
folder (the MLflow store and its artifacts, Hydra's output folders, ``run.log``, the data and training
folders), the runs' stdout and stderr, and the command lines of every process the runs started hold none
of them; the workers' config files were mode 0600 while they ran, and the login reached the workers
through their environment.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from bigimage.config import PROJECT_ROOT
from tests.login_proxy import login_proxy
from tests.mlflow_server import mlflow_server
from tests.tfrecord_fixtures import write_tfrecord_dir

SPARK_SECRET = "S3CRETVALUE"
PASSWORD = "PW123"
TOKEN = "T0KENVALUE"
SECRETS = (SPARK_SECRET, PASSWORD, TOKEN)
USER = "user"
WORKER_MODULE = "bigimage.train.worker"


@dataclass
class Watched:
    """What one ``run.py`` did: its exit code and output, and what its descendant processes showed."""

    argv: list[str]  # run.py's, as the user typed it
    returncode: int = -1
    stdout: str = ""
    stderr: str = ""
    command_lines: dict[int, list[str]] = field(default_factory=dict)
    worker_environments: dict[str, dict[str, str]] = field(default_factory=dict)  # by task index
    worker_config_modes: dict[str, int] = field(default_factory=dict)


def _look(process: psutil.Process, watched: Watched) -> None:
    """Record ``process``'s command line (not a fork's, which is the user's own, secrets and all); of a
    training worker, its environment and its config's mode."""
    try:
        argv = process.cmdline()
        if argv[1:] != watched.argv:
            watched.command_lines.setdefault(process.pid, argv)
        if WORKER_MODULE in argv:  # a worker, or a child it forked
            watched.worker_environments.setdefault(argv[argv.index("--task-index") + 1], process.environ())
            config = argv[argv.index("--config") + 1]
            watched.worker_config_modes[config] = stat.S_IMODE(os.stat(config).st_mode)
    except (psutil.Error, FileNotFoundError, ValueError, IndexError):
        pass  # gone already, or not started far enough yet: the next look sees it


def run_watched(arguments: list[str], timeout: float) -> Watched:
    """``python run.py <arguments>``, its descendants looked at every 0.1 s until it ends."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    watched = Watched(argv=["run.py", *arguments])
    job = subprocess.Popen(
        [sys.executable, *watched.argv],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output: dict[str, str] = {}
    reader = threading.Thread(target=lambda: output.update(zip(("stdout", "stderr"), job.communicate())))
    reader.start()
    deadline = time.monotonic() + timeout
    parent = psutil.Process(job.pid)
    while job.poll() is None and time.monotonic() < deadline:
        try:
            for child in parent.children(recursive=True):
                _look(child, watched)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    if job.poll() is None:
        job.kill()
    reader.join(timeout=60)
    watched.returncode = job.wait()
    watched.stdout, watched.stderr = output.get("stdout", ""), output.get("stderr", "")
    return watched


def files_holding(root: Path, secrets: tuple[str, ...]) -> dict[str, list[str]]:
    """Every file under ``root`` that holds one of ``secrets`` (as bytes), with the ones it holds."""
    found: dict[str, list[str]] = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            held = [secret for secret in secrets if secret.encode() in data]
            if held:
                found[str(path.relative_to(root))] = held
    return found


def holding(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def planted(uri: str, tmp_path: Path) -> list[str]:
    """The overrides that plant the secrets (docs/security.md's routes), with data and outputs under ``tmp_path``."""
    return [
        f"tracking.uri={uri}",
        f"+cluster.spark_conf={{spark.authenticate: 'true', spark.authenticate.secret: {SPARK_SECRET}}}",
        f"+something.token={TOKEN}",
        "tracking.experiment=secrets",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'outputs'}",
    ]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_planted_secret_is_found_nowhere(tmp_path: Path, make_image_tree) -> None:
    images = make_image_tree(per_class=6)
    tfrecords = tmp_path / "train-tfrecords"
    write_tfrecord_dir(tfrecords, num_images=64, image_size=32, num_shards=2)
    with mlflow_server(tmp_path / "server") as server, login_proxy(server, USER, PASSWORD) as proxy:
        uri = proxy.url.replace("http://", f"http://{USER}:{PASSWORD}@")
        preprocess = run_watched(
            [
                "task=preprocess", "dataset=folder", f"dataset.root={images}", f"tfrecord_dir={tmp_path / 'tfr'}",
                "image_size=32", "num_shards=2", f"hydra.run.dir={tmp_path / 'hydra-run'}", *planted(uri, tmp_path),
            ],
            timeout=300,
        )  # fmt: skip
        assert preprocess.returncode == 0, preprocess.stderr[-3000:]
        training = run_watched(
            [
                "-m", "task=train", "strategy=multi_worker_mirrored", "strategy.num_workers=2", f"tfrecord_dir={tfrecords}",
                "image_size=32", "batch_size=16", "epochs=1", "strategy.worker_timeout_seconds=300",
                f"hydra.sweep.dir={tmp_path / 'hydra-sweep'}", *planted(uri, tmp_path),
            ],
            timeout=420,
        )  # fmt: skip
        assert training.returncode == 0, training.stderr[-3000:]
        client = MlflowClient(server)
        runs = _runs(client)
        by_task = {run.data.tags["task"]: run for run in runs}
        assert client.get_metric_history(by_task["train"].info.run_id, "loss")  # the chief logged, with the login

    # Nowhere: not in any file (store, artifacts, Hydra's folders, logs, data), output or command line.
    assert files_holding(tmp_path, SECRETS) == {}
    for watched in (preprocess, training):
        assert holding(watched.stdout) == [] and holding(watched.stderr) == []
        leaks = {pid: argv for pid, argv in watched.command_lines.items() if holding(" ".join(argv))}
        assert leaks == {}
    assert any("java" in argv[0] for argv in preprocess.command_lines.values())  # the Spark JVM was looked at

    # Where they must be: the login in the workers' environment, which they used for every request.
    assert sorted(training.worker_environments) == ["0", "1"]
    for environment in training.worker_environments.values():
        assert environment["MLFLOW_TRACKING_USERNAME"] == USER
        assert environment["MLFLOW_TRACKING_PASSWORD"] == PASSWORD
        assert environment["MLFLOW_TRACKING_URI"] == proxy.url
    workers = [argv for argv in training.command_lines.values() if WORKER_MODULE in argv]
    assert workers and not any("--tracking-uri" in argv for argv in workers)
    assert list(training.worker_config_modes.values()) == [0o600]  # one config file, both workers
    assert not any(Path(path).exists() for path in training.worker_config_modes)  # gone with the workers
    assert proxy.refused == [] and proxy.accepted > 0

    # Masked, not dropped: the runs record their config, overrides and Hydra files with *** in place.
    assert sorted(run.data.tags["task"] for run in runs) == ["preprocess", "sweep:train", "train"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert by_task["preprocess"].data.params["cluster.spark_conf.spark.authenticate.secret"] == "***"
    assert by_task["preprocess"].data.params["cluster.spark_conf.spark.authenticate"] == "true"
    for run in runs:
        overrides = run.data.tags["overrides"]
        assert re.search(r"spark\.authenticate\.secret: ?\*\*\*", overrides), overrides
        assert "+something.token=***" in overrides
        assert re.search(r"tracking\.uri=http\\?://\*\*\*@127\.0\.0\.1", overrides), overrides  # Hydra escapes :
    config = _artifact(tmp_path / "server", by_task["train"].info.run_id, "config/config.yaml")
    assert "spark.authenticate.secret: '***'" in config and "token: '***'" in config
    hydra_run = tmp_path / "hydra-run" / ".hydra"
    assert "spark.authenticate.secret: '***'" in (hydra_run / "config.yaml").read_text()
    assert "+something.token=***" in (hydra_run / "overrides.yaml").read_text()
    assert "+something.token=***" in (tmp_path / "hydra-sweep" / "multirun.yaml").read_text()
    assert "View run" in preprocess.stdout and f"at: {proxy.url}/#/experiments/" in preprocess.stdout


def _artifact(server_dir: Path, run_id: str, path: str) -> str:
    """An artifact's text from the server's artifact folder (``<experiment>/<run>/artifacts/<path>``)."""
    return next((server_dir / "artifacts").glob(f"*/{run_id}/artifacts/{path}")).read_text()


def _runs(client: MlflowClient) -> list[mlflow.entities.Run]:
    experiment = client.get_experiment_by_name("secrets")
    assert experiment is not None
    return client.search_runs([experiment.experiment_id])
