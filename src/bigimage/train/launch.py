"""Start the worker processes of one training on this machine and watch them until they end.

Every training, whatever its strategy, runs in fresh OS processes (``python -m bigimage.train.worker``):
one for ``default`` and ``mirrored``, ``strategy.num_workers`` for the multi-worker strategies, each
with its own ``TF_CONFIG`` naming all workers on loopback ports. Fresh processes are what lets a sweep
run ``mirrored`` with different logical CPU counts one after another in one Python process (TensorFlow
fixes its devices once per process), and they keep TensorFlow's memory out of the launcher.

No wait is unbounded: the workers together get ``strategy.worker_timeout_seconds``; the first worker to
exit with an error, or the deadline, kills every other worker and raises :class:`WorkerFailedError`
naming the worker, its exit code and the last lines of its log. Each worker's stdout and stderr go to
``<work_dir>/logs/worker-<i>.log``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TAIL_LINES = 25


class WorkerFailedError(RuntimeError):
    """A worker process failed or the workers ran out of time; the others were killed."""

    def __init__(
        self, message: str, *, task_index: int | None = None, exit_code: int | None = None, pids: list[int] | None = None
    ):
        super().__init__(message)
        self.task_index = task_index
        self.exit_code = exit_code
        self.pids = list(pids or [])  # every worker process of the training, all dead by now


class WorkerTimeoutError(WorkerFailedError):
    """The workers did not finish within ``strategy.worker_timeout_seconds``."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (held open together so they differ)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG of worker ``index`` in a cluster of ``addresses`` (no separate chief: worker 0 is it)."""
    return json.dumps({"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}})


def tail(path: str, lines: int = TAIL_LINES) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except FileNotFoundError:
        return "<no log>"


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen
    log_path: str
    exit_code: int | None = field(default=None)


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker: this one minus what must not leak (TF_CONFIG, MLFLOW_RUN_ID)."""
    env = dict(os.environ)
    for key in ("TF_CONFIG", "MLFLOW_RUN_ID"):  # MLFLOW_RUN_ID overrides explicit run ids (mlflow#15713)
        env.pop(key, None)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _kill(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            try:
                os.killpg(worker.process.pid, signal.SIGKILL)  # its own session: the worker and its children
            except ProcessLookupError:
                pass
    for worker in workers:
        try:
            worker.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            log.error("worker %d (pid %d) did not die", worker.index, worker.process.pid)


def run_local_workers(
    config_path: str,
    num_workers: int,
    work_dir: str,
    *,
    timeout_seconds: float,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    result_file: str | None = None,
    poll_seconds: float = 0.2,
) -> None:
    """Run ``num_workers`` worker processes to completion; raise WorkerFailedError on any failure."""
    logs_dir = os.path.join(work_dir, "logs")
    os.makedirs(logs_dir, exist_ok=True)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)] if num_workers > 1 else []
    workers: list[_Worker] = []
    try:
        for index in range(num_workers):
            argv = [
                sys.executable, "-m", "bigimage.train.worker",
                "--config", config_path,
                "--task-index", str(index),
                "--num-workers", str(num_workers),
                "--work-dir", work_dir,
                "--parent-pid", str(os.getpid()),
            ]  # fmt: skip
            if run_id:
                argv += ["--run-id", run_id, "--tracking-uri", tracking_uri or ""]
            if result_file and index == 0:
                argv += ["--result-file", result_file]
            env = worker_env({"TF_CONFIG": tf_config(addresses, index)} if addresses else None)
            log_path = os.path.join(logs_dir, f"worker-{index}.log")
            with open(log_path, "ab") as out:
                process = subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=os.getcwd()
                )
            workers.append(_Worker(index, process, log_path))
            log.info("started worker %d/%d pid %d, log %s", index, num_workers, process.pid, log_path)
        _watch(workers, timeout_seconds, poll_seconds)
    finally:
        _kill(workers)


def _watch(workers: list[_Worker], timeout_seconds: float, poll_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        running = []
        for worker in workers:
            if worker.exit_code is None:
                worker.exit_code = worker.process.poll()
            if worker.exit_code is None:
                running.append(worker)
            elif worker.exit_code != 0:
                _kill(workers)
                others = ", ".join(
                    f"worker {w.index}: exit {w.process.returncode}" for w in workers if w is not worker
                )
                raise WorkerFailedError(
                    f"training worker {worker.index} of {len(workers)} (pid {worker.process.pid}) exited with code "
                    f"{worker.exit_code}{_signal_name(worker.exit_code)}; the other workers were killed"
                    f"{' (' + others + ')' if others else ''}. Last lines of {worker.log_path}:\n{tail(worker.log_path)}",
                    task_index=worker.index,
                    exit_code=worker.exit_code,
                    pids=[w.process.pid for w in workers],
                )
        if not running:
            return
        if time.monotonic() > deadline:
            _kill(workers)
            stuck = running[0]
            raise WorkerTimeoutError(
                f"training workers {[w.index for w in running]} still running after strategy.worker_timeout_seconds="
                f"{timeout_seconds:g}; all workers were killed. Last lines of worker {stuck.index} ({stuck.log_path}):\n"
                f"{tail(stuck.log_path)}",
                task_index=stuck.index,
                pids=[w.process.pid for w in workers],
            )
        time.sleep(poll_seconds)


def _signal_name(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            return ""
    return ""
