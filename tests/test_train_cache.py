"""train.cache: decoded images in memory only when they fit; else a file cache on local disk; else none."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bigimage.config import ConfigError, validate
from bigimage.data.readers import read_manifest
from bigimage.train import cache as cache_mod
from bigimage.train.inputs import build_inputs, plan_split
from bigimage.train.task import run_train
from tests.conftest import compose_config, train_config
from tests.tfrecord_fixtures import write_tfrecord_dir


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=80, image_size=32, num_shards=4)
    return str(directory)


def setup(tfrecords: str, tmp_path, *overrides: str):
    cfg = compose_config(
        [
            "task=train",
            f"tfrecord_dir={tfrecords}",
            "image_size=32",
            "batch_size=8",
            "train.shuffle_buffer=0",
            f"train.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ]
    )
    return cfg, plan_split(cfg, tfrecords, read_manifest(tfrecords, 32))


def images(dataset, batches: int) -> np.ndarray:
    return np.concatenate([batch[0].numpy() for batch in dataset.take(batches)])


def dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_decoded_set_that_fits_stays_in_memory(tfrecords, tmp_path, monkeypatch) -> None:
    cfg, plan = setup(tfrecords, tmp_path)
    size = cache_mod.decoded_bytes(plan, 32)
    assert size == (80 - plan.test_records) * 32 * 32 * 3 and plan.test_records == 10  # never cached
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 2 * size)  # fraction 0.5 -> exactly fits
    choice = cache_mod.choose_cache(cfg, plan)
    assert (choice.mode, choice.directory) == ("memory", None)
    assert choice.tags()["input_cache"] == "memory" and "<= 0.5 x available memory" in choice.reason
    assert cache_mod.choose_cache(setup(tfrecords, tmp_path, "train.cache=false")[0], plan).mode == "none"


def test_too_big_for_memory_goes_to_a_file_cache_that_gives_the_same_images(tfrecords, tmp_path, monkeypatch) -> None:
    cfg, plan = setup(tfrecords, tmp_path)
    size = cache_mod.decoded_bytes(plan, 32)
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 2 * size - 2)
    stale = tmp_path / "cache" / f"pid{dead_pid()}-0000"  # left by a killed worker
    stale.mkdir(parents=True)
    choice = cache_mod.choose_cache(cfg, plan)
    assert choice.mode == "file" and "> 0.5 x available memory" in choice.reason
    assert os.path.dirname(choice.directory) == str(tmp_path / "cache") and not stale.exists()

    passes = 2 * plan.train_records // 8 + 1  # past the end of the first pass: the cache is complete
    cached = images(build_inputs(cfg, plan, training=True, cache=choice), passes)
    assert any(name.startswith("train-0") for name in os.listdir(choice.directory))
    plain = images(build_inputs(cfg, plan, training=True), passes)
    np.testing.assert_array_equal(cached, plain)
    choice.cleanup()
    assert not os.path.exists(choice.directory)


def test_no_room_in_memory_or_on_disk_means_no_cache(tfrecords, tmp_path, monkeypatch) -> None:
    cfg, plan = setup(tfrecords, tmp_path)
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 1000)
    monkeypatch.setattr(cache_mod, "free_disk", lambda directory: 1000)
    choice = cache_mod.choose_cache(cfg, plan)
    assert (choice.mode, choice.directory) == ("none", None)
    assert "free disk" in choice.reason
    with pytest.raises(ConfigError, match="train.cache_max_memory_fraction"):
        validate(setup(tfrecords, tmp_path, "train.cache_max_memory_fraction=0")[0])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_training_that_does_not_fit_in_memory_trains_from_a_file_cache_and_says_so(
    tfrecords, tmp_path, mlflow_experiment
) -> None:
    """A real training whose memory budget is too small for its decoded images: it falls back, runs all
    its epochs (validation each epoch, through its own file cache too), tags the choice, and cleans up."""
    cache_dir = tmp_path / "decoded"
    cfg = train_config(
        tmp_path, tfrecords, "epochs=3", "train.cache_max_memory_fraction=1e-12", f"train.cache_dir={cache_dir}"
    )
    with mlflow.start_run(experiment_id=mlflow_experiment) as run:
        metrics = run_train(cfg)
    logged = MlflowClient().get_run(run.info.run_id).data
    assert logged.tags["input_cache"] == "file"
    assert f"file cache in {cache_dir}" in logged.tags["input_cache_reason"]
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1, 2]
    assert metrics["epochs_run"] == 3
    assert list(cache_dir.iterdir()) == []  # the worker removed its cache folder


def test_where_images_are_cached_does_not_change_the_checkpoint_key(tmp_path) -> None:
    """A run killed while caching in memory resumes when it comes back with a file cache or none."""
    from bigimage.train.task import checkpoint_key

    base = compose_config(["task=train"])
    for override in ("train.cache=false", "train.cache_max_memory_fraction=0.1", f"train.cache_dir={tmp_path}"):
        assert checkpoint_key(compose_config(["task=train", override])) == checkpoint_key(base), override
    assert checkpoint_key(compose_config(["task=train", "train.shuffle_buffer=10"])) != checkpoint_key(base)
