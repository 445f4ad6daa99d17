"""A barrier task's own copy of what its training worker reads, made on the executor's host: the config
with local paths in the task's scratch directory, a ``gs://`` ``tfrecord_dir`` copied there first."""

from __future__ import annotations

import logging
import os
import time

from omegaconf import DictConfig, OmegaConf

from bigimage.data import storage

log = logging.getLogger(__name__)


def stage_worker_config(config_text: str, scratch: str) -> str:
    """The config file a worker in ``scratch`` runs with, its gs:// data staged there; returns its path."""
    cfg = OmegaConf.create(config_text)
    if not isinstance(cfg, DictConfig):
        raise ValueError("the training config must be a mapping")
    url = str(cfg.tfrecord_dir)
    if storage.is_gcs(url):
        began = time.monotonic()
        cfg.tfrecord_dir = storage.local_cache_copy(url, os.path.join(scratch, "tfrecords"))
        log.info("staged %s in %s in %.1f s", url, cfg.tfrecord_dir, time.monotonic() - began)
    cfg.paths.data_dir = os.path.join(scratch, "data")
    cfg.paths.output_dir = os.path.join(scratch, "outputs")
    path = os.path.join(scratch, "config.yaml")
    OmegaConf.save(cfg, path)
    return path
