"""PySpark's Python worker daemon, with the shard writer imported and ``gc.freeze()`` before it forks.

PySpark's full ``gc.collect()`` after every task then walks only what the task made (CPython's advice
for pre-fork servers). Never TensorFlow here: its threads forbid forking.
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
