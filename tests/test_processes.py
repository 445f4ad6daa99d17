"""The one liveness check: a pid and its start time, so a reused pid is not taken for the process recorded."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bigimage import processes


def test_this_process_is_alive_by_its_pid_and_start_time() -> None:
    started = processes.start_time()
    assert processes.liveness(os.getpid(), started) is processes.ALIVE
    assert processes.liveness(os.getpid(), recorded=time.time()) is processes.ALIVE
    assert not processes.gone(os.getpid())


def test_a_pid_held_by_a_process_of_another_start_time_is_a_dead_process() -> None:
    # what a record of a process that died, and whose pid the kernel gave to this one, reads like
    started = processes.start_time()
    assert processes.liveness(os.getpid(), started - 3600) is processes.DEAD
    assert processes.liveness(os.getpid(), recorded=started - 3600) is processes.DEAD


def test_an_ended_process_is_dead_reaped_or_zombie() -> None:
    reaped = subprocess.Popen([sys.executable, "-c", "pass"])
    reaped.wait()
    assert processes.gone(reaped.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    started = processes.start_time(zombie.pid)
    deadline = time.monotonic() + 30
    while processes.liveness(zombie.pid, started) is processes.ALIVE and time.monotonic() < deadline:
        time.sleep(0.05)  # exited but not waited for: a zombie until reaped below
    assert processes.liveness(zombie.pid, started) is processes.DEAD
    zombie.wait()


def test_a_pid_that_cannot_be_asked_about_is_unknown_not_dead() -> None:
    assert processes.liveness(-1) is processes.UNKNOWN
    assert not processes.gone(-1)
