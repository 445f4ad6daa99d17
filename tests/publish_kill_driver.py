"""A task 1 driver for the kill test (tests/test_publish_kill.py): the project's local SparkSession and
``write_tfrecords``, one run per process, to be ended by SIGKILL.

    python -m tests.publish_kill_driver DESTINATION IMAGE_ROOT

It starts Spark (and its Python workers), prints ``ready`` and waits for one line ``go PREFIX KILL_AT``
on stdin; then it writes the images under IMAGE_ROOT as a new set into DESTINATION, replacing the one
there. Before each storage call of this process (lock, clean-up, publish; the shard tasks write in
Spark's workers) it prints ``op N NAME``; with KILL_AT = N > 0 it sends itself SIGKILL just before
call N. A run that ends prints ``done``. The hook is here, wrapping the storage module's functions,
so nothing in src/ knows about it.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from bigimage.config import ClusterConfig
from bigimage.data import storage
from bigimage.data.listing import list_labelled_images
from bigimage.spark.preprocess import write_tfrecords
from bigimage.spark.session import spark_session
from tests.tfrecord_sets import STORAGE_OPS

KILL_IMAGE_SIZE = 32
KILL_SHARDS = 4
# The project's local cluster shape (all cores), built without Hydra; a JVM that compiles less starts
# faster, and the test starts 40-odd of them.
CLUSTER = ClusterConfig(
    name="local",
    executor_cores=0,
    driver_memory="1g",
    spark_conf={"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"},
)


def hook_storage(kill_at: int) -> None:
    calls = 0

    def wrap(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            print(f"op {calls} {name}", flush=True)
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return wrapper

    for name in STORAGE_OPS:
        if hasattr(storage, name):  # (so the same driver runs against older versions of the library)
            setattr(storage, name, wrap(name, getattr(storage, name)))


def main() -> None:
    destination, root = sys.argv[1:3]
    listing = list_labelled_images(root)
    with spark_session(CLUSTER, "bigimage-kill-test") as spark:
        spark.sparkContext.parallelize(range(2), 2).count()  # the Python workers are up before the run
        print("ready", flush=True)
        words = sys.stdin.readline().split()
        if not words or words[0] != "go":
            return
        prefix, kill_at = words[1], int(words[2])
        hook_storage(kill_at)
        write_tfrecords(spark, listing, destination, KILL_IMAGE_SIZE, 80, KILL_SHARDS, prefix, seed=0)
        print("done", flush=True)


if __name__ == "__main__":
    main()
