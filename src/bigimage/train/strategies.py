"""The ``strategy=`` group's tf.distribute strategies; ``mirrored`` on a CPU-only machine runs its replicas
on ``strategy.logical_cpu_devices`` logical devices (docs/training.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hydra.utils import get_method

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config


log = logging.getLogger(__name__)


def configure_devices(cfg: Config) -> None:
    """Split the CPU into logical devices for ``mirrored``; must run before TensorFlow initialises."""
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
