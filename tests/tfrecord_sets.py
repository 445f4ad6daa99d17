"""Checks of a published TFRecord directory, the way its two kinds of readers see it, local or gs://.

* By the manifest (``readers.read_manifest`` + the shards it lists), as the speed test and training read.
* By a plain glob of ``<tfrecord_dir>/*.tfrec``, as the course's reader does: it counts records from the
  ``-<count>.`` in each name and reads every file it globbed.

Both must see one complete set. Records are counted by their TFRecord framing with both CRCs checked,
so a truncated or half-copied shard fails; no TensorFlow import needed.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bigimage.data import readers, schema, shards, storage
from bigimage.data.tfrecord import masked_crc32c

COURSE_COUNT_RE = re.compile(r"-([0-9]*)\.")  # the course's count_data_items
# Every storage function that touches files or objects, for tests that fail or kill at the Nth call.
# Calls between them inside storage.py count too (a gs:// move is a copy and a delete): they go through
# the module's globals.
STORAGE_OPS = (
    "list_files",
    "exists",
    "read_bytes",
    "write_bytes",
    "read_with_generation",
    "delete",
    "delete_files",
    "copy",
    "move",
    "remove_tree",
    "swap_in_dir",
    "supports_exchange",
    "create_new_file",
)


def count_records(data: bytes) -> int:
    """Records in one TFRecord file's bytes; AssertionError on a truncated or corrupt file."""
    records = offset = 0
    while offset < len(data):
        assert offset + 12 <= len(data), "truncated length"
        (length,) = struct.unpack_from("<Q", data, offset)
        assert struct.unpack_from("<I", data, offset + 8)[0] == masked_crc32c(data[offset : offset + 8]), (
            "bad length crc"
        )
        payload = data[offset + 12 : offset + 12 + length]
        assert len(payload) == length and offset + 16 + length <= len(data), "truncated record"
        assert struct.unpack_from("<I", data, offset + 12 + length)[0] == masked_crc32c(payload), "bad data crc"
        offset += 16 + length
        records += 1
    return records


def glob_names(destination: str) -> list[str]:
    """Names a plain ``<destination>/*.tfrec`` glob finds (gs://: the objects directly under the prefix)."""
    if storage.is_gcs(destination):
        prefix = destination.rstrip("/") + "/"
        rests = [info.path[len(prefix) :] for info in storage.list_files(destination)]
        return sorted(rest for rest in rests if "/" not in rest and fnmatch.fnmatch(rest, "*.tfrec"))
    return sorted(os.path.basename(path) for path in glob.glob(os.path.join(glob.escape(destination), "*.tfrec")))


def generation_of(name: str) -> str:
    """The generation token in ``<prefix>-<generation>-NN-<count>.tfrec``."""
    match = schema.SHARD_NAME_RE.match(name)
    assert match, name
    return match.group("prefix").rstrip("-").rsplit("-", 1)[-1]


@dataclass
class SetView:
    manifest: schema.Manifest
    globbed: list[str]


def view(destination: str) -> SetView:
    """The manifest (every listed shard present with its declared records) and what a glob finds."""
    manifest = readers.read_manifest(destination)
    for name, count in manifest.shards.items():
        data = storage.read_bytes(storage.join(destination, name))
        assert count_records(data) == count == schema.records_in_shard_name(name), name
    assert sum(manifest.shards.values()) == manifest.num_records
    return SetView(manifest, glob_names(destination))


def assert_one_complete_set(destination: str, records: int) -> schema.Manifest:
    """Exactly one complete set, by the manifest and by a plain glob reader; returns its manifest."""
    seen = view(destination)
    assert seen.manifest.num_records == records
    assert seen.globbed == sorted(seen.manifest.shards), (
        f"a glob sees {seen.globbed}, the manifest lists {sorted(seen.manifest.shards)}"
    )
    assert len({generation_of(name) for name in seen.globbed}) == 1
    course_count = sum(int(COURSE_COUNT_RE.search(name).group(1)) for name in seen.globbed)
    glob_records = sum(count_records(storage.read_bytes(storage.join(destination, name))) for name in seen.globbed)
    assert course_count == glob_records == records
    return seen.manifest


def leftovers(destination: str) -> list[str]:
    """Staging or swap folders, temp files, lock files and unlisted shards that a finished job must not
    leave, in the destination or beside it."""
    found = [name for name in glob_names(destination) if name not in readers.read_manifest(destination).shards]
    if storage.is_gcs(destination):
        prefix = destination.rstrip("/") + "/"
        found += [
            info.path
            for info in storage.list_files(destination)
            if info.path[len(prefix) :].startswith((shards.STAGING_PREFIX, "."))
        ]
        return found
    real = os.path.realpath(destination)
    parent, name = os.path.split(real)
    found += [entry for entry in os.listdir(real) if entry.startswith((shards.STAGING_PREFIX, "."))]
    found += [entry for entry in os.listdir(parent) if entry.startswith(f".{name}.")]
    return found


def stage_set(
    staging_dir: str, images: list[tuple[str, int]], classes: list[str], num_shards: int = 3
) -> list[shards.ShardResult]:
    """What a job's shard tasks would stage, written in this process (no Spark): 32 px images."""
    return [
        shards.write_shard(index, images[index::num_shards], classes, 32, 80, staging_dir)
        for index in range(num_shards)
    ]


def publish_set(
    destination: str,
    images: list[tuple[str, int]],
    classes: list[str],
    prefix: str,
    between: Callable[[], None] | None = None,
) -> schema.Manifest:
    """One whole job without Spark: lock, stage, publish, clean up. ``between`` runs after staging."""
    with shards.Publication(destination) as publication:
        results = stage_set(publication.staging_dir, images, classes)
        if between:
            between()
        manifest = schema.Manifest(classes=list(classes), image_size=32, num_records=0, shards={})
        return publication.publish(results, prefix, manifest)
