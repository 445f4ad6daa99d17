"""Task 1 throughput against its own limit, and driver memory against data size, in one run.

    python benchmarks/preprocess.py [--images 20000] [--small 2000] [--cores 2]

1. The limit: the same transform (read, decode, resize, crop, encode) and serialisation in a plain
   loop on one core, over a sample of the same images, times the cores Spark is given.
2. The Spark job on all ``--images`` images (``local[cores]``): images/s from the first task's start
   to the last shard committed; session start-up is reported apart.
3. Driver peak memory (Python driver and the JVM) for ``--small`` and ``--images`` images, each in a
   fresh process, so the peaks do not mix.

Prints the ratios; goal: Spark >= 0.8 x limit, and driver memory that does not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from bigimage.config import PROJECT_ROOT
from bigimage.data import schema, storage
from bigimage.data.listing import list_labelled_images
from bigimage.data.synthetic import DEFAULT_CLASSES, ensure_synthetic_dataset
from bigimage.data.transform import transform_jpeg

IMAGE_SIZE, QUALITY = 192, 90


def dataset(num_images: int) -> str:
    root = PROJECT_ROOT / "data" / "synthetic" / f"n{num_images}-s0"
    ensure_synthetic_dataset(root, num_images, 0, list(DEFAULT_CLASSES))
    return str(root)


def single_core_rate(root: str, sample: int) -> float:
    """Images/s of the plain loop on one core (this process is pinned to one CPU)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    listing = list_labelled_images(root)
    items = listing.items[:: max(1, len(listing.items) // sample)][:sample]
    started = time.perf_counter()
    for path, class_index in items:
        jpeg = transform_jpeg(storage.read_bytes(path), IMAGE_SIZE, QUALITY)
        schema.serialize_example(jpeg, class_index, listing.classes[class_index], IMAGE_SIZE, IMAGE_SIZE, 5)
    return len(items) / (time.perf_counter() - started)


def _peak_kib(pid: int | str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def spark_job(root: str, cores: int, shards: int) -> dict:
    """Run the job once in this process; returns timings and the driver's peak memory."""
    from omegaconf import OmegaConf

    from bigimage.config import ClusterConfig
    from bigimage.spark.preprocess import write_tfrecords
    from bigimage.spark.session import spark_session

    cluster = OmegaConf.structured(ClusterConfig(name="bench", executors=1, executor_cores=cores))
    listing = list_labelled_images(root)
    with tempfile.TemporaryDirectory() as destination:
        started = time.perf_counter()
        with spark_session(cluster, "bigimage-benchmark") as spark:
            startup = time.perf_counter() - started
            jvm_pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
            manifest, _, seconds = write_tfrecords(spark, listing, destination, IMAGE_SIZE, QUALITY, shards, "b", 0)
            jvm_peak = _peak_kib(jvm_pid)
    return {
        "images": manifest.num_records,
        "seconds": seconds,
        "startup_seconds": startup,
        "images_per_second": manifest.num_records / seconds,
        "python_driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jvm_driver_peak_mib": jvm_peak / 1024,
    }


def in_subprocess(*args: str) -> dict:
    output = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="the large set (N x 10)")
    parser.add_argument("--small", type=int, default=2000, help="the small set, for the memory comparison")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Spark local[cores]")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--sample", type=int, default=600, help="images in the single-core loop")
    parser.add_argument("--_job", nargs=2, metavar=("ROOT", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._job:
        root, what = args._job
        result = single_core_rate(root, args.sample) if what == "loop" else spark_job(root, args.cores, args.shards)
        print(json.dumps(result))
        return

    small, large = dataset(args.small), dataset(args.images)
    per_core = in_subprocess("--sample", str(args.sample), "--_job", large, "loop")
    limit = per_core * args.cores
    runs = {
        n: in_subprocess("--cores", str(args.cores), "--shards", str(args.shards), "--_job", root, "spark")
        for n, root in ((args.small, small), (args.images, large))
    }
    big = runs[args.images]
    print(f"single-core loop: {per_core:.1f} images/s; limit x {args.cores} cores = {limit:.1f} images/s")
    for n, run in runs.items():
        print(
            f"spark local[{args.cores}], {n} images: {run['images_per_second']:.1f} images/s over {run['seconds']:.1f} s "
            f"(start-up {run['startup_seconds']:.1f} s apart); driver peak: Python {run['python_driver_peak_mib']:.0f} MiB, "
            f"JVM {run['jvm_driver_peak_mib']:.0f} MiB"
        )
    ratio = big["images_per_second"] / limit
    small_run = runs[args.small]
    print(f"ratio spark / (per-core limit x cores) at {args.images} images: {ratio:.2f} (goal >= 0.8)")
    for key in ("python_driver_peak_mib", "jvm_driver_peak_mib"):
        print(
            f"driver memory {key.split('_')[0]} at {args.images} / at {args.small}: {big[key] / small_run[key]:.2f} (goal: ~1)"
        )


if __name__ == "__main__":
    main()
