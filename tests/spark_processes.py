"""Test helpers that find the processes of a Spark standalone cluster (psutil), to check none is left."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from bigimage.spark.standalone import MASTER_CLASS, WORKER_CLASS


def _live(process: psutil.Process) -> bool:
    return process.status() != psutil.STATUS_ZOMBIE


def spark_daemon_pids() -> list[int]:
    """Pids of Spark standalone Master/Worker JVMs on this machine (any owner)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if {MASTER_CLASS, WORKER_CLASS} & set(process.info["cmdline"] or []) and _live(process):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def processes_under(directory: str | Path) -> list[int]:
    """Live pids whose working directory is ``directory`` or below it (a cluster's daemons, executors
    and their Python workers all run under the cluster's work dir)."""
    root = str(Path(directory).resolve())
    found = []
    for process in psutil.process_iter():
        try:
            cwd = process.cwd()
            if (cwd == root or cwd.startswith(root + os.sep)) and _live(process):
                found.append(process.pid)
        except psutil.Error:
            continue
    return found
