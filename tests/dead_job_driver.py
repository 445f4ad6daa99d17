"""One publication of a TFRecord set without Spark, in a process of its own, to be ended by SIGKILL
(tests/test_foreign_files.py).

    python -m tests.dead_job_driver MODE DESTINATION IMAGE_ROOT PREFIX KILL_AT

MODE is ``exchange``, ``objects`` (a local file system without the atomic swap) or ``gcs``. The job
stages the images under IMAGE_ROOT (32 px) and publishes them into DESTINATION, replacing the set
there. Before each storage call it prints ``op N NAME``; with KILL_AT = N > 0 it sends itself SIGKILL
just before call N, so what it leaves is what a job killed there leaves: its open files closed by the
kernel, nothing cleaned up.
"""

from __future__ import annotations

import sys

from bigimage.data import storage
from bigimage.data.listing import list_labelled_images
from tests.publish_kill_driver import hook_storage
from tests.tfrecord_sets import publish_set


def main() -> None:
    mode, destination, root, prefix, kill_at = sys.argv[1:6]
    if mode == "objects":
        storage.supports_exchange = lambda directory: False  # type: ignore[assignment]
    listing = list_labelled_images(root)
    hook_storage(int(kill_at))
    publish_set(destination, listing.items, listing.classes, prefix)
    print("done", flush=True)


if __name__ == "__main__":
    main()
