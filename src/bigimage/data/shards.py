"""Writing TFRecord shards and publishing them atomically, local or gs://; no Spark, no TensorFlow.

A shard is written to a staging folder inside the destination (``_staging-<token>/``, which readers
ignore: they start from the manifest). Only when every shard is staged and its size checked does
:func:`publish` swap them in: the old manifest goes first, then the old shards, then the new shards
move into place and the new manifest is written last. A reader therefore sees either no manifest
(and says so) or a complete, consistent set; a failed or interrupted job leaves no staging behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from bigimage.data import schema, storage
from bigimage.data.tfrecord import TFRecordWriter
from bigimage.data.transform import ImageDecodeError, transform_jpeg

STAGING_PREFIX = "_staging-"


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


def new_staging_dir(destination: str) -> str:
    return storage.join(destination, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")


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
    local_dir = tempfile.gettempdir() if storage.is_gcs(staging_dir) else staging_dir
    os.makedirs(local_dir, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=local_dir, prefix=".part-", suffix=".tmp", delete=False)
    try:
        with handle:
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
            storage.move(handle.name, staged)
            result.staged = staged
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    result.finished = time.time()
    return result


def _direct_children(destination: str) -> list[storage.FileInfo]:
    prefix = destination.rstrip("/") + "/"
    return [info for info in storage.list_files(destination) if "/" not in info.path[len(prefix) :]]


def remove_staging(destination: str, staging_dir: str | None = None) -> None:
    """Delete one staging folder, or every stale one under ``destination`` when none is named."""
    if not storage.is_gcs(destination):
        if staging_dir:
            shutil.rmtree(staging_dir, ignore_errors=True)
        elif os.path.isdir(destination):
            for name in os.listdir(destination):
                if name.startswith(STAGING_PREFIX):
                    shutil.rmtree(os.path.join(destination, name), ignore_errors=True)
        return
    prefix = (staging_dir or destination).rstrip("/") + "/"
    urls = [info.path for info in storage.list_files(staging_dir or destination)]
    if staging_dir is None:
        urls = [url for url in urls if url[len(prefix) :].startswith(STAGING_PREFIX)]
    storage.delete_files(urls)


class PublishError(RuntimeError):
    """A staged shard is missing or not the size its writer reported; nothing was replaced."""


def publish(
    destination: str,
    results: list[ShardResult],
    prefix: str,
    manifest: schema.Manifest,
) -> schema.Manifest:
    """Swap the staged shards of ``results`` into ``destination``, replacing any previous set.

    Checks every staged file's size against what its writer counted before touching the old set
    (a writer that wrote nothing must not pass: spark-tfrecord #46).
    """
    written = sorted((result for result in results if result.records), key=lambda result: result.index)
    staged_sizes = {}
    for result in written:
        staging_dir = result.staged.rsplit("/", 1)[0]
        if staging_dir not in staged_sizes:
            staged_sizes[staging_dir] = {info.path: info.size for info in storage.list_files(staging_dir)}
        size = staged_sizes[staging_dir].get(result.staged)
        if size != result.bytes_written:
            raise PublishError(f"staged shard {result.staged} has {size} bytes, its writer wrote {result.bytes_written}")
    names = [schema.shard_name(prefix, number, result.records) for number, result in enumerate(written)]
    manifest.shards = dict(zip(names, (result.records for result in written)))
    manifest.num_records = sum(manifest.shards.values())
    old = [
        info.path
        for info in _direct_children(destination)
        if schema.SHARD_NAME_RE.match(info.path.rsplit("/", 1)[-1])
    ]
    storage.delete(storage.join(destination, schema.MANIFEST_NAME))
    storage.delete_files(old)
    for name, result in zip(names, written):
        storage.move(result.staged, storage.join(destination, name))
    storage.write_bytes(storage.join(destination, schema.MANIFEST_NAME), manifest.to_json().encode("utf-8"))
    return manifest
