"""Where a parent run's time went: the wall-clock seconds of each of its child runs, in order, and the
gap the steps leave (start-up, anything between steps).
"""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from bigimage.tracking import names
from bigimage.tracking.query import children


def step_times(client: MlflowClient, parent_run_id: str) -> tuple[list[tuple[str, float]], float]:
    """The seconds of each finished child run of ``parent_run_id`` by start time, and the seconds from
    the parent's start to now. An analysis run is opened once its analysis is done, so its step is
    timed from the end of the step before it."""
    parent = client.get_run(parent_run_id)
    runs = children(client, [parent.info.experiment_id], parent_run_id)
    steps: list[tuple[str, float]] = []
    previous_end = None
    for run in sorted((run for run in runs if run.info.end_time), key=lambda run: run.info.start_time):
        start, task = run.info.start_time, run.data.tags.get(names.TAG_TASK, "?")
        if task == "analysis" and previous_end is not None:
            start = min(start, previous_end)
        if task == "train" and "strategy.name" in run.data.params:  # train default, train mirrored, ...
            task = f"train {run.data.params['strategy.name']}"
        steps.append((task, (run.info.end_time - start) / 1000))
        previous_end = run.info.end_time
    return steps, time.time() - parent.info.start_time / 1000


def describe_step_times(steps: list[tuple[str, float]], total: float) -> str:
    parts = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in steps)
    other = total - sum(seconds for _, seconds in steps)
    return f"step times: {parts}; between and around the steps {other:.1f} s; total {total:.1f} s"
