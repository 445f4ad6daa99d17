"""A real Spark standalone cluster on loopback: jobs on 2 executors, barrier workers, a worker killed
mid-job, clean shutdown (also on SIGTERM and when the parent dies), and the failure paths."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from bigimage.spark.barrier import BarrierError, run_barrier_workers
from bigimage.spark.cluster import ClusterError, spark_for
from bigimage.spark.session import spark_resources, spark_session
from bigimage.spark.standalone import (
    StandaloneCluster,
    StandaloneError,
    check_master_reachable,
    check_memory,
    free_port,
    parse_memory_mb,
)
from tests.conftest import compose_config, write_large_image_tree
from tests.spark_processes import processes_under, spark_daemon_pids

TWO_WORKERS = [
    "cluster.executors=2",
    "cluster.executor_cores=1",
    "cluster.executor_memory=1g",
    "cluster.driver_memory=1g",
]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], seconds: float = 20.0) -> list[int]:
    deadline = time.monotonic() + seconds
    left = [pid for pid in pids if _alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if _alive(pid)]
    return left


def _java_pids_of(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"java"):
            out.append(pid)
    return out


def _write_records(root: Path):
    """A Spark partition function that writes one file per record, atomically, named by the record."""

    def write(records):
        import os as _os

        from pyspark import TaskContext

        attempt = TaskContext.get().taskAttemptId()
        for record in records:
            final = root / f"record-{record:05d}.txt"
            staging = root / f".record-{record:05d}.attempt-{attempt}"
            staging.write_text(f"{record}\n")
            _os.replace(staging, final)  # a retried task overwrites; no reader sees half a file

    return write


def _check_records(root: Path, count: int) -> None:
    files = sorted(path.name for path in root.glob("record-*.txt"))
    assert files == [f"record-{index:05d}.txt" for index in range(count)]
    for index in range(count):
        assert (root / f"record-{index:05d}.txt").read_text() == f"{index}\n"


def _tasks_per_executor(spark) -> dict[str, int]:
    summaries = spark.sparkContext._jsc.sc().statusStore().executorList(False)
    items = [summaries.apply(index) for index in range(summaries.size())]
    return {item.id(): int(item.totalTasks()) for item in items if item.id() != "driver"}


@pytest.fixture(scope="module")
def standalone() -> Iterator[StandaloneCluster]:
    cluster = StandaloneCluster(workers=2, cores_per_worker=1, memory_per_worker="1g").start()
    try:
        yield cluster
    finally:
        pids = cluster.pids()
        cluster.stop()
        assert _wait_gone(pids) == [], "Spark processes were left behind"


# ------------------------------------------------------------------------------------ the real thing
@pytest.mark.slow
def test_spark_for_starts_a_two_worker_cluster_runs_a_job_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = compose_config(["cluster=four", "cluster.deploy=standalone", *TWO_WORKERS])
    out = tmp_path / "records"
    out.mkdir()
    began = time.monotonic()
    with spark_for(cfg.cluster, "test-standalone") as spark:
        ready = time.monotonic() - began
        master = spark.sparkContext.master
        assert master.startswith("spark://127.0.0.1:")
        job_began = time.monotonic()
        spark.sparkContext.parallelize(range(40), 8).foreachPartition(_write_records(out))
        job_seconds = time.monotonic() - job_began
        resources = spark_resources(spark)
        per_executor = _tasks_per_executor(spark)
        work_dir = spark.sparkContext.getConf().get("spark.bigimage.standalone.workDir")
        cluster_pids = processes_under(work_dir)
        java_pids = _java_pids_of(cluster_pids)
        assert spark.sparkContext.getConf().get("spark.bigimage.deploy") == "standalone"
    print(f"\n[timing] cluster + session + executors ready: {ready:.1f} s; job of 40 records: {job_seconds:.1f} s")
    _check_records(out, 40)
    assert resources["executors"] == 2
    assert resources["total_cores"] == 2
    assert resources["lost_executors"] == 0
    assert len(per_executor) == 2 and all(tasks > 0 for tasks in per_executor.values()), per_executor
    # Master, both workers and both executors were running; none of them is left.
    assert len(java_pids) == 5, java_pids
    assert _wait_gone(cluster_pids) == []


@pytest.mark.slow
def test_worker_killed_mid_preprocessing_every_image_written_once(tmp_path: Path) -> None:
    """Task 1 on 2 executors; one worker is killed once the first shards are staged. Spark re-runs the
    lost tasks on the other executor, and every image lands in the TFRecords exactly once."""
    import hashlib

    from bigimage.data.listing import list_labelled_images
    from bigimage.spark.preprocess import write_tfrecords
    from tests.test_preprocess import read_back

    cfg = compose_config(["cluster=four", "cluster.deploy=standalone", *TWO_WORKERS])
    listing = list_labelled_images(str(write_large_image_tree(tmp_path / "images", per_class=150)))
    destination = tmp_path / "tfrec"
    with StandaloneCluster(workers=2, cores_per_worker=1, memory_per_worker="1g") as cluster:
        with spark_session(cfg.cluster, "test-kill-worker", master=cluster.master_url) as spark:
            from bigimage.spark.session import wait_for_executors

            assert wait_for_executors(spark, 2, timeout_seconds=90)["executors"] == 2
            outcome: dict[str, object] = {}

            def job() -> None:
                try:
                    outcome["manifest"] = write_tfrecords(spark, listing, str(destination), 256, 90, 12, "k", seed=0)[0]
                except BaseException as error:
                    outcome["error"] = error

            runner = threading.Thread(target=job)
            runner.start()
            deadline = time.monotonic() + 180
            while not list(tmp_path.glob(".tfrec.swap-*/part-*.tfrec")) and time.monotonic() < deadline:  # built beside
                time.sleep(0.05)
            assert runner.is_alive(), "the job finished before the worker could be killed"
            os.killpg(cluster.worker_daemons[1].pid, signal.SIGKILL)  # a worker dies with its executor
            runner.join(timeout=300)
            assert not runner.is_alive(), "the job hung after a worker died"
            assert "error" not in outcome, outcome.get("error")
            resources = spark_resources(spark)
        pids = cluster.pids()
    records = read_back(str(destination))
    assert len(records) == 300 == outcome["manifest"].num_records
    assert len({hashlib.sha256(record["image_bytes"]).hexdigest() for record in records}) == 300
    assert resources["lost_executors"] >= 1 and resources["executors"] == 1
    assert _wait_gone(pids) == []


@pytest.mark.slow
def test_barrier_workers_get_one_tf_config_each(standalone: StandaloneCluster) -> None:
    cfg = compose_config(
        ["cluster=four", "cluster.deploy=standalone", f"cluster.master={standalone.master_url}", *TWO_WORKERS]
    )

    def worker(tf_config: dict) -> dict:
        import os as _os

        return {"tf_config": tf_config, "pid": _os.getpid()}

    with spark_for(cfg.cluster, "test-barrier") as spark:
        results = run_barrier_workers(spark, 2, worker, timeout_seconds=240)
        with pytest.raises(BarrierError, match="task slots"):
            run_barrier_workers(spark, 3, worker)
    assert len(results) == 2
    assert len({result["pid"] for result in results}) == 2
    specs = [result["tf_config"]["cluster"] for result in results]
    assert specs[0] == specs[1]
    addresses = specs[0]["worker"]
    assert len(addresses) == 2 and len(set(addresses)) == 2
    for index, result in enumerate(results):
        assert result["tf_config"]["task"] == {"type": "worker", "index": index}
    for address in addresses:
        host, port = address.rsplit(":", 1)
        assert 0 < int(port) < 65536
        with socket.socket() as sock:  # released again by the task: free for TensorFlow to bind
            sock.bind((host, int(port)))


@pytest.mark.slow
def test_preprocess_runs_unchanged_on_the_standalone_cluster(
    standalone: StandaloneCluster, make_image_tree, mlflow_store: str, tmp_path: Path
) -> None:
    from bigimage.spark.preprocess import run_preprocess

    root = make_image_tree(per_class=4)
    cfg = compose_config(
        [
            "task=preprocess",
            "dataset=folder",
            f"dataset.root={root}",
            f"tfrecord_dir={tmp_path / 'tfrecords'}",
            "num_shards=4",
            "image_size=64",
            "cluster=four",
            "cluster.deploy=standalone",
            f"cluster.master={standalone.master_url}",
            *TWO_WORKERS,
        ]
    )
    with mlflow.start_run() as run:
        metrics = run_preprocess(cfg)
    assert metrics["images"] == 12
    assert metrics["shards"] == 4
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.tags["spark.master"] == standalone.master_url
    assert logged.data.metrics["spark.executors"] == 2
    assert logged.data.metrics["spark.total_cores"] == 2


@pytest.mark.slow
def test_preprocess_starts_the_shape_cluster_by_itself(make_image_tree, mlflow_store: str, tmp_path: Path) -> None:
    """deploy=standalone without a master: task 1 gets a cluster of the shape, then nothing is left."""
    from bigimage.spark.preprocess import run_preprocess

    before = set(spark_daemon_pids())
    root = make_image_tree(per_class=2, name="images-own")
    cfg = compose_config(
        [
            "task=preprocess",
            "dataset=folder",
            f"dataset.root={root}",
            f"tfrecord_dir={tmp_path / 'tf'}",
            "num_shards=2",
            "image_size=32",
            "cluster=four",
            "cluster.deploy=standalone",
            *TWO_WORKERS,
        ]
    )
    with mlflow.start_run() as run:
        metrics = run_preprocess(cfg)
    assert metrics["images"] == 6
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.tags["spark.master"].startswith("spark://127.0.0.1:")
    assert logged.tags["spark.deploy"] == "standalone"
    assert logged.metrics["spark.executors"] == 2 and logged.metrics["spark.total_cores"] == 2
    assert _wait_gone(sorted(set(spark_daemon_pids()) - before)) == []


# ----------------------------------------------------------------------------- clean-up on the way out
_CHILD = textwrap.dedent(
    """
    import sys, time
    from bigimage.spark.standalone import StandaloneCluster
    cluster = StandaloneCluster(workers=1, cores_per_worker=1, memory_per_worker="512m")
    with cluster:
        print(" ".join(str(pid) for pid in cluster.pids()), flush=True)
        print(cluster.work_dir, flush=True)
        time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "ctrl-c", "sigkill"])
def test_cluster_stops_when_the_parent_is_signalled(sig: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        work_dir = Path(child.stdout.readline().strip())
        pids = [int(pid) for pid in line.split()]
        assert len(_java_pids_of(pids)) == 2, line  # master and worker
        child.send_signal(sig)
        child.wait(timeout=60)
        assert _wait_gone(pids, seconds=30) == []
        if sig != signal.SIGKILL:  # a killed parent cannot tidy up its files; its JVMs still go
            assert not work_dir.exists()
        shutil.rmtree(work_dir, ignore_errors=True)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# ------------------------------------------------------------------------------------- failure paths
def test_unreachable_master_fails_fast() -> None:
    port = free_port()
    cfg = compose_config(["cluster=four", "cluster.deploy=standalone", f"cluster.master=spark://127.0.0.1:{port}"])
    began = time.monotonic()
    with pytest.raises(StandaloneError, match=f"cannot reach the Spark master spark://127.0.0.1:{port}"):
        with spark_for(cfg.cluster, "never"):
            pass
    assert time.monotonic() - began < 15
    # A black-holed address times out within the bound instead of hanging.
    began = time.monotonic()
    with pytest.raises(StandaloneError):
        check_master_reachable("spark://192.0.2.123:7077", timeout_seconds=1)
    assert time.monotonic() - began < 5


def test_shape_larger_than_this_machine_fails_before_starting() -> None:
    cfg = compose_config(["cluster=maximal", "cluster.deploy=standalone", "cluster.executor_memory=100t"])
    with pytest.raises(StandaloneError, match=r"7 executors x 100t .* available"), spark_for(cfg.cluster, "never"):
        pass
    check_memory(2, "1g", "1g")  # the test shape fits


def test_master_that_cannot_bind_is_reported() -> None:
    # A fixed master port that is taken: the start fails with the reason and the master's log lines.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = StandaloneCluster(workers=1, cores_per_worker=1, memory_per_worker="512m", master_port=port)
        began = time.monotonic()
        with pytest.raises(StandaloneError, match=rf"master on 127\.0\.0\.1:{port} could not bind its port"):
            cluster.start()
        assert time.monotonic() - began < 60
        assert not cluster.master.alive()
    # An address that is not on this machine fails before any JVM starts.
    with pytest.raises(StandaloneError, match=r"could not bind"):
        StandaloneCluster(workers=1, cores_per_worker=1, host="192.0.2.123").start()


@pytest.mark.slow
def test_worker_that_fails_to_start_is_reported_and_nothing_is_left() -> None:
    # Spark's Worker exits at once on a memory below 1 MB: the start stops with its log lines.
    cluster = StandaloneCluster(workers=2, cores_per_worker=1, memory_per_worker="1k")
    with pytest.raises(StandaloneError, match=r"worker-\d exited before registering with spark://127\.0\.0\.1:\d+"):
        cluster.start()
    daemons = [cluster.master, *cluster.worker_daemons]
    assert all(not daemon.alive() for daemon in daemons)
    assert not cluster.work_dir.exists()


def test_dataproc_deploy_does_not_open_a_local_session() -> None:
    cfg = compose_config(["cluster=single", "cluster.deploy=dataproc"])
    with pytest.raises(ClusterError, match="run_on_dataproc"), spark_for(cfg.cluster, "never"):
        pass


def test_memory_sizes() -> None:
    assert parse_memory_mb("1g") == 1024
    assert parse_memory_mb("512m") == 512
    assert parse_memory_mb("2G") == 2048
    with pytest.raises(ValueError):
        parse_memory_mb("lots")
