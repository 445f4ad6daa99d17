"""Writing TFRecord shards and publishing them as one set, local or gs://; no Spark, no TensorFlow.

The contract is docs/preprocess.md, "TFRecords": shard names of the job's own generation, only the
project's own entries replaced (:func:`survey`), one writer at a time (:mod:`bigimage.data.dirlock`).
Locally the set is completed beside the destination and swapped in at once (:func:`storage.swap_in_dir`).
On gs:// (or without the exchange) the shards are staged in ``_staging-<generation>/``, whose job record
lists the shards placed and those replaced, then copied in, and the manifest is the commit (on gs:// only
if its generation is still the one seen at the start). A manifest write that raised is read back: if it
landed the job goes on; if that cannot be told nothing is rolled back and the next job cleans up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bigimage.data import dirlock, schema, storage
from bigimage.data.tfrecord import TFRecordWriter
from bigimage.data.transform import ImageDecodeError, transform_jpeg
from bigimage.errors import UserError

log = logging.getLogger(__name__)

STAGING_PREFIX = "_staging-"  # inside the destination (gs://, or a local file system without the exchange)
SWAP_INFIX = ".swap-"  # <parent>/.<name>.swap-<generation>: a local set being built, or the old one after the swap
EXCHANGE, OBJECTS = "exchange", "objects"
_GENERATION = "([0-9a-f]{8})"  # a job's generation token, in its staging folder's name
_STAGING = re.compile(re.escape(STAGING_PREFIX) + _GENERATION)


def shard_prefix(prefix: str, generation: str) -> str:
    """The name start of one job's shards, ``flowers`` -> ``flowers-<generation>-``, before ``NN-<count>.tfrec``."""
    if not prefix or prefix.endswith(("-", "_", ".")):
        return f"{prefix}{generation}-"
    return f"{prefix}-{generation}-"


@dataclass
class ShardResult:
    """What one shard task did; small enough to send back to the Spark driver."""

    index: int
    staged: str | None  # staged file URL, None when no record was usable
    records: int = 0
    bytes_written: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    class_counts: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # time.time() at the task's start
    finished: float = 0.0
    no_space: str = ""  # the device filled up: what failed (the task returns rather than raise, see write_shard)


def write_shard(
    index: int,
    items: list[tuple[str, int]],
    classes: list[str],
    image_size: int,
    quality: int,
    staging_dir: str,
) -> ShardResult:
    """Transform ``items`` (path, class index) one image at a time into one staged shard file.

    Unreadable or undecodable files are skipped with their reason. A full device ends the shard with
    ``no_space`` set, returned rather than raised, so that the driver says it in one line
    (:func:`check_space`) instead of Spark logging a traceback per task.
    """
    result = ShardResult(index=index, staged=None, started=time.time())
    staged = storage.join(staging_dir, f"part-{index:05d}{schema.SHARD_SUFFIX}")
    # The local staging folder is the driver's: not made here, so a task that outlives a killed driver
    # fails rather than re-create a folder the next job has cleaned away.
    local_dir = tempfile.gettempdir() if storage.is_remote(staging_dir) else staging_dir
    try:
        fd, temp = storage.create_new_file(local_dir, ".part-", ".tmp")  # 0666 less the umask
        try:
            with os.fdopen(fd, "wb") as handle:
                writer = TFRecordWriter(handle)
                for path, class_index in items:
                    try:
                        jpeg = transform_jpeg(storage.read_bytes(path), image_size, quality)
                    except (ImageDecodeError, OSError) as error:
                        result.failed.append((path, f"{type(error).__name__}: {error}"))
                        continue
                    label = classes[class_index]
                    record = schema.serialize_example(jpeg, class_index, label, image_size, image_size, len(classes))
                    writer.write(record)
                    result.class_counts[label] = result.class_counts.get(label, 0) + 1
            result.records, result.bytes_written = writer.records, writer.bytes_written
            if result.records:
                storage.move(temp, staged)
                result.staged = staged
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        result.no_space = str(error)
    result.finished = time.time()
    return result


@dataclass
class Survey:
    """What a destination holds, by who wrote it: its direct entries, folders ending in ``/``; the project's
    set (its manifest, the shards it lists) and the lock are in neither list."""

    manifest: schema.Manifest | None  # the project's manifest (schema and marker), if there is one
    leftovers: list[str]  # what dead jobs of the project left: staging folders, the shards their records list
    foreign: list[str]  # everything else: the user's


def _entries(destination: str) -> tuple[list[str], list[str]]:
    """The names of the files (anything but a folder: links too) and folders directly in ``destination``."""
    fs, path = storage.filesystem(destination)
    try:
        found = fs.ls(path, detail=True)
    except FileNotFoundError:  # an empty gs:// prefix
        found = []
    files: list[str] = []
    folders: list[str] = []
    for info in found:  # a local link has the type "other"
        (folders if info["type"] == "directory" else files).append(storage.basename(info["name"]))
    return sorted(files), sorted(folders)


def _folder_record(folder: str, pattern: re.Pattern[str], name: str) -> dict[str, Any] | None:
    """The job record of staging folder ``name`` (its name matches ``pattern``, it holds the record of the
    job of the generation in its name); None when the project did not make it. An empty record is a job
    killed while writing it, a local empty folder one killed before (removing either loses nothing)."""
    match = pattern.fullmatch(name)
    if match is None:
        return None
    try:
        data = storage.read_bytes(storage.join(folder, dirlock.LOCK_NAME))
    except FileNotFoundError:
        return {} if not storage.is_remote(folder) and os.path.isdir(folder) and not os.listdir(folder) else None
    except IsADirectoryError:
        return None
    if not data:
        return {}
    record = dirlock.read_record(data)
    return record if record is not None and record.get("generation") == match.group(1) else None


def _read_project_manifest(destination: str) -> schema.Manifest | None:
    try:
        return schema.project_manifest(storage.read_bytes(storage.join(destination, schema.MANIFEST_NAME)))
    except (FileNotFoundError, IsADirectoryError):
        return None


def survey(destination: str) -> Survey:
    """Sort what ``destination`` holds into the project's set, dead jobs' leftovers and the user's.

    Leftovers are known by their staging folder's job record, never by a name: it lists the shards the
    job was putting in (``placing``) and, once they are the set, what its commit replaced (``replacing``).
    """
    if not storage.is_remote(destination) and not os.path.isdir(destination):
        return Survey(None, [], [])
    files, folders = _entries(destination)
    manifest = _read_project_manifest(destination) if schema.MANIFEST_NAME in files else None
    listed = set(manifest.shards) if manifest else set()
    stagings: list[str] = []
    journal: set[str] = set()
    for folder in folders:
        record = _folder_record(storage.join(destination, folder), _STAGING, folder)
        if record is not None:
            stagings.append(f"{folder}/")
            placing = set(record.get("placing", []))
            journal |= placing
            if placing and placing <= listed:  # its commit landed: what it replaced is its too
                journal |= set(record.get("replacing", []))
    leftovers: list[str] = []
    foreign: list[str] = []
    for name in [*files, *(f"{folder}/" for folder in folders)]:
        if name in stagings or name == dirlock.LOCK_NAME or name in listed:
            continue
        if name == schema.MANIFEST_NAME and manifest is not None:
            continue
        (leftovers if name in journal else foreign).append(name)
    return Survey(manifest, [*leftovers, *stagings], sorted(foreign))


def _remove_marked(folder: str) -> None:
    """Delete a staging folder of the project's (local or gs://), its job record last: a kill half-way
    leaves it marked, for the next job to finish. A missing one is fine."""
    marker = storage.join(folder, dirlock.LOCK_NAME)
    if storage.is_remote(folder):
        storage.delete_files(info.path for info in storage.list_files(folder) if info.path != marker)
        storage.delete(marker)
        return
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if name == dirlock.LOCK_NAME:
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            storage.remove_tree(path)
        else:
            storage.delete(path)
    storage.delete(marker)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(folder)


def _remove_entries(destination: str, names: list[str]) -> None:
    """Delete direct entries of ``destination`` (folders end in ``/``): the files first, then the folders
    in the order given (:func:`survey` puts staging folders last: their records list the files)."""
    storage.delete_files(storage.join(destination, name) for name in names if not name.endswith("/"))
    for folder in (name.rstrip("/") for name in names if name.endswith("/")):
        path = storage.join(destination, folder)
        if _folder_record(path, _STAGING, folder) is not None:
            _remove_marked(path)
        else:
            storage.remove_tree(path)


def _remove_swaps_beside(real: str) -> None:
    """Delete the swap folders of dead jobs beside local ``real`` (``.<name>.swap-<generation>`` holding
    that job's record, or empty). Nothing else beside it is touched."""
    parent, name = os.path.split(real)
    pattern = re.compile(re.escape(f".{name}{SWAP_INFIX}") + _GENERATION)
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if os.path.isdir(path) and not os.path.islink(path) and _folder_record(path, pattern, entry) is not None:
            _remove_marked(path)


def _listed(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def _entries_word(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"


def _comparable(location: str) -> str:
    """A local path with links resolved, or a URL without a trailing slash."""
    return location.rstrip("/") if storage.is_remote(location) else os.path.realpath(location)


def check_apart(source: str, destination: str) -> None:
    """Refuse a ``tfrecord_dir`` inside ``dataset.root`` (the next run would list it as a class of
    images), the same folder, or one holding the root (publishing replaces what the folder holds)."""
    if storage.protocol(source) != storage.protocol(destination):
        return
    root, target = _comparable(source), _comparable(destination)
    separator = "/" if storage.is_remote(source) else os.sep
    where = f"tfrecord_dir={destination}"
    if root == target:
        problem = f"{where} is dataset.root itself"
    elif target.startswith(root.rstrip(separator) + separator):
        problem = f"{where} is inside dataset.root={source}: the next run would list it as a class of images"
    elif root.startswith(target.rstrip(separator) + separator):
        problem = f"{where} contains dataset.root={source}: publishing a set replaces what tfrecord_dir holds"
    else:
        return
    raise DestinationRefusedError(f"{problem}; choose a tfrecord_dir outside dataset.root. Nothing was written")


class NoSpaceError(UserError, OSError):
    """The destination's device (or the staging one's) filled up before the new set was complete."""


def check_space(results: list[ShardResult], destination: str) -> None:
    """Raise :class:`NoSpaceError` when a shard task found its device full."""
    full = [result.no_space for result in results if result.no_space]
    if full:
        written = sum(result.bytes_written for result in results) / 1e6
        raise NoSpaceError(
            f"no space left on the device while staging the TFRecords for {destination} ({full[0]}; "
            f"{len(full)} shard(s) could not be written, {written:.1f} MB were): free space there or choose "
            "another tfrecord_dir; the previous set, if any, is as it was"
        )


class PublishError(RuntimeError):
    """A staged shard is missing or not the size its writer reported, or the destination cannot take
    the set; the message says whether anything was replaced."""


class DestinationRefusedError(UserError, PublishError):
    """The destination is not one to write a set into (it holds the user's files, it is a file, the
    root of the file system, or inside the dataset); nothing was written. ``run.py`` says it in one line."""


class Publication:
    """One job's write of a TFRecord set into ``destination``: a context manager.

    Entering takes the lock and refuses, before anything is touched, a destination holding what the project
    did not write (unless ``replace_foreign``); then dead jobs' leftovers go and :attr:`staging_dir` is made
    for :func:`write_shard`. :meth:`publish` commits the set. Leaving rolls back an uncommitted set, deletes
    the staging (or, after a local swap, the old set) and releases the lock.
    """

    def __init__(self, destination: str, *, wait_seconds: float = 0.0, replace_foreign: bool = False) -> None:
        self.destination = destination.rstrip("/") if storage.is_remote(destination) else destination
        self.generation = uuid.uuid4().hex[:8]
        self.replace_foreign = replace_foreign
        self.lock = dirlock.DestinationLock(self.destination, wait_seconds=wait_seconds, generation=self.generation)
        self.mode = OBJECTS
        self.staging_dir = ""
        self.committed_at: float | None = None  # time.time() when the new set became the set
        self._real = self.destination  # local: symlinks resolved, so the swap replaces the real folder
        self._created = False  # local: the destination did not exist before this job
        self._foreign: list[str] = []  # entries not the project's, to be replaced (replace_foreign)
        self._replacing: list[str] = []  # objects mode: what the commit replaces (old shards, foreign entries)
        self._placed: list[str] = []  # objects mode: new shards already in the destination
        self._pending = False  # objects mode: the destination holds shards its manifest does not list
        self._manifest_generation: int | None = None  # gs://: the manifest generation to replace
        self._commit_unknown = False

    def __enter__(self) -> Publication:
        if not storage.is_remote(self.destination):
            self._real = os.path.realpath(self.destination)
            self._refuse_unusable()
            self._created = not os.path.lexists(self._real)
        self.lock.acquire()
        try:
            self._prepare()
        except BaseException:
            self._release()
            raise
        return self

    def _refuse_unusable(self) -> None:
        """A local destination that is the file system's root, or not a folder, is refused before the
        lock (a file inside it) is written."""
        if os.path.dirname(self._real) == self._real:
            raise DestinationRefusedError(
                f"tfrecord_dir {self.destination} is the root of the file system: a set replaces what its folder "
                f"holds; choose a folder of its own. Nothing was written"
            )
        if os.path.lexists(self._real) and not os.path.isdir(self._real):
            raise DestinationRefusedError(
                f"tfrecord_dir {self.destination} exists and is not a directory; choose another tfrecord_dir "
                f"or move it away. Nothing was written"
            )

    def _prepare(self) -> None:
        found = survey(self._real)
        self._accept(found.foreign)
        old = found.manifest.shards if found.manifest else {}
        # the commit itself replaces a manifest.json; the rest is deleted after it (objects mode)
        self._replacing = [*old, *(name for name in self._foreign if name != schema.MANIFEST_NAME)]
        _remove_entries(self._real, found.leftovers)
        if storage.is_gcs(self.destination):
            try:
                _, self._manifest_generation = storage.read_with_generation(
                    storage.join(self.destination, schema.MANIFEST_NAME)
                )
            except FileNotFoundError:
                self._manifest_generation = 0
            self.staging_dir = storage.join(self.destination, f"{STAGING_PREFIX}{self.generation}")
            storage.write_bytes(
                storage.join(self.staging_dir, dirlock.LOCK_NAME), self.lock.record(), if_generation_match=0
            )
            return
        parent, name = os.path.split(self._real)
        self.mode = EXCHANGE if storage.supports_exchange(parent) else OBJECTS
        _remove_swaps_beside(self._real)
        if self.mode == EXCHANGE:
            self.staging_dir = os.path.join(parent, f".{name}{SWAP_INFIX}{self.generation}")
        else:
            self.staging_dir = os.path.join(self._real, f"{STAGING_PREFIX}{self.generation}")
        os.mkdir(self.staging_dir)  # 0777 less the umask; the old folder's mode is copied at the swap
        self.lock.extend(self.staging_dir)  # the job's record: its marker, and the lock once swapped in

    def _accept(self, foreign: list[str]) -> None:
        """Refuse the destination when it holds entries the project did not write, or (replace_foreign)
        say which ones the commit will delete."""
        if not foreign:
            return
        count = _entries_word(len(foreign))
        if not self.replace_foreign:
            raise DestinationRefusedError(
                f"tfrecord_dir {self.destination} holds {count} that task=preprocess did not write "
                f"({_listed(foreign, 5)}). Nothing was replaced or deleted: choose a tfrecord_dir that is new or "
                f"empty, or set preprocess.replace_foreign=true to delete {'it' if len(foreign) == 1 else 'them'} "
                f"with the old set"
            )
        log.warning(
            "preprocess.replace_foreign=true: tfrecord_dir %s holds %s that task=preprocess did not write; "
            "they are deleted with the old set once the new one is committed (kept if the job fails before): %s",
            self.destination,
            count,
            _listed(foreign, 50),
        )
        self._foreign = list(foreign)

    def publish(self, results: list[ShardResult], prefix: str, manifest: schema.Manifest) -> schema.Manifest:
        """Commit the staged shards of ``results`` as the destination's set; returns ``manifest`` filled in.

        Every staged file's size is checked against what its writer counted before anything is replaced
        (a writer that wrote nothing must not pass: spark-tfrecord #46).
        """
        written = sorted((result for result in results if result.records), key=lambda result: result.index)
        staged = {info.path: info.size for info in storage.list_files(self.staging_dir)}
        for result in written:
            size = staged.get(result.staged or "")
            if size != result.bytes_written:
                raise PublishError(
                    f"staged shard {result.staged} has {size} bytes, its writer wrote {result.bytes_written}; "
                    f"nothing was replaced"
                )
        first = shard_prefix(prefix, self.generation)
        names = [schema.shard_name(first, number, result.records) for number, result in enumerate(written)]
        manifest.shards = dict(zip(names, (result.records for result in written), strict=True))
        manifest.num_records = sum(manifest.shards.values())
        manifest.writer = schema.MANIFEST_WRITER
        data = manifest.to_json().encode("utf-8")
        if self.mode == EXCHANGE:
            self._swap(written, names, data)
        else:
            self._copy_and_commit(written, names, data)
        return manifest

    def _swap(self, written: list[ShardResult], names: list[str], data: bytes) -> None:
        """Local: complete the set in the swap folder, then exchange it with the destination."""
        for name, result in zip(names, written, strict=True):
            storage.move(str(result.staged), os.path.join(self.staging_dir, name))
        storage.write_bytes(os.path.join(self.staging_dir, schema.MANIFEST_NAME), data)
        appeared = sorted(set(survey(self._real).foreign) - set(self._foreign))
        if appeared:  # the swap would take them away with the old set
            raise DestinationRefusedError(
                f"tfrecord_dir {self.destination} holds {_entries_word(len(appeared))} that appeared during the job "
                f"({_listed(appeared, 5)}). Nothing was replaced or deleted: move them out and run the job again"
            )
        if os.path.isdir(self._real):
            os.chmod(self.staging_dir, stat.S_IMODE(os.stat(self._real).st_mode))
        storage.swap_in_dir(self.staging_dir, self._real)  # the commit; the old set is now in staging_dir
        self.committed_at = time.time()

    def _copy_and_commit(self, written: list[ShardResult], names: list[str], data: bytes) -> None:
        """gs:// (or no exchange): copy the shards in, write the manifest (the commit), delete the old. First
        the job record lists what goes in and what the commit replaces: what a killed job leaves is known."""
        self._pending = True
        marker = storage.join(self.staging_dir, dirlock.LOCK_NAME)
        storage.write_bytes(marker, self.lock.record(placing=names, replacing=self._replacing))
        place = storage.copy if storage.is_remote(self.destination) else storage.move
        for name, result in zip(names, written, strict=True):
            target = storage.join(self.destination, name)
            self._placed.append(target)
            place(str(result.staged), target)
        self.lock.refresh()  # still ours, and now fresh: no other writer can take it before the commit lands
        url = storage.join(self.destination, schema.MANIFEST_NAME)
        try:
            if storage.is_gcs(url):
                storage.write_bytes(url, data, if_generation_match=self._manifest_generation)
            else:  # written whole in the staging folder, then renamed in: no temp file in the destination
                storage.write_bytes(storage.join(self.staging_dir, schema.MANIFEST_NAME), data)
                storage.move(storage.join(self.staging_dir, schema.MANIFEST_NAME), url)
        except storage.PreconditionFailedError:
            raise PublishError(
                f"{url} was replaced by another writer during this job; this set was not published"
            ) from None
        except BaseException:
            if not self._landed(url, data):
                raise
        self.committed_at = time.time()
        try:
            _twice(lambda: _remove_entries(self._real, self._replacing))
        except Exception as error:
            raise PublishError(
                f"the new set is committed ({schema.MANIFEST_NAME} lists it) but the old shards could not be removed "
                f"({error}); a plain *.tfrec glob sees both until the next job to {self.destination} removes them"
            ) from error
        self._pending = False

    def _landed(self, url: str, data: bytes) -> bool:
        """After a manifest write that raised: did it land all the same (e.g. a timeout after the commit)?"""
        try:
            return storage.read_bytes(url) == data
        except Exception:
            self._commit_unknown = True  # then nothing is rolled back: the manifest may list these shards
            return False

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        try:
            if self.committed_at is None and self._placed and not self._commit_unknown:
                try:
                    _twice(lambda: storage.delete_files(self._placed))
                    self._pending = False
                except Exception as error:
                    _note(
                        exc,
                        f"could not remove the new shards already copied in ({error}); the next job to "
                        f"{self.destination} removes them",
                    )
            elif self.committed_at is None and not self._commit_unknown:
                self._pending = False  # nothing of this job's is in the destination
            if not self._pending:  # else its record lists what the next job removes
                try:
                    _twice(lambda: _remove_marked(self.staging_dir))
                except Exception as error:  # invisible to readers; the next job removes it
                    log.warning("could not remove %s (%s); the next job removes it", self.staging_dir, error)
        finally:
            self._release()

    def _release(self) -> None:
        """Let go of the lock (its file goes too), and of a local destination this job made and left empty."""
        self.lock.release()
        if self._created and self.committed_at is None:
            with contextlib.suppress(OSError):
                os.rmdir(self._real)


def _twice(action: Callable[[], object]) -> None:
    """Run an idempotent clean-up step, once more after a failure: a transient error must not leave
    a glob reader two sets or a reader's directory half cleaned."""
    try:
        action()
    except Exception:
        action()


def _note(exc: BaseException | None, text: str) -> None:
    if exc is not None:
        exc.add_note(text)
    else:
        log.warning("%s", text)
