"""task=train: config rules, bad input, the split and the input pipeline; no worker process starts here."""

from __future__ import annotations

import itertools
import os

import hydra
import pytest
import yaml
from omegaconf import OmegaConf

from bigimage.config import PROJECT_ROOT, ConfigError, Strategy, register_configs, validate
from bigimage.data.readers import TFRecordDirError
from tests.tfrecord_fixtures import write_tfrecord_dir

register_configs()


def compose(*overrides: str):
    with hydra.initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra.compose("config", overrides=["task=train", *overrides])


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=60, image_size=32, num_shards=4)
    return str(directory)


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize("model", ["small_cnn", "mobilenet_v2"])
def test_every_strategy_and_model_composes_and_passes(strategy, model):
    cfg = compose(f"strategy={strategy}", f"model={model}")
    validate(cfg)
    assert cfg.model.weights is None  # nothing downloads by default


def test_unknown_strategy_names_the_choices():
    with pytest.raises(Exception) as error:
        compose("strategy.name=parameter_server")
    assert "expected one of [default, mirrored" in str(error.value.__cause__)
    with pytest.raises(Exception, match="parameter_server"):
        compose("strategy=parameter_server")  # no such option in conf/strategy: Hydra refuses


@pytest.mark.parametrize("workers", [0, -1])
def test_num_workers_below_one_is_refused(workers):
    with pytest.raises(ConfigError, match=f"strategy.num_workers={workers}"):
        validate(compose("strategy=multi_worker_mirrored", f"strategy.num_workers={workers}"))


def test_single_process_strategy_with_several_workers_is_refused():
    with pytest.raises(ConfigError, match="num_workers must be 1"):
        validate(compose("strategy=mirrored", "strategy.num_workers=2"))


@pytest.mark.parametrize(
    "overrides, replicas",
    [
        (["strategy=mirrored", "batch_size=15"], 2),
        (["strategy=mirrored", "strategy.logical_cpu_devices=3", "batch_size=16"], 3),
        (["strategy=multi_worker_mirrored", "batch_size=33"], 2),
    ],
)
def test_batch_size_not_divisible_by_replicas_names_both_numbers(overrides, replicas):
    cfg = compose(*overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert f"batch_size={cfg.batch_size}" in str(error.value)
    assert f"{replicas} replicas" in str(error.value)


def test_missing_tfrecords_fail_before_any_process(tmp_path):
    from bigimage.train.task import run_train

    cfg = compose(f"tfrecord_dir={tmp_path / 'nothing'}", f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(TFRecordDirError, match="no TFRecords"):
        run_train(cfg)
    assert not (tmp_path / "out").exists()


def test_tfrecords_of_another_image_size_fail_before_any_process(tmp_path, tfrecords):
    from bigimage.train.task import run_train

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=64", f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(TFRecordDirError, match="32x32 images but image_size=64"):
        run_train(cfg)
    assert not (tmp_path / "out").exists()


def test_checkpoint_key_follows_the_training_config_only():
    from bigimage.train.task import checkpoint_dir, checkpoint_key

    base = compose("strategy=mirrored")
    assert checkpoint_key(base) == checkpoint_key(compose("strategy=mirrored"))
    assert checkpoint_key(base) == checkpoint_key(
        compose("strategy=mirrored", "strategy.worker_timeout_seconds=5", "tracking.experiment=x")
    )
    assert checkpoint_key(base) != checkpoint_key(compose("strategy=mirrored", "batch_size=64"))
    assert checkpoint_key(base) != checkpoint_key(compose("strategy=mirrored", "train.learning_rate=0.01"))
    assert checkpoint_key(base).startswith("mirrored-small_cnn-bs32-")
    assert checkpoint_dir(base) == os.path.join(base.paths.data_dir, "checkpoints", checkpoint_key(base))
    assert checkpoint_dir(compose("train.checkpoint_dir=/somewhere")) == "/somewhere"


def test_task3_experiment_is_a_sweep_over_strategies_and_batch_sizes():
    path = PROJECT_ROOT / "experiments" / "task3_train.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_")
    spec = yaml.safe_load(text)
    assert {"override /task": "train"} in spec["defaults"]
    params = spec["hydra"]["sweeper"]["params"]
    strategies = params["strategy"].split(",")
    batch_sizes = str(params["batch_size"]).split(",")
    assert strategies == ["mirrored", "multi_worker_mirrored", "experimental_multi_worker_mirrored"]
    assert batch_sizes == ["16", "32", "64"]
    for strategy, batch_size in itertools.product(strategies, batch_sizes):
        cfg = compose(f"strategy={strategy}", f"batch_size={batch_size}")
        validate(cfg)  # every job of the sweep is a valid training config


def test_hash_split_is_deterministic_and_complete(tfrecords):
    from bigimage.data.readers import read_manifest
    from bigimage.train.inputs import plan_split

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=32")
    manifest = read_manifest(tfrecords, 32)
    first = plan_split(cfg, tfrecords, manifest)
    second = plan_split(cfg, tfrecords, manifest)
    assert first == second
    assert first.train_records + first.val_records + first.test_records == 60
    assert 0 < first.val_records < 30 and first.test_records == 5  # 10% of each class of 12
    assert first.description.startswith("hash:") and f"{first.val_records} val / 5 test records" in first.description


def test_shard_split_uses_whole_shards(tfrecords):
    from bigimage.data.readers import read_manifest
    from bigimage.train.inputs import plan_split

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=32", "train.split=shard")
    plan = plan_split(cfg, tfrecords, read_manifest(tfrecords, 32))
    assert len(plan.val_paths) == 1 and len(plan.train_paths) == 3
    assert set(plan.val_paths).isdisjoint(plan.train_paths)
    assert plan.train_records + plan.val_records + plan.test_records == 60


def subset_records(cfg, tfrecords) -> dict[str, list[bytes]]:
    from bigimage.data.readers import read_manifest
    from bigimage.train import inputs

    plan = inputs.plan_split(cfg, tfrecords, read_manifest(tfrecords, 32))
    records = {subset: list(inputs.subset_records(plan, subset).as_numpy_iterator()) for subset in inputs.SUBSETS}
    assert {subset: len(found) for subset, found in records.items()} == {
        "train": plan.train_records,
        "validation": plan.val_records,
        "test": plan.test_records,
    }
    return records


def record_class(record: bytes) -> int:
    import tensorflow as tf

    return int(tf.train.Example.FromString(record).features.feature["class"].int64_list.value[0])


@pytest.mark.parametrize("split", ["hash", "shard"])
def test_the_test_split_is_stratified_disjoint_and_reproducible_from_its_seed(tfrecords, split):
    import collections

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=32", f"train.split={split}", "train.test_fraction=0.25")
    records = subset_records(cfg, tfrecords)
    train, validation, test = (set(records[subset]) for subset in ("train", "validation", "test"))
    assert not (train & validation or train & test or validation & test)
    assert len(train | validation | test) == 60  # every record in exactly one subset
    # Stratified: a quarter of each class of 12, exactly.
    assert collections.Counter(record_class(record) for record in test) == {index: 3 for index in range(5)}
    # The same split_seed gives the same test records whatever the training seed; another gives others.
    assert set(subset_records(compose(*cfg_overrides(cfg, split), "seed=7"), tfrecords)["test"]) == test
    other = set(subset_records(compose(*cfg_overrides(cfg, split), "train.split_seed=1"), tfrecords)["test"])
    assert len(other) == 15 and other != test


def cfg_overrides(cfg, split: str) -> list[str]:
    return [f"tfrecord_dir={cfg.tfrecord_dir}", "image_size=32", f"train.split={split}", "train.test_fraction=0.25"]


def test_no_test_record_reaches_a_fit(tfrecords):
    from bigimage.data.readers import read_manifest
    from bigimage.train.inputs import build_inputs, plan_split

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=32", "batch_size=1", "train.shuffle_buffer=0")
    plan = plan_split(cfg, tfrecords, read_manifest(tfrecords, 32))
    test_images = {image.tobytes() for image in _test_images(cfg, plan)}
    for training, count in ((True, plan.train_records), (False, plan.val_records)):
        seen = {batch[0][0].numpy().tobytes() for batch in build_inputs(cfg, plan, training=training).take(count)}
        assert len(seen) == count and seen.isdisjoint(test_images)


def _test_images(cfg, plan) -> list:
    from bigimage.data import readers
    from bigimage.train import inputs

    decoded = readers.decoded_records(inputs.subset_records(plan, inputs.TEST), 32, as_uint8=True)
    return [image for image, _ in decoded.as_numpy_iterator()]


def test_a_test_fraction_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(ConfigError, match="train.test_fraction=0.8 must be at least 0 and leave records"):
        validate(compose("train.test_fraction=0.8"))


def test_inputs_batch_by_global_then_per_replica_size_without_overlap(tfrecords):
    import tensorflow as tf

    from bigimage.data.readers import read_manifest
    from bigimage.train.inputs import build_inputs, plan_split

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=32", "batch_size=8", "train.shuffle_buffer=0")
    plan = plan_split(cfg, tfrecords, read_manifest(tfrecords, 32))
    images, classes = next(iter(build_inputs(cfg, plan, training=True)))
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.uint8 and classes.dtype == tf.int32

    # Two input pipelines (two workers) of one replica each: per-replica batches of 4, disjoint records.
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2)
        dataset = build_inputs(cfg, plan, training=True, input_context=context)
        batches = list(dataset.take(plan.train_records // 8))
        assert all(batch[0].shape[0] == 4 for batch in batches)
        seen.append({bytes(image.numpy().tobytes()) for batch in batches for image in batch[0]})
    assert seen[0].isdisjoint(seen[1])


def test_no_autotuning_in_the_pipelines_nor_in_the_datasets_made_per_device(tfrecords):
    # Freeing an iterator with tf.data's autotuning on waits for its thread to wake: up to a minute
    # after model.fit's last epoch. tf.distribute hands each device its elements through a dataset of its own.
    import numpy as np
    from tensorflow.python.data.ops import multi_device_iterator_ops

    from bigimage.data.readers import read_manifest
    from bigimage.train.inputs import build_inputs, device_datasets_without_autotuning, plan_split

    cfg = compose(f"tfrecord_dir={tfrecords}", "image_size=32", "batch_size=8", "train.shuffle_buffer=0")
    plan = plan_split(cfg, tfrecords, read_manifest(tfrecords, 32))
    dataset = build_inputs(cfg, plan, training=True)
    assert dataset.options().autotune.enabled is False

    assert device_datasets_without_autotuning() and device_datasets_without_autotuning()  # once per process
    iterator = multi_device_iterator_ops.OwnedMultiDeviceIterator(dataset, ["/cpu:0"])
    assert iterator._device_iterators[0]._dataset.options().autotune.enabled is False
    (images, classes), *_ = iterator.get_next()  # the same elements, in the same order
    expected_images, expected_classes = next(iter(dataset))
    assert np.array_equal(images, expected_images) and np.array_equal(classes, expected_classes)


def test_models_build_for_the_configured_size():
    from bigimage.train.model import build_model

    small = build_model(compose("image_size=192"), num_classes=5)
    assert small.input_shape == (None, 192, 192, 3) and small.output_shape == (None, 5)
    mobile = build_model(compose("model=mobilenet_v2", "image_size=32"), num_classes=3)
    assert mobile.output_shape == (None, 3)
    with pytest.raises(ConfigError, match="mobilenet_v2 needs image_size >= 32"):
        validate(compose("model=mobilenet_v2", "image_size=16"))
    with pytest.raises(Exception, match="resnet9000"):
        compose("model=resnet9000")  # no such option in conf/model: Hydra refuses, listing the options


def test_resolved_config_round_trips_for_workers(tmp_path):
    cfg = compose("strategy=multi_worker_mirrored")
    path = tmp_path / "c.yaml"
    OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), path)
    loaded = OmegaConf.load(path)
    assert loaded.strategy.name == "multi_worker_mirrored" and loaded.batch_size == cfg.batch_size
