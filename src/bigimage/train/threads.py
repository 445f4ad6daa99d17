"""TensorFlow's CPU settings in a training process: oneDNN on, op thread pools sized to this worker's share
of the cores, split among its replicas (the rule: docs/training.md#cpu-settings).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
INTRA_VARIABLE = "TF_NUM_INTRAOP_THREADS"
INTER_VARIABLE = "TF_NUM_INTEROP_THREADS"


@dataclass(frozen=True)
class OpThreads:
    intra_op: int
    inter_op: int
    cores: int
    workers_here: int
    replicas: int

    def describe(self) -> str:
        return (
            f"intra_op={self.intra_op} inter_op={self.inter_op} (cores={self.cores}, "
            f"workers on this machine={self.workers_here}, replicas in this process={self.replicas})"
        )


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which taskset and containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def op_threads(cores: int, workers_here: int, replicas: int = 1) -> OpThreads:
    """Pool sizes for one of ``workers_here`` processes sharing ``cores``, running ``replicas`` side by side."""
    budget = max(1, cores // max(1, workers_here))
    replicas = max(1, replicas)
    return OpThreads(
        intra_op=max(1, budget // replicas),
        inter_op=budget if replicas == 1 else max(replicas, budget),
        cores=cores,
        workers_here=max(1, workers_here),
        replicas=replicas,
    )


def workers_on_this_machine(tf_config: str | None = None) -> int:
    """How many workers of the training run on this worker's host, from TF_CONFIG (1 without one)."""
    text = os.environ.get("TF_CONFIG", "") if tf_config is None else tf_config
    if not text:
        return 1
    config = json.loads(text)
    task = config.get("task", {})
    cluster = config.get("cluster", {})
    addresses = [address for kind in ("chief", "worker") for address in cluster.get(kind, [])]
    try:
        offset = len(cluster.get("chief", [])) if task.get("type") == "worker" else 0
        own_host = addresses[offset + int(task.get("index", 0))].rsplit(":", 1)[0]
    except (IndexError, ValueError):
        return max(1, len(addresses))
    return max(1, sum(1 for address in addresses if address.rsplit(":", 1)[0] == own_host))


def replicas_in_process(cfg: Any) -> int:
    """Replicas this process runs side by side: the logical CPU devices of ``mirrored``, else 1."""
    return max(1, int(cfg.strategy.logical_cpu_devices or 0)) if str(cfg.strategy.name) == "mirrored" else 1


def configure(cfg: Any) -> OpThreads:
    """Size TensorFlow's op pools for this worker (before TensorFlow initialises); returns what was set."""
    import tensorflow as tf

    wanted = op_threads(available_cores(), workers_on_this_machine(), replicas_in_process(cfg))
    intra = int(os.environ.get(INTRA_VARIABLE) or wanted.intra_op)
    inter = int(os.environ.get(INTER_VARIABLE) or wanted.inter_op)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError as error:  # TensorFlow already initialised in this process: keep its pools
        log.warning("could not size TensorFlow's op thread pools (%s); they stay as they are", error)
    threading = tf.config.threading
    current = replace(
        wanted,
        intra_op=threading.get_intra_op_parallelism_threads(),
        inter_op=threading.get_inter_op_parallelism_threads(),
    )
    log.info("TensorFlow op threads: %s; oneDNN %s", current.describe(), onednn_state())
    return current


def onednn_state() -> str:
    """``on`` or ``off``, as TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` (unset: TensorFlow's own default)."""
    value = os.environ.get(ONEDNN_VARIABLE)
    if value is None:
        return "default"
    return "on" if value.strip().lower() in ("1", "true", "yes", "on") else "off"
