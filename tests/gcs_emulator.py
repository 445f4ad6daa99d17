"""Pytest plugin: a real Cloud Storage emulator (``gcp-storage-emulator``) on loopback.

Loaded from ``tests/conftest.py`` with ``pytest_plugins = ["tests.gcs_emulator"]``.

* At configure time a free loopback port is reserved and ``STORAGE_EMULATOR_HOST`` is put into
  ``os.environ``, before any fixture runs. Every process started later (Spark's JVM and its Python
  workers, ``run.py`` subprocesses, multi-worker TensorFlow processes) inherits it, whichever
  order session fixtures start in. It also means no test can reach the real Cloud Storage by
  accident: without the ``gcs_emulator`` fixture, gs:// calls hit a closed local port.
* ``gcs_emulator`` (session) starts the emulator on that port, in memory, as a subprocess (so it
  serves while the test process blocks on Spark), waits until it answers, and stops it at the end.
  It yields the endpoint URL.
* ``gcs_bucket`` creates a fresh, uniquely named bucket per test and yields its name.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_HOST = "127.0.0.1"
_STARTUP_TIMEOUT = 30.0
_saved_env: dict[str, str | None] = {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]


def pytest_configure(config: pytest.Config) -> None:
    _saved_env[EMULATOR_ENV] = os.environ.get(EMULATOR_ENV)
    os.environ[EMULATOR_ENV] = f"http://{_HOST}:{_free_port()}"


def pytest_unconfigure(config: pytest.Config) -> None:
    old = _saved_env.pop(EMULATOR_ENV, None)
    if old is None:
        os.environ.pop(EMULATOR_ENV, None)
    else:
        os.environ[EMULATOR_ENV] = old


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start the emulator on the port in ``STORAGE_EMULATOR_HOST``; yield its endpoint URL."""
    endpoint = os.environ[EMULATOR_ENV]
    port = int(endpoint.rsplit(":", 1)[1])
    if _answers(endpoint):
        raise RuntimeError(f"port {port} reserved for the storage emulator is already serving something else")
    log_path = tmp_path_factory.mktemp("gcs_emulator") / "emulator.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gcp_storage_emulator",
            "start",
            "--host",
            _HOST,
            "--port",
            str(port),
            "--in-memory",
            "--quiet",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while not _answers(endpoint):
            if proc.poll() is not None:
                raise RuntimeError(f"storage emulator exited with {proc.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"storage emulator did not answer on {endpoint} within {_STARTUP_TIMEOUT}s")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> Iterator[str]:
    """A fresh empty bucket on the emulator; yields its name (use ``f"gs://{name}/..."``)."""
    from bigimage.data import storage

    client = storage.gcs_client()
    name = f"test-{uuid.uuid4().hex[:16]}"
    bucket = client.create_bucket(name)
    yield name
    try:
        for blob in client.list_blobs(name):
            blob.delete()
        bucket.delete()
    except Exception:  # teardown of an in-memory emulator: best effort
        pass
