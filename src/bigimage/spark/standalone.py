"""A real Spark standalone cluster on loopback, from the Spark inside the pyspark wheel (``bin/spark-class``).

No JVM outlives the run: each daemon leads its own process group, stopped from ``stop()``, ``atexit``,
SIGTERM/SIGHUP (:mod:`bigimage.termination`) or ``PR_SET_PDEATHSIG`` (network and secret: docs/clusters.md).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bigimage import termination
from bigimage.machine import available_memory, live_group_members
from bigimage.spark import isolate

log = logging.getLogger(__name__)

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
LOOPBACK = "127.0.0.1"
# Heap of the Master/Worker daemons themselves (not of the executors); Spark's default is 1g.
DAEMON_MEMORY = "512m"

_MASTER_STARTED = re.compile(r"Starting Spark master at (spark://\S+)")
_MASTER_BIND_FAILED = re.compile(r"(could not bind|BindException|Address already in use)", re.IGNORECASE)
_WORKER_REGISTERED = re.compile(r"Successfully registered with master")


class StandaloneError(RuntimeError):
    """The standalone cluster could not start, or a master cannot be reached."""


def spark_home() -> Path:
    """The Spark inside the pyspark wheel (``SPARK_HOME`` if set and it has ``bin/spark-class``)."""
    env = os.environ.get("SPARK_HOME")
    if env and (Path(env) / "bin" / "spark-class").exists():
        return Path(env)
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    if not (home / "bin" / "spark-class").exists():
        raise StandaloneError(f"no bin/spark-class under {home}; reinstall pyspark or set SPARK_HOME")
    return home


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def parse_memory_mb(value: str | int) -> int:
    """Spark memory strings (``512m``, ``2g``, ``1t``, plain bytes) to MiB."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", text)
    if match is None:
        raise ValueError(f"cannot read memory size {value!r}; use e.g. 512m or 2g")
    scale = {"": 1 / (1024 * 1024), "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}[match.group(2)]
    return max(int(float(match.group(1)) * scale), 1)


def check_memory(workers: int, memory_per_worker: str, driver_memory: str = "0m") -> None:
    """Fail before starting when executors x executor_memory (+ driver) exceed the available RAM."""
    need = workers * parse_memory_mb(memory_per_worker) + parse_memory_mb(driver_memory)
    have = available_memory() // (1024 * 1024)
    if have and need > have:
        raise StandaloneError(
            f"the shape needs {workers} executors x {memory_per_worker} + driver {driver_memory} = {need} MiB, "
            f"but this machine has only {have} MiB available; lower cluster.executor_memory or "
            "cluster.executors, or run the shape with cluster.deploy=local (task slots in one JVM)"
        )


def master_endpoints(master: str) -> list[tuple[str, int]]:
    """Host/port pairs of a ``spark://h1:p1[,h2:p2]`` URL (several for a HA master)."""
    if not master.startswith("spark://"):
        raise ValueError(f"not a standalone master URL: {master!r}")
    pairs = []
    for part in master[len("spark://") :].split(","):
        parsed = urlparse(f"spark://{part}")
        if not parsed.hostname:
            raise ValueError(f"cannot read host:port from master URL {master!r}")
        pairs.append((parsed.hostname, parsed.port or 7077))
    return pairs


def check_master_reachable(master: str, timeout_seconds: float = 5.0) -> None:
    """A TCP connect to the master before a SparkSession waits on it, so a wrong URL fails in seconds."""
    if not master.startswith("spark://"):
        return  # local[...] needs nothing; yarn is found through the Hadoop configuration
    errors = []
    for host, port in master_endpoints(master):
        try:
            with socket.create_connection((host, port), timeout=timeout_seconds):
                return
        except OSError as error:
            errors.append(f"{host}:{port}: {error}")
    raise StandaloneError(
        f"cannot reach the Spark master {master} within {timeout_seconds:g} s ({'; '.join(errors)}); "
        "check cluster.master and that the master is running, or drop cluster.master to start a "
        "cluster for the shape"
    )


def _pdeathsig_preexec() -> Any:
    """preexec_fn: on Linux, SIGTERM the child when the parent dies (also on SIGKILL of the parent)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def stop_process_groups(pgids: list[int], grace_seconds: float = 10.0) -> None:
    """SIGTERM process groups, wait (one shared grace period), then SIGKILL what is left."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    left = [pgid for pgid in pgids if live_group_members(pgid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pgid for pgid in left if live_group_members(pgid)]
    for pgid in left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


_LIVE: set[StandaloneCluster] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for cluster in clusters:
        try:
            cluster.stop()
        except Exception:
            log.exception("could not stop the standalone cluster at %s", cluster.master_url)


@dataclass(eq=False)
class Daemon:
    """One Master or Worker JVM (the leader of its own process group)."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"


@dataclass(eq=False)
class StandaloneCluster:
    """A Spark standalone master and ``workers`` workers on loopback; ``start()``/``stop()`` or ``with``."""

    workers: int
    cores_per_worker: int
    memory_per_worker: str = "1g"
    host: str = LOOPBACK
    # None: a free port picked now (Spark moves on if it is taken meanwhile); a fixed one must be free.
    master_port: int | None = None
    start_timeout_seconds: float = 120.0
    work_dir: Path | None = None
    master_url: str = ""
    master: Daemon | None = None
    worker_daemons: list[Daemon] = field(default_factory=list)
    start_seconds: float = 0.0
    secret: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    # Share-nothing mode: directories each worker sees empty, as on a host of its own (bigimage.spark.isolate).
    isolate: tuple[str, ...] = ()
    _own_work_dir: bool = False
    _stopped: bool = False
    _signals: bool = False  # holds bigimage.termination (not outside the main thread: atexit, PR_SET_PDEATHSIG)

    def __enter__(self) -> StandaloneCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def _dir(self) -> Path:
        if self.work_dir is None:
            raise StandaloneError("the cluster has not been started")
        return self.work_dir

    def start(self) -> StandaloneCluster:
        if self.workers < 1 or self.cores_per_worker < 1:
            raise StandaloneError(
                f"a standalone cluster needs >= 1 worker with >= 1 core, got {self.workers} x {self.cores_per_worker}"
            )
        parse_memory_mb(self.memory_per_worker)
        if self.isolate and (reason := isolate.unavailable()):
            raise StandaloneError(f"share-nothing workers need a private mount namespace each, and {reason}")
        begin = time.monotonic()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="bigimage-standalone-"))
            self._own_work_dir = True
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        self._signals = termination.install()
        try:
            self._start_master()
            for index in range(self.workers):
                self._start_worker(index)
            workers = {f"Spark {worker.name}": worker for worker in self.worker_daemons}
            self._await_log(workers, _WORKER_REGISTERED, f"registering with {self.master_url}")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - begin
        log.info(
            "standalone cluster %s: %d workers x %d cores x %s, started in %.1f s",
            self.master_url,
            self.workers,
            self.cores_per_worker,
            self.memory_per_worker,
            self.start_seconds,
        )
        return self

    def stop(self) -> None:
        """Stop workers (with their executors) and master; idempotent, safe to call from atexit."""
        if self._stopped:
            return
        self._stopped = True
        # Workers (with their executors) first, then the master; all at once, one shared grace period.
        daemons = [*self.worker_daemons, *([self.master] if self.master else [])]
        stop_process_groups([daemon.pid for daemon in daemons])
        for daemon in daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.process.wait(timeout=10)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if self._signals:
            termination.uninstall()
        if self._own_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def pids(self) -> list[int]:
        """All live pids that belong to this cluster: daemons, executors, Python workers."""
        daemons = [*([self.master] if self.master else []), *self.worker_daemons]
        return [pid for daemon in daemons for pid in live_group_members(daemon.pid)]

    def auth_conf(self) -> dict[str, str]:
        """The settings an application needs to join this cluster (the secret included: keep it out of logs)."""
        return {"spark.authenticate": "true", "spark.authenticate.secret": self.secret}

    def _properties_file(self) -> Path:
        """The daemons' Spark properties, readable by this user only (the secret must not reach a command line)."""
        path = self._dir / "spark-daemons.conf"
        settings = {**self.auth_conf(), "spark.master.rest.enabled": "false"}
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.writelines(f"{key} {value}\n" for key, value in settings.items())
        return path

    def _env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": self.host,
            "SPARK_MASTER_HOST": self.host,
            "SPARK_WORKER_DIR": str(self._dir / "work"),
            "SPARK_LOCAL_DIRS": str(self._dir / "local"),
            "SPARK_LOG_DIR": str(self._dir / "logs"),
            "SPARK_PID_DIR": str(self._dir),
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "PYSPARK_PYTHON": sys.executable,
        }
        for key in ("SPARK_CONF_DIR", "SPARK_MASTER_PORT", "SPARK_MASTER_WEBUI_PORT", "SPARK_WORKER_PORT"):
            env.pop(key, None)
        return env

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Daemon:
        spark_class = spark_home() / "bin" / "spark-class"
        log_path = self._dir / f"{name}.log"
        preexec = _pdeathsig_preexec() if threading.current_thread() is threading.main_thread() else None
        argv = [str(spark_class), *args]
        if self.isolate and name != "master":  # a worker in its own mount namespace, its own dirs kept
            dirs = [str(self._dir / path) for path in ("work", "local", "logs")]
            conf = [str(self._dir / "spark-daemons.conf")]
            argv = isolate.command(argv, self.isolate, keep=conf, mkdirs=dirs, cwd=str(self._dir))
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env={**self._env(), **(extra_env or {})},
                cwd=str(self._dir),
                start_new_session=True,  # own process group: killpg stops the daemon and its children
                preexec_fn=preexec,
            )
        return Daemon(name=name, process=process, log_path=log_path)

    def _start_master(self) -> None:
        for path in ("work", "local", "logs"):
            (self._dir / path).mkdir(exist_ok=True)
        try:
            port = self.master_port or free_port(self.host)
            webui_port = free_port(self.host)
        except OSError as error:
            raise StandaloneError(
                f"the Spark master on {self.host}:<any port> could not bind: {error}; use an address of this "
                "machine (127.0.0.1 for loopback)"
            ) from error
        env = {"SPARK_MASTER_OPTS": "-Dspark.port.maxRetries=0"} if self.master_port else None
        args = ["--host", self.host, "--port", str(port), "--webui-port", str(webui_port)]
        self.master = self._spawn(
            "master", [MASTER_CLASS, *args, "--properties-file", str(self._properties_file())], env
        )
        match = self._await_log({f"the Spark master on {self.host}:{port}": self.master}, _MASTER_STARTED, "starting")
        self.master_url = match.group(1)
        if self.master_url != f"spark://{self.host}:{port}":
            log.warning("port %d was taken; the master bound %s instead", port, self.master_url)

    def _start_worker(self, index: int) -> None:
        args = [
            "--host", self.host,
            "--cores", str(self.cores_per_worker),
            "--memory", str(self.memory_per_worker),
            "--webui-port", str(free_port(self.host)),
            "--work-dir", str(self._dir / "work" / f"worker-{index}"),
            "--properties-file", str(self._dir / "spark-daemons.conf"),
        ]  # fmt: skip
        self.worker_daemons.append(self._spawn(f"worker-{index}", [WORKER_CLASS, *args, self.master_url]))

    def _await_log(self, daemons: dict[str, Daemon], pattern: re.Pattern[str], goal: str) -> re.Match[str]:
        """Wait until every daemon's log (keyed by how a message names it) shows ``pattern``; returns the last
        match. A daemon or the master that exits first, or the timeout, fails the start with its log."""
        deadline = time.monotonic() + self.start_timeout_seconds
        watched = [*daemons.items(), *([(f"the Spark master {self.master_url}", self.master)] if self.master else [])]
        while True:
            found = {label: match for label, daemon in daemons.items() if (match := pattern.search(daemon.log_text()))}
            if len(found) == len(daemons):
                return list(found.values())[-1]
            for label, daemon in watched:
                if not daemon.alive():
                    reason = "could not bind its port" if _MASTER_BIND_FAILED.search(daemon.log_text()) else "exited"
                    raise StandaloneError(
                        f"{label} {reason} before {goal} (exit code {daemon.process.returncode}); "
                        f"last lines of {daemon.log_path}:\n{daemon.tail()}"
                    )
            if time.monotonic() > deadline:
                pending = [label for label in daemons if label not in found]
                first = daemons[pending[0]]
                raise StandaloneError(
                    f"{', '.join(pending)} did not finish {goal} within {self.start_timeout_seconds:g} s; "
                    f"last lines of {first.log_path}:\n{first.tail()}"
                )
            time.sleep(0.2)


def auth_conf(master_url: str) -> dict[str, str]:
    """:meth:`StandaloneCluster.auth_conf` of the running cluster this process started at ``master_url``, else {}."""
    with _LIVE_LOCK:
        clusters = [cluster for cluster in _LIVE if cluster.master_url == master_url and not cluster._stopped]
    return clusters[0].auth_conf() if clusters else {}
