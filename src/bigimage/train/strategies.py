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
from typing import TYPE_CHECKING, Any

from hydra.utils import get_method

from bigimage.config import Strategy

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config


log = logging.getLogger(__name__)


def is_multi_worker(cfg: Config) -> bool:
    """Also for a config read back from YAML by a worker process, where the name is a plain string."""
    return Strategy(cfg.strategy.name).multi_worker


def configure_devices(cfg: Config) -> None:
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


def make_strategy(cfg: Config) -> Any:
    """The tf.distribute strategy of the ``strategy`` group: its ``_target_`` function (call
    :func:`configure_devices` first)."""
    return get_method(cfg.strategy._target_)(cfg.strategy)


def default(strategy: Any) -> Any:
    import tensorflow as tf

    return tf.distribute.get_strategy()


def mirrored(strategy: Any) -> Any:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU") and strategy.logical_cpu_devices:
        return tf.distribute.MirroredStrategy(devices=[device.name for device in tf.config.list_logical_devices("CPU")])
    return tf.distribute.MirroredStrategy()


def multi_worker_mirrored(strategy: Any) -> Any:
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def experimental_multi_worker_mirrored(strategy: Any) -> Any:
    import tensorflow as tf

    return tf.distribute.experimental.MultiWorkerMirroredStrategy()
