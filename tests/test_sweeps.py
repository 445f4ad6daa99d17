"""Multiruns through run.py: one MLflow parent run, one child per job, sequential and joblib-parallel."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import pytest

from bigimage.config import PROJECT_ROOT


def sweep(args: list[str], store: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "run.py",
            "-m",
            *args,
            f"tracking.uri={store}",
            "tracking.experiment=sweeps",
            f"tracking.artifact_root={tmp_path / 'artifacts'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def runs_of(store: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1, [run.data.tags for run in runs]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every job run is a child of the sweep's parent"
    return parents[0], children


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["sequential", "joblib"]
)
def test_preprocess_sweep_over_clusters(
    launcher: list[str], make_image_tree: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_image_tree(per_class=2)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = sweep(
        [
            "task=preprocess",
            "cluster=local,four",
            "dataset=folder",
            f"dataset.root={root}",
            f"tfrecord_dir={tmp_path}/tfrec/" + "${cluster.name}",
            "image_size=32",
            "num_shards=2",
            *launcher,
        ],
        store,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parent, children = runs_of(store)
    assert parent.info.status == "FINISHED" and parent.data.tags["children"] == "2"
    assert sorted(child.data.params["cluster.name"] for child in children) == ["four", "local"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.metrics["images"] == 6
        assert child.data.tags["sweep_id"] == parent.info.run_id
        assert f"cluster={child.data.params['cluster.name']}" in child.data.tags["overrides"]
    # cluster=local takes every core of the machine it runs on (executor_cores=0); four is 3 x 2 slots.
    masters = {child.data.params["cluster.name"]: child.data.tags["spark.master"] for child in children}
    assert masters == {"local": f"local[{os.cpu_count() or 1}]", "four": "local[6]"}, (
        "each shape runs with its own slots"
    )


def test_failing_job_marks_child_and_parent_failed(make_image_tree: Callable[..., Path], tmp_path: Path) -> None:
    good = make_image_tree(per_class=1)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = sweep(
        [
            "task=preprocess",
            "dataset=folder",
            f"dataset.root={good},{tmp_path / 'missing'}",
            f"tfrecord_dir={tmp_path / 'tfrec'}",
            "image_size=32",
            "num_shards=1",
        ],
        store,
        tmp_path,
    )
    assert result.returncode != 0
    parent, children = runs_of(store)
    statuses = sorted(child.info.status for child in children)
    assert statuses == ["FAILED", "FINISHED"]
    failed = next(child for child in children if child.info.status == "FAILED")
    assert "does not exist" in failed.data.tags["error"]
    assert parent.info.status == "FAILED"
