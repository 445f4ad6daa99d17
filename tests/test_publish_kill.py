"""SIGKILL to the task 1 driver at 20+ points of a run that replaces an existing set, local and gs://.

Each run is a driver process (tests/publish_kill_driver.py: the project's local SparkSession and
``write_tfrecords``). The points: just before each storage call of the driver (lock, clean-up, every
step of the publish), and at evenly spaced times over the whole run, mostly inside the Spark job.
After each kill: the manifest names one complete set (every shard there, every record readable), the
old one or the one being written; and a plain ``*.tfrec`` glob sees exactly that set. The one
exception, and only on gs://: a kill inside the swap (after the first new shard is copied in, before
the old shards' batched delete returns) may leave both sets to a glob, as docs/preprocess.md says; then the
next job's start-up clean-up must leave exactly the manifest's set. A last run, not killed, must
publish over whatever the kills left. Drivers are started ahead (Spark warm) so that only the run
itself is timed and killed.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bigimage.config import PROJECT_ROOT
from bigimage.data import readers, shards
from tests.tfrecord_sets import assert_one_complete_set, leftovers, view

MIN_POINTS = 20
WARM_DRIVERS = 1  # started ahead: more would only compete for the CPU with the run being killed


@dataclass
class Run:
    returncode: int
    ops: list[str] = field(default_factory=list)
    done: bool = False
    seconds: float = 0.0  # from "go" to "done"


class Driver:
    """One driver process, started now; its output lines are collected by a thread."""

    def __init__(self, destination: str, root: Path, log: Path) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.stderr = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.publish_kill_driver", destination, str(root)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,  # its own process group: the JVM and Python workers are checked gone with it
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ready = threading.Event()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.strip() == "ready":
                self.ready.set()
            self.lines.put((time.monotonic(), line.strip()))

    def run(self, prefix: str, kill_at: int = 0, kill_after: float | None = None) -> Run:
        assert self.ready.wait(300), f"driver not ready; see {self.stderr.name}"
        self.process.stdin.write(f"go {prefix} {kill_at}\n")
        self.process.stdin.flush()
        started = time.monotonic()
        if kill_after is not None:
            time.sleep(max(0.0, started + kill_after - time.monotonic()))
            os.kill(self.process.pid, signal.SIGKILL)
        returncode = self.process.wait(300)
        self._wait_group_gone()
        self.reader.join(30)
        run = Run(returncode)
        while not self.lines.empty():
            at, line = self.lines.get()
            if line.startswith("op "):
                run.ops.append(line.split()[2])
            elif line == "done":
                run.done, run.seconds = True, at - started
        return run

    def _wait_group_gone(self) -> None:
        """The driver's JVM and Spark workers end by themselves once it is dead; wait for that."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(self.process.pid, signal.SIGKILL)
        pytest.fail("the killed driver's JVM or workers outlived it by 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(60)
        self.stderr.close()


class Drivers:
    """Keeps WARM_DRIVERS drivers starting ahead of the one that runs."""

    def __init__(self, destination: str, root: Path, logs: Path) -> None:
        self.count = 0
        self.make: Callable[[], Driver] = lambda: Driver(destination, root, logs / f"driver-{self._next_number()}.log")
        self.waiting = [self.make() for _ in range(WARM_DRIVERS)]

    def _next_number(self) -> int:
        self.count += 1
        return self.count

    def run(self, prefix: str, kill_at: int = 0, kill_after: float | None = None) -> Run:
        driver = self.waiting.pop(0)
        driver.ready.wait(300)
        self.waiting.append(self.make())
        try:
            return driver.run(prefix, kill_at, kill_after)
        finally:
            driver.stop()

    def stop(self) -> None:
        for driver in self.waiting:
            driver.stop()


def swap_window(ops: list[str]) -> tuple[int, int]:
    """1-based call numbers of a gs:// swap: the first copy in to the batched delete of the old shards."""
    first = ops.index("copy") + 1
    return first, ops.index("delete_files", first) + 1


def killed_inside_swap(ops: list[str]) -> bool:
    """Whether a gs:// run was killed inside its swap, from its own calls (the last one printed had not
    necessarily run): a copy in had started, the batched delete of the old shards had not ended. A run
    has more calls than the calibration when it removes what the killed run before it left."""
    if "copy" not in ops:
        return False
    return "delete_files" not in ops[ops.index("copy") : -1]


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("where", ["local", "gcs"])
def test_sigkill_at_any_point_of_a_replacing_run_leaves_one_complete_set(
    where: str, make_image_tree: Callable[..., Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = make_image_tree(per_class=4)
    records = 12
    destination = (
        str(tmp_path / "out" / "tfrec") if where == "local" else f"gs://{request.getfixturevalue('gcs_bucket')}/tfrec"
    )
    drivers = Drivers(destination, root, tmp_path)
    try:
        # The set to replace, and what a whole run does: its storage calls and its length.
        calibration = drivers.run("calibration")
        assert calibration.returncode == 0 and calibration.done, f"see {tmp_path}/driver-1.log"
        assert_one_complete_set(destination, records)
        ops = calibration.ops
        timed = max(MIN_POINTS - len(ops), 6)
        points = [(number, None) for number in range(1, len(ops) + 1)]
        points += [(0, calibration.seconds * (index + 0.5) / timed) for index in range(timed)]
        window = swap_window(ops) if where == "gcs" else (0, -1)
        both_seen = 0
        for index, (kill_at, kill_after) in enumerate(points):
            before = sorted(readers.read_manifest(destination).shards)
            prefix = f"k{index:02d}"
            run = drivers.run(prefix, kill_at, kill_after)
            where_killed = f"point {index}: " + (
                f"before call {kill_at} ({run.ops[-1:]})"
                if kill_at
                else f"at {kill_after:.2f} s, {len(run.ops)} calls in ({run.ops[-1:]})"
            )
            assert run.returncode == -signal.SIGKILL or (kill_after is not None and run.done), where_killed
            seen = view(destination)  # the manifest's set is whole: every shard, every record
            listed = sorted(seen.manifest.shards)
            assert listed == before or all(name.startswith(f"{prefix}-") for name in listed), where_killed
            if seen.globbed != listed:  # only a gs:// kill inside the swap may leave both to a glob
                inside = where == "gcs" and killed_inside_swap(run.ops)
                assert inside, f"{where_killed}: a glob sees {seen.globbed}, the manifest lists {listed}"
                extra = set(seen.globbed) - set(listed)
                assert set(listed) <= set(seen.globbed) and all(
                    name in before or name.startswith(f"{prefix}-") for name in extra
                )
                both_seen += 1
                with shards.Publication(destination):  # what the next job does first
                    pass
            assert_one_complete_set(destination, records)
        final = drivers.run("final")
        assert final.returncode == 0 and final.done
        manifest = assert_one_complete_set(destination, records)
        assert all(name.startswith("final-") for name in manifest.shards) and leftovers(destination) == []
        print(
            f"\n[{where}] {len(points)} kills ({len(ops)} at storage calls, {timed} timed over "
            f"{calibration.seconds:.1f} s); a glob saw both sets after {both_seen} (gs:// swap window {window})"
        )
    finally:
        drivers.stop()
