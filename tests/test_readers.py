"""The TFRecord readers that the speed test and training share: what they deliver, record for record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigimage.data import readers
from tests.tfrecord_fixtures import write_tfrecord_dir


def test_batched_parsing_delivers_what_per_record_parsing_did(tmp_path: Path) -> None:
    """Issue 13: records are parsed a batch at a time (tf.io.parse_example) for speed; the elements, and
    their order, are those of decoding each record on its own, for training's uint8 and float32 alike,
    over a record count that is not a multiple of the parse batch."""
    import tensorflow as tf

    manifest = write_tfrecord_dir(tmp_path / "tfrec", num_images=readers.PARSE_BATCH + 9, image_size=24)
    paths = readers.shard_paths(str(tmp_path / "tfrec"), manifest)
    for as_uint8 in (True, False):
        records = readers.record_dataset(paths)
        expected = [(*readers.decode_record(record, 24, as_uint8=as_uint8), len(record.numpy())) for record in records]
        got = list(readers.decoded_records(records, 24, as_uint8=as_uint8, lengths=True))
        assert len(got) == len(expected) == manifest.num_records
        for (image, label, length), (want_image, want_label, want_length) in zip(got, expected, strict=True):
            assert image.dtype == want_image.dtype == (tf.uint8 if as_uint8 else tf.float32)
            np.testing.assert_array_equal(image.numpy(), want_image.numpy())
            assert int(label) == int(want_label) and label.dtype == tf.int32
            assert int(length) == want_length


def test_a_record_that_does_not_parse_fails_the_batched_reader(tmp_path: Path) -> None:
    import pytest
    import tensorflow as tf

    path = tmp_path / "junk-00-1.tfrec"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"not an Example")
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(readers.decoded_records(readers.record_dataset([str(path)]), 24))


def test_batches_decoded_in_the_batch_hold_what_per_record_decoding_gives(tmp_path: Path) -> None:
    """The speed test's batches (parsed and decoded a batch at a time): the same images, classes and
    record lengths as decoding each record, in order when deterministic, the short last batch dropped."""
    import tensorflow as tf

    manifest = write_tfrecord_dir(tmp_path / "tfrec", num_images=21, image_size=24)
    records = readers.record_dataset(readers.shard_paths(str(tmp_path / "tfrec"), manifest))
    expected = [(*readers.decode_record(record, 24, as_uint8=True), len(record.numpy())) for record in records][:16]
    batches = list(readers.decoded_batches(records, 8, 24, as_uint8=True, parallel=3))
    assert [int(images.shape[0]) for images, _, _ in batches] == [8, 8]
    images, labels, lengths = (tf.concat(parts, 0).numpy() for parts in zip(*batches, strict=True))
    np.testing.assert_array_equal(images, np.stack([image.numpy() for image, _, _ in expected]))
    assert labels.tolist() == [int(label) for _, label, _ in expected] and labels.dtype == np.int32
    assert lengths.tolist() == [length for _, _, length in expected]
    assert next(iter(readers.decoded_batches(records, 8, 24)))[0].dtype == tf.float32
