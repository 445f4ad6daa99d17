"""One writer at a time per TFRecord directory: a lock inside it, ``.bigimage.lock``, naming its holder
(docs/preprocess.md, "TFRecords"). The file or object holds the holder's job record (JSON: pid, host,
start, the job's generation), which is also the marker of the job's staging folders (:func:`read_record`).

* Local: ``fcntl.flock`` on that file, released by the kernel when its holder dies. The holder unlinks
  the file before letting go, and a job that got the flock checks that its file is still the one at the
  path, else tries again: two jobs never hold the lock on two files.
* gs://: an object created only if absent, refreshed by a compare-and-swap on its generation; another
  writer breaks it only when its holder ran on this machine and is gone, or it has not been refreshed
  for :data:`STALE_SECONDS` (the holder's clock). A holder whose lock was broken finds out at its next
  refresh, and before it commits. The tests' emulator ignores generation preconditions, so acquiring
  and refreshing also read the object first: that catches sequential writers there.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bigimage import processes
from bigimage.data import storage
from bigimage.errors import UserError

log = logging.getLogger(__name__)

REFRESH_SECONDS = 15.0
STALE_SECONDS = 120.0
_POLL_SECONDS = 0.2
LOCK_NAME = ".bigimage.lock"  # in the destination; in each staging folder it is the job's marker
WRITER = "bigimage"  # in every job record: written by this project


class DestinationBusyError(UserError, RuntimeError):
    """Another job holds the lock of the destination; the message names it and its age."""


class LockLostError(RuntimeError):
    """This job's gs:// lock was broken by another writer (it looked stale); nothing was committed."""


class UnlockableError(UserError, ValueError):
    """A destination on a file system that offers neither ``flock`` nor Cloud Storage's conditional writes."""


def lock_url(destination: str) -> str:
    """``<destination>/.bigimage.lock`` for a local path (symbolic links resolved) or a gs:// URL."""
    if not storage.is_remote(destination):
        return os.path.join(os.path.realpath(destination), LOCK_NAME)
    if not storage.is_gcs(destination):
        raise UnlockableError(
            f"{destination}: a TFRecord set is written to a local path or a gs:// URL, whose lock and commit "
            f"need flock or Cloud Storage's conditional writes; {storage.protocol(destination)}:// has neither"
        )
    storage.filesystem(destination)  # validates the URL
    return storage.join(destination, LOCK_NAME)


def read_record(data: bytes) -> dict[str, Any] | None:
    """A job record this project wrote (a JSON object marked :data:`WRITER`), or None."""
    record = _parse(data)
    return record if record is not None and record.get("writer") == WRITER else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _holder(generation: str) -> dict[str, Any]:
    now = time.time()
    return {
        "writer": WRITER,
        "generation": generation,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "process_started": processes.start_time(),
        "started": now,
        "refreshed": now,
        "token": uuid.uuid4().hex,
    }


def describe(holder: dict[str, Any] | None, *, refreshed: bool = False) -> str:
    """'pid 123 on host h, started 42 s ago' from a holder record (and when it was last refreshed)."""
    if not holder:
        return "another process (it has not written its details yet)"
    now = time.time()
    text = f"pid {holder.get('pid')} on host {holder.get('host')}, started {now - float(holder.get('started', now)):.0f} s ago"
    if refreshed:
        text += f", last refreshed {now - float(holder.get('refreshed', now)):.0f} s ago"
    return text


def holder_is_dead(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this machine (same host name and boot) and that process is gone."""
    if holder.get("host") != socket.gethostname() or holder.get("boot_id") != _boot_id():
        return False
    try:
        return processes.gone(int(holder["pid"]), float(holder["process_started"]))
    except (KeyError, ValueError):
        return True


class DestinationLock:
    """The write lock of one TFRecord directory; a context manager. See the module docstring."""

    def __init__(self, destination: str, *, wait_seconds: float = 0.0, generation: str = "") -> None:
        """``generation``: the job's token, written into its record (the marker of its staging folders)."""
        self.destination = destination
        self.url = lock_url(destination)
        self.wait_seconds = wait_seconds
        self.generation = generation
        self.holder: dict[str, Any] = _holder(generation)
        self.broke: dict[str, Any] | None = None  # the stale holder this lock replaced, if any
        self._fds: list[int] = []  # local: the flocked lock file, then those of folders to be swapped in
        self._generation = 0
        self._lost = False
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DestinationLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        self.holder = _holder(self.generation)
        while True:
            other = self._try_local() if not storage.is_gcs(self.url) else self._try_gcs()
            if other is None:
                return
            if time.monotonic() >= deadline:
                gcs = storage.is_gcs(self.url)
                stale = f" (a gs:// lock not refreshed for {STALE_SECONDS:.0f} s is taken over)" if gcs else ""
                raise DestinationBusyError(
                    f"{self.destination} is being written by {describe(other, refreshed=gcs)} (lock {self.url}); "
                    f"a second job to the same tfrecord_dir would break it: wait for that job or stop it{stale}"
                )
            time.sleep(_POLL_SECONDS)

    def _try_local(self) -> dict[str, Any] | None:
        """Take the flock of the lock file at :attr:`url` (made, with its folder, if missing), or return
        the holder's record. Once the flock is held the file must still be the one at the path: a
        holder that ended unlinked it, or its folder was swapped out; then the one there now is tried."""
        while True:
            os.makedirs(os.path.dirname(self.url), exist_ok=True)
            fd = os.open(self.url, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    return _parse(os.pread(fd, 65536, 0)) or {}
                finally:
                    os.close(fd)
            if _is_at(fd, self.url):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.record(), 0)
        self._fds.append(fd)
        return None

    def extend(self, folder: str) -> None:
        """Lock ``<folder>/.bigimage.lock`` too, a new file with this job's record: the marker of a local
        staging folder, and the lock held across the swap when ``folder`` is swapped in."""
        fd = os.open(
            os.path.join(folder, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666
        )
        self._fds.append(fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold it
        os.pwrite(fd, self.record(), 0)

    def _try_gcs(self) -> dict[str, Any] | None:
        """Create the lock object, or replace a stale one; else return the live holder's record."""
        try:
            data, generation = storage.read_with_generation(self.url)
            other: dict[str, Any] | None = _parse(data) or {}
        except FileNotFoundError:
            other, generation = None, 0  # 0: create only if still absent
        if other is not None:
            age = time.time() - float(other.get("refreshed", 0))
            if not (holder_is_dead(other) or age > STALE_SECONDS):
                return other
        try:
            self._generation = int(storage.write_bytes(self.url, self.record(), if_generation_match=generation) or 0)
        except storage.PreconditionFailedError:  # another writer got there between our read and write
            return _parse(storage.read_bytes(self.url)) or {}
        if other is not None:
            self.broke = other
            log.warning("took over the stale lock %s of %s", self.url, describe(other, refreshed=True))
        self._thread = threading.Thread(target=self._refresh_loop, name="tfrecord-lock-refresh", daemon=True)
        self._thread.start()
        return None

    def record(self, **extra: Any) -> bytes:
        """This job's record, with ``extra`` fields: the marker the job writes into its staging folders."""
        return json.dumps({**self.holder, **extra}).encode("utf-8")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            try:
                self.refresh()
            except LockLostError:
                return
            except Exception:  # a transient error: the next refresh tries again
                continue

    def refresh(self) -> None:
        """Renew a gs:// lock (compare-and-swap on its generation); LockLostError if it was taken."""
        if not storage.is_gcs(self.url):
            return
        with self._mutex:
            if self._lost:
                raise LockLostError(f"the lock {self.url} of this job was taken over by another writer")
            try:
                current, _ = storage.read_with_generation(self.url)  # also where preconditions are ignored
                if (_parse(current) or {}).get("token") != self.holder["token"]:
                    raise storage.PreconditionFailedError(self.url)
                self.holder["refreshed"] = time.time()
                self._generation = int(
                    storage.write_bytes(self.url, self.record(), if_generation_match=self._generation) or 0
                )
            except (storage.PreconditionFailedError, FileNotFoundError):
                self._lost = True
                raise LockLostError(f"the lock {self.url} of this job was taken over by another writer") from None

    def release(self) -> None:
        """Remove the lock file (object) at :attr:`url` if it is this job's, then let go of the lock."""
        if self._fds:
            try:
                if any(_is_at(fd, self.url) for fd in self._fds):
                    os.unlink(self.url)  # while the flock is held: a job that opened it finds it gone and retries
            finally:
                for fd in self._fds:
                    os.close(fd)  # closing the only descriptor releases the flock
                self._fds = []
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with self._mutex:
                for attempt in (1, 2):  # once more after a transient error
                    if self._lost:
                        break
                    try:
                        storage.delete(self.url, if_generation_match=self._generation)
                        break
                    except storage.PreconditionFailedError:
                        break  # taken over meanwhile: it is not ours to delete
                    except Exception as error:  # the next writer finds its holder gone and takes over
                        if attempt == 2:
                            log.warning("could not remove %s (%s); the next job takes it over", self.url, error)


def _is_at(fd: int, path: str) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` now (not unlinked, not moved away)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
