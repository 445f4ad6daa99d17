"""The main job's closing line: each step's wall-clock time, read from its child run in MLflow."""

from __future__ import annotations

import time

import mlflow
from mlflow.tracking import MlflowClient

from bigimage.tracking.steps import describe_step_times, step_times


def test_step_times_follow_the_child_runs_in_order(mlflow_experiment):
    with mlflow.start_run(experiment_id=mlflow_experiment) as parent:
        for task, params in (("preprocess", {}), ("train", {"strategy.name": "mirrored"})):
            with mlflow.start_run(experiment_id=mlflow_experiment, nested=True, tags={"task": task}):
                mlflow.log_params(params)
                time.sleep(0.05)
        time.sleep(0.3)  # the report is computed before its analysis run opens: that time is its step's
        with mlflow.start_run(experiment_id=mlflow_experiment, nested=True, tags={"task": "analysis"}):
            pass
        steps, total = step_times(MlflowClient(), parent.info.run_id)
    assert [label for label, _ in steps] == ["preprocess", "train mirrored", "analysis"]
    assert all(0.04 < seconds < total for _, seconds in steps)
    assert steps[2][1] >= 0.3
    line = describe_step_times(steps, total)
    assert line.startswith("step times: preprocess ") and ", train mirrored " in line and "total" in line
