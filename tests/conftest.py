"""Shared fixtures: composed configs, a real MLflow store per test, small labelled image trees."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from bigimage.config import PROJECT_ROOT, register_configs

pytest_plugins = ["tests.gcs_emulator"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The project's config as ``python run.py <overrides>`` would compose it (without running)."""
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


@pytest.fixture
def mlflow_store(tmp_path: Path) -> Iterator[str]:
    """A fresh sqlite MLflow store for this test; yields its URI (also set as the process default)."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    (tmp_path / "mlruns").mkdir()
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    # The fluent API remembers the last experiment id across stores: point it at one of this store.
    experiment_id = mlflow.create_experiment("tests", artifact_location=(tmp_path / "mlruns" / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=experiment_id)
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def mlflow_experiment(mlflow_store: str) -> str:
    """The id of the experiment that :func:`mlflow_store` made its store with."""
    return mlflow.get_experiment_by_name("tests").experiment_id


def train_config(tmp_path: Path, tfrecord_dir: str, *overrides: str, timeout_seconds: int = 240) -> DictConfig:
    """A short ``task=train`` config on tiny TFRecords, with data and outputs under ``tmp_path``."""
    return compose_config(
        [
            "task=train",
            f"tfrecord_dir={tfrecord_dir}",
            "image_size=32",
            "batch_size=16",
            "epochs=2",
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.output_dir={tmp_path / 'out'}",
            f"strategy.worker_timeout_seconds={timeout_seconds}",
            *overrides,
        ]
    )


@pytest.fixture(autouse=True)
def no_mlflow_run_left_open() -> Iterator[None]:
    yield
    active = mlflow.active_run()
    if active is not None:
        mlflow.end_run()
        pytest.fail(f"the test left MLflow run {active.info.run_id} open")


def jpeg_bytes(width: int, height: int, colour: tuple[int, int, int], seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(0, 20, size=(height, width, 3)) + np.array(colour), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


IMAGE_TREE_CLASSES = {"daisy": (240, 240, 240), "roses": (200, 20, 40), "tulips": (220, 80, 170)}


@pytest.fixture
def make_image_tree(tmp_path: Path) -> Callable[..., Path]:
    """Write root/<label>/<i>.jpg with varied sizes; returns the root."""

    def make(per_class: int = 4, name: str = "images") -> Path:
        root = tmp_path / name
        for class_index, (label, colour) in enumerate(IMAGE_TREE_CLASSES.items()):
            (root / label).mkdir(parents=True)
            for index in range(per_class):
                width, height = 200 + 37 * index, 260 - 11 * index
                (root / label / f"{index}.jpg").write_bytes(
                    jpeg_bytes(width, height, colour, seed=class_index * 100 + index)
                )
        return root

    return make


@pytest.fixture(params=["exchange", "objects", "gcs"])
def destination(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A TFRecord destination of each kind: local with the atomic folder exchange, local without it
    (published object by object, as on NFS), and Cloud Storage (the emulator)."""
    from bigimage.data import storage

    if request.param == "gcs":
        return f"gs://{request.getfixturevalue('gcs_bucket')}/sets/tfrec"
    if request.param == "objects":
        monkeypatch.setattr(storage, "supports_exchange", lambda directory: False)
    return str(tmp_path / "sets" / "tfrec")


@pytest.fixture
def images(make_image_tree: Callable[..., Path]) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, (path, class index) items) of a small labelled image tree."""
    from bigimage.data.listing import list_labelled_images

    listing = list_labelled_images(str(make_image_tree(per_class=2)))
    return list(listing.classes), list(listing.items)


def write_large_image_tree(root: Path, per_class: int = 300) -> Path:
    """Two classes of distinct 1400 px images: slow enough to decode that a job can be caught mid-way."""
    gradient = Image.linear_gradient("L").resize((1400, 1400)).convert("RGB")
    for class_index, label in enumerate(("a", "b")):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            gradient.rotate(index + 0.5 * class_index).save(root / label / f"{index}.jpg", quality=80)
    return root


@pytest.fixture(scope="session")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, subprocess.CompletedProcess]:
    """The main job (``python run.py``) on a tiny generated set, once per session: its store, folder and
    outcome. The slow end-to-end tests read it (test_pipeline, test_browser)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable,
            "run.py",
            f"tracking.uri={store}",
            f"tracking.artifact_root={tmp / 'artifacts'}",
            f"paths.data_dir={tmp / 'data'}",
            f"paths.output_dir={tmp / 'outputs'}",
            "dataset.num_images=60",
            "image_size=32",
            "num_shards=4",
            "epochs=2",
            "batch_size=8",
            "pipeline.speedtest_overrides=['speedtest.repetitions=1','speedtest.batch_numbers=[2]']",
            "tracking.system_metrics_interval=1",  # short steps: a few samples each all the same
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return store, tmp, result
