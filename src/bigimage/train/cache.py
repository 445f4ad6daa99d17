"""Where training keeps its decoded images after the first epoch: memory, a file on local disk, or nowhere.

Why it matters: decoding the JPEGs is most of the input pipeline's cost. Fed from a cache of decoded
images, training ran at 0.997 of the speed of in-memory tensors; decoding every epoch, at 0.84
(``benchmarks/train_input.py``). But tf.data's memory cache holds every decoded image, records x S x S x 3
bytes (uint8): 2.2 GB for 20,000 images at 192 px, 0.2 GB for the default 2,000. It grows through the
first epoch with no check of its own, and past the machine's memory the kernel kills the worker.

So ``train.cache=true`` is a request that :func:`choose_cache` checks once per worker process, before
training, against what the machine has:

1. ``memory`` when the decoded set fits in ``train.cache_max_memory_fraction`` (default 0.5; the rest is
   for the model, TensorFlow and the shuffle and prefetch buffers) of the available memory: psutil's,
   capped by this process's cgroup limit when there is one, because a container is killed at its own
   limit whatever the host has;
2. else ``file``: a tf.data file cache on local disk (``train.cache_dir``, default
   ``<paths.data_dir>/cache/decoded``) when the set takes at most half the free space there; each worker
   process writes its own folder, removed when it ends (folders of dead processes are removed the next
   time);
3. else ``none``: every epoch decodes again.

The size compared is the whole data set (training and validation records), as if every worker ran on
this machine: they do with the default launcher, and it is the safe side otherwise. The chief logs the
choice as the tags ``input_cache`` (``memory``, ``file`` or ``none``) and ``input_cache_reason``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bigimage import processes
from bigimage.machine import available_memory

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config


MODES = ("memory", "file", "none")
DISK_FRACTION = 0.5  # a file cache may take at most this share of the free disk space


@dataclass(frozen=True)
class CacheChoice:
    """How one worker process caches its decoded images, and why."""

    mode: str  # one of MODES
    reason: str
    decoded_bytes: int
    directory: str | None = None  # file mode: this process's own cache folder

    def apply(self, dataset: Any, name: str) -> Any:
        """``dataset`` cached as chosen; ``name`` tells apart the file caches of one process's pipelines."""
        if self.mode == "memory":
            return dataset.cache()
        if self.mode == "file":
            return dataset.cache(os.path.join(str(self.directory), name))
        return dataset

    def cleanup(self) -> None:
        """Remove this process's file cache (a no-op for the other modes)."""
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def tags(self) -> dict[str, str]:
        return {"input_cache": self.mode, "input_cache_reason": self.reason}


def decoded_bytes(plan: Any, image_size: int) -> int:
    """Bytes of every decoded image of the set (training and validation), uint8 RGB."""
    return (int(plan.train_records) + int(plan.val_records)) * int(image_size) ** 2 * 3


def free_disk(directory: str) -> int:
    """Free bytes on the file system that holds ``directory`` (its nearest existing parent)."""
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return int(shutil.disk_usage(path).free)


def _gib(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _own_folder(parent: str) -> str:
    """A fresh folder for this process under ``parent``; folders left by dead processes are removed."""
    os.makedirs(parent, exist_ok=True)
    for entry in os.scandir(parent):
        pid = entry.name[3:].split("-", 1)[0] if entry.name.startswith("pid") else ""
        with contextlib.suppress(FileNotFoundError):  # made by its process: a pid reused later is another
            if entry.is_dir() and pid.isdigit() and processes.gone(int(pid), recorded=entry.stat().st_mtime):
                shutil.rmtree(entry.path, ignore_errors=True)
    folder = os.path.join(parent, f"pid{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(folder)
    return folder


def choose_cache(cfg: Config, plan: Any) -> CacheChoice:
    """Memory, a file on local disk or no cache for the decoded images of ``plan``, before training starts."""
    size = decoded_bytes(plan, int(cfg.image_size))
    if not cfg.train.cache:
        return CacheChoice("none", "train.cache=false", size)
    fraction = float(cfg.train.cache_max_memory_fraction)
    budget = int(available_memory() * fraction)
    needed = f"decoded images {_gib(size)}"
    if size <= budget:
        return CacheChoice("memory", f"{needed} <= {fraction:g} x available memory = {_gib(budget)}", size)
    parent = str(cfg.train.cache_dir or os.path.join(str(cfg.paths.data_dir), "cache", "decoded"))
    too_big = f"{needed} > {fraction:g} x available memory = {_gib(budget)}"
    room = int(free_disk(parent) * DISK_FRACTION)
    if size <= room:
        try:
            folder = _own_folder(parent)
        except OSError as error:
            return CacheChoice("none", f"{too_big}; cannot write a file cache in {parent}: {error}", size)
        return CacheChoice("file", f"{too_big}; file cache in {folder} ({_gib(room)} allowed)", size, folder)
    return CacheChoice("none", f"{too_big}; and > {DISK_FRACTION:g} x free disk in {parent} = {_gib(room)}", size)
