"""``task=train``: what run.py calls inside its open MLflow run.

Checks the config and the TFRecords before any process starts, writes the workers' config (private: it
holds secrets), launches them and keeps their logs; checkpoints are keyed by the config, so a rerun
resumes (docs/training.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from bigimage.config import Strategy
from bigimage.data import readers
from bigimage.search.trial import search_tags
from bigimage.tracking import names
from bigimage.train import inputs, launch, multihost

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config


log = logging.getLogger(__name__)

# Config parts that decide the training state a checkpoint holds.
_KEY_PARTS = ("tfrecord_dir", "image_size", "batch_size", "epochs", "seed", "model", "train")
_KEY_STRATEGY = ("name", "num_workers", "logical_cpu_devices")
SOURCE_KEY = "tfrecord_source"  # in the workers' config: tfrecord_dir as the user gave it


def checkpoint_key(cfg: Config) -> str:
    """A readable, stable name for the checkpoint of this training config."""
    values = {key: getattr(cfg, key) for key in _KEY_PARTS}
    parts: dict[str, Any] = {
        key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        for key, value in values.items()
    }
    # Where checkpoints and decoded images are kept does not change what is trained: a run resumes across them.
    kept_elsewhere = ("checkpoint_dir", "cache", "cache_dir", "cache_max_memory_fraction")
    parts["train"] = {k: v for k, v in parts["train"].items() if k not in kept_elsewhere}
    parts["strategy"] = {key: getattr(cfg.strategy, key) for key in _KEY_STRATEGY}
    if search_tags(cfg):  # parallel search trials of one config must not share (and resume) a checkpoint
        parts["search"] = search_tags(cfg)
    digest = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{cfg.strategy.name}-{cfg.model.name}-bs{cfg.batch_size}-{digest}"


def checkpoint_dir(cfg: Config) -> str:
    if cfg.train.checkpoint_dir:
        return str(cfg.train.checkpoint_dir)
    return os.path.join(str(cfg.paths.data_dir), "checkpoints", checkpoint_key(cfg))


def local_tfrecord_dir(cfg: Config) -> str:
    """``tfrecord_dir`` itself when local; a remote one (``gs://``, or any fsspec URL: TensorFlow reads
    neither an emulator nor most of them) is mirrored into ``<paths.data_dir>/cache/tfrecords/``."""
    from bigimage.data import storage

    url = str(cfg.tfrecord_dir)
    if not storage.is_remote(url):
        return url
    scheme, path = url.split("://", 1)
    name = ("" if scheme == "gs" else f"{scheme}__") + path.strip("/").replace("/", "__")
    return storage.local_cache_copy(url, os.path.join(str(cfg.paths.data_dir), "cache", "tfrecords", name))


def worker_config(cfg: Config, tfrecord_dir: str) -> DictConfig:
    """The resolved config the workers read: local ``tfrecord_dir`` (the given one in :data:`SOURCE_KEY`)."""
    resolved = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
    resolved[SOURCE_KEY] = str(cfg.tfrecord_dir)
    resolved.tfrecord_dir = tfrecord_dir
    resolved.train.checkpoint_dir = checkpoint_dir(cfg)
    return resolved


def save_private(cfg: DictConfig, path: str) -> None:
    """``cfg`` as YAML at ``path``, readable by this user only from its first byte (it holds secrets)."""
    if os.path.lexists(path):
        os.remove(path)  # a rerun's: its mode would stay
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(OmegaConf.to_yaml(cfg))


def _work_dir(cfg: Config, resolved: DictConfig, run_id: str | None) -> tuple[str, str, str]:
    """This training's folder with the workers' config in it: (folder, config path, result path)."""
    name = run_id or time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    work_dir = os.path.join(str(cfg.paths.output_dir), "train", name)
    os.makedirs(work_dir, exist_ok=True)
    config_path = os.path.join(work_dir, "config.yaml")
    save_private(resolved, config_path)
    result_file = os.path.join(work_dir, "result.json")
    if os.path.exists(result_file):
        os.remove(result_file)
    return work_dir, config_path, result_file


def run_train(cfg: Config) -> dict[str, float]:
    """Train ``cfg.model`` under ``cfg.strategy`` on ``cfg.tfrecord_dir`` (logged into the active MLflow run,
    if any); returns the final metrics. Bad input fails before any process starts."""
    import mlflow

    run = mlflow.active_run()  # its id, tracking URI and artifact URI, all None without one
    run_id, tracking_uri, artifact_uri = (
        (run.info.run_id, mlflow.get_tracking_uri(), run.info.artifact_uri) if run else (None, None, None)
    )
    multihost.check_shared(cfg, tracking_uri, artifact_uri, checkpoint_dir(cfg))
    # Fail on missing shards or the wrong image size before any process starts.
    readers.read_manifest(str(cfg.tfrecord_dir), int(cfg.image_size))
    # Barrier tasks stage a remote set on their own hosts (launch.stage_worker_config); local workers share this copy.
    data_dir = str(cfg.tfrecord_dir) if cfg.strategy.launcher == "spark_barrier" else local_tfrecord_dir(cfg)
    manifest = readers.read_manifest(data_dir, int(cfg.image_size))
    readers.shard_paths(data_dir, manifest)
    inputs.check_batch_fits(
        int(cfg.batch_size), inputs.expected_train_records(cfg, manifest), str(cfg.tfrecord_dir), exact=False
    )

    resolved = worker_config(cfg, data_dir)
    work_dir, config_path, result_file = _work_dir(cfg, resolved, run_id)
    workers = int(cfg.strategy.num_workers) if Strategy(cfg.strategy.name).multi_worker else 1
    log.info(
        "training %s with strategy=%s on %d worker process(es) (launcher=%s), checkpoints in %s, logs in %s",
        cfg.model.name,
        cfg.strategy.name,
        workers,
        cfg.strategy.launcher,
        resolved.train.checkpoint_dir,
        work_dir,
    )
    try:
        job = launch.WorkerJob(
            config_path,
            workers,
            work_dir,
            float(cfg.strategy.worker_timeout_seconds),
            tracking_uri=tracking_uri,
            run_id=run_id,
            result_file=result_file,
            worker_uris=(tracking_uri, artifact_uri, str(resolved.train.checkpoint_dir), cfg.search.storage),
            isolation=str(cfg.strategy.isolation),
        )
        if cfg.strategy.launcher == "spark_barrier":
            launch.run_spark_barrier_workers(cfg.cluster, job)
        else:
            launch.run_local_workers(job)
    finally:
        if run_id:
            try:
                mlflow.log_artifacts(os.path.join(work_dir, "logs"), "worker_logs")
            except Exception as error:
                log.warning("could not log the worker logs: %s", error)
        os.remove(config_path)  # the run's config artifact keeps it, secrets masked
    return _with_cost(result_file, run_id)


def _with_cost(result_file: str, run_id: str | None) -> dict[str, float]:
    """The chief's final metrics plus ``seconds_per_epoch`` (logged too; ``train_optuna_cost``'s objective)."""
    with open(result_file, encoding="utf-8") as handle:
        result = {key: float(value) for key, value in json.load(handle).items()}
    result[names.SECONDS_PER_EPOCH] = result[names.TRAINING_SECONDS] / max(result.get("epochs_run", 1.0), 1.0)
    if run_id:
        import mlflow

        mlflow.log_metric(names.SECONDS_PER_EPOCH, result[names.SECONDS_PER_EPOCH])
    return result
