"""The TFRecord schema of task 1's output, one definition for the shard writer and every tf.data reader:
the features of the public flowers TFRecords (docs/preprocess.md), so the course's reader reads ours.
TensorFlow is imported lazily: Spark's Python workers serialise records without it.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, get_origin, get_type_hints

IMAGE = "image"
CLASS = "class"
LABEL = "label"
SIZE = "size"
ONE_HOT_CLASS = "one_hot_class"

SHARD_SUFFIX = ".tfrec"
MANIFEST_NAME = "manifest.json"
# The marker of a manifest this project wrote (its ``writer``): a job replaces a manifest.json only when
# it carries it, never another program's file of the same name.
MANIFEST_WRITER = "bigimage"
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
    """One record in the schema as a serialised ``tf.train.Example``, encoded here so that Spark's Python
    workers never import TensorFlow (the tests check that TensorFlow parses it into the same message)."""
    one_hot = [0.0] * num_classes
    one_hot[class_index] = 1.0
    features = (
        (IMAGE, _bytes_list([jpeg])),
        (CLASS, _int64_list([class_index])),
        (LABEL, _bytes_list([label.encode("utf-8")])),
        (SIZE, _int64_list([height, width])),
        (ONE_HOT_CLASS, _float_list(one_hot)),
    )
    entries = b"".join(_field(1, _field(1, name.encode("utf-8")) + _field(2, feature)) for name, feature in features)
    return _field(1, entries)


# Protocol buffer wire format of example.proto / feature.proto (field 1 of each message, wire type 2).
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_list(values: list[bytes]) -> bytes:  # Feature.bytes_list = 1
    return _field(1, b"".join(_field(1, value) for value in values))


def _float_list(values: list[float]) -> bytes:  # Feature.float_list = 2, packed floats
    return _field(2, _field(1, struct.pack(f"<{len(values)}f", *values)))


def _int64_list(values: list[int]) -> bytes:  # Feature.int64_list = 3, packed varints
    if any(value < 0 for value in values):
        raise ValueError("negative int64 values are not used by the schema")
    return _field(3, _field(1, b"".join(_varint(value) for value in values)))


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
    # MANIFEST_WRITER when this project published the set (the publication sets it); readers ignore it.
    writer: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls(**json.loads(text))


_MANIFEST_TYPES: dict[str, type] = {name: get_origin(kind) or kind for name, kind in get_type_hints(Manifest).items()}


def project_manifest(data: bytes) -> Manifest | None:
    """``data`` as a manifest this project wrote (the manifest's fields and no others, each of its type, the
    shards a map of names to counts, and :data:`MANIFEST_WRITER`), or None: then it is the user's."""
    try:
        fields = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if (
        not isinstance(fields, dict)
        or fields.get("writer") != MANIFEST_WRITER
        or not fields.keys() <= _MANIFEST_TYPES.keys()
    ):
        return None
    if not all(isinstance(fields.get(key), kind) for key, kind in _MANIFEST_TYPES.items() if key in fields):
        return None
    shards = fields.get("shards")
    if not isinstance(shards, dict) or not all(isinstance(count, int) for count in shards.values()):
        return None
    try:
        return Manifest(**fields)
    except TypeError:  # a required field missing
        return None
