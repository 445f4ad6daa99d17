"""Publishing a TFRecord set (data/shards.py, data/dirlock.py) without Spark: every storage operation
failed in turn, storage lost for good from any point, the lock's rules, files that other users can read.

Three ways a set is published, each a param: ``exchange`` (local, the atomic directory swap),
``objects`` (local on a file system without the swap: the manifest as commit point) and ``gcs`` (the
emulator; the manifest as commit point). The shard tasks' own writes are done in this process and
are not failed here: in a job they run in Spark workers (test_preprocess.py kills those).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigimage.data import dirlock, readers, schema, shards, storage
from tests.tfrecord_sets import STORAGE_OPS, assert_one_complete_set, leftovers, publish_set, stage_set, view


class InjectedFault(OSError):
    pass


class Faults:
    """Counts storage calls while ``active``; fails call ``fail_at`` only, or every call from ``down_from`` on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.active = False
        self.fail_at = self.down_from = 0
        self.fired: list[str] = []
        for name in STORAGE_OPS:
            monkeypatch.setattr(storage, name, self._wrap(name, getattr(storage, name)))

    def reset(self, fail_at: int = 0, down_from: int = 0) -> None:
        self.calls, self.fired, self.fail_at, self.down_from = [], [], fail_at, down_from

    def _wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.calls.append(name)
                number = len(self.calls)
                if number == self.fail_at or (self.down_from and number >= self.down_from):
                    self.fired.append(name)
                    raise InjectedFault(f"injected failure of storage.{name} (call {number})")
            return function(*args, **kwargs)

        return wrapper


def run_job(
    destination: str, images: tuple[list[str], list[tuple[str, int]]], prefix: str, faults: Faults
) -> schema.Manifest:
    """One job with the storage calls of the driver (lock, clean-up, publish) under ``faults``."""
    classes, items = images
    faults.active = True
    try:
        with shards.Publication(destination) as publication:
            faults.active = False  # the shard tasks: Spark workers in a real job
            results = stage_set(publication.staging_dir, items, classes)
            faults.active = True
            return publication.publish(
                results, prefix, schema.Manifest(classes=classes, image_size=32, num_records=0, shards={})
            )
    finally:
        faults.active = False


def test_a_failure_at_any_storage_operation_leaves_one_complete_set(destination: str, images, monkeypatch) -> None:
    """Issue 10 item 3: each storage operation of a job fails in turn; after each job, succeeded or
    failed, the manifest and a plain glob see the same one complete set and nothing is left over."""
    records = len(images[1])
    publish_set(destination, images[1], images[0], "first")
    faults = Faults(monkeypatch)
    current = sorted(run_job(destination, images, "counted", faults).shards)
    operations = list(faults.calls)
    assert len(operations) >= 8, operations
    outcomes = []
    for number in range(1, len(operations) + 1):
        faults.reset(fail_at=number)
        try:
            current = sorted(run_job(destination, images, f"fail{number:02d}", faults).shards)
            outcomes.append("published")
        except Exception as error:  # the job failed: the previous set must be there, whole
            assert faults.fired, f"call {number} failed without an injected fault: {error!r}"
            outcomes.append("failed")
        assert faults.fired == [operations[number - 1]], (number, faults.calls)
        assert sorted(assert_one_complete_set(destination, records).shards) == current, (number, operations[number - 1])
        assert leftovers(destination) == [], (number, operations[number - 1])
    assert "failed" in outcomes and "published" in outcomes, list(zip(operations, outcomes, strict=True))


def test_storage_lost_from_any_operation_on_keeps_a_complete_set_for_manifest_readers(
    destination: str, images, monkeypatch
) -> None:
    """Storage that fails for good from call N on: the manifest still names one complete set, old or
    new; once storage is back the next job removes what was left and a glob sees one set again."""
    records = len(images[1])
    publish_set(destination, images[1], images[0], "first")
    faults = Faults(monkeypatch)
    run_job(destination, images, "counted", faults)
    total = len(faults.calls)
    for number in range(1, total + 1):
        before = sorted(readers.read_manifest(destination).shards)
        faults.reset(down_from=number)
        with contextlib.suppress(Exception):  # failed before or after its commit: either way one set is whole
            run_job(destination, images, f"down{number:02d}", faults)
        seen = view(destination)  # every listed shard there, with its records
        listed = sorted(seen.manifest.shards)
        assert listed == before or all(name.startswith(f"down{number:02d}-") for name in listed), (number, listed)
        assert seen.manifest.num_records == records
        if storage.is_gcs(destination):  # this live process's lock may be left: as if its bound had passed
            storage.delete(dirlock.lock_url(destination))
        publish_set(destination, images[1], images[0], f"next{number:02d}")
        assert_one_complete_set(destination, records)
        assert leftovers(destination) == []


def test_shard_names_are_the_jobs_own_and_keep_the_course_ending(destination: str, images) -> None:
    first = publish_set(destination, images[1], images[0], "flowers")
    second = publish_set(destination, images[1], images[0], "flowers")
    assert not set(first.shards) & set(second.shards), "same prefix and counts, still no name in common"
    for name, count in second.shards.items():
        assert schema.SHARD_NAME_RE.match(name) and schema.records_in_shard_name(name) == count
        assert name.startswith("flowers-") and name.endswith(f"-{count}.tfrec")
    assert_one_complete_set(destination, len(images[1]))


def test_files_and_folder_follow_the_umask(tmp_path: Path, images) -> None:
    """Issue 10 item 7: shards and manifest were 0600 whatever the umask (tempfile, then a move)."""
    destination = tmp_path / "shared" / "tfrec"
    previous = os.umask(0o027)
    try:
        publish_set(str(destination), images[1], images[0], "first")
        publish_set(str(destination), images[1], images[0], "second")  # a swap keeps the folder's mode
    finally:
        os.umask(previous)
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in destination.iterdir()}
    assert modes and set(modes.values()) == {0o640}, modes
    assert stat.S_IMODE(destination.stat().st_mode) == 0o750
    destination.chmod(0o711)
    publish_set(str(destination), images[1], images[0], "third")
    assert stat.S_IMODE(destination.stat().st_mode) == 0o711, "the swapped-in folder keeps the old one's mode"


def test_a_local_folder_holding_other_files_is_refused_and_left_alone(tmp_path: Path, images) -> None:
    destination = tmp_path / "tfrec"
    manifest = publish_set(str(destination), images[1], images[0], "first")
    (destination / "notes.txt").write_text("mine")
    with pytest.raises(shards.PublishError, match=r"notes\.txt.*Nothing was replaced"):
        publish_set(str(destination), images[1], images[0], "second")
    assert sorted(os.listdir(destination)) == sorted([*manifest.shards, schema.MANIFEST_NAME, "notes.txt"])
    assert not list(tmp_path.glob(".tfrec.swap-*"))


def test_a_symlinked_destination_keeps_its_link_and_gets_the_set(tmp_path: Path, images) -> None:
    real = tmp_path / "disk" / "tfrec"
    publish_set(str(real), images[1], images[0], "first")
    link = tmp_path / "tfrec-link"
    link.symlink_to(real)
    manifest = publish_set(str(link), images[1], images[0], "second")
    assert link.is_symlink() and sorted(os.listdir(real)) == sorted([*manifest.shards, schema.MANIFEST_NAME])


def test_leftovers_of_a_dead_job_are_removed_by_the_next(destination: str, images) -> None:
    """A job killed during a gs:// swap leaves unlisted shards, and any dead job its staging: the next
    job removes them before anything else (and only then, holding the lock). They are known by the dead
    job's record in its staging folder, which lists the shards it put in; a name alone makes nothing a
    leftover (test_foreign_files.py)."""
    classes, items = images
    manifest = publish_set(destination, items, classes, "first")
    stray = "first-deadbeef-00-1.tfrec"
    storage.write_bytes(storage.join(destination, stray), b"")
    staging = storage.join(destination, f"{shards.STAGING_PREFIX}deadbeef")
    storage.write_bytes(storage.join(staging, "part-00000.tfrec"), b"x")
    record = {"writer": dirlock.WRITER, "generation": "deadbeef", "placing": [stray], "replacing": []}
    storage.write_bytes(storage.join(staging, dirlock.LOCK_NAME), json.dumps(record).encode())
    if not storage.is_gcs(destination):
        (Path(destination).parent / ".tfrec.swap-deadbeee").mkdir()  # killed before it wrote its record
        swapped = Path(destination).parent / ".tfrec.swap-deadbeef"  # killed before it removed the old set
        swapped.mkdir()
        (swapped / "old-deadbeef-00-1.tfrec").write_bytes(b"")
        (swapped / dirlock.LOCK_NAME).write_text(json.dumps(record))
    with shards.Publication(destination):
        assert view(destination).globbed == sorted(manifest.shards)
        assert sorted(readers.read_manifest(destination).shards) == sorted(manifest.shards)
    assert leftovers(destination) == []


# -------------------------------------------------------------------------------------------- lock


def test_a_second_writer_fails_at_once_naming_the_holder(destination: str) -> None:
    with shards.Publication(destination) as first:
        started = time.monotonic()
        holder = rf"pid {os.getpid()} on host {socket.gethostname()}, started \d+ s ago"
        with pytest.raises(dirlock.DestinationBusyError, match=holder), shards.Publication(destination):
            pass
        assert time.monotonic() - started < 2
        assert storage.is_gcs(destination) or os.path.isdir(first.staging_dir), "the first job's staging is untouched"
    with shards.Publication(destination, wait_seconds=0):  # released: the next one gets in
        pass


def _foreign_holder(url: str, **changes: Any) -> None:
    holder = {
        "pid": 1,
        "host": "another-host",
        "boot_id": "x",
        "process_started": 0.0,
        "started": time.time(),
        "refreshed": time.time(),
        "token": "t",
    }
    holder.update(changes)
    storage.write_bytes(url, json.dumps(holder).encode())


def test_gcs_lock_is_taken_over_only_when_stale(gcs_bucket: str) -> None:
    destination = f"gs://{gcs_bucket}/tfrec"
    url = dirlock.lock_url(destination)
    assert url == f"gs://{gcs_bucket}/tfrec/{dirlock.LOCK_NAME}"
    _foreign_holder(url)  # live, on another machine, refreshed now
    with pytest.raises(dirlock.DestinationBusyError, match=r"pid 1 on host another-host, .*last refreshed \d+ s ago"):
        dirlock.DestinationLock(destination).acquire()
    _foreign_holder(url, refreshed=time.time() - dirlock.STALE_SECONDS - 5)  # silent for longer than the bound
    with dirlock.DestinationLock(destination) as lock:
        assert lock.broke and lock.broke["host"] == "another-host"
        assert json.loads(storage.read_bytes(url))["pid"] == os.getpid()
    assert not storage.exists(url)
    # A holder on this machine whose process is gone: taken over at once, fresh or not.
    _foreign_holder(url, host=socket.gethostname(), boot_id=dirlock._boot_id(), pid=os.getpid(), process_started=1.0)
    with dirlock.DestinationLock(destination) as lock:
        assert lock.broke is not None


def test_a_job_whose_gcs_lock_was_taken_over_does_not_commit(gcs_bucket: str, images) -> None:
    destination = f"gs://{gcs_bucket}/tfrec"
    classes, items = images
    before = publish_set(destination, items, classes, "first")
    with pytest.raises(dirlock.LockLostError):

        def breaker() -> None:  # another writer judged this job stale and took the lock
            _foreign_holder(dirlock.lock_url(destination))

        publish_set(destination, items, classes, "second", between=breaker)
    assert sorted(assert_one_complete_set(destination, len(items)).shards) == sorted(before.shards)
    assert json.loads(storage.read_bytes(dirlock.lock_url(destination)))["host"] == "another-host", "not ours to delete"
