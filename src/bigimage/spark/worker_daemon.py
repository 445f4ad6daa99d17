"""PySpark's Python worker daemon, with the shard writer imported and the heap frozen before it forks.

PySpark forks every Python worker from one daemon per executor and runs a full ``gc.collect()`` after
every task, walking all the worker inherited: more than the rest of a shard task's Python overhead.
Importing the shard writer once and ``gc.freeze()`` before forking (CPython's advice for pre-fork
servers) leaves that collection only what each task made. Never TensorFlow here: its threads forbid
forking. Set as ``spark.python.daemon.module`` where executors run this interpreter.
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
