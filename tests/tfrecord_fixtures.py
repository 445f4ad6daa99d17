"""Small TFRecord directories in the task 1 schema, for tests of the readers (speed test, training).

The images carry a class signal (a class-coloured square on noise) so a model can learn them.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from bigimage.data import schema

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
PALETTE = [(230, 230, 230), (240, 220, 40), (200, 30, 40), (250, 180, 20), (200, 60, 160)]


def class_image(class_index: int, image_size: int, rng: np.random.Generator) -> bytes:
    pixels = rng.integers(0, 120, size=(image_size, image_size, 3), dtype=np.uint8)
    side = image_size // 2
    top, left = rng.integers(0, image_size - side, size=2)
    pixels[top : top + side, left : left + side] = PALETTE[class_index % len(PALETTE)]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_tfrecord_dir(
    directory: str | os.PathLike,
    num_images: int = 40,
    image_size: int = 32,
    num_shards: int = 4,
    classes: list[str] = CLASSES,
    seed: int = 0,
) -> schema.Manifest:
    """Write ``num_images`` records over ``num_shards`` shards plus the manifest; returns the manifest."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    shards: dict[str, int] = {}
    class_counts = {name: 0 for name in classes}
    for shard in range(num_shards):
        indices = range(shard, num_images, num_shards)
        name = schema.shard_name("test", shard, len(indices))
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for index in indices:
                class_index = index % len(classes)
                class_counts[classes[class_index]] += 1
                jpeg = class_image(class_index, image_size, rng)
                writer.write(
                    schema.serialize_example(
                        jpeg, class_index, classes[class_index], image_size, image_size, len(classes)
                    )
                )
        shards[name] = len(indices)
    manifest = schema.Manifest(
        classes=list(classes),
        image_size=image_size,
        num_records=num_images,
        shards=shards,
        class_counts=class_counts,
        source="tests.tfrecord_fixtures",
        # What task 1 takes from its image tree: here the generator's inputs, so sets differ in their digest.
        source_fingerprint=f"tests.tfrecord_fixtures:{num_images}:{image_size}:{num_shards}:{','.join(classes)}:{seed}",
    )
    with open(os.path.join(directory, schema.MANIFEST_NAME), "w", encoding="utf-8") as handle:
        handle.write(manifest.to_json())
    return manifest
