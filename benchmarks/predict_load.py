"""The scaling model with the machine's load taken out: fitted and checked on the cores runs really got.

    python benchmarks/predict_load.py [--repeats 2] [--validations 2] [--json]

On a shared machine a job with 2 task slots gets anywhere between one and two cores, and a long job
gets the average while a short one may land in a quiet spell: benchmarks/predict_accuracy.py then
measures the load as much as the model. Here every run is timed in this process (one SparkSession
per core count; the speed test's tf.data pipeline directly), together with the CPU seconds its
processes used (this process and its children: the JVM, the Python workers), so each run's
effective cores = CPU seconds / wall seconds.

1. Points: task 1 at 250, 500, 1,000, 2,000 images and task 2 reading 416, 928, 1,920 images of the
   2,000-image TFRecords, with 1 and 2 slots (threads), ``--repeats`` times, interleaved.
2. The model is fitted with each point's effective cores, then predicts the 20,000-image runs (task 2:
   19,840 images of the 20,000-image TFRecords, 2 threads) twice:

   * the headline, ``prospective``: with the median effective cores of the points with 2 slots, which
     is all a forecast can know before the run (what a 2-slot job gets here now);
   * a consistency check, ``given_its_cores``: with the cores the validation run itself got. That feeds
     the run's own measurement into its prediction, so it is not a forecast; it only shows the model's
     shape fits once the load lottery is removed.

The exit code is 0 when the prospective error met the goal everywhere.
Needs the TFRecords that benchmarks/predict_accuracy.py (or the scaling_points experiment) wrote.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import psutil

from bigimage.analysis_lib import scaling
from bigimage.config import PROJECT_ROOT

SIZES, SLOTS, READS, BIG, BIG_READS = (250, 500, 1000, 2000), (1, 2), (13, 29, 60), 20000, 620
GOAL = 0.15


def tree_cpu() -> float:
    """CPU seconds of this process and all its descendants so far (the JVM and Spark's Python workers)."""
    me = psutil.Process()
    total = 0.0
    for process in (me, *me.children(recursive=True)):
        try:
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(action) -> tuple[Any, float, float]:
    """(what ``action`` returns, its wall seconds, the CPU seconds used meanwhile)."""
    cpu, wall = tree_cpu(), time.perf_counter()
    result = action()
    return result, time.perf_counter() - wall, tree_cpu() - cpu


def preprocess_point(spark: Any, images: int, slots: int) -> scaling.Point:
    """Task 1 on the ``images``-image synthetic set; cores = effective cores (at most the slots)."""
    from bigimage.data.listing import list_labelled_images
    from bigimage.spark.preprocess import write_tfrecords

    listing = list_labelled_images(str(PROJECT_ROOT / "data" / "synthetic" / f"n{images}-s0"))
    with tempfile.TemporaryDirectory() as out:
        (_, _, seconds), wall, cpu = measure(lambda: write_tfrecords(spark, listing, f"{out}/t", 192, 90, 16, "b", 0))
    return scaling.Point(images, min(slots, cpu / wall), 1, seconds, f"preprocess-{images}-{slots}")


def read_point(source_images: int, batches: int, threads: int) -> scaling.Point:
    """Task 2's timed reads (batch 32, 2 warm-up batches) of a TFRecord set; cores = effective cores."""
    from bigimage.data import readers
    from bigimage.speedtest.timing import SourcePlan, source_dataset, time_batches

    directory = str(PROJECT_ROOT / "data" / "tfrecords" / f"scaling-n{source_images}-192")
    manifest = readers.read_manifest(directory, 192)
    plan = SourcePlan("tfrecord", directory, readers.shard_paths(directory, manifest), 192, manifest.num_records)
    dataset = source_dataset(plan, 32, False, None, threads)
    (images, _, seconds), wall, cpu = measure(lambda: time_batches(dataset, batches, 2))
    return scaling.Point(images, min(threads, cpu / wall), 1, seconds, f"read-{images}-{threads}")


def session(slots: int):
    """A local-mode session with ``slots`` task slots (one SparkContext per process: opened in turn)."""
    from omegaconf import OmegaConf

    from bigimage.config import ClusterConfig
    from bigimage.spark.session import spark_session

    return spark_session(
        OmegaConf.structured(ClusterConfig(name="b", executors=slots, executor_cores=1)), "predict-load"
    )


def collect(repeats: int) -> dict[str, list[scaling.Point]]:
    """The points, in rounds over slots and sizes so that drifting load touches all alike."""
    points: dict[str, list[scaling.Point]] = {"preprocess": [], "speedtest": []}
    for _ in range(repeats):
        for slots in SLOTS:
            with session(slots) as spark:
                points["preprocess"] += [preprocess_point(spark, images, slots) for images in SIZES]
            points["speedtest"] += [read_point(2000, batches, slots) for batches in READS]
    return points


def check(task: str, points: list[scaling.Point], big: scaling.Point) -> dict:
    """Predict ``big`` from ``points`` with the median effective cores of the 2-slot points (the headline),
    and with its own (the consistency check)."""
    fit = scaling.fit(points, scaling.TERMS[:2], bootstrap=1000)
    typical = statistics.median(p.cores for p in points if p.run_id.endswith("-2"))
    out = {
        "task": task,
        "images": big.images,
        "measured_seconds": big.seconds,
        "effective_cores": big.cores,
        "typical_2_slot_cores": typical,
        "loo_mean_relative_error": fit.loo_error()[0],
    }
    for name, cores in (("prospective", typical), ("given_its_cores", big.cores)):
        p = fit.predict(big.images, cores, 1)
        error = abs(p.seconds - big.seconds) / big.seconds if task == "preprocess" else abs(big.seconds / p.seconds - 1)
        out[name] = {
            "predicted_seconds": p.seconds,
            "low": p.low,
            "high": p.high,
            "error": error,
            "goal_met": error <= GOAL,
        }
    return out


def render(rows: list[dict]) -> str:
    """One line per validation run and prediction kind, the headline (prospective) first."""
    out = []
    for r in rows:
        for name in ("prospective", "given_its_cores"):
            label = "headline: prospective" if name == "prospective" else "consistency check: given its cores"
            p = r[name]
            out.append(
                f"{r['task']:10s} {r['images']:>6.0f} images on {r['effective_cores']:.2f} effective cores "
                f"(2-slot points: {r['typical_2_slot_cores']:.2f}): measured {r['measured_seconds']:6.2f} s, "
                f"{label}: {p['predicted_seconds']:6.2f} s [{p['low']:.2f}, {p['high']:.2f}], error {p['error']:.1%}"
                f" (leave-one-out {r['loo_mean_relative_error']:.1%})"
            )
    return "\n".join(out)


def main() -> int:
    """Exit code 0 when the prospective error (the headline) met the goal everywhere."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of points (default 2)")
    parser.add_argument("--validations", type=int, default=2, help="20,000-image runs of each task (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    points = collect(args.repeats)
    rows = []
    for _ in range(args.validations):
        with session(2) as spark:
            rows.append(check("preprocess", points["preprocess"], preprocess_point(spark, BIG, 2)))
        rows.append(check("speedtest", points["speedtest"], read_point(BIG, BIG_READS, 2)))
    print(
        json.dumps({"points": {t: [vars(p) for p in ps] for t, ps in points.items()}, "checks": rows}, indent=2)
        if args.json
        else render(rows)
    )
    return 0 if all(r["prospective"]["goal_met"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
