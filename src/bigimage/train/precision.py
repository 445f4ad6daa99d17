"""``train.precision``: the Keras mixed-precision policy a training process runs under (``auto``:
``mixed_bfloat16`` where the CPU or a GPU has bf16 units, else ``float32``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bigimage.config import ConfigError

log = logging.getLogger(__name__)

FLOAT32, MIXED_BFLOAT16, MIXED_FLOAT16, AUTO = "float32", "mixed_bfloat16", "mixed_float16", "auto"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with bf16 units
GPU_BF16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Choice:
    policy: str  # the Keras policy set
    reason: str  # why, for the run's tags


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The bf16 flags this CPU reports (none where /proc/cpuinfo cannot be read)."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def _gpu_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf

    details = [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]
    return [tuple(each["compute_capability"]) for each in details if each.get("compute_capability")]


def choose(precision: str) -> Choice:
    """The policy for ``train.precision`` on this machine; raises ConfigError for float16 without a GPU."""
    if precision in (FLOAT32, MIXED_BFLOAT16):
        return Choice(precision, f"train.precision={precision}")
    gpus = _gpu_capabilities()
    if precision == MIXED_FLOAT16:
        if not gpus:
            raise ConfigError(
                "train.precision=mixed_float16 needs a GPU and this machine has none: "
                "use mixed_bfloat16 (or auto) on a CPU"
            )
        return Choice(MIXED_FLOAT16, "train.precision=mixed_float16 (loss scaling by Keras)")
    flags = cpu_bf16_flags()
    if any(capability >= GPU_BF16_CAPABILITY for capability in gpus):
        return Choice(MIXED_BFLOAT16, f"auto: a GPU with bfloat16 (compute capability {max(gpus)})")
    if flags and not gpus:
        return Choice(MIXED_BFLOAT16, f"auto: the CPU has bf16 units ({', '.join(flags)})")
    return Choice(FLOAT32, "auto: no bf16 units on this machine's CPU or GPU")


def configure(cfg: Any) -> Choice:
    """Set the Keras global policy for ``cfg.train.precision`` before any model is built."""
    import tf_keras as keras

    choice = choose(str(cfg.train.precision))
    keras.mixed_precision.set_global_policy(choice.policy)
    log.info("precision: %s (%s)", choice.policy, choice.reason)
    return choice
