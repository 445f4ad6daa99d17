"""Task 1: a Spark job that turns a labelled image tree into sharded TFRecords.

One Spark task per shard; only small statistics come back to the driver, which publishes the shards
atomically (:mod:`bigimage.data.shards`) under the destination's lock.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import Any

from bigimage.config import Config
from bigimage.data import schema, shards
from bigimage.data.datasets import dataset_root
from bigimage.data.listing import LabelledImages, list_labelled_images, printable
from bigimage.errors import UserError
from bigimage.spark.cluster import spark_for
from bigimage.spark.session import log_spark_resources
from bigimage.tracking import names

log = logging.getLogger(__name__)

CANCEL_WAIT_SECONDS = 15.0  # longer than Spark's spark.python.task.killTimeout (2 s) by far


class NoUsableImagesError(UserError, RuntimeError):
    """Nothing usable was left to write; the message says why (the input is the user's to fix)."""


def assign_shards(items: list[tuple[str, int]], num_shards: int, seed: int) -> list[list[tuple[str, int]]]:
    """Deal the items over shards after a seeded shuffle, so every shard mixes the classes."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return [shuffled[index::num_shards] for index in range(num_shards)]


def _manifest(
    listing: LabelledImages, results: list[shards.ShardResult], image_size: int, quality: int, destination: str
) -> schema.Manifest:
    """The manifest of what the shard tasks wrote; NoUsableImagesError when no task wrote a record."""
    if not any(result.records for result in results):
        failed = [entry for result in results for entry in result.failed]
        examples = "; ".join(f"{printable(path)}: {reason}" for path, reason in failed[:3])
        raise NoUsableImagesError(
            f"none of the {len(listing.items)} files under {listing.root} could be used as an image "
            f"(e.g. {examples}); nothing was written to {destination}"
        )
    class_counts = {name: sum(result.class_counts.get(name, 0) for result in results) for name in listing.classes}
    return schema.Manifest(
        classes=list(listing.classes),
        image_size=image_size,
        num_records=0,
        shards={},
        class_counts=class_counts,
        source=listing.root,
        source_fingerprint=listing.fingerprint(),
        jpeg_quality=quality,
    )


def write_tfrecords(
    spark: Any,
    listing: LabelledImages,
    destination: str,
    image_size: int,
    quality: int,
    num_shards: int,
    prefix: str,
    seed: int,
    *,
    publication: shards.Publication | None = None,
    replace_foreign: bool = False,
) -> tuple[schema.Manifest, list[shards.ShardResult], float]:
    """Run the shard tasks and publish (through ``publication``, else one opened here); returns the
    manifest, the shard results and the job seconds."""
    shards.check_apart(listing.root, destination)
    if publication is None:
        with shards.Publication(destination, replace_foreign=replace_foreign) as own:
            return write_tfrecords(
                spark, listing, destination, image_size, quality, num_shards, prefix, seed, publication=own
            )
    classes = list(listing.classes)
    per_shard = [chunk for chunk in assign_shards(listing.items, num_shards, seed) if chunk]
    staging_dir = publication.staging_dir
    context = spark.sparkContext
    group = f"bigimage-shards-{publication.generation}"
    context.setJobGroup(group, f"write {len(per_shard)} shards to {destination}", interruptOnCancel=True)
    job = context.parallelize(list(enumerate(per_shard)), len(per_shard))
    try:
        submitted = time.time()
        results = job.map(
            lambda pair: shards.write_shard(pair[0], pair[1], classes, image_size, quality, staging_dir)
        ).collect()
        shards.check_space(results, destination)
        manifest = publication.publish(results, prefix, _manifest(listing, results, image_size, quality, destination))
    except BaseException as error:
        if not isinstance(error, shards.NoSpaceError):  # that one comes once every task has returned
            _cancel_and_wait(context, group)  # before the staging goes: no task may stage into it afterwards
        raise
    finally:
        for key in ("spark.jobGroup.id", "spark.job.description"):  # later jobs (the speed test's) are not in it
            context.setLocalProperty(key, None)
    first_task = max(min(result.started for result in results), submitted)
    seconds = float(publication.committed_at or time.time()) - first_task
    return manifest, results, seconds


def _cancel_and_wait(context: Any, group: str, seconds: float = CANCEL_WAIT_SECONDS) -> None:
    """Cancel the group's jobs and wait, bounded, until none of their tasks still runs (an interrupted
    task could still write into the removed staging folder). Spark's own errors would hide the job's."""
    try:
        context.cancelJobGroup(group)
        tracker = context.statusTracker()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            jobs = [tracker.getJobInfo(job_id) for job_id in tracker.getJobIdsForGroup(group)]
            stages = [tracker.getStageInfo(stage_id) for job in jobs if job for stage_id in job.stageIds]
            # Ended jobs first: their stages' task counts only fall after that (an aborted stage starts none).
            if all(job and job.status != "RUNNING" for job in jobs) and not any(
                stage and stage.numActiveTasks for stage in stages
            ):
                return
            time.sleep(0.1)
    except Exception as error:  # Spark itself is gone (the error being raised says why): nothing runs
        log.debug("could not cancel %s: %s", group, error)
        return
    log.warning("Spark tasks of %s still ran %.0f s after their job was cancelled", group, seconds)


def _list_images(cfg: Config) -> LabelledImages:
    """The labelled files of ``dataset.root``, refused when there are none; empty classes are tagged."""
    import mlflow

    shards.check_apart(str(cfg.dataset.root), str(cfg.tfrecord_dir))  # before anything is generated or listed
    root = dataset_root(cfg.dataset)
    listing = list_labelled_images(root, list(cfg.dataset.classes) or None)
    if not listing.items:
        raise NoUsableImagesError(
            f"{root} has class folders ({', '.join(listing.classes)}) but no files in them; nothing to write"
        )
    if listing.empty_classes:
        mlflow.set_tag("empty_classes", ",".join(listing.empty_classes))
        log.warning("empty class folders: %s", ", ".join(listing.empty_classes))
    log.info("%d files in %d classes under %s", len(listing.items), len(listing.classes), root)
    if cfg.num_shards > len(listing.items):  # a shard holds one image at least: say what is written
        log.warning(
            "num_shards=%d is more than the %d files: at most one shard per file", cfg.num_shards, len(listing.items)
        )
        mlflow.log_param("num_shards_used", len(listing.items))
    return listing


def run_preprocess(cfg: Config) -> dict[str, float]:
    """List, transform and shard ``dataset.root`` into ``tfrecord_dir``; logs the task 1 metrics."""
    import mlflow  # here, not at the top: write_tfrecords' other callers (tests, benchmarks) need no MLflow

    from bigimage.tracking import datasets

    listing = _list_images(cfg)
    # The lock first: a second job to the same tfrecord_dir fails before Spark starts.
    with shards.Publication(str(cfg.tfrecord_dir), replace_foreign=cfg.preprocess.replace_foreign) as publication:
        started = time.perf_counter()
        with spark_for(cfg.cluster, f"bigimage-preprocess-{cfg.cluster.name}") as spark:
            startup_seconds = time.perf_counter() - started
            manifest, results, seconds = write_tfrecords(
                spark,
                listing,
                str(cfg.tfrecord_dir),
                cfg.image_size,
                cfg.preprocess.jpeg_quality,
                cfg.num_shards,
                cfg.preprocess.shard_prefix,
                cfg.seed,
                publication=publication,
            )
            log_spark_resources(spark)
    failed = [
        {"path": path, "reason": reason} for path, reason in listing.failed + [f for r in results for f in r.failed]
    ]
    metrics = {
        names.IMAGES: manifest.num_records,
        "failed_images": len(failed),
        names.SHARDS: len(manifest.shards),
        "bytes_written": sum(result.bytes_written for result in results),
        names.SECONDS: seconds,
        names.STARTUP_SECONDS: startup_seconds,
        names.IMAGES_PER_SECOND: manifest.num_records / seconds if seconds > 0 else 0.0,
    }
    mlflow.log_metrics(metrics)
    mlflow.log_text(json.dumps(failed[: cfg.preprocess.max_failed_listed], indent=2), "failed_images.json")
    mlflow.log_text(manifest.to_json(), f"tfrecords/{schema.MANIFEST_NAME}")
    datasets.log_tfrecord_set(manifest, str(cfg.tfrecord_dir), str(cfg.dataset.name), datasets.OUTPUT)
    log.info(
        "%d images -> %d shards in %s (%.1f images/s over %.1f s; Spark start-up %.1f s); %d file(s) skipped",
        metrics["images"],
        metrics["shards"],
        cfg.tfrecord_dir,
        metrics["images_per_second"],
        seconds,
        startup_seconds,
        len(failed),
    )
    return metrics
