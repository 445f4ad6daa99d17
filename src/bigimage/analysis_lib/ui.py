"""Open the MLflow UI on loopback on the comparison of an experiment's training runs (docs/mlflow.md): it
saves the view :data:`VIEW` as an experiment tag and opens the runs table on it."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import webbrowser
from pathlib import Path
from typing import Any

from bigimage import termination
from bigimage.analysis_lib import common
from bigimage.tracking import judged, names, query

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 5000
SCRIPT = query.PROJECT_ROOT / "analysis" / "mlflow_ui.py"


def _reachable(host: str) -> str:
    """Where this machine reaches a server listening on ``host`` (loopback for every interface)."""
    return LOOPBACK if host in ("0.0.0.0", "::") else host


VIEW_ID = "bigimage-compare"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"  # the UI's saved-view tag: prefix + the view's id
VIEW_NAME = "Compare training runs"


def _column(kind: str, key: str) -> str:
    """A runs-table column as the UI names it (``params.`batch_size```)."""
    return f"{kind}.`{key}`"


PARAMS = ("strategy.name", "batch_size", "model.name", "epochs", "cluster.name")  # what tells the runs apart
METRICS = (judged.VALUE_METRIC, judged.EPOCH_METRIC, names.SECONDS_PER_EPOCH)  # how good, when, how costly
COLUMNS = [*(_column("params", key) for key in PARAMS), *(_column("metrics", key) for key in METRICS)]
COLUMNS.append(_column("attributes", "Models"))
RUN_NAME = _column("attributes", "Run Name")

#: The saved view's state: search facets and table state, in the UI's own field names. The UI applies
#: the widths only to the columns the order lists (the rest keep their place after them).
VIEW: dict[str, Any] = {
    "searchFilter": "tags.task = 'train'",
    "orderByKey": _column("metrics", judged.VALUE_METRIC),
    "orderByAsc": False,
    "selectedColumns": COLUMNS,
    "columnOrder": [RUN_NAME, *COLUMNS],
    "columnWidths": {RUN_NAME: 320},  # the whole name: strategy, batch size, cluster, model, data
}


def save_view(tracking_uri: str, experiment_id: str) -> None:
    """Store :data:`VIEW` as the experiment's saved view :data:`VIEW_ID` (replacing an earlier one)."""
    envelope = {"name": VIEW_NAME, "createdAt": int(time.time() * 1000), "state": json.dumps(VIEW)}
    query.client_for(tracking_uri).set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))


def runs_url(host: str, port: int, experiment_id: str) -> str:
    """The experiment's runs in the machine-learning view of the MLflow 3 UI, through the saved view."""
    runs = f"http://{_reachable(host)}:{port}/#/experiments/{experiment_id}/runs"
    return f"{runs}?workflowType=machine_learning&viewStateShareKey={VIEW_ID}"


def _shown(path: str | Path) -> str:
    """``path`` relative to the current directory when it lies below it (shorter to read and paste)."""
    path = Path(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def command(tracking_uri: str, experiment: str) -> str:
    """The command line that opens the UI on ``experiment``'s runs (what the main job prints last)."""
    return f"{_shown(sys.executable)} {_shown(SCRIPT)} --tracking-uri {tracking_uri} --experiment {experiment}"


def _wait_until_listening(host: str, port: int, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with code {server.returncode} before it listened on {host}:{port}")
        try:
            with socket.create_connection((_reachable(host), port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow ui did not listen on {host}:{port} within {timeout:.0f} s")


def serve(tracking_uri: str, experiment_id: str, host: str, port: int, browser: bool, timeout: float = 300) -> int:
    """Run ``mlflow ui`` until it exits or this process is stopped; returns its exit code."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host]
    command += ["--port", str(port), "--workers", "1"]  # one user: one worker starts in half the time of four
    server = subprocess.Popen(command, env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri})
    try:
        with termination.signals_raise():
            _wait_until_listening(host, port, server, timeout)
            url = runs_url(host, port, experiment_id)
            print(f"MLflow UI: {url}  (Ctrl-C stops it)", flush=True)
            if browser:
                webbrowser.open(url)
            return server.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP through bigimage.termination
        return 0
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=30)


@common.exits_without_runs
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="analysis/mlflow_ui.py",
        description="Start the MLflow UI over the project's store and open it on an experiment's runs "
        "(the machine-learning view).",
    )
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else the project's store")
    parser.add_argument("--experiment", default=None, help=f"experiment name (default: '{query.DEFAULT_EXPERIMENT}')")
    parser.add_argument(
        "--host", default=LOOPBACK, help="where the UI listens (default: 127.0.0.1 only; it has no login)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    parser.add_argument("--no-browser", action="store_true", help="only print the address")
    args = parser.parse_args(argv)
    selection = query.select(args.tracking_uri, args.experiment)
    save_view(selection.tracking_uri, selection.experiment_id)
    return serve(selection.tracking_uri, selection.experiment_id, args.host, args.port, not args.no_browser)
