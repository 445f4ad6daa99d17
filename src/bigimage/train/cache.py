"""Where training keeps its decoded images after the first epoch: memory, a file on local disk, or nowhere,
as they fit this process's memory and disk (tf.data's memory cache would grow until the kernel kills it).
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
