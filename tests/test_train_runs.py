"""task=train end to end: real worker processes, a real MLflow store in tmp, tiny TFRecords (32 px).

Every test that starts workers has a timeout; the launcher's own ``strategy.worker_timeout_seconds`` is
set well below it, so a hang shows as the launcher's error, not as pytest's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from bigimage.tracking.names import EPOCH_METRICS
from bigimage.train.launch import WorkerFailedError, WorkerTimeoutError
from bigimage.train.task import run_train
from tests.conftest import train_config
from tests.tfrecord_fixtures import write_tfrecord_dir


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=80, image_size=32, num_shards=4)
    return str(directory)


def compose(tmp_path, tfrecords, *overrides: str):
    return train_config(tmp_path, tfrecords, *overrides, timeout_seconds=240)


def train(experiment, cfg):
    with mlflow.start_run(experiment_id=experiment) as run:
        metrics = run_train(cfg)
    return run.info.run_id, metrics


def progress(cfg, run_id) -> dict[int, list[dict]]:
    """Progress lines per worker index, as the worker processes wrote them."""
    directory = os.path.join(cfg.paths.output_dir, "train", run_id, "progress")
    lines: dict[int, list[dict]] = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), encoding="utf-8") as handle:
            for line in handle:
                entry = json.loads(line)
                lines.setdefault(entry["task_index"], []).append(entry)
    return lines


def history(run_id, key):
    return [
        (m.step, m.value)
        for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    ]


@pytest.mark.timeout(300)
def test_default_strategy_logs_epochs_params_and_artifacts(tmp_path, tfrecords, mlflow_experiment):
    cfg = compose(tmp_path, tfrecords, "strategy=default", "epochs=3")
    run_id, metrics = train(mlflow_experiment, cfg)

    run = MlflowClient().get_run(run_id)
    for key in EPOCH_METRICS:
        assert [step for step, _ in history(run_id, key)] == [0, 1, 2], key
    assert run.data.metrics["best_epoch"] in (0, 1, 2)
    best = max(value for _, value in history(run_id, "val_accuracy"))
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(best)
    assert metrics["best_val_accuracy"] == pytest.approx(best) and metrics["replicas"] == 1
    params = run.data.params
    assert params["replicas"] == "1" and params["workers"] == "1" and params["per_replica_batch_size"] == "16"
    assert len(params) <= 30 and not any(key.endswith("_target_") or key.startswith("cluster.shape") for key in params)
    assert run.data.tags["split"].startswith("hash:")
    assert "resumed_from_epoch" not in run.data.tags
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id)}
    assert {"history.json", "history.csv", "model", "worker_logs", "learning_curves.png"} <= artifacts
    figure = Image.open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="learning_curves.png"))
    assert figure.width > 400 and figure.height > 200
    log = mlflow.artifacts.load_text(f"runs:/{run_id}/worker_logs/worker-0.log")
    # one line per epoch, no progress bar, no CUDA probing on this CPU-only machine
    epochs = re.findall(r"bigimage\.train\.callbacks: (epoch \d+/\d+): loss ", log)
    assert epochs == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "\b" not in log and "\r" not in log and "cuInit" not in log and "cuda" not in log.lower()
    # The raw file, and the MLflow Model named after the configuration (bigimage.train.export) that the
    # listing merges in, both of the judged epoch.
    assert "model/model.keras" in {a.path for a in MlflowClient().list_artifacts(run_id, "model")}
    assert "small_cnn-default-bs16/MLmodel" in {
        a.path for a in MlflowClient().list_artifacts(run_id, "small_cnn-default-bs16")
    }
    assert run.data.tags["model_epoch"] == str(int(run.data.metrics["best_epoch"]))
    import numpy as np
    import tf_keras

    model = tf_keras.models.load_model(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="model/model.keras", dst_path=str(tmp_path / "dl")
        )
    )
    assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape == (2, 5)
    assert run.info.status == "FINISHED"  # ended by the test's `with`, not altered by the worker
    # A finished training leaves no checkpoint behind: the next run of this config starts afresh.
    assert not os.path.exists(os.path.join(run.data.tags["checkpoint_dir"], "chief"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mobilenet_v2_trains_without_downloading(tmp_path, tfrecords, mlflow_experiment):
    cfg = compose(tmp_path, tfrecords, "model=mobilenet_v2", "epochs=1")
    run_id, metrics = train(mlflow_experiment, cfg)
    assert int(MlflowClient().get_run(run_id).data.params["model_parameters"]) > 2_000_000
    assert [step for step, _ in history(run_id, "val_accuracy")] == [0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mirrored_runs_two_then_three_replicas_in_one_process(tmp_path, tfrecords, mlflow_experiment):
    run_2, metrics_2 = train(
        mlflow_experiment, compose(tmp_path, tfrecords, "strategy=mirrored", "batch_size=12", "epochs=1")
    )
    run_3, metrics_3 = train(
        mlflow_experiment,
        compose(
            tmp_path, tfrecords, "strategy=mirrored", "strategy.logical_cpu_devices=3", "batch_size=12", "epochs=1"
        ),
    )
    assert metrics_2["replicas"] == 2 and metrics_2["per_replica_batch_size"] == 6
    assert metrics_3["replicas"] == 3 and metrics_3["per_replica_batch_size"] == 4
    assert MlflowClient().get_run(run_2).data.params["replicas"] == "2"
    assert MlflowClient().get_run(run_3).data.params["replicas"] == "3"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["multi_worker_mirrored", "experimental_multi_worker_mirrored"])
def test_multi_worker_runs_two_processes_that_both_step_and_only_the_chief_logs(
    tmp_path, tfrecords, mlflow_experiment, strategy
):
    cfg = compose(tmp_path, tfrecords, f"strategy={strategy}", "strategy.num_workers=2")
    run_id, metrics = train(mlflow_experiment, cfg)

    lines = progress(cfg, run_id)
    assert sorted(lines) == [0, 1]
    pids = {index: {entry["pid"] for entry in entries} for index, entries in lines.items()}
    assert len(pids[0]) == 1 and len(pids[1]) == 1 and pids[0] != pids[1]  # two OS processes
    assert os.getpid() not in pids[0] | pids[1]
    steps = {index: [e["steps_done"] for e in entries if e["event"] == "epoch_end"] for index, entries in lines.items()}
    spe = int(MlflowClient().get_run(run_id).data.params["steps_per_epoch"])
    assert steps[0] == steps[1] == [spe, 2 * spe]  # both workers really stepped, in lockstep
    # Only the chief logged: one value per epoch, not one per worker.
    for key in ("loss", "val_accuracy", "images_per_second"):
        assert [step for step, _ in history(run_id, key)] == [0, 1]
    params = MlflowClient().get_run(run_id).data.params
    assert params["replicas"] == "2" and params["workers"] == "2" and params["per_replica_batch_size"] == "8"
    assert metrics["replicas"] == 2
    # The chief's ModelCheckpoint kept the judged epoch's weights under this strategy too.
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["model_epoch"] == str(int(run.data.metrics["best_epoch"]))
    logs = {a.path for a in MlflowClient().list_artifacts(run_id, "worker_logs")}
    assert logs == {"worker_logs/worker-0.log", "worker_logs/worker-1.log"}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_killed_worker_fails_fast_and_a_rerun_resumes_from_the_saved_epoch(tmp_path, tfrecords, mlflow_experiment):
    epochs = 40
    cfg = compose(tmp_path, tfrecords, "strategy=multi_worker_mirrored", f"epochs={epochs}", "batch_size=32")
    outcome: dict = {}

    def first_attempt():
        try:
            with mlflow.start_run(experiment_id=mlflow_experiment) as run:
                outcome["run_id"] = run.info.run_id
                run_train(cfg)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=first_attempt)
    thread.start()
    # Wait until worker 1 has finished (and checkpointed) two epochs, then kill it for real.
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
        if "run_id" not in outcome:
            continue
        try:
            ends = [e for e in progress(cfg, outcome["run_id"]).get(1, []) if e["event"] == "epoch_end"]
        except FileNotFoundError:
            continue
        if len(ends) >= 2:
            victim = ends[-1]["pid"]
            os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    assert victim is not None, "worker 1 never finished two epochs"
    assert not thread.is_alive(), "the launcher hung after a worker died"
    error = outcome.get("error")
    assert isinstance(error, WorkerFailedError), outcome
    assert error.task_index == 1 and error.exit_code == -signal.SIGKILL
    assert "worker 1" in str(error) and "SIGKILL" in str(error)
    for pid in error.pids:  # no orphan left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    first_run = MlflowClient().get_run(outcome["run_id"])
    assert first_run.info.status == "FAILED"
    done_before_kill = max(e["epoch"] for e in progress(cfg, outcome["run_id"])[0] if e["event"] == "epoch_end")

    # Rerun the same config in a new MLflow run: it resumes from the checkpoint, not from epoch 0.
    run_id, metrics = train(mlflow_experiment, cfg)
    tags = MlflowClient().get_run(run_id).data.tags
    resumed = int(tags["resumed_from_epoch"])
    assert done_before_kill + 1 <= resumed <= done_before_kill + 2
    assert tags["resumed_history_from_run"] == outcome["run_id"]
    lines = progress(cfg, run_id)
    for index in (0, 1):
        begin = [e for e in lines[index] if e["event"] == "train_begin"]
        assert begin[0]["first_epoch"] == resumed
        assert [e["epoch"] for e in lines[index] if e["event"] == "epoch_end"] == list(range(resumed, epochs))
    # The new run's curves are whole: earlier epochs copied from the interrupted run, the rest trained.
    assert [step for step, _ in history(run_id, "val_accuracy")] == list(range(epochs))
    assert metrics["resumed_from_epoch"] == resumed and metrics["epochs_run"] == epochs - resumed


@pytest.mark.timeout(240)
def test_worker_error_is_reported_with_its_log_lines(tmp_path, mlflow_experiment):
    # A manifest that promises 32 px but holds 40 px images: only decoding can find out, in the worker.
    directory = tmp_path / "liar"
    write_tfrecord_dir(directory, num_images=40, image_size=40, num_shards=2)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["image_size"] = 32
    (directory / "manifest.json").write_text(json.dumps(manifest))
    cfg = compose(tmp_path, str(directory), "strategy=default")
    with pytest.raises(WorkerFailedError) as error:
        train(mlflow_experiment, cfg)
    assert error.value.task_index == 0 and error.value.exit_code == 1
    assert "worker 0" in str(error.value) and "Last lines" in str(error.value)
    assert "32" in str(error.value) and "40" in str(error.value)  # the shape mismatch from the worker's log


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_that_outlive_their_timeout_are_killed(tmp_path, tfrecords, mlflow_experiment):
    cfg = compose(
        tmp_path, tfrecords, "strategy=multi_worker_mirrored", "strategy.worker_timeout_seconds=2", "epochs=50"
    )
    started = time.monotonic()
    with pytest.raises(WorkerTimeoutError, match="worker_timeout_seconds=2") as error:
        train(mlflow_experiment, cfg)
    assert time.monotonic() - started < 60
    assert len(error.value.pids) == 2
    for pid in error.value.pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.timeout(240)
def test_gs_tfrecords_are_staged_into_a_local_cache(tmp_path, tfrecords, mlflow_experiment, gcs_bucket):
    from bigimage.data import storage

    url = f"gs://{gcs_bucket}/tfrecords/test-32"
    for name in sorted(os.listdir(tfrecords)):
        storage.copy(os.path.join(tfrecords, name), f"{url}/{name}")
    cfg = compose(tmp_path, url, "strategy=default", "epochs=1")
    run_id, metrics = train(mlflow_experiment, cfg)

    cache = tmp_path / "data" / "cache" / "tfrecords" / f"{gcs_bucket}__tfrecords__test-32"
    assert sorted(p.name for p in cache.glob("*.tfrec")) == sorted(
        n for n in os.listdir(tfrecords) if n.endswith(".tfrec")
    )
    assert metrics["replicas"] == 1
    assert [step for step, _ in history(run_id, "val_accuracy")] == [0]


@pytest.mark.timeout(300)
def test_mixed_bfloat16_keeps_float32_logits_and_loss_and_logs_the_policy(tmp_path, tfrecords, mlflow_experiment):
    import numpy as np
    import tf_keras

    cfg = compose(tmp_path, tfrecords, "strategy=default", "epochs=1", "train.precision=mixed_bfloat16")
    run_id, _ = train(mlflow_experiment, cfg)
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["precision_policy"] == "mixed_bfloat16"
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model/model.keras", dst_path=str(tmp_path))
    model = tf_keras.models.load_model(path)
    convolutions = [layer for layer in model.layers if isinstance(layer, tf_keras.layers.Conv2D)]
    assert {layer.dtype_policy.name for layer in convolutions} == {"mixed_bfloat16"}  # bf16 compute
    assert {layer.dtype for layer in convolutions} == {"float32"}  # float32 variables
    assert model.get_layer("logits").dtype_policy.name == "float32" and model.output.dtype == "float32"
    # The loss is computed on those float32 logits, and the logged MLflow Model predicts float32.
    loss = model.loss(np.zeros(2, np.int32), model(np.zeros((2, 32, 32, 3), np.uint8)))
    assert loss.dtype == "float32"
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/small_cnn-default-bs16")
    assert logged.predict(np.zeros((2, 32, 32, 3), np.uint8)).dtype == np.float32


def test_mixed_float16_without_a_gpu_is_refused_with_what_to_use():
    import tensorflow as tf

    from bigimage.config import ConfigError
    from bigimage.train import precision

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: mixed_float16 is allowed here")
    with pytest.raises(ConfigError, match="needs a GPU and this machine has none: use mixed_bfloat16"):
        precision.choose("mixed_float16")
    expected = "mixed_bfloat16" if precision.cpu_bf16_flags() else "float32"
    assert precision.choose("auto").policy == expected
