"""task=train with ``strategy.launcher=spark_barrier``: the TensorFlow workers run one per Spark barrier
task, on a real 2-worker standalone cluster on loopback (``cluster.deploy=standalone``), logging into a
real MLflow store in tmp; tiny TFRecords (32 px). The launcher's ``strategy.worker_timeout_seconds`` is
set well below pytest's timeout, so a hang shows as the launcher's error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from bigimage.config import ConfigError, validate
from bigimage.train.launch import WorkerFailedError, WorkerTimeoutError
from bigimage.train.task import run_train
from tests.conftest import train_config
from tests.test_train_runs import progress
from tests.tfrecord_fixtures import write_tfrecord_dir

TWO_EXECUTORS = [
    "cluster=four",
    "cluster.deploy=standalone",
    "cluster.executors=2",
    "cluster.executor_cores=1",
    "cluster.executor_memory=1g",
    "cluster.driver_memory=1g",
]


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=64, image_size=32, num_shards=4)
    return str(directory)


def compose(tmp_path, tfrecords, *overrides: str):
    return train_config(tmp_path, tfrecords, *overrides, timeout_seconds=150)


def worker_pids(cfg, run_id) -> set[int]:
    try:
        return {entry["pid"] for entries in progress(cfg, run_id).values() for entry in entries}
    except FileNotFoundError:
        return set()


@contextmanager
def watching(run_id: str, seen: set[int]) -> Iterator[None]:
    """Collect the pids of the training workers of ``run_id`` (from the process table) while the block runs."""
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            for process in psutil.process_iter(["cmdline"]):
                argv = process.info["cmdline"] or []
                if "bigimage.train.worker" in argv and run_id in argv:
                    seen.add(process.pid)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan whose reaper has not come by yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone(pids: set[int], seconds: float = 10.0) -> bool:
    """True once none of ``pids`` runs (a worker whose barrier task was killed exits within ~1 s)."""
    deadline = time.monotonic() + seconds
    while True:
        alive = {pid for pid in pids if _running(pid)}
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.2)


# a training worker armed with --parent-pid, then inside one C call that holds the GIL for hours
_ARMED_WORKER = """
import sys
from bigimage.train.worker import _watch_parent
_watch_parent(int(sys.argv[1]))
print("armed", flush=True)
sum(range(10**13))
"""
# its launcher, as a barrier task's Python worker: prints the worker's pid once it is armed
_LAUNCHER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdout=subprocess.PIPE,
                         start_new_session=True)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def test_a_worker_dies_with_its_launcher_even_inside_a_call_that_holds_the_gil() -> None:
    """A cancelled barrier task's Python worker is SIGKILLed by Spark (its ``finally`` never runs), so
    the training worker it launched must go by itself. A thread polling for the launcher cannot run
    while a TensorFlow call holds the GIL; the kernel's parent-death signal does not need it."""
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _ARMED_WORKER], stdout=subprocess.PIPE, text=True)
    worker = int(launcher.stdout.readline())
    try:
        time.sleep(1.0)  # well inside sum() by now
        assert _running(worker)
        launcher.kill()
        launcher.wait()
        assert gone({worker}, seconds=3.0), "the worker outlived its launcher"
    finally:
        if _running(worker):
            os.kill(worker, signal.SIGKILL)


def history(run_id, key):
    return [
        (m.step, m.value)
        for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    ]


def test_launcher_values_are_checked_in_one_place(tmp_path):
    with pytest.raises(Exception, match="strategy.launcher=yarn_magic") as error:
        compose(tmp_path, str(tmp_path), "strategy=multi_worker_mirrored", "strategy.launcher=yarn_magic")
    assert "expected one of [processes, spark_barrier]" in str(error.value.__cause__)
    for strategy in ("default", "mirrored"):
        with pytest.raises(
            ConfigError,
            match=rf"strategy={strategy} runs in one process.*strategy=multi_worker_mirrored.*launcher=spark_barrier",
        ):
            validate(compose(tmp_path, str(tmp_path), f"strategy={strategy}", "strategy.launcher=spark_barrier"))
    for strategy in ("multi_worker_mirrored", "experimental_multi_worker_mirrored"):
        validate(compose(tmp_path, str(tmp_path), f"strategy={strategy}", "strategy.launcher=spark_barrier"))
    assert compose(tmp_path, str(tmp_path), "strategy=multi_worker_mirrored").strategy.launcher == "processes"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_multi_worker_on_spark_barrier_tasks_of_a_standalone_cluster(tmp_path, tfrecords, mlflow_experiment):
    cfg = compose(
        tmp_path, tfrecords, "strategy=multi_worker_mirrored", "strategy.num_workers=2", "strategy.launcher=spark_barrier",
        *TWO_EXECUTORS,
    )  # fmt: skip
    began = time.monotonic()
    with mlflow.start_run(experiment_id=mlflow_experiment) as run:
        metrics = run_train(cfg)
    run_id = run.info.run_id
    print(f"\n[timing] standalone cluster + 2 barrier workers x 2 epochs: {time.monotonic() - began:.1f} s")

    lines = progress(cfg, run_id)
    assert sorted(lines) == [0, 1]
    pids = {index: {entry["pid"] for entry in entries} for index, entries in lines.items()}
    assert len(pids[0]) == 1 and len(pids[1]) == 1 and pids[0] != pids[1]  # two OS processes
    assert os.getpid() not in pids[0] | pids[1]
    assert gone(pids[0] | pids[1])  # ended with their barrier tasks
    client = MlflowClient()
    logged = client.get_run(run_id)
    spe = int(logged.data.params["steps_per_epoch"])
    steps = {index: [e["steps_done"] for e in entries if e["event"] == "epoch_end"] for index, entries in lines.items()}
    assert steps[0] == steps[1] == [spe, 2 * spe]  # both workers really stepped, in lockstep
    # Only the chief logged: one value per epoch, not one per worker.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "images_per_second"):
        assert [step for step, _ in history(run_id, key)] == [0, 1], key
    params = logged.data.params
    assert params["replicas"] == "2" and params["workers"] == "2" and params["per_replica_batch_size"] == "8"
    assert metrics["replicas"] == 2 and metrics["epochs_run"] == 2
    assert metrics["best_val_accuracy"] == pytest.approx(max(value for _, value in history(run_id, "val_accuracy")))
    # The workers ran on the standalone cluster's two executors, one barrier task each.
    assert logged.data.tags["spark.master"].startswith("spark://127.0.0.1:")
    assert logged.data.tags["spark.deploy"] == "standalone"
    assert logged.data.metrics["spark.executors"] == 2
    logs = {a.path for a in client.list_artifacts(run_id, "worker_logs")}
    assert logs == {"worker_logs/worker-0.log", "worker_logs/worker-1.log"}
    assert {"history.json", "model"} <= {a.path for a in client.list_artifacts(run_id)}
    # Same checkpoint behaviour as the process launcher: a finished training leaves none behind.
    assert not os.path.exists(os.path.join(logged.data.tags["checkpoint_dir"], "chief"))
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_failing_barrier_worker_fails_the_stage_with_its_log_lines(tmp_path, mlflow_experiment):
    # A manifest that promises 32 px but holds 40 px images: only decoding can find out, in the worker.
    directory = tmp_path / "liar"
    write_tfrecord_dir(directory, num_images=32, image_size=40, num_shards=2)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["image_size"] = 32
    (directory / "manifest.json").write_text(json.dumps(manifest))
    cfg = compose(
        tmp_path, str(directory), "strategy=multi_worker_mirrored", "strategy.launcher=spark_barrier",
        "cluster=local", "cluster.executors=1", "cluster.executor_cores=2", "strategy.worker_timeout_seconds=120",
    )  # fmt: skip
    began = time.monotonic()
    with pytest.raises(WorkerFailedError) as error, mlflow.start_run(experiment_id=mlflow_experiment) as run:
        run_train(cfg)
    print(f"\n[timing] failing barrier stage reported after {time.monotonic() - began:.1f} s")
    assert time.monotonic() - began < 120  # the stage failed; nobody waited for the timeout
    assert error.value.task_index in (0, 1) and error.value.exit_code == 1
    message = str(error.value)
    assert f"training worker {error.value.task_index} of 2" in message and "Last lines" in message
    assert "32" in message and "40" in message  # the shape mismatch from the worker's log
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
    assert len(error.value.pids) == 1 and gone(set(error.value.pids) | worker_pids(cfg, run.info.run_id))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_barrier_workers_that_outlive_their_timeout_are_cancelled(tmp_path, tfrecords, mlflow_experiment):
    cfg = compose(
        tmp_path, tfrecords, "strategy=multi_worker_mirrored", "strategy.launcher=spark_barrier",
        "cluster=local", "cluster.executors=1", "cluster.executor_cores=2",
        "strategy.worker_timeout_seconds=40", "epochs=500",
    )  # fmt: skip
    began = time.monotonic()
    seen: set[int] = set()
    with pytest.raises(WorkerTimeoutError, match="worker_timeout_seconds=40"):
        with mlflow.start_run(experiment_id=mlflow_experiment) as run, watching(run.info.run_id, seen):
            run_train(cfg)
    print(f"\n[timing] timed-out barrier stage reported after {time.monotonic() - began:.1f} s")
    assert time.monotonic() - began < 120
    assert len(seen) == 2  # both had started (their progress stays on the executors: seen in the process table)
    assert gone(seen)
