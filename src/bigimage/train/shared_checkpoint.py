"""``BackupAndRestore`` on a remote checkpoint directory (``gs://``, any fsspec URL), staged through a
local copy with :mod:`bigimage.data.storage` (why, and the upload order: docs/clusters.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from bigimage.data import storage

log = logging.getLogger(__name__)

_LAST = ("checkpoint", "history.json")  # written after the files they point to


class SharedCheckpoint:
    """The local directory ``BackupAndRestore`` uses for the checkpoint at ``url``, kept in step with it."""

    def __init__(self, url: str, is_chief: bool) -> None:
        self.url = str(url)
        self.is_chief = is_chief
        self.staged = storage.is_remote(self.url)
        if not self.staged:
            if "://" not in self.url:
                os.makedirs(self.url, exist_ok=True)
            self.local_dir = self.url
            return
        self.local_dir = tempfile.mkdtemp(prefix="bigimage-checkpoint-")
        remote = storage.list_files(self.url)
        prefix = self.url.rstrip("/") + "/"
        for info in remote:
            storage.copy(info.path, os.path.join(self.local_dir, *info.path[len(prefix) :].split("/")))
        if remote:
            log.info("checkpoint: %d files from %s staged in %s", len(remote), self.url, self.local_dir)

    def upload(self) -> None:
        """The chief's local checkpoint to ``url`` (files the index names before the index), older ones removed."""
        if not (self.staged and self.is_chief):
            return
        local = {
            os.path.relpath(info.path, self.local_dir).replace(os.sep, "/"): info.path
            for info in storage.list_files(self.local_dir)
            if not os.path.relpath(info.path, self.local_dir).startswith("workertemp")
        }
        order = sorted(local, key=lambda rel: (os.path.basename(rel) in _LAST, rel))
        for rel in order:
            storage.copy(local[rel], storage.join(self.url, rel))
        stale = [
            info.path
            for info in storage.list_files(self.url)
            if info.path[len(self.url.rstrip("/")) + 1 :] not in local
        ]
        storage.delete_files(stale)

    def callback(self) -> Any:
        """A Keras callback that uploads after each epoch; put it after ``BackupAndRestore`` and the observer."""
        import tf_keras as keras

        return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: self.upload())

    def finish(self) -> None:
        """The training finished: the chief removes the shared copy (local files are BackupAndRestore's)."""
        if self.staged and self.is_chief:
            storage.remove_tree(self.url)

    def cleanup(self) -> None:
        if self.staged:
            shutil.rmtree(self.local_dir, ignore_errors=True)
