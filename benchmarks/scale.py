"""Task 1, the speed test and training at 200,000 images on one machine, each against the same work at
20,000 images (driver memory against 2,000), in one run.

    python benchmarks/scale.py [--images 200000] [--reference 20000] [--small 2000] [--epochs 1] [--json FILE]

Every step is ``run.py`` in a fresh process, as a user runs it, logging to a throwaway MLflow store:
``task=preprocess`` at the three sizes, ``task=speedtest`` and ``task=train`` (``strategy=default``,
``--epochs``) at the reference size and the large one. The small and reference sets are the generated
ones (``dataset=synthetic``); the large set is the reference set copied ``--images / --reference`` times
under new names (``dataset=folder``): every image is still a separate file read, decoded and encoded
on its own, so the work per image is the reference's, while making it takes a minute instead of the
half hour that generating 200,000 images takes on 2 cores. The sets are made first, untimed, and each
set's images are read once into the page cache before its task 1 (the time that read takes is printed
apart), so that every size is measured on warm files as the smallest one always is. A monitor reads each process's peak resident memory (``VmHWM``) of the ``run.py``
process tree every 0.2 s: the Python driver, the JVM and the rest (Python workers, training workers).

Goals (issue 29): task 1's images/s at ``--images`` at least 0.9 of its images/s at ``--reference``;
driver memory (Python driver + JVM) at ``--images`` at most 1.1x its value at ``--small``; training
streams from the TFRecords: the cache guard does not choose memory for a set that does not fit, and
the training processes' peak memory stays below the decoded set.

Disk room, at 200,000 images of 192 px: the copied JPEGs and the TFRecords in a temporary folder
under ``--work`` (about 7.8 GB and 2.5 GB; removed at the end) and the
training's file cache of decoded images when the guard chooses one (192 x 192 x 3 bytes per image,
22 GB, under ``data/cache/decoded``, removed when the training ends): about 35 GB free.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bigimage.config import PROJECT_ROOT as ROOT
from bigimage.data import storage
from bigimage.data.listing import list_labelled_images
from bigimage.data.synthetic import DEFAULT_CLASSES, ensure_synthetic_dataset
from bigimage.tracking import names

GOAL_RATE, GOAL_MEMORY = 0.9, 1.1
GIB, MIB = 2**30, 2**20


class PeakMemory:
    """Peak resident memory of each process of a tree, polled while it runs (``VmHWM`` only grows, so the
    last value read of a process is its peak up to that read)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)
        self._thread.start()

    def _poll(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for process in tree:
                try:
                    with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
                        hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
                    self.peaks[process.pid] = (process.name(), hwm)
                except (OSError, StopIteration, psutil.Error):
                    continue
            time.sleep(interval)

    def stop(self) -> dict[str, int]:
        """Bytes: the Python driver's peak, the JVM's and the sum of the other processes' peaks."""
        self._stop.set()
        self._thread.join()
        groups = {"python_driver": 0, "jvm": 0, "others": 0}
        for pid, (name, peak) in self.peaks.items():
            group = "python_driver" if pid == self.root.pid else "jvm" if name == "java" else "others"
            groups[group] += peak
        return groups


def run_py(overrides: list[str]) -> dict[str, int]:
    """``run.py`` with ``overrides`` in a fresh process (its log on stderr); its tree's peak memory. Exits
    on failure."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *overrides], stdout=subprocess.DEVNULL, cwd=ROOT)
    monitor = PeakMemory(process.pid)
    code = process.wait()
    peaks = monitor.stop()
    if code != 0:
        sys.exit(f"run.py {' '.join(overrides)} failed ({code}); its log is above")
    print(f"    run.py {overrides[0]}: {time.perf_counter() - started:.0f} s", flush=True)
    return peaks


def last_run(store: str, task: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("bigimage")
    if experiment is None:
        sys.exit(f"no experiment bigimage in {store}: run.py task={task} did not log")
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.{names.TAG_TASK} = '{task}'", order_by=["start_time DESC"]
    )
    return client, runs[0]


def synthetic_root(size: int) -> Path:
    return ROOT / "data" / "synthetic" / f"n{size}-s0"


def copied_set(reference: Path, copies: int, root: Path) -> Path:
    """``root/<label>/<copy>-<name>``: every image of ``reference`` ``copies`` times, as separate files."""
    for label in sorted(entry.name for entry in reference.iterdir() if entry.is_dir()):
        (root / label).mkdir(parents=True)
        for image in sorted((reference / label).iterdir()):
            for copy in range(copies):
                shutil.copyfile(image, root / label / f"{copy}-{image.name}")
    return root


def preprocess(size: int, dataset: list[str], common: list[str], store: str, work: Path) -> dict[str, Any]:
    listing = list_labelled_images(dataset[-1].split("=", 1)[1])
    started = time.perf_counter()
    read = sum(len(storage.read_bytes(path)) for path, _ in listing.items)
    warm = time.perf_counter() - started
    peaks = run_py(["task=preprocess", *dataset, f"tfrecord_dir={work / f'n{size}'}", *common])
    _, run = last_run(store, "preprocess")
    metrics = run.data.metrics
    return {
        "images": int(metrics[names.IMAGES]),
        "seconds": metrics[names.SECONDS],
        "images_per_second": metrics[names.IMAGES_PER_SECOND],
        "input_gib": read / GIB,
        "page_cache_seconds": warm,
        "driver_bytes": peaks["python_driver"] + peaks["jvm"],
        **{f"{group}_bytes": value for group, value in peaks.items()},
        "load_average": os.getloadavg()[0],
    }


def speedtest(size: int, dataset: list[str], common: list[str], store: str, work: Path) -> dict[str, Any]:
    import mlflow
    import pandas

    run_py(
        [
            "task=speedtest",
            *dataset,
            f"tfrecord_dir={work / f'n{size}'}",
            *common,
            "speedtest.batch_numbers=[10,30]",
            "speedtest.repetitions=2",
        ]
    )
    _, run = last_run(store, "speedtest")
    path = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=names.SPEEDTEST_TABLE, tracking_uri=store
    )
    with open(path, encoding="utf-8") as handle:
        table = pandas.read_json(handle, orient="split")
    rates = table.groupby("source")[names.IMAGES_PER_SECOND].median()
    return {f"{source}_images_per_second": float(rate) for source, rate in rates.items()}


def train(size: int, epochs: int, dataset: list[str], common: list[str], store: str, work: Path) -> dict[str, Any]:
    peaks = run_py(
        [
            "task=train",
            "strategy=default",
            f"epochs={epochs}",
            *dataset,
            f"tfrecord_dir={work / f'n{size}'}",
            f"train.checkpoint_dir={work / f'checkpoints-n{size}'}",
            *common,
        ]
    )
    client, run = last_run(store, "train")
    rates = [m.value for m in client.get_metric_history(run.info.run_id, names.IMAGES_PER_SECOND)]
    params = run.data.params
    records = sum(int(params[key]) for key in (names.TRAIN_RECORDS, names.VAL_RECORDS))
    return {
        "images_per_second": rates[-1],
        "cache": run.data.tags.get("input_cache"),
        "cache_reason": run.data.tags.get("input_cache_reason"),
        "decoded_bytes": records * int(params["image_size"]) ** 2 * 3,
        "peak_bytes": sum(peaks.values()),
        "worker_peak_bytes": peaks["others"],
        "load_average": os.getloadavg()[0],
    }


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "unknown")


def ratio_line(what: str, large: float, reference: float, goal: str) -> str:
    return f"{what}: {large:.1f} / {reference:.1f} = {large / reference:.2f} ({goal})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200000)
    parser.add_argument("--reference", type=int, default=20000)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--work", default=str(ROOT / "data"), help="folder for the TFRecords (a temporary one in it)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument(
        "--report", metavar="JSON", help="print the figures of an earlier run's --json file; run nothing"
    )
    args = parser.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.images % args.reference:
        parser.error(f"--images {args.images} must be a multiple of --reference {args.reference}")
    for size in (args.small, args.reference):
        ensure_synthetic_dataset(synthetic_root(size), size, 0, list(DEFAULT_CLASSES))
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=args.work))
    store = f"sqlite:///{work / 'mlflow.db'}"
    common = [f"tracking.uri={store}", "tracking.system_metrics=false"]
    results: dict[str, Any] = {
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "sizes": [args.small, args.reference, args.images],
    }
    try:
        print(f"copying the {args.reference}-image set {args.images // args.reference} times", flush=True)
        large = copied_set(synthetic_root(args.reference), args.images // args.reference, work / "images")
        datasets = {
            size: ["dataset=synthetic", f"dataset.num_images={size}", f"dataset.root={synthetic_root(size)}"]
            for size in (args.small, args.reference)
        }
        datasets[args.images] = ["dataset=folder", f"dataset.root={large}"]
        for size, dataset in datasets.items():
            print(f"task 1 at {size} images", flush=True)
            results[f"preprocess_{size}"] = preprocess(size, dataset, common, store, work)
        for size in (args.reference, args.images):
            print(f"speed test at {size} images", flush=True)
            results[f"speedtest_{size}"] = speedtest(size, datasets[size], common, store, work)
        for size in (args.reference, args.images):
            print(f"training at {size} images, {args.epochs} epoch(s)", flush=True)
            results[f"train_{size}"] = train(size, args.epochs, datasets[size], common, store, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def report(results: dict[str, Any]) -> None:
    small, reference, images = results["sizes"]
    print(f"machine: {results['machine']}, {results['cpus']} CPUs")
    for size in (small, reference, images):
        run = results[f"preprocess_{size}"]
        print(
            f"task 1 at {size}: {run['images_per_second']:.1f} images/s over {run['seconds']:.1f} s (reading the "
            f"{run['input_gib']:.2f} GiB input into the page cache first, {run['page_cache_seconds']:.0f} s, apart); "
            f"driver peak {run['python_driver_bytes'] / MIB:.0f} MiB Python + {run['jvm_bytes'] / MIB:.0f} MiB JVM; "
            f"load {run['load_average']:.1f}"
        )
    large, ref, first = (results[f"preprocess_{size}"] for size in (images, reference, small))
    rate = "images_per_second"
    print(ratio_line(f"task 1 images/s at {images} / at {reference}", large[rate], ref[rate], f"goal >= {GOAL_RATE}"))
    for key, what, goal in (
        ("driver_bytes", "Python + JVM", f"goal <= {GOAL_MEMORY}"),
        ("python_driver_bytes", "Python alone", "the listing's paths grow with N"),
        ("jvm_bytes", "JVM alone", "no goal"),
    ):
        print(
            ratio_line(
                f"driver memory (MiB, {what}) at {images} / at {small}", large[key] / MIB, first[key] / MIB, goal
            )
        )
    speed_ref, speed_large = results[f"speedtest_{reference}"], results[f"speedtest_{images}"]
    for source in speed_ref:
        print(
            ratio_line(
                f"speed test, median {source} at {images} / at {reference}",
                speed_large[source],
                speed_ref[source],
                "no goal: the grid reads as many batches at any size",
            )
        )
    train_ref, train_large = results[f"train_{reference}"], results[f"train_{images}"]
    print(ratio_line(f"training images/s at {images} / at {reference}", train_large[rate], train_ref[rate], "no goal"))
    for size, run in ((reference, train_ref), (images, train_large)):
        streams = run["cache"] != "memory" and run["peak_bytes"] < run["decoded_bytes"]
        print(
            f"training at {size}: cache {run['cache']} ({run['cache_reason']}); the processes' peak "
            f"{run['peak_bytes'] / GIB:.2f} GiB against the decoded train and validation images "
            f"{run['decoded_bytes'] / GIB:.2f} GiB{': streams' if streams else ''}; load {run['load_average']:.1f}"
        )


if __name__ == "__main__":
    main()
