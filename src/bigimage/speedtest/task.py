"""``task=speedtest`` (task 2, docs/speedtest.md): how fast training could read the images, from files or
from TFRecords. Both sources and every grid point are checked before Spark starts; the grid is timed as
Spark tasks (:mod:`.grid`) and logged to the active MLflow run (:mod:`.results`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from bigimage.config import Config
from bigimage.speedtest.grid import expected_rows, grid_points, run_grid
from bigimage.speedtest.timing import (
    FILES,
    IMAGE_EXTENSIONS,
    TFRECORD,
    GridPoint,
    SourcePlan,
    SpeedtestDataError,
    TimingSettings,
    check_short_data,
    images_needed,
)
from bigimage.tracking import names

log = logging.getLogger(__name__)


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (all of them if there are not more)."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def files_plan(cfg: Config, max_needed: int) -> SourcePlan:
    """The ``files`` source: image files under ``dataset.root`` (generated first for dataset=synthetic)."""
    from bigimage.data.datasets import dataset_root
    from bigimage.data.listing import list_labelled_images

    root = dataset_root(cfg.dataset)
    try:
        listing = list_labelled_images(root, list(cfg.dataset.classes) or None)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        raise SpeedtestDataError(f"speedtest source files: {error}") from None
    items = [(path, label) for path, label in listing.items if path.lower().endswith(IMAGE_EXTENSIONS)]
    notes = []
    skipped = len(listing.items) - len(items)
    if skipped:
        notes.append(
            f"{skipped} file(s) under {root} without an image extension ({', '.join(IMAGE_EXTENSIONS)}) skipped"
        )
    if not items:
        raise SpeedtestDataError(
            f"speedtest source files: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}; "
            "expected root/<label>/<image>"
        )
    chosen = _spread(items, max_needed)
    return SourcePlan(
        source=FILES,
        location=root,
        paths=[path for path, _ in chosen],
        labels=[label for _, label in chosen],
        image_size=int(cfg.image_size),
        available=len(items),
        notes=notes,
    )


def tfrecord_plan(cfg: Config) -> SourcePlan:
    """The ``tfrecord`` source: task 1's shards in ``tfrecord_dir``, as its manifest lists them."""
    from bigimage.data import readers

    directory = str(cfg.tfrecord_dir)
    manifest = readers.read_manifest(directory, int(cfg.image_size))
    return SourcePlan(
        source=TFRECORD,
        location=directory,
        paths=readers.shard_paths(directory, manifest),
        image_size=int(cfg.image_size),
        available=int(manifest.num_records),
    )


def plan_sources(cfg: Config, points: list[GridPoint]) -> dict[str, SourcePlan]:
    """Check every configured source and every point against it; raises before any timing."""
    speed = cfg.speedtest
    settings = timing_settings(cfg)
    plans: dict[str, SourcePlan] = {}
    for source in speed.sources:
        needed = max(images_needed(point, settings.warmup_batches) for point in points if point.source == source)
        plans[source] = files_plan(cfg, needed) if source == FILES else tfrecord_plan(cfg)
    for point in points:
        check_short_data(point, plans[point.source], settings)
    return plans


def log_dataset(cfg: Config) -> None:
    """The TFRecord set timed, as the active run's ``benchmark`` dataset input (:mod:`bigimage.tracking.datasets`)."""
    from bigimage.data import readers
    from bigimage.tracking import datasets

    manifest = readers.read_manifest(str(cfg.tfrecord_dir), int(cfg.image_size))
    datasets.log_tfrecord_set(manifest, str(cfg.tfrecord_dir), str(cfg.dataset.name), datasets.BENCHMARK)


def timing_settings(cfg: Config) -> TimingSettings:
    speed = cfg.speedtest
    return TimingSettings(
        repetitions=int(speed.repetitions),
        warmup_batches=int(speed.warmup_batches),
        on_short_data=str(speed.on_short_data),
        threads=int(speed.pipeline_threads),
    )


def run_speedtest(cfg: Config, spark: Any | None = None) -> dict[str, float]:
    """Time the grid on ``cfg.cluster`` and log it to the active MLflow run; returns the summary metrics.
    ``spark``: a session to use (tests share one); by default one is started for ``cfg.cluster``."""
    import mlflow

    from bigimage.speedtest import results

    speed = cfg.speedtest
    points = grid_points(list(speed.sources), list(speed.batch_sizes), list(speed.batch_numbers))
    plans = plan_sources(cfg, points)
    for plan in plans.values():
        log.info("%s: %d images at %s", plan.source, plan.available, plan.location)
        for note in plan.notes:
            log.info("note: %s", note)
    if TFRECORD in plans:
        log_dataset(cfg)
    settings = timing_settings(cfg)
    requested = int(speed.parallelism)

    started = time.perf_counter()
    if spark is None:
        from bigimage.spark.cluster import spark_for

        with spark_for(cfg.cluster, f"bigimage-speedtest-{cfg.cluster.name}") as session:
            startup_seconds = time.perf_counter() - started
            rows, effective, grid_seconds = _time_grid(session, points, plans, settings, requested)
    else:
        startup_seconds = 0.0
        rows, effective, grid_seconds = _time_grid(spark, points, plans, settings, requested)

    frame = results.rows_frame(rows)
    if len(frame) != expected_rows(speed):
        raise RuntimeError(f"speedtest returned {len(frame)} rows, expected {expected_rows(speed)}")
    metrics = results.summary_metrics(frame)
    mlflow.set_tag(names.EFFECTIVE_PARALLELISM, str(effective))
    if effective != requested:
        mlflow.set_tag(
            "speedtest.parallelism_note",
            f"speedtest.parallelism={requested} asked, {effective} used: bounded by the "
            f"{len(points)} grid points and the task slots of the Spark context",
        )
    notes = [note for plan in plans.values() for note in plan.notes]
    if notes:
        mlflow.set_tag("speedtest.notes", "; ".join(notes)[:5000])
    metrics.update({names.STARTUP_SECONDS: startup_seconds, names.SECONDS: grid_seconds})
    results.log_results(frame, metrics)
    print(results.format_table(frame))
    if effective != requested:
        log.info("parallelism %s asked, %s used", requested, effective)
    return metrics


def _time_grid(
    spark: Any, points: list[GridPoint], plans: dict[str, SourcePlan], settings: TimingSettings, parallelism: int
) -> tuple[list[dict[str, Any]], int, float]:
    import mlflow

    from bigimage.spark.session import log_spark_resources

    resources = log_spark_resources(spark)
    if settings.threads <= 0:  # the executor's cores, as Spark granted them (local mode: local[N] -> N)
        per_executor = int(resources["total_cores"]) // max(1, int(resources["executors"]))
        settings = replace(settings, threads=max(1, per_executor))
    mlflow.set_tag(names.PIPELINE_THREADS, str(settings.threads))
    began = time.perf_counter()
    rows, effective = run_grid(spark, points, plans, settings, parallelism)
    return rows, effective, time.perf_counter() - began
