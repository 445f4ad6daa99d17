"""Worker processes size TensorFlow's op thread pools to their share of the cores: N workers on C cores
use at most C op threads in total (no oversubscription), each pool counted apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from bigimage.spark.barrier import build_tf_config
from bigimage.train import launch, threads
from tests.conftest import compose_config

# What one worker process does first (bigimage.train.worker.configure_process), then one convolution so
# TensorFlow's pools exist; it reports what TensorFlow itself says it got, and the inter-op pool's threads.
CHILD = r"""
import collections, json, os, sys
from omegaconf import OmegaConf
from bigimage.train import worker
op = worker.configure_process(OmegaConf.load(sys.argv[1]))
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
tf.nn.conv2d(tf.ones((1, 16, 16, 3)), tf.ones((3, 3, 3, 4)), 1, "SAME").numpy()
names = collections.Counter()
for task in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{task}/comm") as handle:
        names[handle.read().strip()] += 1
print(json.dumps({
    "intra": tf.config.threading.get_intra_op_parallelism_threads(),
    "inter": tf.config.threading.get_inter_op_parallelism_threads(),
    "inter_pool_threads": names["tf_Compute"],
    "cores": len(os.sched_getaffinity(0)),
    "devices": len(tf.config.list_logical_devices("CPU")),
    "onednn": bool(_pywrap_util_port.IsMklEnabled()),
    "planned": [op.intra_op, op.inter_op],
}))
"""


def _start(config_path: str, cores: set[int], tf_config: dict | None) -> subprocess.Popen:
    env = launch.worker_env({"TF_CONFIG": json.dumps(tf_config)} if tf_config else None)  # the launcher's
    for key in (threads.INTRA_VARIABLE, threads.INTER_VARIABLE):  # an override of this shell would win
        env.pop(key, None)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, config_path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
    )


def _run_workers(tmp_path, cores: int, workers: int, *overrides: str) -> list[dict]:
    """``workers`` worker processes at once, as the launcher starts them, on the first ``cores`` cores."""
    cfg = compose_config(["task=train", *overrides])
    config_path = str(tmp_path / f"config-{cores}-{workers}.yaml")
    OmegaConf.save(cfg, config_path)
    allowed = set(sorted(os.sched_getaffinity(0))[:cores])
    addresses = [f"127.0.0.1:{port}" for port in launch.free_ports(workers)] if workers > 1 else []
    processes = [
        _start(config_path, allowed, build_tf_config(addresses, index) if addresses else None)
        for index in range(workers)
    ]
    reports = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        assert process.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


CASES = [  # cores, workers, overrides, replicas per worker
    (1, 1, (), 1),
    (2, 1, (), 1),
    (2, 2, ("strategy=multi_worker_mirrored", "strategy.num_workers=2"), 1),
    (2, 1, ("strategy=mirrored", "strategy.logical_cpu_devices=2"), 2),
]


@pytest.mark.parametrize("cores, workers, overrides, replicas", CASES)
def test_workers_on_c_cores_use_at_most_c_op_threads(tmp_path, cores, workers, overrides, replicas):
    if cores > len(os.sched_getaffinity(0)):
        pytest.skip(f"needs {cores} cores")
    reports = _run_workers(tmp_path, cores, workers, *overrides)
    assert all(report["cores"] == cores for report in reports)
    assert all(report["onednn"] for report in reports)  # the launcher's environment turns oneDNN on
    # Each replica's ops split over the intra-op pool; all workers' replicas together fit the cores.
    assert sum(report["intra"] * replicas for report in reports) <= cores
    assert sum(report["inter"] for report in reports) <= max(cores, workers * replicas)
    # What TensorFlow really started: the inter-op pool's threads, no more than it was told.
    assert all(0 < report["inter_pool_threads"] <= report["inter"] for report in reports)
    # And the cores are used: one worker alone gets all of them for its replicas.
    if workers == 1:
        assert reports[0]["intra"] * replicas == cores
    if replicas > 1:
        assert reports[0]["devices"] == replicas and reports[0]["inter"] >= replicas  # replicas side by side


@pytest.mark.parametrize("cores", [1, 2, 4, 8, 16])
def test_the_plan_never_oversubscribes(cores):
    for workers in range(1, cores + 1):
        for replicas in (1, 2, 4):
            plan = threads.op_threads(cores, workers, replicas)
            assert workers * plan.intra_op * replicas <= max(cores, workers * replicas)
            assert plan.inter_op >= replicas


def test_workers_of_this_machine_come_from_tf_config():
    config = build_tf_config(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.2:1"], 1)
    assert threads.workers_on_this_machine(json.dumps(config)) == 2
    config = build_tf_config(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.2:1"], 2)
    assert threads.workers_on_this_machine(json.dumps(config)) == 1
    assert threads.workers_on_this_machine("") == 1
