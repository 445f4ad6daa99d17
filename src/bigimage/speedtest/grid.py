"""The speed-test grid and its fan-out over Spark.

The grid is sources x batch sizes x batch numbers; each point is timed ``repetitions`` times, so a run
has ``len(sources) * len(batch_sizes) * len(batch_numbers) * repetitions`` rows (:func:`expected_rows`).

``speedtest.parallelism`` is how many points are timed at once: the points are dealt round-robin into
that many groups, one Spark partition (task) each, and a task times its points one after the other in
one Python worker that imports TensorFlow once. ``parallelism=1`` is one task timing everything
sequentially: clean, uncontended timings. More runs points side by side, which contends for the same
cores and disks (each TensorFlow pipeline uses every core it sees), so per-point numbers drop: it
measures throughput under load, not the pipeline alone. The effective value is bounded by the task
slots of the running context and by the number of points, and :func:`run_grid` returns it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bigimage.speedtest.timing import GridPoint, SourcePlan, SpeedtestDataError, TimingSettings

_ERROR_KEY = "__speedtest_error__"


def grid_points(sources: list[str], batch_sizes: list[int], batch_numbers: list[int]) -> list[GridPoint]:
    """Every point, ordered batch size, batch number, then source: the sources alternate, so drift in
    machine load during a sequential run touches both alike rather than all of one source."""
    return [
        GridPoint(source, int(batch_size), int(batch_number))
        for batch_size in batch_sizes
        for batch_number in batch_numbers
        for source in sources
    ]


def expected_rows(speed: Any) -> int:
    """Rows a complete run logs for a ``speedtest`` config node."""
    return len(speed.sources) * len(speed.batch_sizes) * len(speed.batch_numbers) * int(speed.repetitions)


def deal(points: list[GridPoint], groups: int) -> list[list[GridPoint]]:
    """Deal ``points`` round-robin into at most ``groups`` non-empty groups (order kept within a group)."""
    groups = max(1, min(groups, len(points)))
    return [points[index::groups] for index in range(groups)]


def effective_parallelism(requested: int, slots: int, points: int) -> int:
    """How many points can really be timed at once."""
    return max(1, min(requested, slots, points))


def _time_partition(
    groups: Iterator[tuple[int, list[GridPoint]]], plans: dict[str, SourcePlan], settings: TimingSettings
) -> Iterator[dict[str, Any]]:
    from bigimage.speedtest.timing import time_points

    for partition, points in groups:
        try:
            rows = time_points(points, plans, settings)
        except SpeedtestDataError as error:
            # Sent back as data: the driver raises it with its own message, not a Spark stack dump.
            yield {_ERROR_KEY: str(error), "type": type(error).__name__}
            return
        for row in rows:
            row["partition"] = partition
            yield row


def run_grid(
    spark: Any, points: list[GridPoint], plans: dict[str, SourcePlan], settings: TimingSettings, parallelism: int
) -> tuple[list[dict[str, Any]], int]:
    """Time ``points`` as Spark tasks; returns (rows, effective parallelism). Raises SpeedtestDataError."""
    from bigimage.speedtest import timing

    context = spark.sparkContext
    groups = deal(points, parallelism)
    effective = effective_parallelism(parallelism, int(context.defaultParallelism), len(points))
    context.setJobDescription(f"speedtest: {len(points)} points x {settings.repetitions} repetitions")
    results = (
        context.parallelize(list(enumerate(groups)), len(groups))
        .mapPartitions(lambda part: _time_partition(part, plans, settings))
        .collect()
    )
    errors = [row for row in results if _ERROR_KEY in row]
    if errors:
        error_type = timing.ShortDataError if errors[0]["type"] == "ShortDataError" else SpeedtestDataError
        raise error_type(errors[0][_ERROR_KEY])
    return results, effective
