"""PySpark's Python worker daemon, with the shard writer imported and the heap frozen before it forks.

Spark starts one daemon per executor (``python -m <spark.python.daemon.module> pyspark.worker``) and
forks every Python worker from it. With ``pyspark.daemon`` as it comes, each worker imports what its
first task needs when it unpickles that task (``bigimage.data.shards``: Pillow, google-crc32c, psutil;
then Pillow's format plugins at its first image), and the daemon runs a full ``gc.collect()`` in the
worker after every task, which walks every object the worker inherited: more than all the rest of a
task's overhead in Python, on every one of task 1's shard tasks (``benchmarks/README.md``).

This daemon imports the shard writer's modules once and ``gc.freeze()``s its heap before it forks (what
CPython's ``gc`` documentation advises for pre-fork servers): the workers start with the modules in
place, and the collection after each task only walks what that task made. Nothing else changes: the
workers run ``pyspark.worker`` as before. TensorFlow is not imported here: a process that has started
TensorFlow's threads must not fork.

Set as ``spark.python.daemon.module`` (see :func:`bigimage.spark.session.spark_conf`) where the
executors run this package's interpreter: local mode and a standalone cluster on this machine.
"""

from __future__ import annotations

import gc

from PIL import Image
from pyspark import daemon

from bigimage.data import shards  # noqa: F401  # imported for the workers forked from here


def main() -> None:
    Image.preinit()  # Pillow's common format plugins, otherwise loaded by each worker's first image
    gc.freeze()
    daemon.manager()


if __name__ == "__main__":
    main()
