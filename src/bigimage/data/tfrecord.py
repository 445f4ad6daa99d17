"""TFRecord files without TensorFlow: the framing that ``tf.data.TFRecordDataset`` reads.

Each record is: length (uint64 LE), masked CRC-32C of the length, data, masked CRC-32C of the data.
Spark's Python workers write shards with this so they never import TensorFlow.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One record, framed as in a TFRecord file."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class TFRecordWriter:
    """Appends framed records to an open binary file; counts records and bytes written."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.records = 0
        self.bytes_written = 0

    def write(self, record: bytes) -> None:
        framed = frame_record(record)
        self._handle.write(framed)
        self.records += 1
        self.bytes_written += len(framed)
