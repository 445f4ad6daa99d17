"""Multi-host training and preprocessing on a cluster whose hosts share no file system (issue 14).

The loopback standalone cluster in share-nothing mode (``cluster.share_nothing``): each Spark worker,
with its executors and the TensorFlow workers they start, runs in its own mount namespace in which
``/tmp`` (pytest's tmp_path included), the project's ``data/`` and ``outputs/`` and the home directory
are empty, so a driver path used on an executor fails as on another host. Data and checkpoints go
through the GCS emulator, tracking through a real ``mlflow server`` on loopback. The quick tests check
the refusals that need no cluster.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from bigimage.config import ConfigError
from bigimage.data import storage
from bigimage.spark import isolate
from bigimage.spark.isolate import unavailable
from bigimage.spark.standalone import StandaloneCluster
from bigimage.train.launch import CLUSTER_NETWORK, NETWORK_TAG, WorkerFailedError
from bigimage.train.multihost import is_multi_host
from bigimage.train.task import run_train
from tests.conftest import compose_config, train_config
from tests.mlflow_server import mlflow_server
from tests.spark_processes import spark_daemon_pids
from tests.tfrecord_fixtures import write_tfrecord_dir

MULTI_WORKER = ["strategy=multi_worker_mirrored", "strategy.num_workers=2", "strategy.launcher=spark_barrier"]


def shared_train_config(tmp_path: Path, tfrecord_dir: str, *overrides: str, timeout_seconds: int = 200):
    return train_config(
        tmp_path, tfrecord_dir, *MULTI_WORKER, "cluster=four", "cluster.deploy=standalone",
        "cluster.share_nothing=true", "cluster.executors=2", "cluster.executor_cores=1",
        "cluster.executor_memory=1g", "cluster.driver_memory=1g", *overrides, timeout_seconds=timeout_seconds,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- quick
def test_which_trainings_are_multi_host() -> None:
    def cluster(**values):
        base = {"deploy": "standalone", "master": None, "share_nothing": False}
        return OmegaConf.create({**base, **values})

    assert not is_multi_host(cluster(), "processes")
    assert not is_multi_host(cluster(share_nothing=True), "processes")  # local processes share this machine
    assert not is_multi_host(cluster(), "spark_barrier")  # the loopback cluster started here
    assert not is_multi_host(cluster(master="spark://127.0.0.1:7077"), "spark_barrier")
    assert not is_multi_host(cluster(deploy="local"), "spark_barrier")
    assert is_multi_host(cluster(share_nothing=True), "spark_barrier")
    assert is_multi_host(cluster(master="spark://spark-master:7077"), "spark_barrier")
    assert is_multi_host(cluster(master="yarn"), "spark_barrier")
    assert is_multi_host(cluster(deploy="dataproc"), "spark_barrier")


def test_only_a_share_nothing_cluster_hides_the_driver_directories() -> None:
    from bigimage.spark.cluster import share_nothing_dirs

    assert share_nothing_dirs(OmegaConf.create({"share_nothing": False})) == ()
    hidden = share_nothing_dirs(OmegaConf.create({"share_nothing": True}))
    assert hidden == share_nothing_dirs() and "/tmp" in hidden and os.path.realpath(Path.home()) in hidden
    assert {os.path.basename(path) for path in hidden} >= {"data", "outputs"}


def test_the_software_stays_visible_when_a_mask_covers_the_checkout() -> None:
    """A clean clone under /tmp (as CI makes) holds the virtualenv and, for an editable install, the package
    source: a host of its own would have the same software, so neither may disappear with /tmp."""
    import sys

    import bigimage

    source = os.path.dirname(os.path.dirname(os.path.realpath(bigimage.__file__)))
    checkout = os.path.dirname(source)
    argv = isolate.command(["true"], masks=[checkout])
    exposed = {argv[i + 1] for i, word in enumerate(argv) if word == "--expose"}
    assert source in exposed and os.path.realpath(sys.prefix) in exposed


def test_sqlite_tracking_is_refused_for_a_multi_host_training_before_any_worker_starts(tmp_path, mlflow_experiment):
    cfg = shared_train_config(tmp_path, "gs://no-bucket/tfrecords", "train.checkpoint_dir=gs://no-bucket/checkpoints/x")
    daemons = set(spark_daemon_pids())
    began = time.monotonic()
    with pytest.raises(ConfigError) as error, mlflow.start_run(experiment_id=mlflow_experiment):
        run_train(cfg)
    message = str(error.value)
    assert message.startswith("tracking.uri=sqlite:///") and "mlflow server" in message
    assert "tracking.uri=http://HOST:5000" in message
    # Refused before anything started: no Spark daemon, no worker folder, not even the data looked at.
    assert time.monotonic() - began < 10
    assert set(spark_daemon_pids()) <= daemons
    assert not (tmp_path / "out" / "train").exists()


def test_local_data_and_checkpoints_are_refused_for_a_multi_host_training(tmp_path, gcs_emulator):
    from bigimage.train import multihost

    server, artifacts = "http://127.0.0.1:5000", "mlflow-artifacts:/1/abc/artifacts"
    cfg = shared_train_config(tmp_path, str(tmp_path / "tfrecords"))
    with pytest.raises(ConfigError, match=r"^tfrecord_dir=/.* is a path on this machine.*tfrecord_dir=gs://"):
        multihost.check_shared(cfg, server, artifacts, "gs://bucket/checkpoints")
    cfg = shared_train_config(tmp_path, "gs://bucket/tfrecords")
    with pytest.raises(ConfigError, match=r"^train.checkpoint_dir=/.*train.checkpoint_dir=gs://BUCKET/checkpoints"):
        multihost.check_shared(cfg, server, artifacts, str(tmp_path / "checkpoints"))
    with pytest.raises(ConfigError, match=r"^the run's artifact location=file:///"):
        multihost.check_shared(cfg, server, "file:///srv/artifacts", "gs://bucket/checkpoints")
    multihost.check_shared(cfg, server, artifacts, "gs://bucket/checkpoints")  # all shared: accepted


# ------------------------------------------------------------------------------- the share-nothing cluster
@pytest.fixture(scope="module")
def cluster() -> Iterator[StandaloneCluster]:
    reason = unavailable()
    if reason:
        pytest.skip(f"no share-nothing cluster here: {reason}")
    from bigimage.spark.cluster import share_nothing_dirs

    with StandaloneCluster(
        workers=2, cores_per_worker=1, memory_per_worker="1g", isolate=share_nothing_dirs()
    ) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def tracked(server: str) -> Iterator[str]:
    """The server as this test's tracking URI, with an experiment of its own; yields the experiment id."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = server
    mlflow.set_tracking_uri(server)
    experiment_id = mlflow.create_experiment(f"share-nothing-{uuid.uuid4().hex[:8]}")
    yield experiment_id
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="module")
def shared_tfrecords(gcs_emulator, tmp_path_factory) -> str:
    """Tiny TFRecords in a bucket of the emulator (only there: the executors cannot see tmp_path)."""
    bucket = f"shared-{uuid.uuid4().hex[:12]}"
    storage.gcs_client().create_bucket(bucket)
    local = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(local, num_images=64, image_size=32, num_shards=4)
    for name in sorted(os.listdir(local)):
        storage.copy(str(local / name), f"gs://{bucket}/tfrecords/tiny-32/{name}")
    return f"gs://{bucket}/tfrecords/tiny-32"


def on_cluster(cluster: StandaloneCluster) -> list[str]:
    return [f"cluster.master={cluster.master_url}"]


def history(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_preprocessing_from_and_to_gs_on_hosts_that_share_nothing(
    cluster, tracked, gcs_bucket, make_image_tree, tmp_path
):
    from bigimage.spark.preprocess import run_preprocess

    root = make_image_tree(per_class=3)
    for path in sorted(root.rglob("*.jpg")):
        storage.copy(str(path), f"gs://{gcs_bucket}/flowers/{path.parent.name}/{path.name}")
    destination = f"gs://{gcs_bucket}/tfrecords/flowers-48"
    cfg = compose_config([
        "task=preprocess", "dataset=folder", f"dataset.root=gs://{gcs_bucket}/flowers", f"tfrecord_dir={destination}",
        "image_size=48", "num_shards=2", "cluster=four", "cluster.deploy=standalone", "cluster.share_nothing=true",
        "cluster.executors=2", "cluster.executor_cores=1", "cluster.executor_memory=1g", "cluster.driver_memory=1g",
        *on_cluster(cluster),
        f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'out'}",
    ])  # fmt: skip
    began = time.monotonic()
    with mlflow.start_run(experiment_id=tracked) as run:
        metrics = run_preprocess(cfg)
    print(f"\n[timing] preprocessing gs:// -> gs:// on the share-nothing cluster: {time.monotonic() - began:.1f} s")
    assert metrics["images"] == 9 and metrics["failed_images"] == 0 and metrics["shards"] == 2
    names = sorted(info.path.rsplit("/", 1)[-1] for info in storage.list_files(destination))
    assert "manifest.json" in names and len([name for name in names if name.endswith(".tfrec")]) == 2
    logged = MlflowClient().get_run(run.info.run_id)
    assert logged.data.metrics["spark.executors"] == 2 and logged.data.tags["spark.deploy"] == "standalone"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["multi_worker_mirrored", "experimental_multi_worker_mirrored"])
def test_two_workers_train_on_hosts_that_share_nothing(
    cluster, tracked, shared_tfrecords, gcs_bucket, tmp_path, strategy
):
    checkpoints = f"gs://{gcs_bucket}/checkpoints/{strategy}"
    cfg = shared_train_config(
        tmp_path, shared_tfrecords, f"strategy={strategy}", f"train.checkpoint_dir={checkpoints}", *on_cluster(cluster)
    )
    began = time.monotonic()
    with mlflow.start_run(experiment_id=tracked) as run:
        metrics = run_train(cfg)
    print(f"\n[timing] 2 {strategy} workers x 2 epochs on the share-nothing cluster: {time.monotonic() - began:.1f} s")
    client = MlflowClient()
    logged = client.get_run(run.info.run_id)
    assert logged.info.status == "FINISHED"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "images_per_second"):
        assert history(client, run.info.run_id, key) == [0, 1], key  # per epoch, logged by the chief only
    assert logged.data.params["replicas"] == "2" and logged.data.params["workers"] == "2"
    worker_log = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/worker_logs/worker-1.log")
    assert f"strategy={strategy}," in worker_log and "/tmp/pytest-of" not in worker_log  # no driver path there
    assert metrics["epochs_run"] == 2 and logged.data.tags["checkpoint_dir"] == checkpoints
    assert logged.data.tags[NETWORK_TAG] == CLUSTER_NETWORK  # multi-host: listens on the cluster's network
    # The workers' logs came back through Spark and are run artifacts; the model went through the server.
    assert {a.path for a in client.list_artifacts(run.info.run_id, "worker_logs")} == {
        "worker_logs/worker-0.log", "worker_logs/worker-1.log"
    }  # fmt: skip
    assert {"model", "history.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert storage.list_files(checkpoints) == []  # a finished training leaves no shared checkpoint


def _worker_process(run_id: str, index: int) -> psutil.Process | None:
    for process in psutil.process_iter(["cmdline"]):
        argv = process.info["cmdline"] or []
        if "bigimage.train.worker" in argv and run_id in argv and argv[argv.index("--task-index") + 1] == str(index):
            return process
    return None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_killed_worker_fails_the_run_and_a_rerun_resumes_from_the_shared_checkpoint(
    cluster, tracked, shared_tfrecords, gcs_bucket, tmp_path
):
    checkpoints = f"gs://{gcs_bucket}/checkpoints/kill"
    cfg = shared_train_config(
        tmp_path, shared_tfrecords, "epochs=30", f"train.checkpoint_dir={checkpoints}", *on_cluster(cluster)
    )
    outcome: dict = {}

    def first_attempt() -> None:
        try:
            with mlflow.start_run(experiment_id=tracked) as run:
                outcome["run_id"] = run.info.run_id
                run_train(cfg)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=first_attempt)
    thread.start()
    # Once the chief has uploaded an epoch's checkpoint, kill worker 1 (on its own "host") with SIGKILL.
    killed_at = None
    deadline = time.monotonic() + 240
    while killed_at is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
        victim = _worker_process(outcome.get("run_id", "?"), 1)
        if victim is not None and storage.exists(f"{checkpoints}/history.json"):
            victim.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
    thread.join(timeout=150)
    assert killed_at is not None, "worker 1 never got past its first checkpoint"
    error = outcome.get("error")
    print(f"\n[timing] failure reported {time.monotonic() - killed_at:.1f} s after the kill")
    assert isinstance(error, WorkerFailedError) and error.task_index == 1 and error.exit_code == -9
    assert "training worker 1 of 2" in str(error) and "SIGKILL" in str(error)
    assert time.monotonic() - killed_at < 60  # at once, not after the worker timeout
    client = MlflowClient()
    assert client.get_run(outcome["run_id"]).info.status == "FAILED"
    assert {a.path for a in client.list_artifacts(outcome["run_id"], "worker_logs")} == {"worker_logs/worker-1.log"}

    began = time.monotonic()
    with mlflow.start_run(experiment_id=tracked) as rerun:
        metrics = run_train(cfg)
    print(f"\n[timing] resumed training finished in {time.monotonic() - began:.1f} s")
    resumed = int(metrics["resumed_from_epoch"])
    assert resumed >= 1 and metrics["epochs_run"] == 30 - resumed
    logged = client.get_run(rerun.info.run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags["resumed_from_epoch"] == str(resumed)
    assert history(client, rerun.info.run_id, "loss") == list(range(30))  # earlier epochs taken over
    assert storage.list_files(checkpoints) == []


def test_dataproc_training_needs_the_barrier_launcher_and_a_shared_checkpoint(tmp_path) -> None:
    from bigimage.cloud.dataproc import check_paths, dry_run

    shared = ["tfrecord_dir=gs://b/tfrecords/x", "tracking.uri=http://mlflow-host:5000"]
    cfg = compose_config(["task=train", "cluster=four", "cluster.deploy=dataproc", *shared, *MULTI_WORKER[:2]])
    problems = " ".join(check_paths(cfg))
    assert "strategy.launcher=processes would start all 2 workers on the master node" in problems
    assert "train.checkpoint_dir=None is not a gs:// URL" in problems and "dataset.root" not in problems
    cfg = compose_config(
        [
            "task=train",
            "cluster=four",
            "cluster.deploy=dataproc",
            *shared,
            *MULTI_WORKER,
            "train.checkpoint_dir=gs://b/c",
        ]
    )
    assert check_paths(cfg) == []
    lines: list[str] = []
    create, submit = dry_run(cfg, tmp_path, echo=lines.append)
    assert (
        create.startswith("gcloud dataproc clusters create bigimage-four") and "--image-version=3.0-debian13" in create
    )
    assert submit.startswith("gcloud dataproc jobs submit pyspark") and "task=train" in submit
