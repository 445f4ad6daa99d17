"""The TFRecord schema of task 1's output: one definition for the Spark writer and every tf.data reader.

The feature names and types match the public flowers TFRecords that the coursework read, so a reader
written for those (``image`` string, ``class`` int64, ``label`` string, ``size`` int64[2],
``one_hot_class`` VarLen float32) reads ours unchanged.

TensorFlow is imported lazily: the Spark writer runs in Python workers that should not pay for it
until they serialise their first record, and the analysis side never imports it at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

IMAGE = "image"
CLASS = "class"
LABEL = "label"
SIZE = "size"
ONE_HOT_CLASS = "one_hot_class"

SHARD_SUFFIX = ".tfrec"
MANIFEST_NAME = "manifest.json"
# <prefix>NN-<count>.tfrec: shard number, records in that shard.
SHARD_NAME_RE = re.compile(r"^(?P<prefix>.*?)(?P<index>\d{2,})-(?P<count>\d+)\.tfrec$")


def shard_name(prefix: str, index: int, count: int) -> str:
    """File name of shard ``index`` holding ``count`` records."""
    return f"{prefix}{index:02d}-{count}{SHARD_SUFFIX}"


def records_in_shard_name(name: str) -> int:
    """The record count that a shard's file name declares; raises ValueError on a foreign name."""
    match = SHARD_NAME_RE.match(name.rsplit("/", 1)[-1])
    if match is None:
        raise ValueError(f"{name!r} is not a shard name of the form <prefix>NN-<count>{SHARD_SUFFIX}")
    return int(match.group("count"))


def serialize_example(jpeg: bytes, class_index: int, label: str, height: int, width: int, num_classes: int) -> bytes:
    """One record in the schema, serialised as a ``tf.train.Example``."""
    import tensorflow as tf

    one_hot = [0.0] * num_classes
    one_hot[class_index] = 1.0
    feature = {
        IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        CLASS: tf.train.Feature(int64_list=tf.train.Int64List(value=[class_index])),
        LABEL: tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode("utf-8")])),
        SIZE: tf.train.Feature(int64_list=tf.train.Int64List(value=[height, width])),
        ONE_HOT_CLASS: tf.train.Feature(float_list=tf.train.FloatList(value=one_hot)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec() -> dict[str, Any]:
    """The parsing spec of the course's readers, for ``tf.io.parse_single_example``."""
    import tensorflow as tf

    return {
        IMAGE: tf.io.FixedLenFeature([], tf.string),
        CLASS: tf.io.FixedLenFeature([], tf.int64),
        LABEL: tf.io.FixedLenFeature([], tf.string),
        SIZE: tf.io.FixedLenFeature([2], tf.int64),
        ONE_HOT_CLASS: tf.io.VarLenFeature(tf.float32),
    }


def parse_example(serialized: Any) -> dict[str, Any]:
    """Parse one serialised record (a scalar string tensor) with the course's spec."""
    import tensorflow as tf

    return tf.io.parse_single_example(serialized, feature_spec())


@dataclass
class Manifest:
    """What a TFRecord directory holds; written last, so its presence means the shards are complete."""

    classes: list[str]
    image_size: int
    num_records: int
    shards: dict[str, int]  # shard file name -> records
    class_counts: dict[str, int] = field(default_factory=dict)
    source: str = ""
    source_fingerprint: str = ""
    jpeg_quality: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls(**json.loads(text))
