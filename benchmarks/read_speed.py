"""How fast the speed test's TFRecord pipeline reads, against like-for-like references in the same run.

    .venv/bin/python benchmarks/read_speed.py [--images 480] [--batch-size 32] [--rounds 5] [--json]

On one set of generated photo-like JPEGs (original size, flowers-like 500 x 375 and similar), the
script writes task 1's TFRecords (``transform_jpeg`` to ``--image-size`` px, the project's record
writer), the same stored JPEGs as plain files (``stored/<label>/<index>.jpg``), and then times,
interleaved over ``--rounds`` rounds, each after a warm-up pass:

* ``tfrecord``: the speed test's ``tfrecord`` pipeline (:mod:`bigimage.speedtest.timing`), exactly as
  ``task=speedtest`` runs it: records interleaved from the shards, a batch of records parsed in one op
  and its JPEGs decoded to uint8, as many batches at once as the pipeline runs, prefetched;
* ``decode_batches``: the headline's reference, the same batch decode on the same stored JPEGs already
  in memory: batched, decoded to uint8 by the same function with the same parallelism, prefetched. It
  does everything the pipeline does except read and parse records, so the ratio is what the records
  cost (goal >= 0.95);
* ``stored_files``: the format's reference, the same stored JPEGs read as files (one ``read_file`` per
  image, in parallel) and then decoded a batch at a time exactly as above. tfrecord over stored_files
  is what the TFRecord format buys for the same bytes and the same decode;
* ``files``: the speed test's ``files`` pipeline over the original files (what ``task=speedtest``
  compares: decode the originals, centre-crop and resize to uint8);
* ``image_dataset_from_directory``: Keras' ``image_dataset_from_directory`` over the original files at
  the same image size and batch size, prefetched. It resizes to float32 too, work the pipeline does not
  do, so tfrecord over it flatters the pipeline and is printed only beside the like-for-like ratios,
  labelled.

It prints images/s (median over rounds) and the ratios, and the same ratios in images per CPU-second
of this process, which other load on a shared machine disturbs far less than wall-clock rates.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np
from PIL import Image

from bigimage.data import schema
from bigimage.data.tfrecord import TFRecordWriter
from bigimage.data.transform import transform_jpeg

GOAL = 0.95  # of the same batch decode without records
CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
SIZES = [(500, 375), (375, 500), (500, 333), (320, 240), (640, 427)]  # flowers-like originals


def photo_like(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A smooth random field with texture and noise: JPEG sizes and decode cost like real photos."""
    small = rng.integers(0, 255, size=(max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    texture = 25 * np.sin(xx / rng.uniform(3, 9)) * np.cos(yy / rng.uniform(3, 9))
    noise = rng.normal(0, 10, size=(height, width, 1))
    pixels = np.clip(base + texture[..., None] + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_data(
    base: Path, images: int, image_size: int, shards: int, seed: int = 0
) -> tuple[Path, Path, Path, list[bytes]]:
    """Original JPEGs under base/images/<label>/, the stored (transformed) JPEGs as files under
    base/stored/<label>/ and as TFRecords under base/tfrecords/; returns the three roots and the stored JPEGs."""
    rng = np.random.default_rng(seed)
    root, stored_root, tfrecords = base / "images", base / "stored", base / "tfrecords"
    stored: list[tuple[bytes, int]] = []
    for index in range(images):
        class_index = index % len(CLASSES)
        folder = root / CLASSES[class_index]
        folder.mkdir(parents=True, exist_ok=True)
        (stored_root / CLASSES[class_index]).mkdir(parents=True, exist_ok=True)
        width, height = SIZES[index % len(SIZES)]
        original = photo_like(width, height, rng)
        (folder / f"{index:05d}.jpg").write_bytes(original)
        jpeg = transform_jpeg(original, image_size, 90)
        (stored_root / CLASSES[class_index] / f"{index:05d}.jpg").write_bytes(jpeg)
        stored.append((jpeg, class_index))
    tfrecords.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for shard in range(shards):
        part = stored[shard::shards]
        name = schema.shard_name("bench", shard, len(part))
        with open(tfrecords / name, "wb") as handle:
            writer = TFRecordWriter(handle)
            for jpeg, class_index in part:
                writer.write(
                    schema.serialize_example(
                        jpeg, class_index, CLASSES[class_index], image_size, image_size, len(CLASSES)
                    )
                )
        counts[name] = len(part)
    manifest = schema.Manifest(classes=CLASSES, image_size=image_size, num_records=images, shards=counts)
    (tfrecords / schema.MANIFEST_NAME).write_text(manifest.to_json())
    return root, stored_root, tfrecords, [jpeg for jpeg, _ in stored]


def images_per_second(dataset, batches: int) -> tuple[float, float]:
    """Warm-up 2 batches, then time ``batches`` batches of a repeated dataset.

    Returns (images per wall-clock second, images per CPU-second of this process). The second is
    much less sensitive to other processes on a shared machine: it is the work per image, not the
    share of the CPUs this process happened to get.
    """
    iterator = iter(dataset)
    for _ in range(2):
        next(iterator)
    count = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(iterator)
        images = batch[0] if isinstance(batch, tuple) else batch
        count += int(images.shape[0])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return count / wall, count / max(cpu, 1e-9)


def pipelines(
    root: Path, stored_root: Path, tfrecords: Path, jpegs: list[bytes], image_size: int, batch_size: int
) -> dict:
    import tensorflow as tf

    from bigimage.data import readers
    from bigimage.data.listing import list_labelled_images
    from bigimage.speedtest.timing import FILES, TFRECORD, SourcePlan, source_dataset

    manifest = readers.read_manifest(str(tfrecords), image_size)
    tf_plan = SourcePlan(
        TFRECORD, str(tfrecords), readers.shard_paths(str(tfrecords), manifest), image_size, manifest.num_records
    )
    listing = list_labelled_images(str(root))
    files_plan = SourcePlan(
        FILES, str(root), [p for p, _ in listing.items], image_size, len(listing.items), [c for _, c in listing.items]
    )
    parallel = 2 * (os.cpu_count() or 1)  # as many batches at once as timing.tfrecord_batches decodes

    def decode_batch(jpeg_batch):
        return tf.stack(
            [readers.decode_image(jpeg_batch[index], image_size, as_uint8=True) for index in range(batch_size)]
        )

    def batch_decoded(jpeg_bytes):
        return (
            jpeg_bytes.batch(batch_size, drop_remainder=True)
            .map(decode_batch, num_parallel_calls=parallel, deterministic=False)
            .prefetch(tf.data.AUTOTUNE)
        )

    stored_paths = sorted(str(path) for path in stored_root.rglob("*.jpg"))
    stored_files = (
        tf.data.Dataset.from_tensor_slices(stored_paths)
        .repeat()
        .map(tf.io.read_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    )

    def idfd(directory: Path):
        return (
            tf.keras.utils.image_dataset_from_directory(
                str(directory),
                image_size=(image_size, image_size),
                batch_size=batch_size,
                shuffle=False,
                crop_to_aspect_ratio=True,
            )
            .repeat()
            .prefetch(tf.data.AUTOTUNE)
        )

    return {
        "tfrecord": source_dataset(tf_plan, batch_size, repeat=True),
        "decode_batches": batch_decoded(tf.data.Dataset.from_tensor_slices(jpegs).repeat()),
        "stored_files": batch_decoded(stored_files),
        "files": source_dataset(files_plan, batch_size, repeat=True),
        "image_dataset_from_directory": idfd(root),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=480, help="original images to generate")
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="rough time per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=None, help="reuse/keep the generated data here")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="read-speed-") as tmp:
        base = args.data_dir or Path(tmp)
        began = time.perf_counter()
        root, stored_root, tfrecords, jpegs = make_data(base, args.images, args.image_size, args.shards)
        print(
            f"data: {args.images} originals + stored JPEGs as files and TFRecords at {args.image_size} px in {time.perf_counter() - began:.1f} s "
            f"(originals {sum(p.stat().st_size for p in root.rglob('*.jpg')) / 1e6:.1f} MB, "
            f"stored JPEGs {sum(map(len, jpegs)) / 1e6:.1f} MB)",
            file=sys.stderr,
        )
        datasets = pipelines(root, stored_root, tfrecords, jpegs, args.image_size, args.batch_size)
        # Size each measurement from a quick probe so each takes about --seconds.
        batches = {}
        for name, dataset in datasets.items():
            probe, _ = images_per_second(dataset, 4)
            batches[name] = max(8, int(probe * args.seconds / args.batch_size))
        rates: dict[str, list[float]] = {name: [] for name in datasets}
        cpu_rates: dict[str, list[float]] = {name: [] for name in datasets}
        for _ in range(args.rounds):  # interleaved, so drift in machine load touches every pipeline
            for name, dataset in datasets.items():
                wall, cpu = images_per_second(dataset, batches[name])
                rates[name].append(wall)
                cpu_rates[name].append(cpu)

    median = {name: statistics.median(values) for name, values in rates.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu_rates.items()}
    # (numerator, denominator): the headline, the format's like-for-like factor, then the flattering mixed ratio.
    ratios = {
        "tfrecord_over_decode_batches": ("tfrecord", "decode_batches"),
        "format_gain": ("tfrecord", "stored_files"),
        "tfrecord_over_files": ("tfrecord", "files"),
        "tfrecord_over_image_dataset_from_directory": ("tfrecord", "image_dataset_from_directory"),
    }
    result = {
        "images_per_second": median,
        "rounds": rates,
        **{name: median[a] / median[b] for name, (a, b) in ratios.items()},
        "images_per_cpu_second": cpu_median,
        **{f"cpu_{name}": cpu_median[a] / cpu_median[b] for name, (a, b) in ratios.items()},
        "goals": {"tfrecord_over_decode_batches": GOAL},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"images/s, median of {args.rounds} rounds (batch size {args.batch_size}, {args.image_size} px, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}):"
    )
    print(f"  {'pipeline':36s} {'images/s':>9s}   {'per CPU-s':>9s}   rounds (images/s)")
    for name, value in median.items():
        spread = ", ".join(f"{v:.0f}" for v in rates[name])
        print(f"  {name:36s} {value:9.1f}   {cpu_median[name]:9.1f}   ({spread})")
    lines = [
        ("TFRecord / the same batch decode in memory", "tfrecord_over_decode_batches", f"headline, goal >= {GOAL}"),
        ("TFRecord / the same JPEGs as files, same decode", "format_gain", "what the format buys, like for like"),
        ("TFRecord / the speed test's files pipeline", "tfrecord_over_files", "task 2's comparison: originals"),
        (
            "TFRecord / image_dataset_from_directory",
            "tfrecord_over_image_dataset_from_directory",
            "flattering: the reference also resizes to float32",
        ),
    ]
    for label, key, note in lines:
        print(f"{label:48s} {result[key]:5.2f} wall-clock, {result['cpu_' + key]:5.2f} per CPU-second  ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
