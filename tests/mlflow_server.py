"""Test helper: a real ``mlflow server`` on loopback, the tracking server a multi-host training logs to.

It serves the artifacts too (``--artifacts-destination``, MLflow's default proxied artifact access), so
workers on other hosts write runs, metrics and models through HTTP only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bigimage.config import PROJECT_ROOT

STARTUP_SECONDS = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def mlflow_server(directory: Path) -> Iterator[str]:
    """An MLflow server with its sqlite store and artifacts under ``directory``; yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
        "--artifacts-destination", str(directory / "artifacts"),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    with open(directory / "server.log", "wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                text = (directory / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow server did not start on {url}:\n{text}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@contextmanager
def mlflow_ui(store: str, experiment: str, port: int) -> Iterator[str]:
    """``analysis/mlflow_ui.py`` serving ``store``'s ``experiment`` on ``port``, as a user starts it; yields
    the line it printed (``MLflow UI: <address>``, or the last line before it exited) and stops it
    (SIGTERM) on exit."""
    command = [sys.executable, "analysis/mlflow_ui.py", "--tracking-uri", store, "--experiment", experiment]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--no-browser"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = ""
        while "MLflow UI:" not in line and server.poll() is None:
            line = server.stdout.readline() if server.stdout else ""
        yield line
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
