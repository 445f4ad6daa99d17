"""Writing TFRecord shards and publishing them as one set, local or gs://; no Spark, no TensorFlow.

The contract (README "TFRecords"): at every instant a reader that follows ``manifest.json`` sees one
complete set, the old or the new; once a job has ended a plain ``<tfrecord_dir>/*.tfrec`` glob (the
course's reader) sees exactly that set; one writer at a time. The old publish deleted the old manifest
and shards before moving the new ones in: a kill or a failed move in between lost both sets.

* **Names of their own.** Each job draws a generation token and names its shards
  ``<prefix>-<generation>-NN-<count>.tfrec`` (still ending in the course's ``NN-<count>.tfrec``), so a
  new set never overwrites a file of the old one, even with the same prefix and counts, and a reader
  holding the old manifest finds its own shards or none, never a new file under an old name.
* **A lock** beside the destination (:mod:`bigimage.data.dirlock`): one job at a time, and only the
  holder removes leftovers (:func:`remove_leftovers`: staging folders, and shards that a manifest does
  not list), so a second job never deletes a live job's staging.
* **Local: one atomic directory swap.** The set is staged and completed (shards renamed, manifest
  written) in a hidden folder beside the destination, ``<parent>/.<name>.swap-<generation>``, which is
  then exchanged with the destination (``storage.swap_in_dir``: Linux ``renameat2(RENAME_EXCHANGE)``);
  the old set, now in that folder, is deleted after. The destination holds one complete set at every
  instant, for the manifest and for a glob alike, wherever a kill -9 lands. Because the whole folder is
  swapped, it must hold nothing but a set: a job refuses to start (and to swap) otherwise. A symlinked
  destination has its target swapped; the old folder's mode is kept.
* **gs:// (and local file systems without the exchange: NFS, some FUSE): the manifest is the commit
  point.** Cloud Storage has no multi-object atomic operation; one object write is atomic. Shards are
  staged in ``<tfrecord_dir>/_staging-<generation>/``, copied in under their new names, then the
  manifest is written (on gs:// conditional on the generation seen at the start: if any other writer
  committed meanwhile, this one fails), then the shards it no longer lists are deleted (one batched
  call, retried once). What holds: a manifest reader sees the complete old set until the manifest
  write and the complete new set from then on. A glob sees the old and new shards side by side during
  that swap (the copies, one write, one batched delete); a job that ends by success or error rolls
  forward or back first, so it leaves one set; a job killed outright inside the swap leaves both until
  the next job to that directory, which first deletes every shard the manifest does not list. A
  manifest write that raised is read back: if it landed, the job goes on; if that cannot be told,
  nothing is rolled back (the manifest may list the new shards) and the next job cleans up.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from bigimage.data import dirlock, schema, storage
from bigimage.data.tfrecord import TFRecordWriter
from bigimage.data.transform import ImageDecodeError, transform_jpeg

log = logging.getLogger(__name__)

STAGING_PREFIX = "_staging-"  # inside the destination (gs://, or a local file system without the exchange)
SWAP_INFIX = ".swap-"  # <parent>/.<name>.swap-<generation>: a local set being built, or the old one after the swap
EXCHANGE, OBJECTS = "exchange", "objects"


def shard_prefix(prefix: str, generation: str) -> str:
    """The name start of one job's shards: ``flowers`` -> ``flowers-<generation>-``.

    The shard name still ends in ``NN-<count>.tfrec`` (:func:`schema.shard_name`), which the course's
    reader takes its record counts from.
    """
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


def write_shard(
    index: int,
    items: list[tuple[str, int]],
    classes: list[str],
    image_size: int,
    quality: int,
    staging_dir: str,
) -> ShardResult:
    """Transform ``items`` (path, class index) one at a time into one staged shard file.

    Memory stays flat: one image is held at a time. Unreadable or undecodable files are skipped
    and reported with their reason.
    """
    result = ShardResult(index=index, staged=None, started=time.time())
    staged = storage.join(staging_dir, f"part-{index:05d}{schema.SHARD_SUFFIX}")
    # The local staging folder is the driver's: not made here, so a task that outlives a killed driver
    # fails rather than re-create a folder the next job has cleaned away.
    local_dir = tempfile.gettempdir() if storage.is_gcs(staging_dir) else staging_dir
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
                writer.write(schema.serialize_example(jpeg, class_index, label, image_size, image_size, len(classes)))
                result.class_counts[label] = result.class_counts.get(label, 0) + 1
        result.records, result.bytes_written = writer.records, writer.bytes_written
        if result.records:
            storage.move(temp, staged)
            result.staged = staged
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    result.finished = time.time()
    return result


def _direct_children(destination: str) -> list[storage.FileInfo]:
    prefix = destination.rstrip("/") + "/"
    return [info for info in storage.list_files(destination) if "/" not in info.path[len(prefix) :]]


def _read_manifest(destination: str) -> schema.Manifest | None:
    try:
        return schema.Manifest.from_json(
            storage.read_bytes(storage.join(destination, schema.MANIFEST_NAME)).decode("utf-8")
        )
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # not ours to judge here: the readers say what is wrong with it
        return None


def _twice(action: Callable[[], object]) -> None:
    """Run an idempotent clean-up step, once more after a failure: a transient error must not leave
    a glob reader two sets or a reader's directory half cleaned."""
    try:
        action()
    except Exception:
        action()


def remove_leftovers(destination: str) -> list[str]:
    """Delete what dead jobs left in and beside ``destination``; returns what was removed.

    Staging folders (``_staging-*`` inside, ``.<name>.swap-*`` beside a local one), temp files of a
    manifest write, and, when there is a manifest, every shard it does not list (a job killed during a
    gs:// swap leaves old or new shards there, visible to a glob). Without a manifest the shards stay:
    they may be a set copied in by hand, replaced only when a new set is committed. Only the holder of
    the destination's lock may call this: it would delete a live job's staging.
    """
    gone: list[str] = []
    manifest = _read_manifest(destination)
    if storage.is_gcs(destination):
        prefix = destination.rstrip("/") + "/"
        urls = []
        for info in storage.list_files(destination):
            rest = info.path[len(prefix) :]
            unlisted = "/" not in rest and manifest is not None and rest not in manifest.shards
            if rest.startswith(STAGING_PREFIX) or (unlisted and schema.SHARD_NAME_RE.match(rest)):
                urls.append(info.path)
        storage.delete_files(urls)
        return urls
    real = os.path.realpath(destination)
    parent, name = os.path.split(real)
    for entry in sorted(os.listdir(real)) if os.path.isdir(real) else []:
        path = os.path.join(real, entry)
        temp = entry.startswith(f".{schema.MANIFEST_NAME}.") and entry.endswith(".tmp")
        unlisted = manifest is not None and bool(schema.SHARD_NAME_RE.match(entry)) and entry not in manifest.shards
        if entry.startswith(STAGING_PREFIX) and os.path.isdir(path):
            storage.remove_tree(path)
        elif temp or (unlisted and os.path.isfile(path)):
            storage.delete(path)
        else:
            continue
        gone.append(path)
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        if entry.startswith(f".{name}{SWAP_INFIX}"):
            storage.remove_tree(os.path.join(parent, entry))
            gone.append(os.path.join(parent, entry))
    return gone


def foreign_entries(directory: str) -> list[str]:
    """Entries of a local TFRecord directory that are not part of a set (manifest, shards, staging)."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        entry
        for entry in os.listdir(directory)
        if entry != schema.MANIFEST_NAME
        and not entry.startswith(STAGING_PREFIX)
        and not (schema.SHARD_NAME_RE.match(entry) and os.path.isfile(os.path.join(directory, entry)))
    )


class PublishError(RuntimeError):
    """A staged shard is missing or not the size its writer reported, or the destination cannot take
    the set; the message says whether anything was replaced."""


class Publication:
    """One job's write of a TFRecord set into ``destination``: a context manager.

    Entering takes the destination's lock (:class:`~bigimage.data.dirlock.DestinationBusyError` if
    another job holds it), removes dead jobs' leftovers and makes :attr:`staging_dir`, where the shard
    tasks stage their files (:func:`write_shard`). :meth:`publish` commits the set (see the module
    docstring for how, local and gs://). Leaving rolls back an uncommitted set, deletes the staging
    (or, after a local swap, the old set) and releases the lock.
    """

    def __init__(self, destination: str, *, wait_seconds: float = 0.0) -> None:
        self.destination = destination.rstrip("/") if storage.is_gcs(destination) else destination
        self.generation = uuid.uuid4().hex[:8]
        self.lock = dirlock.DestinationLock(self.destination, wait_seconds=wait_seconds)
        self.mode = OBJECTS
        self.staging_dir = ""
        self.committed_at: float | None = None  # time.time() when the new set became the set
        self._real = self.destination  # local: symlinks resolved, so the swap replaces the real folder
        self._placed: list[str] = []  # objects mode: new shards already in the destination
        self._manifest_generation: int | None = None  # gs://: the manifest generation to replace
        self._commit_unknown = False

    # -------------------------------------------------------------------------------------- enter

    def __enter__(self) -> Publication:
        self.lock.acquire()
        try:
            self._prepare()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _prepare(self) -> None:
        if storage.is_gcs(self.destination):
            remove_leftovers(self.destination)
            try:
                _, self._manifest_generation = storage.read_with_generation(
                    storage.join(self.destination, schema.MANIFEST_NAME)
                )
            except FileNotFoundError:
                self._manifest_generation = 0
            self.staging_dir = storage.join(self.destination, f"{STAGING_PREFIX}{self.generation}")
            return
        self._real = os.path.realpath(self.destination)
        parent, name = os.path.split(self._real)
        if os.path.exists(self._real) and not os.path.isdir(self._real):
            raise PublishError(f"tfrecord_dir {self.destination} exists and is not a directory")
        os.makedirs(parent, exist_ok=True)
        self.mode = EXCHANGE if storage.supports_exchange(parent) else OBJECTS
        remove_leftovers(self.destination)
        if self.mode == EXCHANGE:
            self._refuse_foreign()
            self.staging_dir = os.path.join(parent, f".{name}{SWAP_INFIX}{self.generation}")
            os.mkdir(self.staging_dir)  # 0777 less the umask; the old folder's mode is copied at the swap
        else:
            self.staging_dir = os.path.join(self._real, f"{STAGING_PREFIX}{self.generation}")
            os.makedirs(self.staging_dir)

    def _refuse_foreign(self) -> None:
        foreign = foreign_entries(self._real)
        if foreign:
            raise PublishError(
                f"tfrecord_dir {self.destination} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
                f"that are not part of a TFRecord set ({', '.join(foreign[:3])}): a new set replaces the whole "
                f"directory in one atomic swap, so they would be lost; move them out or choose another tfrecord_dir. "
                f"Nothing was replaced"
            )

    # ------------------------------------------------------------------------------------ publish

    def publish(self, results: list[ShardResult], prefix: str, manifest: schema.Manifest) -> schema.Manifest:
        """Commit the staged shards of ``results`` as the set of the destination, replacing any previous set.

        Checks every staged file's size against what its writer counted before anything is replaced
        (a writer that wrote nothing must not pass: spark-tfrecord #46). Fills in and returns
        ``manifest`` (shard names and counts).
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
        self._refuse_foreign()  # nothing may have appeared since the start that the swap would take away
        if os.path.isdir(self._real):
            os.chmod(self.staging_dir, stat.S_IMODE(os.stat(self._real).st_mode))
        storage.swap_in_dir(self.staging_dir, self._real)  # the commit; the old set is now in staging_dir
        self.committed_at = time.time()

    def _copy_and_commit(self, written: list[ShardResult], names: list[str], data: bytes) -> None:
        """gs:// (or no exchange): copy the shards in, write the manifest (the commit), delete the old."""
        place = storage.copy if storage.is_gcs(self.destination) else storage.move
        for name, result in zip(names, written, strict=True):
            target = storage.join(self.destination, name)
            self._placed.append(target)
            place(str(result.staged), target)
        self.lock.check()  # refreshed now: no other writer can take the lock before the commit lands
        url = storage.join(self.destination, schema.MANIFEST_NAME)
        try:
            storage.write_bytes(url, data, if_generation_match=self._manifest_generation)
        except storage.PreconditionFailedError:
            raise PublishError(
                f"{url} was replaced by another writer during this job; this set was not published"
            ) from None
        except BaseException:
            if not self._landed(url, data):
                raise
        self.committed_at = time.time()
        listed = set(names)

        def remove_old() -> None:
            storage.delete_files(
                info.path
                for info in _direct_children(self.destination)
                if schema.SHARD_NAME_RE.match(storage.basename(info.path)) and storage.basename(info.path) not in listed
            )

        try:
            _twice(remove_old)
        except Exception as error:
            raise PublishError(
                f"the new set is committed ({schema.MANIFEST_NAME} lists it) but the old shards could not be removed "
                f"({error}); a plain *.tfrec glob sees both until the next job to {self.destination} removes them"
            ) from error

    def _landed(self, url: str, data: bytes) -> bool:
        """After a manifest write that raised: did it land all the same (e.g. a timeout after the commit)?"""
        try:
            return storage.read_bytes(url) == data
        except Exception:
            self._commit_unknown = True  # then nothing is rolled back: the manifest may list these shards
            return False

    # -------------------------------------------------------------------------------------- leave

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        try:
            if self.committed_at is None and self._placed and not self._commit_unknown:
                try:
                    _twice(lambda: storage.delete_files(self._placed))
                except Exception as error:
                    _note(
                        exc,
                        f"could not remove the new shards already copied in ({error}); the next job to "
                        f"{self.destination} removes them",
                    )
            try:
                _twice(lambda: storage.remove_tree(self.staging_dir))
            except Exception as error:  # invisible to readers; the next job removes it
                log.warning("could not remove %s (%s); the next job removes it", self.staging_dir, error)
        finally:
            self.lock.release()


def _note(exc: BaseException | None, text: str) -> None:
    if exc is not None:
        exc.add_note(text)
    else:
        log.warning("%s", text)
