"""The speed-test grid (sources x batch sizes x batch numbers) and its fan-out over Spark, one task per
group of points, ``speedtest.parallelism`` groups timed at once (docs/speedtest.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from bigimage.speedtest.timing import GridPoint, SourcePlan, SpeedtestDataError, TimingSettings

_ERROR_KEY = "__speedtest_error__"


def grid_points(sources: list[str], batch_sizes: list[int], batch_numbers: list[int]) -> list[GridPoint]:
    """Every point, the sources alternating, so drift in machine load touches both alike."""
    return [
        GridPoint(source, int(batch_size), int(batch_number))
        for batch_size in batch_sizes
        for batch_number in batch_numbers
        for source in sources
    ]


def expected_rows(speed: Any) -> int:
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
