"""What this machine can still give a job, from psutil: one answer for the Spark and the training side."""

from __future__ import annotations

import os

import psutil

_CGROUP_LIMITS = (  # (limit, usage) files: cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def available_memory() -> int:
    """Bytes this process may still take: psutil's available memory, capped by its cgroup's limit
    (a container is killed at its own limit, whatever the machine has free)."""
    available = int(psutil.virtual_memory().available)
    for limit_file, usage_file in _CGROUP_LIMITS:
        try:
            with open(limit_file) as limit, open(usage_file) as usage:
                available = min(available, max(0, int(limit.read()) - int(usage.read())))
        except (OSError, ValueError):  # no such cgroup file, or "max" (no limit)
            continue
    return available


def live_group_members(pgid: int) -> list[int]:
    """Pids of a process group that are still running (zombies count as gone)."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members
