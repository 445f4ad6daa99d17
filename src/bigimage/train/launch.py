"""Start the worker processes of one training (``python -m bigimage.train.worker``) and watch them.

Fresh processes, since TensorFlow fixes its devices once per process; the first failure or the shared
deadline kills the others (:class:`WorkerFailedError`). ``strategy.launcher=spark_barrier`` runs the same
command once per Spark barrier task; workers on this machine share a private network (:mod:`.netns`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bigimage.data import storage
from bigimage.spark.barrier import build_tf_config
from bigimage.train.netns import EXPOSED, REQUIRED, PrivateNetwork, private_network
from bigimage.train.progress import EpochLines

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import ClusterConfig


log = logging.getLogger(__name__)

TAIL_LINES = 25
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
# A tracking server's login as MLflow reads it from the environment.
TRACKING_LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
# The run's tag saying where the TensorFlow workers' gRPC servers listen, and its values.
NETWORK_TAG = "network"
PRIVATE_NETWORK = "private (a network namespace with only lo; nothing outside reaches the workers)"
HOST_NETWORK = "host (listens on every interface of this machine)"
CLUSTER_NETWORK = "cluster (listens on the hosts' interfaces)"


class WorkerFailedError(RuntimeError):
    """A worker process failed or the workers ran out of time; the others were killed."""

    def __init__(
        self,
        message: str,
        *,
        task_index: int | None = None,
        exit_code: int | None = None,
        pids: list[int] | None = None,
        log_text: str = "",
    ):
        super().__init__(message)
        self.task_index = task_index
        self.exit_code = exit_code
        self.pids = list(pids or [])  # every worker process of the training, all dead by now
        self.log_text = log_text  # the failed worker's log, when it came from another host


class WorkerTimeoutError(WorkerFailedError):
    """The workers did not finish within ``strategy.worker_timeout_seconds``."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (held open together so they differ)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass(frozen=True)
class WorkerJob:
    """What every worker of one training is started with; a launcher only decides where they run."""

    config_path: str
    num_workers: int
    work_dir: str
    timeout_seconds: float
    tracking_uri: str | None = None
    run_id: str | None = None
    result_file: str | None = None  # the chief's final metrics, as JSON
    # What the workers write to (tracking, artifacts, checkpoints), relayed into their network namespace.
    worker_uris: Sequence[str | None] = ()
    # strategy.isolation: what happens where no private network namespace serves the workers (netns).
    isolation: str = REQUIRED
    # Taken when the job is made, so that it travels with the job to workers on other hosts.
    login: Mapping[str, str] = field(
        default_factory=lambda: {name: os.environ[name] for name in TRACKING_LOGIN if os.environ.get(name)}, repr=False
    )

    def environment(self) -> dict[str, str]:
        """The tracking URI (a database's may hold a password) and login, kept off the command line."""
        uri = {ENV_TRACKING_URI: self.tracking_uri} if self.tracking_uri else {}
        return {**self.login, **uri}

    def argv(self, index: int, result_file: str | None = None) -> list[str]:
        """The command line of worker ``index`` (the chief, index 0, writes ``result_file``)."""
        argv = [
            sys.executable, "-m", "bigimage.train.worker",
            "--config", self.config_path,
            "--task-index", str(index),
            "--num-workers", str(self.num_workers),
            "--work-dir", self.work_dir,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if self.run_id:
            argv += ["--run-id", self.run_id]
        result_file = result_file or self.result_file
        if result_file and index == 0:
            argv += ["--result-file", result_file]
        return argv

    def log_path(self, index: int) -> str:
        logs_dir = os.path.join(self.work_dir, "logs")
        os.makedirs(logs_dir, exist_ok=True)
        return os.path.join(logs_dir, f"worker-{index}.log")

    def start(self, index: int, tf_config: dict | None, prefix: Sequence[str] = ()) -> _Worker:
        """Worker ``index`` after ``prefix`` (a network namespace's), in its own session (so its whole group
        can be killed), its output appended to its log."""
        env = worker_env({**self.environment(), **({"TF_CONFIG": json.dumps(tf_config)} if tf_config else {})})
        argv, log_path = [*prefix, *self.argv(index)], self.log_path(index)
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=os.getcwd()
            )
        return _Worker(index, process, log_path)


def tail(path: str, lines: int = TAIL_LINES) -> str:
    return "".join(_text(path, _LOG_BYTES).splitlines(keepends=True)[-lines:]) or "<no log>"


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen
    log_path: str


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker: this one minus what must not leak (TF_CONFIG, MLFLOW_RUN_ID)."""
    env = dict(os.environ)
    for key in ("TF_CONFIG", "MLFLOW_RUN_ID"):  # MLFLOW_RUN_ID overrides explicit run ids (mlflow#15713)
        env.pop(key, None)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # oneDNN's kernels, also where TF's default is off (threads.py)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def _kill(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)  # its own session: the worker and its children
    for worker in workers:
        try:
            worker.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
            log.error("worker %d (pid %d) did not die", worker.index, worker.process.pid)


def run_local_workers(job: WorkerJob, *, poll_seconds: float = 0.2) -> None:
    """Run ``job.num_workers`` worker processes to completion; raise WorkerFailedError on any failure."""
    count = job.num_workers
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)] if count > 1 else []
    workers: list[_Worker] = []
    with ExitStack() as stack:
        network = stack.enter_context(private_network(job.worker_uris, isolation=job.isolation)) if count > 1 else None
        stack.callback(_kill, workers)  # the workers go before the network's holder
        if count > 1:
            _tag_network(job, PRIVATE_NETWORK if network is not None else HOST_NETWORK)
        for index in range(count):
            tf_config = build_tf_config(addresses, index) if addresses else None
            worker = job.start(index, tf_config, network.prefix if network is not None else ())
            workers.append(worker)
            log.info("started worker %d/%d pid %d, log %s", index, count, worker.process.pid, worker.log_path)
        _watch(workers, job.timeout_seconds, poll_seconds, EpochLines.for_config(job.work_dir, job.config_path).poll)


def _watch(
    workers: list[_Worker], timeout_seconds: float, poll_seconds: float, on_poll: Callable[[], None] = lambda: None
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        on_poll()  # e.g. a line per finished epoch (bigimage.train.progress)
        codes = [worker.process.poll() for worker in workers]  # Popen keeps the code once it has one
        running = [worker for worker, code in zip(workers, codes) if code is None]
        failed = next((worker for worker, code in zip(workers, codes) if code), None)
        if failed is not None:
            _kill(workers)
            code = failed.process.returncode
            others = ", ".join(f"worker {w.index}: exit {w.process.returncode}" for w in workers if w is not failed)
            raise WorkerFailedError(
                f"training worker {failed.index} of {len(workers)} (pid {failed.process.pid}) exited with code "
                f"{code}{_signal_name(code)}; the other workers were killed"
                f"{' (' + others + ')' if others else ''}. Last lines of {failed.log_path}:\n{tail(failed.log_path)}",
                task_index=failed.index,
                exit_code=code,
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


def _tag_network(job: WorkerJob, value: str) -> None:
    """Tag the run (when there is one) with where the workers' gRPC servers listen; a failure only warns."""
    if not job.run_id:
        return
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient().set_tag(job.run_id, NETWORK_TAG, value)
    except Exception as error:
        log.warning("could not tag the run with %s=%s: %s", NETWORK_TAG, value, error)


def _signal_name(code: int | None) -> str:
    try:
        return f" (killed by {signal.Signals(-code).name})" if code is not None and code < 0 else ""
    except ValueError:
        return ""


# The executor side reports a failed worker between these markers; the driver finds it in Spark's error.
_FAILED_BEGIN = "<<bigimage-worker-failed"
_FAILED_END = "bigimage-worker-failed>>"
_FAILED_HEAD = re.compile(
    re.escape(_FAILED_BEGIN) + r" rank=(\d+) exit=(-?\d+) pid=(\d+)>>\n(.*?)\n" + re.escape(_FAILED_END), re.S
)
# Then the failed worker's log (its last _FAILED_LOG_BYTES), which the driver keeps with the run.
_LOG_BEGIN = "<<bigimage-worker-log>>"
_LOG_END = "<<bigimage-worker-log-end>>"
_FAILED_LOG = re.compile(re.escape(_LOG_BEGIN) + r"\n(.*?)\n" + re.escape(_LOG_END), re.S)
# A worker that fails after a peer died waits this long, so that the stage's error names the peer (the cause).
PEER_GRACE_SECONDS = 5.0
_LOG_BYTES = 1 << 20  # a worker's log and progress lines back through Spark: their last MiB
_FAILED_LOG_BYTES = 1 << 18  # inside an error message: its last 256 KiB


class BarrierWorker:
    """What each Spark barrier task runs: the worker CLI as a child process (Spark reuses its Python
    workers; TensorFlow sets up its devices once per process) with the task's TF_CONFIG. Nothing on the
    driver's disk is used, so the executor may be on another host; ``prefix`` joins a private network."""

    def __init__(self, job: WorkerJob, config_text: str, prefix: Sequence[str] = ()) -> None:
        self.job, self.config_text, self.prefix = job, config_text, list(prefix)

    def __call__(self, tf_config_dict: dict) -> dict:
        rank = int(tf_config_dict["task"]["index"])
        scratch = tempfile.mkdtemp(prefix=f"bigimage-barrier-{rank}-")
        try:
            config_path = stage_worker_config(self.config_text, scratch)
            work_dir, result_file = os.path.join(scratch, "work"), os.path.join(scratch, "result.json")
            job = replace(self.job, config_path=config_path, work_dir=work_dir, result_file=result_file)
            return self._run(job, rank, tf_config_dict)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run(self, job: WorkerJob, rank: int, tf_config_dict: dict) -> dict:
        worker = job.start(rank, tf_config_dict, self.prefix)
        process, log_path, host = worker.process, worker.log_path, socket.gethostname()
        try:
            try:
                code = process.wait(timeout=job.timeout_seconds)
            except subprocess.TimeoutExpired:
                code = None
            if code != 0:
                _kill([worker])
                if code is not None and code > 0:  # often the peer's death; a killed peer (the cause) reports first
                    time.sleep(PEER_GRACE_SECONDS)
                raise RuntimeError(_failure_report(job, rank, code, process.pid, host, log_path))
            result = None
            if rank == 0:
                with open(str(job.result_file), encoding="utf-8") as handle:
                    result = json.load(handle)
            progress = os.path.join(job.work_dir, "progress", f"worker-{rank}.jsonl")
            return {"rank": rank, "pid": process.pid, "host": host, "log": _text(log_path, _LOG_BYTES),
                    "progress": _text(progress, _LOG_BYTES), "result": result}  # fmt: skip
        finally:
            _kill([worker])  # never leave a worker behind this task (killed, cancelled or failed)


def stage_worker_config(config_text: str, scratch: str) -> str:
    """The config file a barrier task's worker runs with in ``scratch`` (local paths there, a remote
    ``tfrecord_dir`` copied there first), made on the executor's host; returns its path."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.create(config_text)
    if not isinstance(cfg, DictConfig):
        raise ValueError("the training config must be a mapping")
    url = str(cfg.tfrecord_dir)
    if storage.is_remote(url):
        began = time.monotonic()
        cfg.tfrecord_dir = storage.local_cache_copy(url, os.path.join(scratch, "tfrecords"))
        log.info("staged %s in %s in %.1f s", url, cfg.tfrecord_dir, time.monotonic() - began)
    cfg.paths.data_dir = os.path.join(scratch, "data")
    cfg.paths.output_dir = os.path.join(scratch, "outputs")
    path = os.path.join(scratch, "config.yaml")
    OmegaConf.save(cfg, path)
    return path


def _text(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(os.path.getsize(path) - limit, 0))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _failure_report(job: WorkerJob, rank: int, code: int | None, pid: int, host: str, log_path: str) -> str:
    """The failed worker, its last log lines and (for the driver's artifacts) its log, between markers."""
    if code is None:
        what = f"still running after strategy.worker_timeout_seconds={job.timeout_seconds:g} and was killed"
        code = -signal.SIGKILL
    else:
        what = f"exited with code {code}{_signal_name(code)}"
    return (
        f"{_FAILED_BEGIN} rank={rank} exit={code} pid={pid}>>\n"
        f"training worker {rank} of {job.num_workers} (pid {pid} on {host}, Spark barrier task {rank}) {what}; "
        f"Spark fails the barrier stage and stops the other workers. Last lines of its log:\n{tail(log_path)}\n"
        f"{_FAILED_END}\n{_LOG_BEGIN}\n{_text(log_path, _FAILED_LOG_BYTES)}\n{_LOG_END}"
    )


def _worker_failure(error: BaseException) -> WorkerFailedError | None:
    """The first failed worker named in a Spark error, as a WorkerFailedError (None: not a worker's failure)."""
    text = str(error)
    cause = error.__cause__
    while cause is not None:  # py4j errors carry the Java stack trace in their text; chained ones too
        text += "\n" + str(cause)
        cause = cause.__cause__
    match = _FAILED_HEAD.search(text)
    if match is None:
        return None
    rank, code, pid = map(int, match.group(1, 2, 3))
    logged = _FAILED_LOG.search(text, match.end())
    log_text = logged.group(1) if logged else ""
    return WorkerFailedError(match.group(4), task_index=rank, exit_code=code, pids=[pid], log_text=log_text)


def _keep(work_dir: str, rank: int, log_text: str, progress: str = "") -> None:
    """A worker's log and progress lines, sent back through Spark, where the process launcher keeps them."""
    for folder, name, text in (
        ("logs", f"worker-{rank}.log", log_text),
        ("progress", f"worker-{rank}.jsonl", progress),
    ):
        if text:
            os.makedirs(os.path.join(work_dir, folder), exist_ok=True)
            Path(work_dir, folder, name).write_text(text, encoding="utf-8")


def run_spark_barrier_workers(
    cluster_cfg: ClusterConfig, job: WorkerJob, *, app_name: str = "bigimage-train"
) -> list[dict]:
    """Run the workers as one Spark barrier stage on ``cluster_cfg``'s executors, failing as the process
    launcher does; keeps their logs in ``job.work_dir`` and returns one ``{rank, pid, host, log, result}`` each."""
    from bigimage.spark.cluster import spark_for
    from bigimage.spark.session import log_spark_resources

    with spark_for(cluster_cfg, app_name) as spark, ExitStack() as stack:
        master = spark.sparkContext.master
        network = stack.enter_context(_barrier_network(cluster_cfg, master, job))
        with open(job.config_path, encoding="utf-8") as handle:  # the config travels inside the tasks
            worker_fn = BarrierWorker(job, handle.read(), prefix=network.prefix if network else ())
        if job.run_id:
            try:
                log_spark_resources(spark)
            except Exception as error:
                log.warning("could not log the Spark resources: %s", error)
        log.info("starting %d TensorFlow workers as a Spark barrier stage on %s", job.num_workers, master)
        reports = _run_barrier_stage(spark, worker_fn)
    for report in reports:
        log.info("worker %d ran as pid %d on %s", report["rank"], report["pid"], report["host"])
        _keep(job.work_dir, report["rank"], report.pop("log"), report.pop("progress"))
        report["log"] = job.log_path(report["rank"])
    if job.result_file:
        storage.write_bytes(job.result_file, json.dumps(reports[0]["result"], indent=1).encode())
    return reports


@contextmanager
def _barrier_network(cluster_cfg: ClusterConfig, master: str, job: WorkerJob) -> Iterator[PrivateNetwork | None]:
    """The private network of barrier workers on this machine's loopback; None on a cluster's hosts."""
    from bigimage.spark.session import loopback_master
    from bigimage.train.multihost import is_multi_host

    if is_multi_host(cluster_cfg, "spark_barrier") or not loopback_master(master):
        log.warning("the TensorFlow workers on the executors of %s: %s", master, EXPOSED)
        _tag_network(job, CLUSTER_NETWORK)
        yield None
        return
    with private_network(job.worker_uris, what="the barrier training workers", isolation=job.isolation) as network:
        _tag_network(job, PRIVATE_NETWORK if network is not None else HOST_NETWORK)
        yield network


def _run_barrier_stage(spark: Any, worker_fn: BarrierWorker) -> list[dict]:
    """The barrier stage, its timeout and a worker's failure told apart as this module's errors."""
    from bigimage.spark.barrier import BarrierTimeoutError, run_barrier_workers

    job = worker_fn.job
    try:
        return run_barrier_workers(spark, job.num_workers, worker_fn, timeout_seconds=job.timeout_seconds)
    except BarrierTimeoutError as error:
        raise WorkerTimeoutError(
            f"training workers (Spark barrier stage) still running after strategy.worker_timeout_seconds="
            f"{job.timeout_seconds:g}; the stage was cancelled and its workers killed with their tasks (their "
            "logs stayed on the executors' hosts)"
        ) from error
    except Exception as error:
        failure = _worker_failure(error)
        if failure is None:
            raise
        log.debug("the Spark error behind the worker failure: %s", error)
        _keep(job.work_dir, int(failure.task_index or 0), failure.log_text)
        raise failure from None
