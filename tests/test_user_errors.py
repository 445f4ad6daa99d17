"""A user's mistake ends ``python run.py`` in one line naming the key, the value and what is valid, exit 1,
before Spark or TensorFlow start where the value can be checked up front."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bigimage.config import PROJECT_ROOT
from tests.tfrecord_fixtures import write_tfrecord_dir


def run_py(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    store = "" if any(o.startswith("tracking.uri=") for o in overrides) else f"tracking.uri={store_uri(tmp_path)}"
    paths = [f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'out'}"]
    command = [sys.executable, "run.py", *filter(None, [store]), *paths, *overrides, f"hydra.run.dir={tmp_path / 'h'}"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The one line the mistake ended in: the last on stderr, and the only error there (what ran before
    it, MLflow creating a new store or Spark starting, may have printed its own progress lines)."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and lines[-1].startswith("error: "), done.stderr[-2000:]
    assert not [line for line in lines[:-1] if "error" in line.lower() or "exception" in line.lower()], lines
    return lines[-1]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task=preprocess", "tracking.uri=garbage://x"], "tracking.uri=garbage://x: MLflow has no store for"),
        (
            ["task=preprocess", "image_size=100000"],
            "image_size=100000 is above 16384: one decoded image would take 30.0 GB",
        ),
    ],
)
def test_a_value_no_run_can_use_is_refused_in_one_line_before_anything_starts(tmp_path, overrides, expected):
    done = run_py(tmp_path, *overrides)
    assert expected in one_line_error(done)
    assert not (tmp_path / "data").exists()  # nothing generated, nothing started


@pytest.mark.timeout(300)
def test_a_batch_larger_than_the_training_records_is_refused_in_one_line(tmp_path):
    write_tfrecord_dir(tmp_path / "tfr", num_images=60, image_size=32, num_shards=2)
    done = run_py(tmp_path, "task=train", f"tfrecord_dir={tmp_path / 'tfr'}", "image_size=32", "batch_size=1000")
    line = one_line_error(done)
    # 60 images, 12 a class: 1 a class held out for test, 11 of the other 55 expected in validation
    assert "batch_size=1000 is more than the about 44 training records of" in line and "use batch_size <= 44" in line


@pytest.mark.timeout(300)
def test_more_shards_than_images_logs_the_number_written(tmp_path, make_image_tree):
    root = make_image_tree(per_class=2)  # 6 images
    done = run_py(
        tmp_path, "task=preprocess", "dataset=folder", f"dataset.root={root}", f"tfrecord_dir={tmp_path / 'tfr'}",
        "image_size=32", "num_shards=50", "cluster=local",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "num_shards=50 is more than the 6 files" in done.stdout + done.stderr
    client = MlflowClient(store_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("bigimage").experiment_id])
    assert run.data.params["num_shards"] == "50" and run.data.params["num_shards_used"] == "6"
    assert run.data.metrics["shards"] == 6


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 KiB tmpfs: a device that fills up (needs root, as CI and these machines run)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.timeout(300)
def test_a_disk_that_fills_up_ends_in_one_line(tmp_path, small_disk, make_image_tree):
    root = make_image_tree(per_class=6)  # 18 images of 200-400 px: a few hundred KB of shards at 192 px
    done = run_py(
        tmp_path, "task=preprocess", "dataset=folder", f"dataset.root={root}", f"tfrecord_dir={small_disk / 'out'}",
        "cluster=local",
    )  # fmt: skip
    line = one_line_error(done)
    assert "no space left on the device while staging the TFRecords for" in line and "[Errno 28]" in line
    assert "Traceback" not in done.stdout and "Exception in task" not in done.stdout + done.stderr
    assert not (small_disk / "out").exists() or not any((small_disk / "out").iterdir())  # nothing half-written
