"""Task 1 throughput against its own limit at two data sizes, its fixed cost and where it goes, in one run.

    python benchmarks/preprocess.py [--small 2000] [--repeats 3] [--images 20000] [--cores 2] [--spark-conf KEY=VALUE ...]

1. The limit: the same transform (read, decode, resize, crop, encode), serialisation and record framing
   in a plain loop on one core, over a sample of the images, times the cores Spark is given. The
   machine's speed drifts by 10-20% over minutes, so the loop runs before and after every job and each
   job is held against the mean of those two; the small job is repeated (``--repeats``, the median
   its headline). Beside it the same loop in one process per core at once: what the cores give when
   all of them run the transform.
2. The Spark job (``write_tfrecords`` on ``local[cores]``, as ``task=preprocess`` runs it: a fresh
   process, the job the first of its session) at ``--small`` and at ``--images`` images: images/s from
   the first task's start to the set committed (the metric ``seconds``); session start-up apart, and
   the input read into the page cache before the session starts, as the loop's sample is (the time
   that read took says whether the files were cold).
3. The fixed cost: ``seconds`` minus the time the limit needs for the same images, split by where it
   goes: the tasks running slower than the plain loop (their own per-task work, other processes on
   the cores), task slots idle before, between and after the tasks (Spark's scheduling, the hand-over
   to a Python worker, the last tasks' tail), and the driver's commit after the last task. Beside it the
   CPU seconds each process group used during the job (JVM: JIT compiler, GC, the rest; the Python
   workers; the Python driver), read from /proc (Linux).
4. Driver peak memory (Python driver and JVM) at both sizes, each in a fresh process: flat in N.

``--spark-conf`` adds Spark settings to the job (e.g. the settings before issue 13:
``--spark-conf spark.python.daemon.module=pyspark.daemon --spark-conf spark.driver.extraJavaOptions=``).
Goals: >= 0.8 of the limit at 2,000 images, >= 0.9 at 20,000; driver memory ratio ~1.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from bigimage.config import PROJECT_ROOT
from bigimage.data import schema, storage
from bigimage.data.listing import list_labelled_images
from bigimage.data.synthetic import DEFAULT_CLASSES, ensure_synthetic_dataset
from bigimage.data.tfrecord import TFRecordWriter
from bigimage.data.transform import transform_jpeg

IMAGE_SIZE, QUALITY = 192, 90
GOALS = {"small": 0.8, "large": 0.9}
TICK = os.sysconf("SC_CLK_TCK")


def dataset(num_images: int) -> str:
    root = PROJECT_ROOT / "data" / "synthetic" / f"n{num_images}-s0"
    ensure_synthetic_dataset(root, num_images, 0, list(DEFAULT_CLASSES))
    return str(root)


def read_into_page_cache(items: list[tuple[str, int]]) -> int:
    """Read every listed file once (the next reads come from the page cache); returns the bytes read."""
    return sum(len(storage.read_bytes(path)) for path, _ in items)


def single_core_rate(root: str, sample: int, cpu: int, start_at: float = 0.0) -> dict[str, float]:
    """Images/s of the plain loop on one core (this process pinned to ``cpu``), per wall-clock second and
    per CPU-second; the loop starts at ``start_at`` (time.time()) so loops in several processes overlap."""
    os.sched_setaffinity(0, {cpu})
    listing = list_labelled_images(root)
    items = listing.items[:: max(1, len(listing.items) // sample)][:sample]
    writer = TFRecordWriter(io.BytesIO())
    read_into_page_cache(items)  # the loop times the transform, not a cold disk
    time.sleep(max(0.0, start_at - time.time()))
    started, cpu_started = time.perf_counter(), time.process_time()
    for path, class_index in items:
        jpeg = transform_jpeg(storage.read_bytes(path), IMAGE_SIZE, QUALITY)
        label = listing.classes[class_index]
        writer.write(schema.serialize_example(jpeg, class_index, label, IMAGE_SIZE, IMAGE_SIZE, len(listing.classes)))
    wall, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"images_per_second": len(items) / wall, "images_per_cpu_second": len(items) / cpu_seconds}


def _peak_kib(pid: int | str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except OSError:
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _cpu_seconds(stat_path: str) -> float:
    with open(stat_path, encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cpu_snapshot(jvm: int) -> dict[str, float]:
    """CPU seconds so far of this process tree, by process (the JVM also by thread: ``jvm/<tid>/<name>``)."""
    snapshot: dict[str, float] = {}
    for pid in _descendants(os.getpid()):
        try:
            snapshot[f"{pid}"] = _cpu_seconds(f"/proc/{pid}/stat")
            if pid == jvm:
                for thread in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{thread}/comm", encoding="utf-8") as handle:
                        name = handle.read().strip()
                    snapshot[f"jvm/{thread}/{name}"] = _cpu_seconds(f"/proc/{pid}/task/{thread}/stat")
        except OSError:
            continue
    return snapshot


def cpu_by_group(before: dict[str, float], after: dict[str, float], jvm: int) -> dict[str, float]:
    """CPU seconds used between two snapshots: the JVM's JIT compiler and GC threads (those alive at the
    end; a compiler thread that ended meanwhile counts in jvm_other) and the rest of the JVM, the Python
    workers (the daemon and its forks), this Python driver."""
    groups = {"jvm_jit": 0.0, "jvm_gc": 0.0, "jvm_other": 0.0, "python_workers": 0.0, "python_driver": 0.0}
    for key, seconds in after.items():
        used = seconds - before.get(key, 0.0)
        if key.startswith("jvm/"):
            name = key.split("/", 2)[2]
            group = "jvm_jit" if "Compiler" in name else "jvm_gc" if name.startswith(("GC ", "G1 ")) else None
            if group:
                groups[group] += used
        elif int(key) == jvm:
            groups["jvm_other"] += used
        else:
            groups["python_driver" if int(key) == os.getpid() else "python_workers"] += used
    groups["jvm_other"] -= groups["jvm_jit"] + groups["jvm_gc"]
    return groups


def _breakdown(results: list, seconds: float, cores: int) -> dict[str, float]:
    """Where ``seconds`` goes (see the module docstring); the parts add up to ``seconds``."""
    first = min(result.started for result in results)
    last = max(result.finished for result in results)
    busy = sum(result.finished - result.started for result in results)
    return {
        "task_seconds_per_core": busy / cores,
        "idle_slots_seconds": (cores * (last - first) - busy) / cores,
        "commit_seconds": seconds - (last - first),
    }


def spark_job(root: str, cores: int, shards: int, extra_conf: dict[str, str]) -> dict:
    """Run the job once in this process; returns timings, where they go and the driver's peak memory."""
    from omegaconf import OmegaConf

    from bigimage.config import ClusterConfig
    from bigimage.spark.preprocess import write_tfrecords
    from bigimage.spark.session import spark_session

    conf = {"spark.ui.showConsoleProgress": "false", **extra_conf}
    cluster = OmegaConf.structured(ClusterConfig(name="bench", executors=1, executor_cores=cores, spark_conf=conf))
    listing = list_labelled_images(root)
    # Into the page cache first, as the loop's sample: the job is held against a loop that reads warm
    # files. This VM drops its page cache within minutes; a cold read of the 20,000 images (784 MB)
    # took 2.3 s here, a tenth of the job. The read's time says which it was.
    read_started = time.perf_counter()
    input_bytes = read_into_page_cache(listing.items)
    input_read_seconds = time.perf_counter() - read_started
    with tempfile.TemporaryDirectory() as destination:
        started = time.perf_counter()
        with spark_session(cluster, "bigimage-benchmark") as spark:
            startup = time.perf_counter() - started
            jvm_pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
            before = cpu_snapshot(jvm_pid)
            manifest, results, seconds = write_tfrecords(
                spark, listing, destination, IMAGE_SIZE, QUALITY, shards, "b", 0
            )
            after = cpu_snapshot(jvm_pid)
            jvm_peak = _peak_kib(jvm_pid)
    return {
        "images": manifest.num_records,
        "seconds": seconds,
        "startup_seconds": startup,
        "input_mib": input_bytes / 2**20,
        "input_read_seconds": input_read_seconds,
        "images_per_second": manifest.num_records / seconds,
        **_breakdown(results, seconds, cores),
        "cpu_seconds": cpu_by_group(before, after, jvm_pid),
        "python_driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jvm_driver_peak_mib": jvm_peak / 1024,
        "load_average": os.getloadavg()[0],
    }


def in_subprocess(*args: str) -> dict:
    output = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def loops_at_once(root: str, sample: int, cores: int) -> list[dict[str, float]]:
    """The plain loop in ``cores`` processes at once, one per CPU: what the machine's cores give the
    transform when all of them run it (cores that share a physical core or its caches give less than
    ``cores`` x one core alone; Spark can reach at most this)."""
    start_at = time.time() + 3.0  # after every process has imported and listed
    args = ["--sample", str(sample), "--start-at", str(start_at), "--_job", root]
    jobs = [
        subprocess.Popen([sys.executable, __file__, *args, f"loop:{cpu}"], stdout=subprocess.PIPE, text=True)
        for cpu in sorted(os.sched_getaffinity(0))[:cores]
    ]
    return [json.loads(job.communicate()[0].strip().splitlines()[-1]) for job in jobs]


def report(label: str, run: dict, cores: int) -> float:
    """Print one job's figures against the limit from the loops just before and after it; returns the ratio."""
    per_core = statistics.mean(loop["images_per_second"] for loop in run["loops"])
    per_cpu_second = statistics.mean(loop["images_per_cpu_second"] for loop in run["loops"])
    limit = per_core * cores
    images, seconds = run["images"], run["seconds"]
    ratio = run["images_per_second"] / limit
    at_limit = images / limit
    cpu = ", ".join(f"{key} {value:.2f}" for key, value in sorted(run["cpu_seconds"].items()))
    print(
        f"{images} images ({label}): {run['images_per_second']:.1f} images/s over {seconds:.2f} s "
        f"(start-up {run['startup_seconds']:.1f} s and reading the {run['input_mib']:.0f} MiB input into the page cache "
        f"first {run['input_read_seconds']:.1f} s apart): {ratio:.2f} of the limit {limit:.1f} images/s "
        f"({cores} x the loop's {per_core:.1f} around it; goal >= {GOALS[label]}); load {run['load_average']:.1f}"
    )
    print(
        f"  fixed cost {seconds - at_limit:.2f} s beyond the {at_limit:.2f} s the limit needs: tasks slower than the "
        f"loop {run['task_seconds_per_core'] - at_limit:.2f} s, task slots idle {run['idle_slots_seconds']:.2f} s, "
        f"commit after the last task {run['commit_seconds']:.2f} s"
    )
    print(f"  CPU seconds during the job: {cpu} (the transform alone: {images / per_cpu_second:.2f})")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="the large set")
    parser.add_argument("--small", type=int, default=2000, help="the small set")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="Spark local[cores]")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--sample", type=int, default=1500, help="images in the single-core loop")
    parser.add_argument("--repeats", type=int, default=3, help="jobs at the small size")
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark settings")
    parser.add_argument("--_job", nargs=2, metavar=("ROOT", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra = dict(setting.split("=", 1) for setting in args.spark_conf)
    if args._job:
        root, what = args._job
        if what.startswith("loop:"):
            print(json.dumps(single_core_rate(root, args.sample, int(what.split(":")[1]), args.start_at)))
        else:
            print(json.dumps(spark_job(root, args.cores, args.shards, extra)))
        return

    small, large = dataset(args.small), dataset(args.images)
    conf_args = [f"--spark-conf={setting}" for setting in args.spark_conf]
    first_cpu = min(os.sched_getaffinity(0))

    def loop() -> dict[str, float]:
        return in_subprocess("--sample", str(args.sample), "--_job", large, f"loop:{first_cpu}")

    # The machine's speed drifts by 10-20% over minutes: each job is compared with the loop run just
    # before and just after it, and the small job, a few seconds long, is repeated.
    alone = [loop()]
    together = loops_at_once(large, args.sample, args.cores)
    runs: dict[str, list[dict]] = {"small": [], "large": []}
    for label, root, repeats in (("small", small, args.repeats), ("large", large, 1)):
        for _ in range(repeats):
            run = in_subprocess(
                "--cores", str(args.cores), "--shards", str(args.shards), *conf_args, "--_job", root, "spark"
            )
            alone.append(loop())
            run["loops"] = alone[-2:]
            runs[label].append(run)
    rates, shares = (", ".join(f"{loop['images_per_second']:.1f}" for loop in loops) for loops in (alone, together))
    print(
        f"single-core loop, before and after each job: {rates} images/s (load {os.getloadavg()[0]:.1f}); "
        f"extra Spark settings: {extra or 'none'}"
    )
    all_cores = sum(loop["images_per_second"] for loop in together)
    neighbours = statistics.mean(loop["images_per_second"] for loop in alone[:2])
    print(
        f"the loop on all {args.cores} cores at once: {all_cores:.1f} images/s = "
        f"{all_cores / (neighbours * args.cores):.2f} of {args.cores} x the loop alone around it "
        f"(per process {shares}): what the cores give when all run the transform"
    )
    for label in ("small", "large"):
        ratios = [report(label, run, args.cores) for run in runs[label]]
        if len(ratios) > 1:
            print(
                f"{label}: median {statistics.median(ratios):.2f} of the limit over {len(ratios)} jobs (goal >= {GOALS[label]})"
            )
    runs_by_size = {label: runs[label][-1] for label in runs}
    for key in ("python_driver_peak_mib", "jvm_driver_peak_mib"):
        ratio = runs_by_size["large"][key] / runs_by_size["small"][key]
        print(
            f"driver memory {key.split('_')[0]}: {runs_by_size['small'][key]:.0f} MiB at {args.small}, "
            f"{runs_by_size['large'][key]:.0f} MiB at {args.images}: {ratio:.2f} (goal: ~1)"
        )


if __name__ == "__main__":
    main()
