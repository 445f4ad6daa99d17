"""Which RUNNING runs are still alive: process tags, a heartbeat tag, and marking the dead ones KILLED
(docs/mlflow.md, "Failures, interrupts and stale runs"); what ``analysis/stale_runs.py`` runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from bigimage import processes
from bigimage.tracking import names
from bigimage.tracking.query import search_all
from bigimage.tracking.store import log_batch, retry_busy

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
DEFAULT_OLDER_THAN_SECONDS = 300.0  # ten missed heartbeats
TAG_HOST = "process.host"
TAG_PID = "process.pid"
TAG_STARTED = "process.started"
TAG_HEARTBEAT = "heartbeat"
TAG_MARKED_BY = "marked_stale_by"


def utc_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_utc_iso(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return None


def process_tags() -> dict[str, str]:
    """The tags that name this process: host, pid, start time, and a first heartbeat."""
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        TAG_STARTED: f"{processes.start_time():.2f}",
        TAG_HEARTBEAT: utc_iso(time.time()),
    }


class Heartbeat:
    """A daemon thread that sets the tag ``heartbeat`` on ``run_id`` every ``interval`` seconds; a failed
    beat costs a warning, never the run, and ``stop()`` waits for a beat in flight."""

    def __init__(self, run_id: str, tracking_uri: str, interval: float | None = None) -> None:
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.interval = HEARTBEAT_SECONDS if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                retry_busy(lambda: self.client.set_tag(self.run_id, TAG_HEARTBEAT, utc_iso(time.time())))
            except Exception as error:
                log.warning("heartbeat of run %s not recorded: %s", self.run_id, error)


@dataclass(frozen=True)
class Verdict:
    """One RUNNING run judged: ``stale`` runs are dead, ``reason`` says how that is known (or why not)."""

    run_id: str
    run_name: str
    experiment_id: str
    task: str | None
    host: str | None
    pid: int | None
    last_seen: float  # unix seconds: the last heartbeat, else the start time
    age_seconds: float
    stale: bool
    reason: str

    def as_dict(self) -> dict:
        row = asdict(self)
        row["last_seen"] = utc_iso(self.last_seen)
        return row


def judge(run: Run, older_than_seconds: float, now: float | None = None, this_host: str | None = None) -> Verdict:
    """Whether a RUNNING run's process is gone (this host) or silent for over ``older_than_seconds``."""
    now = time.time() if now is None else now
    this_host = socket.gethostname() if this_host is None else this_host
    tags = run.data.tags
    host = tags.get(TAG_HOST)
    pid = int(tags[TAG_PID]) if tags.get(TAG_PID, "").isdigit() else None
    started = float(tags[TAG_STARTED]) if tags.get(TAG_STARTED) else None
    heartbeat = parse_utc_iso(tags.get(TAG_HEARTBEAT, ""))
    last_seen = heartbeat if heartbeat is not None else run.info.start_time / 1000.0
    age = max(now - last_seen, 0.0)
    info = run.info
    verdict = partial(
        Verdict, info.run_id, info.run_name, info.experiment_id, tags.get(names.TAG_TASK), host, pid, last_seen, age
    )
    state = processes.liveness(pid, started) if host == this_host and pid is not None else processes.UNKNOWN
    if state is processes.ALIVE:
        return verdict(False, f"process {pid} on {host} is running")
    if state is processes.DEAD:
        return verdict(True, f"process {pid} on {host} is gone (last heartbeat {utc_iso(last_seen)})")
    what = "heartbeat" if heartbeat is not None else "sign of life (no heartbeat tag; start time)"
    where = f" from {host}" if host else ""
    if age > older_than_seconds:
        return verdict(True, f"no heartbeat{where} for {age:.0f} s (last {what} {utc_iso(last_seen)})")
    return verdict(False, f"last {what}{where} {age:.0f} s ago, within {older_than_seconds:g} s")


def find_stale_runs(
    client: MlflowClient, experiment_ids: list[str], older_than_seconds: float = DEFAULT_OLDER_THAN_SECONDS
) -> list[Verdict]:
    """A verdict for every RUNNING run of the experiments, oldest sign of life first."""
    now, host = time.time(), socket.gethostname()
    running = search_all(client, experiment_ids, "attributes.status = 'RUNNING'")
    verdicts = [judge(run, older_than_seconds, now, host) for run in running]
    return sorted(verdicts, key=lambda verdict: (verdict.last_seen, verdict.run_id))


def mark_killed(client: MlflowClient, verdict: Verdict, marked_by: str) -> bool:
    """End a stale run KILLED at its last sign of life, with the tag ``error`` saying why; False if it
    ended meanwhile."""
    info = retry_busy(lambda: client.get_run(verdict.run_id)).info
    if info.status != RunStatus.to_string(RunStatus.RUNNING):
        return False
    tags = {names.TAG_ERROR: f"stale: {verdict.reason}", TAG_MARKED_BY: f"{marked_by} at {utc_iso(time.time())}"}
    log_batch(client, verdict.run_id, tags=tags)
    end_ms = max(int(verdict.last_seen * 1000), info.start_time)  # the heartbeat has whole seconds
    retry_busy(lambda: client.set_terminated(verdict.run_id, RunStatus.to_string(RunStatus.KILLED), end_time=end_ms))
    return True
