"""The timed tf.data pipelines of the speed test and the timer: what one grid point measures (docs/speedtest.md).

Both sources deliver uint8 pixels as training's input does; bytes are counted per element read. A remote
source (``gs://``, any fsspec URL) goes through :mod:`bigimage.data.storage` (TensorFlow's GCS file system
cannot reach an emulator, and it reads no other remote scheme). Runs in Spark's Python workers, so
TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from bigimage.errors import UserError
from bigimage.tensorflow_runtime import load_tensorflow

FILES = "files"
TFRECORD = "tfrecord"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
_DIAGNOSE_LIMIT = 3  # bad files or shards named in an error message


class SpeedtestDataError(ValueError):
    """The data of a source cannot be read as it should (corrupt shard, undecodable image, ...)."""


class ShortDataError(UserError, SpeedtestDataError):
    """A grid point asks for more images than the source holds and ``on_short_data=error``."""


@dataclass(frozen=True)
class GridPoint:
    source: str
    batch_size: int
    batch_number: int


@dataclass
class SourcePlan:
    """What a worker needs to read one source, small and picklable; ``available``: the images it holds."""

    source: str
    location: str
    paths: list[str]
    image_size: int
    available: int
    labels: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TimingSettings:
    repetitions: int = 3
    warmup_batches: int = 2
    on_short_data: str = "repeat"
    # Threads of each timed pipeline's private tf.data pool; 0: TensorFlow's default, every core it sees.
    threads: int = 0


def images_needed(point: GridPoint, warmup_batches: int) -> int:
    return (warmup_batches + point.batch_number) * point.batch_size


def check_short_data(point: GridPoint, plan: SourcePlan, settings: TimingSettings) -> bool:
    """True when ``point`` must repeat the data; raises ShortDataError if that is not allowed."""
    needed = images_needed(point, settings.warmup_batches)
    if needed <= plan.available:
        return False
    if settings.on_short_data == "error":
        raise ShortDataError(
            f"speedtest point source={point.source} batch_size={point.batch_size} "
            f"batch_number={point.batch_number} needs {needed} images "
            f"(({settings.warmup_batches} warm-up + {point.batch_number}) batches x {point.batch_size}) "
            f"but {plan.location} holds {plan.available}; use more data, a smaller grid, or "
            "speedtest.on_short_data=repeat to read the data again (rows are then marked repeated=true)"
        )
    return True


def _fetch_bytes(url: Any) -> Any:
    """py_function body: the bytes of a remote object (or local file) through bigimage.data.storage."""
    from bigimage.data import storage

    tf = load_tensorflow()
    return tf.constant(storage.read_bytes(url.numpy().decode("utf-8")))


class _RamShards:
    """Fetches remote shards into ``ram://`` so that ``TFRecordDataset`` reads them; removed on close()."""

    def __init__(self) -> None:
        self.prefix = f"ram://bigimage-speedtest/{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.fetched: set[str] = set()

    def fetch(self, url: Any) -> Any:
        """py_function body (eager): download one shard into ram://, return its ram:// path."""
        from bigimage.data import storage

        tf = load_tensorflow()
        name = url.numpy().decode("utf-8")
        # A new name per fetch: a pass never writes over a file that another pass may still read.
        path = f"{self.prefix}/{uuid.uuid4().hex[:12]}-{storage.basename(name)}"
        with tf.io.gfile.GFile(path, "wb") as handle:
            handle.write(storage.read_bytes(name))
        self.fetched.add(path)
        return tf.constant(path)

    def open(self, url: Any) -> Any:
        """interleave body (traced by tf.data): the records of one remote shard."""
        import tensorflow as tf  # plain import: this body is traced by tf.data (autograph)

        local = tf.py_function(self.fetch, [url], tf.string)
        return tf.data.TFRecordDataset(tf.reshape(local, []))

    def close(self) -> None:
        tf = load_tensorflow()
        for path in self.fetched:
            with contextlib.suppress(tf.errors.NotFoundError):
                tf.io.gfile.remove(path)
        self.fetched.clear()


def decode_file(contents: Any, image_size: int) -> Any:
    """Image file bytes -> uint8 ``image_size`` x ``image_size`` x 3: the centre square, resized."""
    import tensorflow as tf  # plain import: this body is traced by tf.data (autograph)

    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.minimum(height, width)
    image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
    image = tf.saturate_cast(tf.round(tf.image.resize(image, [image_size, image_size])), tf.uint8)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def _read_file_op(plan: SourcePlan) -> Any:
    from bigimage.data import storage

    tf = load_tensorflow()
    if any(storage.is_remote(path) for path in plan.paths):
        return lambda path: tf.reshape(tf.py_function(_fetch_bytes, [path], tf.string), [])
    return tf.io.read_file


def files_elements(plan: SourcePlan, repeat: bool) -> Any:
    """(image, class, bytes read) per image file of ``plan``."""
    tf = load_tensorflow()
    read = _read_file_op(plan)
    size = plan.image_size
    dataset = tf.data.Dataset.from_tensor_slices((plan.paths, tf.constant(plan.labels, tf.int32)))
    if repeat:
        dataset = dataset.repeat()

    def load(path: Any, label: Any) -> tuple[Any, Any, Any]:
        contents = read(path)
        return decode_file(contents, size), label, tf.strings.length(contents, unit="BYTE")

    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)


def tfrecord_batches(
    plan: SourcePlan, batch_size: int, repeat: bool, ram: _RamShards | None = None, threads: int = 0
) -> Any:
    """Full batches of (images, classes, record bytes in the batch) of the shards of ``plan``, parsed in
    chunks and decoded a batch at a time (two per thread at once: :func:`bigimage.data.readers.decoded_batches`)."""
    from bigimage.data import readers

    tf = load_tensorflow()
    if ram is not None:
        files = tf.data.Dataset.from_tensor_slices(list(plan.paths))
        records = files.interleave(
            ram.open,
            cycle_length=max(1, min(len(plan.paths), 8)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False,
        )
    else:  # the shards one after the other: the order does not matter here, and interleaving costs CPU
        records = tf.data.TFRecordDataset(list(plan.paths))
    if repeat:
        records = records.repeat()
    parallel = 2 * (threads or os.cpu_count() or 1)
    return readers.decoded_batches(
        records, batch_size, plan.image_size, as_uint8=True, parallel=parallel, deterministic=False
    )


def source_dataset(
    plan: SourcePlan, batch_size: int, repeat: bool, ram: _RamShards | None = None, threads: int = 0
) -> Any:
    """Full batches of (images, classes, bytes read for the batch) of ``plan``, prefetched."""
    tf = load_tensorflow()
    if plan.source == FILES:
        dataset = files_elements(plan, repeat).batch(batch_size, drop_remainder=True)
    elif plan.source == TFRECORD:
        dataset = tfrecord_batches(plan, batch_size, repeat, ram, threads)
    else:
        raise ValueError(f"unknown speedtest source {plan.source!r}; choose files or tfrecord")
    dataset = dataset.map(lambda images, labels, nbytes: (images, labels, tf.reduce_sum(nbytes)))
    return with_threads(dataset.prefetch(tf.data.AUTOTUNE), threads)


def with_threads(dataset: Any, threads: int) -> Any:
    """Run ``dataset``'s reads, decodes and batching on a private pool of ``threads`` threads (0: as is)."""
    if threads <= 0:
        return dataset
    tf = load_tensorflow()
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def time_batches(dataset: Any, batch_number: int, warmup_batches: int) -> tuple[int, int, float]:
    """Iterate ``warmup_batches`` untimed, then time ``batch_number`` batches of a fresh iterator:
    (images, bytes, seconds)."""
    iterator = iter(dataset)
    try:
        for _ in range(warmup_batches):
            next(iterator)
        images = nbytes = 0
        start = time.perf_counter()
        for _ in range(batch_number):
            batch_images, _labels, batch_bytes = next(iterator)
            images += int(batch_images.shape[0])
            nbytes += int(batch_bytes)
        seconds = time.perf_counter() - start
    except StopIteration:
        raise SpeedtestDataError(
            f"the data ended before {warmup_batches} warm-up + {batch_number} batches were read"
        ) from None
    return images, nbytes, seconds


def time_point(point: GridPoint, plan: SourcePlan, settings: TimingSettings) -> list[dict[str, Any]]:
    """All repetitions of one grid point, a row each; a read or decode failure raises SpeedtestDataError."""
    from bigimage.data import storage

    tf = load_tensorflow()
    repeated = check_short_data(point, plan, settings)
    remote_shards = plan.source == TFRECORD and any(storage.is_remote(path) for path in plan.paths)
    ram = _RamShards() if remote_shards else None
    rows = []
    try:
        dataset = source_dataset(plan, point.batch_size, repeated, ram, settings.threads)
        for repetition in range(settings.repetitions):
            try:
                images, nbytes, seconds = time_batches(dataset, point.batch_number, settings.warmup_batches)
            except (
                tf.errors.DataLossError,  # a record's CRC or framing is wrong
                tf.errors.InvalidArgumentError,  # a record does not parse, an image does not decode
                tf.errors.NotFoundError,  # a file vanished
                tf.errors.UnknownError,  # a remote read failed inside its py_function
            ) as error:
                raise SpeedtestDataError(diagnose(plan, error)) from None
            seconds = max(seconds, 1e-9)
            rows.append(
                {
                    **asdict(point),
                    "repetition": repetition,
                    "images": images,
                    "bytes": nbytes,
                    "seconds": seconds,
                    "images_per_second": images / seconds,
                    "bytes_per_second": nbytes / seconds,
                    "repeated": repeated,
                    "warmup_batches": settings.warmup_batches,
                    "available_images": plan.available,
                }
            )
    finally:
        if ram is not None:
            ram.close()
    return rows


def _first_line(error: Exception) -> str:
    """The gist of an error: TensorFlow's function-node and op decorations removed."""
    message = (getattr(error, "message", None) or str(error)).strip()
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message, flags=re.S)
    return message.splitlines()[0].strip() if message else type(error).__name__


def _check_file(read: Any, image_size: int, path: str) -> None:
    decode_file(read(load_tensorflow().constant(path)), image_size)


def _check_shard(image_size: int, path: str) -> None:
    """Read every record of one shard (a remote one through ``ram://``) as an image record."""
    from bigimage.data import readers, storage

    tf = load_tensorflow()
    ram = _RamShards() if storage.is_remote(path) else None
    try:
        records = ram.open(tf.constant(path)) if ram else tf.data.TFRecordDataset(path)
        for index, record in enumerate(records):
            try:
                readers.decode_record(record, image_size, as_uint8=True)
            except (tf.errors.InvalidArgumentError, ValueError) as exc:
                raise SpeedtestDataError(
                    f"record {index} does not parse as an image record: {_first_line(exc)}"
                ) from exc
    finally:
        if ram is not None:
            ram.close()


def diagnose(plan: SourcePlan, error: Exception) -> str:
    """Find which shards or files broke a pipeline (read one by one, sequentially) and say so."""
    tf = load_tensorflow()
    if plan.source == TFRECORD:
        check = partial(_check_shard, plan.image_size)
        what = "TFRecord shard"
        advice = f"the shard is corrupt, truncated or not in the task 1 schema; rerun `python run.py task=preprocess tfrecord_dir={plan.location}`"
    else:
        check = partial(_check_file, _read_file_op(plan), plan.image_size)
        what, advice = "image file", "the file is not a complete image; remove or replace it"
    bad: list[tuple[str, str]] = []
    for path in plan.paths:
        try:
            check(path)
        except (tf.errors.OpError, ValueError) as exc:  # SpeedtestDataError is a ValueError
            bad.append((path, _first_line(exc)))
        if len(bad) >= _DIAGNOSE_LIMIT:
            break
    if not bad:
        return f"reading source {plan.source} at {plan.location} failed: {_first_line(error)}"
    listed = "; ".join(f"{path}: {reason}" for path, reason in bad)
    more = " (stopped looking after the first few)" if len(bad) >= _DIAGNOSE_LIMIT else ""
    return f"bad {what}(s) in {plan.location}{more}: {listed}; {advice}"


def time_points(
    points: list[GridPoint], plans: dict[str, SourcePlan], settings: TimingSettings
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for point in points:
        rows.extend(time_point(point, plans[point.source], settings))
    return rows
