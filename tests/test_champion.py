"""The registered champion is the model that scored: a real training whose last epoch is worse than its
best, registered through ``analysis/best_config.py --tracking-uri`` in a store that is not the default,
holds the judged epoch's weights, and its tags are what those weights score on validation and on the
held-out test subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bigimage import tasks
from bigimage.config import PROJECT_ROOT
from bigimage.data import readers
from bigimage.tracking import judged
from bigimage.train import inputs
from tests.conftest import train_config
from tests.tfrecord_fixtures import write_tfrecord_dir

MODEL = "bigimage-classifier"


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=100, image_size=32, num_shards=4)
    return str(directory)


def validation_batch(cfg) -> tuple[inputs.SplitPlan, int]:
    """The split, and a batch size that divides the validation records: each validation pass of the fit
    then reads every validation record once, as the evaluation does."""
    manifest = readers.read_manifest(str(cfg.tfrecord_dir), 32)
    plan = inputs.plan_split(cfg, str(cfg.tfrecord_dir), manifest)
    return plan, max(size for size in range(1, 17) if plan.val_records % size == 0)


def subset_accuracy(model, plan: inputs.SplitPlan, subset: str) -> float:
    """The model's accuracy over the subset's records, computed here, apart from the project's evaluation."""
    pairs = list(readers.decoded_records(inputs.subset_records(plan, subset), 32, as_uint8=True).as_numpy_iterator())
    images, classes = np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs])
    return float(np.mean(np.argmax(model.predict(images), axis=-1) == classes))


def best_config(uri: str) -> subprocess.CompletedProcess:
    """``analysis/best_config.py --tracking-uri URI`` as a user runs it: MLFLOW_TRACKING_URI unset."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    script = str(PROJECT_ROOT / "analysis" / "best_config.py")
    command = [sys.executable, script, "--tracking-uri", uri, "--experiment", "tests", "--json"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.timeout(600)
def test_the_champion_holds_the_judged_epochs_weights_and_is_tested_once(
    tmp_path, tfrecords, mlflow_store, mlflow_experiment
):
    # 100 images: 48 train, 32 validation (two batches of 16), 20 test; learns, then falls back in its last epoch.
    overrides = (
        "strategy=default",
        "epochs=8",
        "train.learning_rate=0.01",
        "train.test_fraction=0.2",
        "train.validation_fraction=0.3",
        "train.split_seed=3",
    )
    plan, batch = validation_batch(train_config(tmp_path, tfrecords, *overrides))
    cfg = train_config(tmp_path, tfrecords, *overrides, f"batch_size={batch}")
    _, run_id = tasks.tracked_task(cfg, mlflow_experiment)
    client = MlflowClient(mlflow_store)
    curve = {m.step: m.value for m in client.get_metric_history(run_id, "val_accuracy")}
    best, epoch = judged.judged_epoch([{"epoch": step, "val_accuracy": value} for step, value in curve.items()])
    assert curve[max(curve)] < best, f"the known answer needs a last epoch worse than the best: {curve}"

    # Registered from a store that is not the process default, by the script alone.
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "elsewhere.db"))
    done = best_config(mlflow_store)
    assert done.returncode == 0, done.stderr
    champion = json.loads(done.stdout)["champion"]
    assert champion["run_id"] == run_id and champion["uri"] == f"models:/{MODEL}@champion"
    scores = champion["scores"]

    mlflow.set_tracking_uri(mlflow_store)
    version = client.get_model_version_by_alias(MODEL, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    # The judged epoch's weights: on validation they score what the fit measured at that epoch.
    on_validation = subset_accuracy(model, plan, inputs.VALIDATION)
    assert on_validation == pytest.approx(best, abs=1e-6)
    assert float(version.tags["val_accuracy"]) == pytest.approx(on_validation, abs=1e-6)
    assert float(version.tags["run.judged_val_accuracy"]) == pytest.approx(best, abs=1e-4)
    assert version.tags["run.judged_epoch"] == str(epoch) and run_tag(client, run_id, "model_epoch") == str(epoch)
    # Tested once on the held-out subset, with a Wilson interval around it.
    on_test = subset_accuracy(model, plan, inputs.TEST)
    assert float(version.tags["test_accuracy"]) == pytest.approx(on_test, abs=1e-6) == float(scores["test_accuracy"])
    assert float(version.tags["test_accuracy_low"]) <= on_test <= float(version.tags["test_accuracy_high"])
    assert version.tags["test_records"] == str(plan.test_records) == "20"

    # The logged model knows it is registered (the UI's model page reads this tag) and is named for its run.
    logged = client.get_logged_model(champion["model_id"])
    assert version.source == logged.artifact_location and version.run_id == run_id
    assert logged.name == f"small_cnn-default-bs{batch}" and logged.tags["judged_epoch"] == str(epoch)
    assert json.loads(logged.tags["mlflow.modelVersions"]) == [{"name": MODEL, "version": int(version.version)}]
    # Train, validation and test are three inputs with digests and record counts of their own.
    sets = {i.dataset.name: i.dataset for i in client.get_run(run_id).inputs.dataset_inputs}
    assert len({dataset.digest for dataset in sets.values()}) == 3
    profiles = {name: json.loads(dataset.profile)["num_records"] for name, dataset in sets.items()}
    name = cfg.dataset.name
    assert profiles == {f"{name}.train": plan.train_records, f"{name}.validation": plan.val_records, f"{name}.test": 20}

    # Registration is idempotent: a second analysis reuses the version and does not test it again.
    again = best_config(mlflow_store)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["champion"]
    assert not second["created"] and second["scores"] == scores


def run_tag(client: MlflowClient, run_id: str, key: str) -> str:
    return client.get_run(run_id).data.tags[key]
