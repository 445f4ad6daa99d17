"""Training, validation and test inputs from task 1's TFRecords (the split rules: docs/training.md).

Each input pipeline keeps every N-th record before decoding (auto-sharding OFF: FILE sharding fails with
fewer files than workers, tensorflow#36846); both datasets repeat with a fixed number of steps, since
uneven last batches stall MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bigimage.config import ConfigError
from bigimage.data import readers, schema

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SUBSETS = (TRAIN, VALIDATION, TEST)

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config
    from bigimage.train.cache import CacheChoice

log = logging.getLogger(__name__)

HASH_BUCKETS = 1000
TEST_HASH_RANGE = 2**62  # keyed hashes of records are in [0, TEST_HASH_RANGE)
INPUT_SHARDING = "records: Dataset.shard(input pipelines, pipeline id) before decode; auto_shard_policy=OFF"


@dataclass
class SplitPlan:
    """Which records train, validate and test, and how many of each."""

    mode: str
    train_paths: list[str]
    val_paths: list[str]
    val_buckets: int  # hash mode: bucket < val_buckets -> validation
    classes: list[str]
    split_seed: int
    test_thresholds: list[int]  # per class: keyed hash < threshold -> test
    class_counts: dict[str, list[int]]  # subset -> records per class index
    train_records: int = field(init=False)
    val_records: int = field(init=False)
    test_records: int = field(init=False)
    num_classes: int = field(init=False)

    def __post_init__(self) -> None:
        self.train_records, self.val_records, self.test_records = (sum(self.class_counts[s]) for s in SUBSETS)
        self.num_classes = len(self.classes)

    @property
    def description(self) -> str:
        if self.mode == "hash":
            rule = f"hash: fingerprint64(record) % {HASH_BUCKETS} < {self.val_buckets} -> validation"
        else:
            rule = f"shard: {len(self.val_paths)} of {len(self.train_paths) + len(self.val_paths)} shards -> validation"
        test = f"; test: per class, smallest keyed hash (split_seed {self.split_seed})" if self.test_records else ""
        counts = f"{self.train_records} train / {self.val_records} val / {self.test_records} test records"
        return f"{rule}{test} ({counts})"

    def records(self, subset: str) -> int:
        return sum(self.class_counts[subset])


def _val_mask(records: Any, val_buckets: int) -> Any:
    import tensorflow as tf

    return tf.strings.to_hash_bucket_fast(records, HASH_BUCKETS) < val_buckets


def _keyed_hash(records: Any, split_seed: int) -> Any:
    import tensorflow as tf

    return tf.strings.to_hash_bucket_strong(records, TEST_HASH_RANGE, key=[split_seed, 0])


def _record_classes(records: Any) -> Any:
    import tensorflow as tf

    return tf.io.parse_example(records, {schema.CLASS: tf.io.FixedLenFeature([], tf.int64)})[schema.CLASS]


def _scan(paths: list[str], split_seed: int, val_buckets: int) -> tuple[Any, Any, Any]:
    """(class, keyed hash, in the validation buckets) of every record of ``paths``, as numpy arrays."""
    import numpy as np

    batches = list(
        readers.record_dataset(paths)
        .batch(1024)
        .map(lambda batch: (_record_classes(batch), _keyed_hash(batch, split_seed), _val_mask(batch, val_buckets)))
        .as_numpy_iterator()
    )
    if not batches:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return tuple(np.concatenate([batch[i] for batch in batches]) for i in range(3))  # type: ignore[return-value]


def _test_thresholds(classes: Any, hashes: Any, num_classes: int, fraction: float) -> list[int]:
    """Per class, the keyed hash below which a record is a test record: the ``round(fraction * n)``
    smallest of the class's ``n`` records (records with the same bytes fall on the same side)."""
    import numpy as np

    thresholds = []
    for index in range(num_classes):
        ordered = np.sort(hashes[classes == index])
        take = int(math.floor(fraction * len(ordered) + 0.5))
        thresholds.append(int(ordered[take]) if take < len(ordered) else TEST_HASH_RANGE)
    return thresholds


def _counts(classes: Any, mask: Any, num_classes: int) -> list[int]:
    import numpy as np

    return [int(n) for n in np.bincount(classes[mask], minlength=num_classes)[:num_classes]]


def plan_split(cfg: Config, tfrecord_dir: str, manifest: schema.Manifest) -> SplitPlan:
    """Decide the train/validation/test split of a local TFRecord directory; ConfigError when impossible."""
    import numpy as np

    mode = cfg.train.split
    fraction = float(cfg.train.validation_fraction)
    split_seed = int(cfg.train.split_seed)
    paths = readers.shard_paths(tfrecord_dir, manifest)
    classes = list(manifest.classes)
    if mode == "shard":
        if len(paths) < 2:
            raise ConfigError(
                f"train.split=shard needs at least 2 shards; {tfrecord_dir} has {len(paths)}: use train.split=hash"
            )
        n_val = min(len(paths) - 1, max(1, round(fraction * len(paths))))
        train_paths, val_paths, val_buckets = paths[:-n_val], paths[-n_val:], 0
        scans = [_scan(group, split_seed, 0) for group in (train_paths, val_paths)]
        record_class, record_hash = (np.concatenate([scan[i] for scan in scans]) for i in (0, 1))
        in_val = np.arange(len(record_class)) >= len(scans[0][0])
    else:
        val_buckets = max(1, min(HASH_BUCKETS - 1, round(fraction * HASH_BUCKETS)))
        train_paths = val_paths = paths
        record_class, record_hash, in_val = _scan(paths, split_seed, val_buckets)
    thresholds = _test_thresholds(record_class, record_hash, len(classes), float(cfg.train.test_fraction))
    in_test = record_hash < np.asarray(thresholds, dtype=np.int64)[record_class] if len(record_class) else in_val
    masks = {TRAIN: ~in_test & ~in_val, VALIDATION: ~in_test & in_val, TEST: in_test}
    counts = {subset: _counts(record_class, mask, len(classes)) for subset, mask in masks.items()}
    plan = SplitPlan(mode, train_paths, val_paths, val_buckets, classes, split_seed, thresholds, counts)
    if plan.train_records < 1 or plan.val_records < 1:
        raise ConfigError(
            f"the split leaves {plan.train_records} training and {plan.val_records} validation records "
            f"({plan.description}); use more images or another train.validation_fraction"
        )
    return plan


def expected_train_records(cfg: Config, manifest: schema.Manifest) -> int:
    """The training records a split will leave, from the manifest alone (validation at its expected share)."""
    fraction = float(cfg.train.test_fraction)
    test = sum(int(math.floor(fraction * count + 0.5)) for count in manifest.class_counts.values())
    rest = manifest.num_records - test
    return rest - round(float(cfg.train.validation_fraction) * rest)


def check_batch_fits(global_batch_size: int, train_records: int, tfrecord_dir: str, *, exact: bool) -> None:
    """Raise ConfigError when one global batch is more than the training records."""
    if global_batch_size > train_records:
        about = "" if exact else "about "
        raise ConfigError(
            f"batch_size={global_batch_size} is more than the {about}{train_records} training records of "
            f"{tfrecord_dir} (after the validation and test splits): use batch_size <= {train_records}, or more images"
        )


def steps(records: int, global_batch_size: int, *, training: bool) -> int:
    """Steps per epoch: whole batches for training (at least one), all records for validation."""
    return max(1, records // global_batch_size if training else math.ceil(records / global_batch_size))


def augment(image: Any, label: Any) -> tuple[Any, Any]:
    """Light augmentation: random horizontal flip and brightness jitter, on uint8 images."""
    import tensorflow as tf

    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_brightness(tf.cast(image, tf.float32), max_delta=20.0)
    return tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8), label


def subset_records(plan: SplitPlan, subset: str) -> Any:
    """The serialised records of one subset (:data:`SUBSETS`) of the plan, in a fixed order, not decoded."""
    import tensorflow as tf

    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}: one of {', '.join(SUBSETS)}")
    paths = {TRAIN: plan.train_paths, VALIDATION: plan.val_paths, TEST: plan.train_paths}[subset]
    if subset == TEST and plan.mode == "shard":  # the test records come from every shard
        paths = plan.train_paths + plan.val_paths
    records = readers.record_dataset(paths)
    if subset == TEST or plan.test_records:
        thresholds = tf.constant(plan.test_thresholds, tf.int64)

        def is_test(record: Any) -> Any:
            return _keyed_hash(record, plan.split_seed) < tf.gather(thresholds, _record_classes(record[None])[0])

        if subset == TEST:
            return records.filter(is_test)
        records = records.filter(lambda record: tf.logical_not(is_test(record)))
    if plan.mode == "hash":
        if subset == TRAIN:
            return records.filter(lambda record: tf.logical_not(_val_mask(record, plan.val_buckets)))
        return records.filter(lambda record: _val_mask(record, plan.val_buckets))
    return records


def build_inputs(
    cfg: Any,
    plan: SplitPlan,
    *,
    training: bool,
    input_context: Any = None,
    batch_size: int | None = None,
    cache: CacheChoice | None = None,
) -> Any:
    """The (images uint8, classes int32) batches of one input pipeline of the training or validation subset;
    with an ``input_context`` its share of the records, in per-replica batches."""
    import tensorflow as tf

    seed = int(cfg.seed)
    records = subset_records(plan, TRAIN if training else VALIDATION)
    if input_context is not None:
        if input_context.num_input_pipelines > 1:
            records = records.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch = input_context.get_per_replica_batch_size(int(cfg.batch_size))
    else:
        batch = int(batch_size or cfg.batch_size)
    dataset = readers.decoded_records(records, int(cfg.image_size), as_uint8=True)
    if cache is not None:
        pipeline = input_context.input_pipeline_id if input_context is not None else 0
        dataset = cache.apply(dataset, f"{'train' if training else 'val'}-{pipeline}")
    if training and cfg.train.shuffle_buffer:
        dataset = dataset.shuffle(int(cfg.train.shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat()
    if training and cfg.train.augment:
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # No autotuning thread: freeing the iterator at the end of model.fit waits for it to wake up.
    options.autotune.enabled = False
    return dataset.with_options(options)


def device_datasets_without_autotuning() -> bool:
    """Turn tf.data's autotuning off in tf.distribute's per-device datasets too, which no option reaches:
    wraps ``multi_device_iterator_ops._create_device_dataset``; returns whether it is off there."""
    import tensorflow as tf
    from tensorflow.python.data.ops import multi_device_iterator_ops

    build = getattr(multi_device_iterator_ops, "_create_device_dataset", None)
    if build is None:
        log.warning(
            "tf.data autotuning stays on in the per-device datasets: this TensorFlow has no "
            "multi_device_iterator_ops._create_device_dataset (model.fit may wait after its last epoch)"
        )
        return False
    if getattr(build, "without_autotuning", False):
        return True

    def without_autotuning(*args: Any, **kwargs: Any) -> Any:
        options = tf.data.Options()
        options.autotune.enabled = False
        return build(*args, **kwargs).with_options(options)

    without_autotuning.without_autotuning = True  # type: ignore[attr-defined]
    multi_device_iterator_ops._create_device_dataset = without_autotuning
    return True


def distributed_inputs(
    strategy: Any, cfg: Config, plan: SplitPlan, cache: CacheChoice | None = None
) -> tuple[Any, Any]:
    """(train, validation) datasets distributed over the strategy's replicas."""
    device_datasets_without_autotuning()
    train = strategy.distribute_datasets_from_function(
        lambda context: build_inputs(cfg, plan, training=True, input_context=context, cache=cache)
    )
    val = strategy.distribute_datasets_from_function(
        lambda context: build_inputs(cfg, plan, training=False, input_context=context, cache=cache)
    )
    return train, val
