"""Whether a process recorded by its pid still runs: the one liveness check of the project.

The kernel reuses freed pids, so a record also says when its process started (``started``, as
:func:`start_time` gives it) or, where only a pid was written, when the record was made (``recorded``): a
process with that pid that started later is another one. One that cannot be inspected is
:data:`UNKNOWN`, never dead. Depends on nothing else of the package, so that every layer uses it.
"""

from __future__ import annotations

from enum import Enum

import psutil

SAME_PROCESS_SECONDS = 1.0  # slack when comparing start times (create_time is rounded)


class Liveness(Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


ALIVE, DEAD, UNKNOWN = Liveness.ALIVE, Liveness.DEAD, Liveness.UNKNOWN


def start_time(pid: int | None = None) -> float:
    """When process ``pid`` (default: this one) started, in Unix seconds: what a record stores as ``started``."""
    return psutil.Process(pid).create_time()


def liveness(pid: int, started: float | None = None, recorded: float | None = None) -> Liveness:
    """Whether process ``pid`` that started at ``started`` (or before ``recorded``) still runs (module doc);
    a zombie is dead, and so is a pid held by a process of another start time (or started after ``recorded``)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return DEAD
        created = process.create_time()
    except psutil.NoSuchProcess:
        return DEAD
    except (psutil.AccessDenied, ValueError):  # ValueError: a pid psutil cannot even ask about
        return UNKNOWN
    if started is not None and abs(created - started) >= SAME_PROCESS_SECONDS:
        return DEAD
    if recorded is not None and created > recorded + SAME_PROCESS_SECONDS:
        return DEAD
    return ALIVE


def gone(pid: int, started: float | None = None, recorded: float | None = None) -> bool:
    """Known dead (:func:`liveness` is :data:`DEAD`): what a clean-up of a dead process's leftovers asks."""
    return liveness(pid, started, recorded) is DEAD
