"""tf.data readers of task 1's TFRecords, shared by the speed test and training.

A TFRecord directory is complete only when its manifest exists (the writer puts it last), so readers
start from the manifest: it names the shards, their record counts, the classes and the image size.
"""

from __future__ import annotations

import os
from typing import Any

from bigimage.errors import UserError
from bigimage.data import schema


class TFRecordDirError(UserError, ValueError):
    """A TFRecord directory that is missing, incomplete or not what the caller expects."""


def _read_text(url: str) -> str:
    if url.startswith("gs://"):
        from bigimage.data import storage

        return storage.read_bytes(url).decode("utf-8")
    with open(url, encoding="utf-8") as handle:
        return handle.read()


def read_manifest(tfrecord_dir: str, image_size: int | None = None) -> schema.Manifest:
    """The manifest of a TFRecord directory; checks the image size when one is expected."""
    url = f"{tfrecord_dir.rstrip('/')}/{schema.MANIFEST_NAME}"
    try:
        manifest = schema.Manifest.from_json(_read_text(url))
    except FileNotFoundError:
        raise TFRecordDirError(
            f"no TFRecords at {tfrecord_dir} (no {schema.MANIFEST_NAME}); "
            f"run `python run.py task=preprocess tfrecord_dir={tfrecord_dir}` first"
        ) from None
    if manifest.num_records < 1 or not manifest.shards:
        raise TFRecordDirError(f"{tfrecord_dir} holds no records (manifest lists {manifest.num_records})")
    if image_size is not None and manifest.image_size != image_size:
        raise TFRecordDirError(
            f"{tfrecord_dir} holds {manifest.image_size}x{manifest.image_size} images but "
            f"image_size={image_size} was asked; rerun task=preprocess with image_size={image_size} "
            f"or set image_size={manifest.image_size}"
        )
    return manifest


def shard_paths(tfrecord_dir: str, manifest: schema.Manifest) -> list[str]:
    """Full paths of the manifest's shards, sorted, each checked to exist (local directories)."""
    paths = [os.path.join(tfrecord_dir, name) for name in sorted(manifest.shards)]
    missing = [path for path in paths if not tfrecord_dir.startswith("gs://") and not os.path.exists(path)]
    if missing:
        raise TFRecordDirError(f"{len(missing)} shard(s) listed in the manifest are missing, e.g. {missing[0]}")
    return paths


def decode_record(serialized: Any, image_size: int, *, as_uint8: bool = False) -> tuple[Any, Any]:
    """One record -> (float32 image in [0, 1] of image_size x image_size x 3, int32 class).

    ``as_uint8``: keep the decoded pixels as uint8 (0..255), a quarter of the memory, for pipelines that
    cache decoded images and let the model rescale.
    """
    import tensorflow as tf

    features = schema.parse_example(serialized)
    image = tf.io.decode_jpeg(features[schema.IMAGE], channels=3)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    if not as_uint8:
        image = tf.image.convert_image_dtype(image, tf.float32)
    return image, tf.cast(features[schema.CLASS], tf.int32)


def record_dataset(paths: list[str], *, cycle_length: int = 8, deterministic: bool = True) -> Any:
    """The serialised records of ``paths``, read in parallel (interleave) but not decoded.

    With ``deterministic`` the order is the same on every call and in every process, which record-level
    sharding across workers and hash splits rely on.
    """
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices(list(paths))
    return files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(len(paths), cycle_length)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def tfrecord_dataset(
    paths: list[str],
    image_size: int,
    batch_size: int,
    *,
    shuffle_buffer: int = 0,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> Any:
    """Batches of (images, classes) read the way training reads them: parallel reads and decode, prefetch."""
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle_buffer:
        files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    dataset = files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(paths), 8),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=shuffle_buffer == 0,
    )
    if shuffle_buffer:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(lambda record: decode_record(record, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
