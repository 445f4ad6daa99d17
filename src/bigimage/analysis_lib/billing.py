"""What a cost covers: the job alone, or the cluster's life, which is what a cloud bill charges.

Every cost per 1,000 images is an hourly price x seconds / images x 1,000, shown twice, under two names
used in every output (rankings, forecast, report, JSON, MLflow metrics):

* :data:`JOB` (``cost_per_1000_images_job``): the job's own seconds (task 1's ``seconds``: first task to
  the set committed; task 2's timed reads). Without Spark's start-up, the wait for the first Python
  worker, the run's own work around the job, or creating and deleting the cluster. What more images cost
  on a running cluster: the figure that carries to other data sizes, so the rankings of shapes use it.
* :data:`CLUSTER_LIFE` (``cost_per_1000_images_cluster_life``): the seconds the cluster lived for the
  run. The run's wall time in MLflow (start to end: Spark's start-up, recorded as ``startup_seconds``,
  the first Python worker, the job, the logging), never less than start-up + job; on Dataproc plus
  creating and deleting the cluster, which Dataproc bills from creation to deletion. The runs do not
  record those operations (:mod:`bigimage.cloud.dataproc` creates and deletes the cluster outside the
  run, and keeps no timestamps of them), so they are an estimate from the price table
  (``dataproc_create_delete_seconds``), and labelled one. What a run like these is billed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from bigimage.tracking import names, query

JOB = "cost_per_1000_images_job"
CLUSTER_LIFE = "cost_per_1000_images_cluster_life"
LIFE_SECONDS = "cluster_life_seconds"
LIFE_INCLUDES = "cluster_life_includes"
STARTUP_METRIC = names.STARTUP_SECONDS  # Spark's start-up, recorded by tasks 1 and 2
DATAPROC = "dataproc"  # the deploy (tag spark.deploy) whose cluster is created and deleted for its jobs
JOB_COVERS = (
    "the job alone: its own seconds, without Spark's start-up, the first Python worker, the run's work "
    "around the job, or creating and deleting the cluster"
)
LIFE_COVERS = (
    "the cluster's life for the run, what the bill charges: the run's wall time (Spark's start-up, the first "
    "Python worker, the job, the logging) plus, on Dataproc, creating and deleting the cluster"
)


def covers(create_delete_seconds: float) -> str:
    """One line saying what each cost covers, with the creation-and-deletion estimate's value."""
    estimate = (
        f"an estimate of {create_delete_seconds:g} s from the price table, as no run records those operations"
        if create_delete_seconds
        else "not counted, as the price table gives no estimate and no run records those operations"
    )
    return (
        f"What a cost covers: {JOB} is {JOB_COVERS}; {CLUSTER_LIFE} is {LIFE_COVERS}; creating and deleting a "
        f"Dataproc cluster is {estimate}."
    )


@dataclass(frozen=True)
class Life:
    """The seconds a cluster lived for one run, by part."""

    job: float
    startup: float  # recorded Spark start-up (0 when the run recorded none)
    other: float  # the rest of the run's wall time: the first Python worker, the driver's work, logging
    create_delete: float  # creating and deleting the cluster (Dataproc; an estimate)
    startup_recorded: bool

    @property
    def seconds(self) -> float:
        return self.job + self.startup + self.other + self.create_delete

    @property
    def overhead(self) -> float:
        """What the run's life adds to its job on a running cluster: start-up and the rest of the run."""
        return self.startup + self.other


def wall_seconds(row: pd.Series) -> float | None:
    """The run's wall time (MLflow start to end), or None when it has no end."""
    start, end = row.get("start_time"), row.get("end_time")
    if start is None or end is None or pd.isna(start) or pd.isna(end) or end < start:
        return None
    return (float(end) - float(start)) / 1000.0


def life(row: pd.Series, job_seconds: float, create_delete_seconds: float) -> Life:
    """The cluster's life for the run ``row`` of a job of ``job_seconds`` (module doc)."""
    recorded = query.metric(row, STARTUP_METRIC)
    startup = max(recorded or 0.0, 0.0)
    wall = wall_seconds(row)
    other = max((wall or 0.0) - job_seconds - startup, 0.0)
    dataproc = row.get(f"tags.{names.SPARK_DEPLOY}") == DATAPROC
    return Life(job_seconds, startup, other, create_delete_seconds if dataproc else 0.0, recorded is not None)


def includes(lives: list[Life]) -> str:
    """What the cluster-life figure of ``lives`` (one item's runs) adds to the job, means over the runs:
    ``start-up 5.1 s + rest of the run 2 s + creation and deletion 150 s (estimate)``."""
    if not lives:
        return ""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    startup = mean([item.startup for item in lives])
    parts = [
        f"start-up {startup:.3g} s" if any(item.startup_recorded for item in lives) else "start-up not recorded",
        f"rest of the run {mean([item.other for item in lives]):.3g} s",
    ]
    create_delete = mean([item.create_delete for item in lives])
    if create_delete:
        parts.append(f"creation and deletion {create_delete:.3g} s (estimate)")
    return " + ".join(parts)
