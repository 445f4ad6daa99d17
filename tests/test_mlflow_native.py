"""Issue 12, MLflow-native results: the model as an MLflow Model, the registry's champion, dataset lineage,
system metrics, params that mean something, the analysis run's headline and the UI command.

Real sqlite stores in tmp, real TFRecords (32 px), real Keras models, real worker processes and Spark.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bigimage.analysis_lib import best_config, registry, report, ui
from bigimage.data import readers
from bigimage.tasks import TASK_PARAMS, param_keys, run_task
from bigimage.tracking import datasets
from bigimage.tracking.runs import flatten_config
from bigimage.train import export
from tests import mlflow_fixtures as fx
from tests.conftest import compose_config, train_config
from tests.mlflow_server import free_port, mlflow_ui
from tests.tfrecord_fixtures import CLASSES, write_tfrecord_dir

# Groups a task does not read: none of its params may come from them.
FOREIGN = {
    "preprocess": ("strategy.", "model.", "train.", "speedtest.", "pipeline.", "batch_size", "epochs"),
    "speedtest": (
        "strategy.",
        "model.",
        "train.",
        "preprocess.",
        "pipeline.",
        "batch_size",
        "epochs",
        "num_shards",
        "seed",
    ),
    "train": (
        "speedtest.",
        "preprocess.",
        "pipeline.",
        "num_shards",
        "cluster.shape",
        "cluster.executors",
        "dataset.root",
    ),
    "pipeline": ("strategy.",),
}
NEVER = ("paths.", "tracking.", "hydra", "task.", "scaling.")  # machine or bookkeeping, not what a run reads


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=60, image_size=32, num_shards=3)
    return str(directory)


def real_images(tfrecord_dir: str, count: int = 4) -> np.ndarray:
    manifest = readers.read_manifest(tfrecord_dir, 32)
    return export.example_images(readers.shard_paths(tfrecord_dir, manifest), 32, count)


def assert_params_read_by(task: str, params: dict[str, str]) -> None:
    assert params, task
    assert not [key for key in params if key.startswith(FOREIGN[task] + NEVER)], (task, sorted(params))
    assert all(value.strip() and value not in ("None", "[]", "{}") for value in params.values()), params


# ------------------------------------------------------------------------------- params, no runs


@pytest.mark.parametrize("task", ["preprocess", "speedtest", "train", "pipeline"])
def test_each_task_logs_the_keys_it_reads_and_the_analysis_reads(task: str) -> None:
    cfg = compose_config([f"task={task}", "cluster=four"])
    params = flatten_config(cfg, param_keys(cfg))
    assert_params_read_by(task, params)
    if task in ("preprocess", "speedtest"):  # what best_config and the forecast (analysis/predict.py) read
        for key in ("cluster.name", "cluster.executors", "cluster.executor_cores", "dataset.num_images", "image_size"):
            assert key in params, key
        # the Dataproc shape and region price a run that ran there, and describe no other
        assert not any(key.startswith(("cluster.shape.", "cluster.dataproc.")) for key in params)
        on_dataproc = compose_config([f"task={task}", "cluster=four", "cluster.deploy=dataproc"])
        assert {"cluster.dataproc.region", "cluster.shape.worker_count"} <= set(
            flatten_config(on_dataproc, param_keys(on_dataproc))
        )
    if task == "train":
        for key in (
            "strategy.name",
            "batch_size",
            "cluster.name",
            "model.name",
            "epochs",
            "train.split",
            "train.validation_fraction",
            "tfrecord_dir",
            "image_size",
        ):
            assert key in params, key
    if task != "train":  # None or empty, so left out
        assert not {"cluster.master", "cluster.spark_conf", "cluster.dataproc.project"} & set(params)


def test_spark_barrier_training_reads_the_whole_cluster() -> None:
    cfg = compose_config(["task=train", "strategy=multi_worker_mirrored", "strategy.launcher=spark_barrier"])
    assert "cluster" in param_keys(cfg) and "cluster.executors" in flatten_config(cfg, param_keys(cfg))
    assert set(TASK_PARAMS) == {"preprocess", "speedtest", "train", "pipeline"}


# -------------------------------------------------------------------------------- dataset lineage


def test_runs_on_the_same_tfrecord_set_share_a_digest_and_others_do_not(
    tmp_path: Path, tfrecords: str, mlflow_experiment: str
) -> None:
    other = tmp_path / "other"
    write_tfrecord_dir(other, num_images=60, image_size=32, num_shards=3, seed=1)
    speed = compose_config(["task=speedtest", f"tfrecord_dir={tfrecords}", "image_size=32", "dataset=synthetic"])
    train = train_config(tmp_path, tfrecords)
    train_other = train_config(tmp_path, str(other))
    from bigimage.speedtest.task import log_dataset
    from bigimage.train.inputs import plan_split

    def log_split(cfg) -> None:
        found = manifest(str(cfg.tfrecord_dir))
        plan = plan_split(cfg, str(cfg.tfrecord_dir), found)
        client, run_id = MlflowClient(), mlflow.active_run().info.run_id
        subsets = datasets.split_sets(found, str(cfg.tfrecord_dir), "synthetic", plan.description, plan.class_counts)
        datasets.log_split_sets(client, run_id, subsets)
        counts[str(cfg.tfrecord_dir)] = {
            "synthetic" + datasets.SUBSET_SUFFIX[s]: plan.records(s) for s in plan.class_counts
        }

    logged, counts = {}, {}
    for name, log in (
        ("speed", lambda: log_dataset(speed)),
        ("train", lambda: log_split(train)),
        ("again", lambda: log_split(train)),
        ("other", lambda: log_split(train_other)),
    ):
        with mlflow.start_run(experiment_id=mlflow_experiment) as run:
            log()
        logged[name] = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    contexts = {name: {i.dataset.name: i.tags[0].value for i in inputs} for name, inputs in logged.items()}
    assert contexts["speed"] == {"synthetic": "benchmark"}
    assert contexts["train"] == {
        "synthetic.train": "training",
        "synthetic.validation": "validation",
        "synthetic.test": "testing",
    }
    digests = {name: {i.dataset.digest for i in inputs} for name, inputs in logged.items()}
    assert digests["speed"] == {datasets.manifest_digest(manifest(tfrecords))}
    # Each subset a digest of its own, the same for the same set split the same way, another for other data.
    assert len(digests["train"]) == 3 and digests["again"] == digests["train"]
    assert digests["other"].isdisjoint(digests["train"]) and digests["speed"].isdisjoint(digests["train"])
    records = {i.dataset.name: json.loads(i.dataset.profile)["num_records"] for i in logged["train"]}
    assert records == counts[tfrecords] and sum(records.values()) == 60
    entity = logged["speed"][0].dataset
    assert json.loads(entity.source)["uri"] == tfrecords and entity.source_type == "local"
    assert json.loads(entity.profile)["class_counts"] == {name: 12 for name in CLASSES}
    schema = json.loads(entity.schema)["mlflow_colspec"]
    assert [column["name"] for column in schema] == ["image", "class", "label", "size", "one_hot_class"]


def manifest(directory: str):
    return readers.read_manifest(directory, 32)


def test_the_digest_follows_the_source_and_settings_not_the_shard_names() -> None:
    base = readers.schema.Manifest(
        classes=["a", "b"],
        image_size=32,
        num_records=4,
        shards={"g1-00-2.tfrec": 2, "g1-01-2.tfrec": 2},
        class_counts={"a": 2, "b": 2},
        source="/x",
        source_fingerprint="f1",
        jpeg_quality=90,
    )
    renamed = readers.schema.Manifest(
        **{**base.__dict__, "shards": {"g2-00-2.tfrec": 2, "g2-01-2.tfrec": 2}, "source": "/y"}
    )
    assert datasets.manifest_digest(base) == datasets.manifest_digest(renamed)
    for change in ({"source_fingerprint": "f2"}, {"image_size": 64}, {"jpeg_quality": 80}):
        assert datasets.manifest_digest(
            readers.schema.Manifest(**{**base.__dict__, **change})
        ) != datasets.manifest_digest(base)


def test_a_set_a_parallel_job_logs_first_is_shared_not_a_failure(tfrecords: str, mlflow_experiment: str) -> None:
    """Two jobs of a joblib sweep log the same set: MLflow looks for it, finds none, and before it inserts
    the set the other job has (the joblib sweep over clusters failed so in CI on 2026-12-02). Here the
    other job's insert is made to land at exactly that moment, from a thread, on a real sqlite store."""
    from mlflow.store.tracking.dbmodels.models import SqlDataset
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    with mlflow.start_run(experiment_id=mlflow_experiment) as other:
        pass
    inserted_first: list[bool] = []

    def other_job_inserts_first(session: Session, *_: object) -> None:
        if inserted_first or not any(isinstance(row, SqlDataset) for row in session.new):
            return
        inserted_first.append(True)

        def other_job() -> None:
            with mlflow.start_run(run_id=other.info.run_id):
                datasets.log_tfrecord_set(manifest(tfrecords), tfrecords, "synthetic", datasets.OUTPUT)

        thread = threading.Thread(target=other_job)
        thread.start()
        thread.join(timeout=60)

    event.listen(Session, "before_flush", other_job_inserts_first)
    try:
        with mlflow.start_run(experiment_id=mlflow_experiment) as run:
            datasets.log_tfrecord_set(manifest(tfrecords), tfrecords, "synthetic", datasets.OUTPUT)
    finally:
        event.remove(Session, "before_flush", other_job_inserts_first)
    assert inserted_first, "the other job's insert came between this one's lookup and its insert"
    client = MlflowClient()
    logged = [client.get_run(r.info.run_id).inputs.dataset_inputs for r in (other, run)]
    assert [[(i.dataset.name, i.tags[0].value) for i in inputs] for inputs in logged] == [[("synthetic", "output")]] * 2
    assert logged[0][0].dataset.digest == logged[1][0].dataset.digest == datasets.manifest_digest(manifest(tfrecords))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


# ----------------------------------------------------------------------- training: model, data, system


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_training_run_is_an_mlflow_model_with_datasets_system_metrics_and_its_params(
    tmp_path: Path, tfrecords: str
) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = train_config(
        tmp_path,
        tfrecords,
        "strategy=mirrored",
        f"tracking.uri={store}",
        f"tracking.artifact_root={tmp_path / 'art'}",
        "tracking.experiment=native",
        "tracking.system_metrics_interval=1",
    )
    try:
        metrics = run_task(cfg)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)  # run_task points the process at the store
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("native").experiment_id])
    run_id = run.info.run_id
    assert run.info.run_name.startswith("train mirrored bs=16 local")

    (output,) = run.outputs.model_outputs
    assert output.step == run.data.metrics["best_epoch"]  # the judged epoch's weights
    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/small_cnn-mirrored-bs16")
    images = real_images(tfrecords)
    predictions = model.predict(images)
    assert predictions.shape == (4, len(CLASSES)) and predictions.dtype == np.float32
    assert model.metadata.metadata["class_names"] == CLASSES
    (spec,) = model.metadata.get_input_schema().inputs
    assert spec.type == np.dtype("uint8") and spec.shape == (-1, 32, 32, 3)
    assert "model/model.keras" in {a.path for a in client.list_artifacts(run_id, "model")}  # the raw file stays

    inputs = {i.dataset.name: i.tags[0].value for i in run.inputs.dataset_inputs}
    assert inputs == {"synthetic.train": "training", "synthetic.validation": "validation", "synthetic.test": "testing"}
    assert any(key.startswith("system/cpu") for key in run.data.metrics), sorted(run.data.metrics)
    assert_params_read_by("train", run.data.params)
    assert run.data.params["replicas"] == "2" and metrics["replicas"] == 2


# ------------------------------------------------------------------------- registry and analysis run


def tiny_model(classes: int):
    import tf_keras as keras

    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


def training_run(store: fx.Store, name: str, strategy: str, batch_size: int, delta: float, tfrecords: str) -> str:
    """A finished training run with known curves and a real (tiny) logged model."""
    run_id = fx.log_run(
        store,
        name,
        task="train",
        params=fx._train_params(strategy, batch_size, "local"),
        histories=fx.healthy_shifted(delta),
        metrics={"best_val_accuracy": 0.8 + delta},
    )
    paths = readers.shard_paths(tfrecords, manifest(tfrecords))
    keras_path = str(store.artifact_dir.parent / f"{name}.keras")
    tiny_model(len(CLASSES)).save(keras_path)
    export.log_model(keras_path, export.ModelCard(CLASSES, 32, paths, f"tiny-{name}"), store.uri, run_id, step=9)
    return run_id


def best_config_json(store: fx.Store, capsys: pytest.CaptureFixture) -> dict:
    capsys.readouterr()  # what logging the models printed (Keras' progress bars)
    assert best_config.main(["--tracking-uri", store.uri, "--experiment", store.experiment_name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.timeout(300)
def test_best_config_registers_the_winner_once_and_moves_the_alias_to_a_better_run(
    tmp_path: Path, tfrecords: str, mlflow_store: str, mlflow_experiment: str, capsys: pytest.CaptureFixture
) -> None:
    store = fx.Store(
        mlflow_store, mlflow_experiment, "tests", tmp_path / "mlruns" / "artifacts", MlflowClient(mlflow_store)
    )
    winner = training_run(store, "mirrored-32", "mirrored", 32, 0.0, tfrecords)
    training_run(store, "default-32", "default", 32, -0.1, tfrecords)
    name = registry.DEFAULT_NAME

    first, second = best_config_json(store, capsys), best_config_json(store, capsys)
    assert first["champion"]["run_id"] == second["champion"]["run_id"] == winner
    assert first["champion"]["created"] and first["champion"]["moved"]
    assert not second["champion"]["created"] and not second["champion"]["moved"]
    assert second["champion"]["uri"] == f"models:/{name}@champion"
    assert len(store.client.search_model_versions(f"name = '{name}'")) == 1
    assert store.client.get_model_version_by_alias(name, "champion").run_id == winner

    better = training_run(store, "default-64", "default", 64, 0.1, tfrecords)
    third = best_config_json(store, capsys)
    assert third["champion"]["run_id"] == better and third["champion"]["moved"]
    # A run logged by hand has no config to take its split from: registered, and said to be untested.
    assert third["champion"]["scores"]["test_note"].startswith("not tested: run ")
    assert len(store.client.search_model_versions(f"name = '{name}'")) == 2
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert champion.predict(real_images(tfrecords, 2)).shape == (2, len(CLASSES))

    # The report's analysis run: headline metrics and tags, a telling name, the HTML with its figures inside.
    made = report.make_report(store.uri, store.experiment_name, output_dir=tmp_path / "report")
    run = store.client.get_run(made.run_id)
    assert run.data.metrics["top_config.mean_val_accuracy"] == pytest.approx(0.915)
    assert "best_val_accuracy" not in run.data.metrics  # a training run's metric: another quantity
    assert {k: run.data.metrics[k] for k in ("runs_judged", "runs_overfitting", "runs_excluded")} == {
        "runs_judged": 3,
        "runs_overfitting": 1,
        "runs_excluded": 0,
    }  # default-32: final accuracy gap 0.115
    assert run.data.tags["best.strategy.name"] == "default" and run.data.tags["best.batch_size"] == "64"
    assert run.data.tags["registered_model"] == f"models:/{name}@champion"
    assert run.info.run_name == "analysis experiment tests: default bs=64 local"
    html = Path(
        mlflow.artifacts.download_artifacts(
            run_id=made.run_id, artifact_path="report.html", dst_path=str(tmp_path / "dl")
        )
    )
    assert (
        html.read_text().count('src="data:image/png;base64,') >= 1
        and len(store.client.search_model_versions(f"name = '{name}'")) == 2
    )


def test_no_model_no_registration(
    tmp_path: Path, mlflow_store: str, mlflow_experiment: str, capsys: pytest.CaptureFixture
) -> None:
    store = fx.Store(mlflow_store, mlflow_experiment, "tests", tmp_path, MlflowClient(mlflow_store))
    fx.log_run(store, "old", task="train", params=fx._train_params("default", 32, "local"), histories=fx.HEALTHY)
    result = best_config_json(store, capsys)
    assert result["champion"] is None and any("no model registered" in note for note in result["notes"])
    assert store.client.search_registered_models() == []


# ------------------------------------------------------------------------------------------- the UI


def test_the_ui_command_opens_the_machine_learning_view_on_the_saved_comparison(
    mlflow_store: str, mlflow_experiment: str
) -> None:
    assert (
        ui.runs_url("127.0.0.1", 5000, "7")
        == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=bigimage-compare"
    )
    ui.save_view(mlflow_store, mlflow_experiment)
    tags = mlflow.MlflowClient(mlflow_store).get_experiment(mlflow_experiment).tags
    envelope = json.loads(tags["mlflow.sharedViewState.bigimage-compare"])  # the UI's saved-view envelope
    assert envelope["name"] == "Compare training runs" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == "tags.task = 'train'" and state["orderByKey"] == "metrics.`best_val_accuracy`"
    assert "params.`strategy.name`" in state["selectedColumns"]
    command = ui.command("sqlite:///x.db", "bigimage")
    assert command.endswith("analysis/mlflow_ui.py --tracking-uri sqlite:///x.db --experiment bigimage")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_ui_script_serves_the_experiment_on_loopback_until_stopped(
    mlflow_store: str, mlflow_experiment: str
) -> None:
    port = free_port()
    with mlflow_ui(mlflow_store, "tests", port) as line:
        assert f"http://127.0.0.1:{port}/#/experiments/{mlflow_experiment}/runs?workflowType=machine_learning&" in line
        api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get?experiment_id={mlflow_experiment}"
        with urllib.request.urlopen(api, timeout=30) as answer:
            assert json.load(answer)["experiment"]["name"] == "tests"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the mlflow ui it started is gone with it
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.5)
    else:
        pytest.fail(f"something still listens on {port}")
    assert re.match(r"^MLflow UI: ", line)


def test_the_ui_script_refuses_an_experiment_that_is_not_there_like_the_other_scripts(
    mlflow_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigimage.analysis_lib.common import EXIT_NO_RUNS

    code = ui.main(["--tracking-uri", mlflow_store, "--experiment", "no-such-experiment", "--no-browser"])
    error = capsys.readouterr().err
    assert code == EXIT_NO_RUNS
    assert error.startswith("error: ") and "no-such-experiment" in error
