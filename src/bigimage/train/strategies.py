"""The ``strategy=`` group: checks that need no TensorFlow, and the tf.distribute strategy itself.

- ``default``: no distribution (``tf.distribute.get_strategy()``), one replica.
- ``mirrored``: ``MirroredStrategy`` over the local devices: the GPUs if any, else the CPU split into
  ``strategy.logical_cpu_devices`` logical devices, so that N replicas really run on a CPU-only box.
- ``multi_worker_mirrored``: ``MultiWorkerMirroredStrategy``, one process per worker, each with its own
  ``TF_CONFIG`` (see :mod:`bigimage.train.launch`).
- ``experimental_multi_worker_mirrored``: ``tf.distribute.experimental.MultiWorkerMirroredStrategy``,
  the deprecated alias the seed compared; same mechanics.

``strategy.launcher`` says where the worker processes run: ``processes`` (the default) on this machine,
``spark_barrier`` one per Spark barrier task on the executors of ``cluster`` (multi-worker strategies
only; see :func:`bigimage.train.launch.run_spark_barrier_workers`).

``batch_size`` is the GLOBAL batch size (all replicas together): each replica gets
``batch_size / replicas``; a batch size that does not divide by the replica count is an error raised
before training, naming both numbers.
"""

from __future__ import annotations

import logging
from typing import Any

from bigimage.config import STRATEGIES, ConfigError

log = logging.getLogger(__name__)

MULTI_WORKER = ("multi_worker_mirrored", "experimental_multi_worker_mirrored")
LAUNCHERS = ("processes", "spark_barrier")


def is_multi_worker(cfg: Any) -> bool:
    return cfg.strategy.name in MULTI_WORKER


def check_strategy_config(cfg: Any) -> None:
    """Rules of the strategy group, checked before any process starts. Raises ConfigError."""
    name = cfg.strategy.name
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name!r} is not valid; choose one of: {', '.join(STRATEGIES)}")
    workers = cfg.strategy.num_workers
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"strategy.num_workers={workers!r} is not valid; it must be a whole number >= 1")
    if name not in MULTI_WORKER and workers != 1:
        raise ConfigError(
            f"strategy={name} runs in one process, so strategy.num_workers must be 1 (got {workers}); "
            f"use strategy=multi_worker_mirrored for several workers"
        )
    devices = cfg.strategy.logical_cpu_devices
    if not isinstance(devices, int) or devices < 0:
        raise ConfigError(f"strategy.logical_cpu_devices={devices!r} must be a whole number >= 0 (0: devices as found)")
    timeout = cfg.strategy.worker_timeout_seconds
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"strategy.worker_timeout_seconds={timeout!r} must be > 0")
    check_launcher(cfg)


def check_launcher(cfg: Any) -> None:
    """``strategy.launcher`` is one of LAUNCHERS, and ``spark_barrier`` only for a multi-worker strategy."""
    launcher = cfg.strategy.launcher
    if launcher not in LAUNCHERS:
        raise ConfigError(f"strategy.launcher={launcher!r} is not valid; choose one of: {', '.join(LAUNCHERS)}")
    if launcher == "spark_barrier" and cfg.strategy.name not in MULTI_WORKER:
        raise ConfigError(
            f"strategy.launcher=spark_barrier runs one worker per Spark barrier task, which only a multi-worker "
            f"strategy uses; strategy={cfg.strategy.name} runs in one process: use strategy.launcher=processes, "
            f"or strategy=multi_worker_mirrored (or experimental_multi_worker_mirrored) with strategy.launcher=spark_barrier"
        )


def expected_replicas(cfg: Any) -> int | None:
    """Replicas in sync as far as the config tells on a CPU-only machine (None: only TF can tell)."""
    name = cfg.strategy.name
    if name == "default":
        return 1
    if name == "mirrored":
        return cfg.strategy.logical_cpu_devices or None
    return cfg.strategy.num_workers  # one CPU replica per worker


def check_batch_size(global_batch_size: int, replicas: int, strategy_name: str) -> int:
    """Per-replica batch size; raises ConfigError when the global batch does not divide by the replicas."""
    if global_batch_size % replicas:
        raise ConfigError(
            f"batch_size={global_batch_size} is the global batch size and must divide by the {replicas} "
            f"replicas in sync of strategy={strategy_name}; choose a multiple of {replicas} "
            f"(e.g. batch_size={max(replicas, global_batch_size // replicas * replicas)})"
        )
    return global_batch_size // replicas


def configure_devices(cfg: Any) -> None:
    """Split the CPU into logical devices for ``mirrored``; must run before TensorFlow initialises.

    Every training runs in a fresh worker process (see :mod:`bigimage.train.launch`), so this is called
    once per process and sequential sweeps with different device counts do not collide.
    """
    import tensorflow as tf

    count = cfg.strategy.logical_cpu_devices
    if not count:
        return
    if cfg.strategy.name != "mirrored":
        log.warning("strategy.logical_cpu_devices=%s is ignored for strategy=%s", count, cfg.strategy.name)
        return
    if tf.config.list_physical_devices("GPU"):
        log.info("GPUs found: mirrored uses them; strategy.logical_cpu_devices ignored")
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # TensorFlow already initialised in this process
        current = len(tf.config.list_logical_devices("CPU"))
        if current != count:
            raise RuntimeError(
                f"cannot split the CPU into {count} logical devices: TensorFlow is already initialised in this "
                f"process with {current}; run each mirrored training in a fresh process ({error})"
            ) from error


def make_strategy(cfg: Any) -> Any:
    """The tf.distribute strategy named by ``strategy.name`` (call :func:`configure_devices` first)."""
    import tensorflow as tf

    name = cfg.strategy.name
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if not tf.config.list_physical_devices("GPU") and cfg.strategy.logical_cpu_devices:
            devices = [device.name for device in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices)
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "experimental_multi_worker_mirrored":
        return tf.distribute.experimental.MultiWorkerMirroredStrategy()
    raise ConfigError(f"strategy={name!r} is not valid; choose one of: {', '.join(STRATEGIES)}")
