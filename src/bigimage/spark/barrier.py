"""Multi-worker TensorFlow on a Spark cluster's executors, through Spark barrier execution.

All tasks start together or none; they exchange ``host:port`` with ``allGather`` and each runs
``worker_fn(tf_config)``. A failed task fails the stage, which Spark does not retry.
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any


class BarrierError(RuntimeError):
    """The cluster cannot run the barrier stage (too few task slots, timeout)."""


class BarrierTimeoutError(BarrierError):
    """The stage ran past its ``timeout_seconds`` and was cancelled."""


def _task_slots(spark: Any) -> int:
    from bigimage.spark.session import spark_resources

    task_cpus = int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))
    return max(int(spark_resources(spark)["total_cores"]) // max(task_cpus, 1), 0)


def build_tf_config(workers: list[str], index: int) -> dict[str, Any]:
    """TF_CONFIG for worker ``index`` of a cluster of ``workers`` (``host:port`` strings)."""
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": int(index)}}


def _barrier_partition(worker_fn: Callable[[dict], Any]) -> Callable[[Any], Any]:
    def run(_: Any) -> Any:
        from pyspark import BarrierTaskContext

        context = BarrierTaskContext.get()
        rank = context.partitionId()
        infos = context.getTaskInfos()
        host = infos[rank].address.rsplit(":", 1)[0]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        # Released here and bound again by TensorFlow: a clash is unlikely and fails the stage.
        gathered = context.allGather(json.dumps({"rank": rank, "address": f"{host}:{port}"}))
        addresses = [entry["address"] for entry in sorted(map(json.loads, gathered), key=lambda e: e["rank"])]
        tf_config = build_tf_config(addresses, rank)
        result = worker_fn(tf_config)
        # Everyone finishes together: a fast worker does not end its task while others still train.
        context.barrier()
        yield rank, result

    return run


def run_barrier_workers(
    spark: Any,
    num_workers: int,
    worker_fn: Callable[[dict], Any],
    timeout_seconds: float | None = None,
) -> list[Any]:
    """Run ``worker_fn(tf_config)`` once per worker as one barrier stage; results in rank order. Too few
    task slots fail at once (Spark would retry for minutes); ``timeout_seconds`` cancels the stage."""
    if int(num_workers) < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    slots = _task_slots(spark)
    if slots < num_workers:
        raise BarrierError(
            f"{num_workers} barrier workers need {num_workers} task slots at once, but the cluster has {slots} "
            f"({spark.sparkContext.master}); lower strategy.num_workers or use a shape with more cores"
        )
    context = spark.sparkContext
    group = f"bigimage-barrier-{uuid.uuid4().hex[:8]}"
    context.setJobGroup(group, f"{num_workers} TensorFlow workers (barrier stage)", interruptOnCancel=True)
    timer = None
    timed_out = threading.Event()
    if timeout_seconds:

        def cancel() -> None:
            timed_out.set()
            context.cancelJobGroup(group)

        timer = threading.Timer(float(timeout_seconds), cancel)
        timer.daemon = True
        timer.start()
    try:
        rdd = context.parallelize(range(num_workers), num_workers)
        results = rdd.barrier().mapPartitions(_barrier_partition(worker_fn)).collect()
    except Exception as error:
        if timed_out.is_set():
            raise BarrierTimeoutError(
                f"the {num_workers} barrier workers did not finish within {timeout_seconds:g} s and were cancelled"
            ) from error
        raise
    finally:
        if timer is not None:
            timer.cancel()
        context.setLocalProperty("spark.jobGroup.id", None)
        context.setLocalProperty("spark.job.description", None)
    return [result for _, result in sorted(results, key=lambda item: item[0])]
