"""tf.data readers of task 1's TFRecords, shared by the speed test and training.

A TFRecord directory is complete only when its manifest exists (the writer puts it last), so readers
start from the manifest: it names the shards, their record counts, the classes and the image size.
"""

from __future__ import annotations

import os
from typing import Any

from bigimage.data import schema, storage
from bigimage.errors import UserError


class TFRecordDirError(UserError, ValueError):
    """A TFRecord directory that is missing, incomplete or not what the caller expects."""


def read_manifest(tfrecord_dir: str, image_size: int | None = None) -> schema.Manifest:
    """The manifest of a TFRecord directory; checks the image size when one is expected."""
    try:
        manifest = schema.Manifest.from_json(
            storage.read_bytes(storage.join(tfrecord_dir, schema.MANIFEST_NAME)).decode()
        )
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
    """Full paths of the manifest's shards, sorted, each checked to exist."""
    paths = [storage.join(tfrecord_dir, name) for name in sorted(manifest.shards)]
    if storage.is_remote(tfrecord_dir):
        present = {info.path for info in storage.list_files(tfrecord_dir)}
        missing = [path for path in paths if path not in present]
    else:
        missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        raise TFRecordDirError(f"{len(missing)} shard(s) listed in the manifest are missing, e.g. {missing[0]}")
    return paths


# Records parsed per tf.io.parse_example call: parsing whole batches, then decoding the images one by one
# in parallel, costs less CPU per image than parsing each record in the decode map (benchmarks/read_speed.py).
PARSE_BATCH = 64
# The speed test's: a parse_example call has a fixed cost of about 300 us here, a 32-record batch's worth
# of decoding, so its records are parsed in larger chunks and then batched (docs/speedtest.md).
PARSE_CHUNK = 256


def decode_image(jpeg: Any, image_size: int, *, as_uint8: bool = False) -> Any:
    """Stored JPEG bytes -> image_size x image_size x 3 pixels: float32 in [0, 1], or uint8 (``as_uint8``)."""
    import tensorflow as tf

    image = tf.io.decode_jpeg(jpeg, channels=3)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    if not as_uint8:
        image = tf.image.convert_image_dtype(image, tf.float32)
    return image


def decode_record(serialized: Any, image_size: int, *, as_uint8: bool = False) -> tuple[Any, Any]:
    """One record -> (image_size x image_size x 3 image as :func:`decode_image` gives it, int32 class)."""
    import tensorflow as tf

    features = schema.parse_example(serialized)
    return decode_image(features[schema.IMAGE], image_size, as_uint8=as_uint8), tf.cast(
        features[schema.CLASS], tf.int32
    )


def parse_records(serialized: Any) -> tuple[Any, Any, Any]:
    """A batch of serialised records -> (JPEG bytes, int32 classes, each record's length in bytes), parsed
    in one ``tf.io.parse_example`` call with the course's spec (so a record that does not parse fails)."""
    import tensorflow as tf

    features = tf.io.parse_example(serialized, schema.feature_spec())
    lengths = tf.strings.length(serialized, unit="BYTE")
    return features[schema.IMAGE], tf.cast(features[schema.CLASS], tf.int32), lengths


def decoded_records(
    records: Any, image_size: int, *, as_uint8: bool = False, deterministic: bool = True, lengths: bool = False
) -> Any:
    """(image, class) per record of a dataset of serialised records, as :func:`decode_record` gives them
    (the same elements, in the same order when ``deterministic``), parsed :data:`PARSE_BATCH` records at
    a time and decoded in parallel. ``lengths``: (image, class, the record's length in bytes)."""
    import tensorflow as tf

    def decode(jpeg: Any, label: Any, length: Any) -> tuple[Any, ...]:
        image = decode_image(jpeg, image_size, as_uint8=as_uint8)
        return (image, label, length) if lengths else (image, label)

    parsed = _parsed(records, PARSE_BATCH, tf.data.AUTOTUNE, deterministic)
    return parsed.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def decoded_batches(
    records: Any,
    batch_size: int,
    image_size: int,
    *,
    as_uint8: bool = False,
    parallel: int = 4,
    deterministic: bool = True,
) -> Any:
    """Full batches of (images, classes, each record's length in bytes) of a dataset of serialised records,
    a short last batch dropped: the records parsed :data:`PARSE_CHUNK` at a time, and each batch's images
    decoded by one op each, side by side (cheaper than a ``tf.map_fn`` loop: ``benchmarks/read_speed.py``),
    ``parallel`` chunks and batches at once. The images are those of :func:`decode_record`.
    """
    import tensorflow as tf

    def decode(jpegs: Any, labels: Any, lengths: Any) -> tuple[Any, Any, Any]:
        images = tf.stack([decode_image(jpegs[index], image_size, as_uint8=as_uint8) for index in range(batch_size)])
        return images, labels, lengths

    batches = _parsed(records, PARSE_CHUNK, parallel, deterministic).batch(batch_size, drop_remainder=True)
    return batches.map(decode, num_parallel_calls=parallel, deterministic=deterministic)


def _parsed(records: Any, chunk: int, parallel: int, deterministic: bool) -> Any:
    """(JPEG bytes, int32 class, length in bytes) per record, the records parsed ``chunk`` at a time by
    :func:`parse_records`, ``parallel`` chunks at once."""
    parsed = records.batch(chunk).map(parse_records, num_parallel_calls=parallel, deterministic=deterministic)
    return parsed.unbatch()


def record_dataset(paths: list[str], *, cycle_length: int = 8) -> Any:
    """The serialised records of ``paths``, ``cycle_length`` shards interleaved record by record, not decoded,
    in the same order on every call and in every process (record-level sharding and hash splits rely on it).
    Sequential: reading is a small part of the work, and a parallel interleave costs CPU in hand-offs.
    """
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices(list(paths))
    return files.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(paths), cycle_length)))
