"""The one place that turns ``cfg.cluster`` into a running Spark master and a session on it.

``local``: ``local[executors x executor_cores]``; ``standalone``: a cluster of the shape started on
loopback (or ``cluster.master``); ``dataproc``: only inside the Dataproc job.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

from bigimage.config import ON_DATAPROC_ENV
from bigimage.spark.session import check_java, spark_session, wait_for_executors
from bigimage.spark.standalone import StandaloneCluster, check_master_reachable, check_memory

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import ClusterConfig


log = logging.getLogger(__name__)

EXECUTOR_WAIT_SECONDS = 90.0
MASTER_CONNECT_SECONDS = 5.0


class ClusterError(RuntimeError):
    """A cluster config that cannot give a Spark session here."""


def _with_spark_conf(cluster: ClusterConfig, extra: dict[str, str]) -> Any:
    """A copy of the cluster node with ``extra`` (``spark.bigimage.*``, read back later) in its spark_conf."""
    from omegaconf import OmegaConf

    node = cast(dict[str, Any], OmegaConf.to_container(cluster, resolve=True))
    node["spark_conf"] = {**dict(node.get("spark_conf") or {}), **extra}
    return OmegaConf.create(node)


def share_nothing_dirs(cluster: Any = None) -> tuple[str, ...]:
    """What a worker of a ``cluster.share_nothing`` cluster sees empty, as on a host of its own."""
    from pathlib import Path

    from bigimage.config import PROJECT_ROOT

    if cluster is not None and not cluster.get("share_nothing"):
        return ()
    dirs = ("/tmp", tempfile.gettempdir(), PROJECT_ROOT / "data", PROJECT_ROOT / "outputs", Path.home())
    return tuple(dict.fromkeys(os.path.realpath(directory) for directory in dirs))


@contextmanager
def spark_for(cfg_cluster: ClusterConfig, app_name: str) -> Iterator[Any]:
    """A SparkSession on the master that ``cfg_cluster`` describes; everything started here stops on exit
    (inside :func:`one_session`, when that block ends)."""
    shared = _SHARED.get()
    if shared is not None:
        yield shared.session(cfg_cluster, app_name)
        return
    deploy = str(cfg_cluster.deploy)
    cluster = _with_spark_conf(cfg_cluster, {"spark.bigimage.deploy": deploy})
    master = cluster.master
    if deploy == "local":
        with spark_session(cluster, app_name) as spark:
            yield spark
        return
    if deploy == "dataproc" and not os.environ.get(ON_DATAPROC_ENV):
        raise ClusterError(
            "cluster.deploy=dataproc runs the task as a job on a Dataproc cluster: call "
            "bigimage.cloud.dataproc.run_on_dataproc(cfg) (run.py does) instead of opening a session here; "
            "to use a running cluster's master directly, set cluster.deploy=standalone cluster.master=URL"
        )
    if deploy == "dataproc" or master:  # an existing cluster: a wrong URL fails in seconds
        master = str(master or "yarn")
        check_master_reachable(master, timeout_seconds=MASTER_CONNECT_SECONDS)
        with spark_session(cluster, app_name, master=master) as spark:
            wait_for_executors(spark, int(cluster.executors), timeout_seconds=EXECUTOR_WAIT_SECONDS)
            yield spark
        return
    with _started_standalone(cluster, app_name) as spark:
        yield spark


@contextmanager
def _started_standalone(cluster: Any, app_name: str) -> Iterator[Any]:
    """A standalone cluster of ``cluster``'s shape started on loopback, and a session on it."""
    check_java()
    workers, memory = int(cluster.executors), str(cluster.executor_memory)
    cores = int(cluster.executor_cores) or os.cpu_count() or 1
    check_memory(workers, memory, str(cluster.driver_memory))
    if workers * cores > (os.cpu_count() or 1):
        log.warning(
            "shape %s asks for %d x %d cores on a machine with %d; the executors share the real cores",
            cluster.name,
            workers,
            cores,
            os.cpu_count() or 1,
        )
    with StandaloneCluster(workers, cores, memory, isolate=share_nothing_dirs(cluster)) as standalone:
        began = time.monotonic()
        cluster = _with_spark_conf(cluster, {"spark.bigimage.standalone.workDir": str(standalone.work_dir)})
        with spark_session(cluster, app_name, master=standalone.master_url) as spark:
            resources = wait_for_executors(spark, workers, timeout_seconds=EXECUTOR_WAIT_SECONDS)
            if resources["executors"] < workers:
                log.warning(
                    "only %d of %d executors registered with %s after %.0f s; running with what is there",
                    resources["executors"],
                    workers,
                    standalone.master_url,
                    time.monotonic() - began,
                )
            yield spark


class _SharedSession:
    """The session that :func:`spark_for` hands out inside :func:`one_session`, opened at the first call."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name
        self.stack = ExitStack()
        self.cluster: Any = None
        self.spark: Any = None

    def session(self, cfg_cluster: ClusterConfig, app_name: str) -> Any:
        from omegaconf import OmegaConf

        cluster = OmegaConf.to_container(cfg_cluster, resolve=True)
        if self.spark is not None and cluster == self.cluster:
            return self.spark
        # One SparkContext per process: another cluster config replaces the session.
        self.close()
        token = _SHARED.set(None)  # this call opens the session for real
        try:
            self.spark = self.stack.enter_context(spark_for(cfg_cluster, f"{self.app_name} ({app_name})"))
        finally:
            _SHARED.reset(token)
        self.cluster = cluster
        return self.spark

    def close(self) -> None:
        self.spark = self.cluster = None
        self.stack.close()  # empty afterwards, ready for the next session


@contextmanager
def one_session(app_name: str) -> Iterator[None]:
    """One Spark start for several tasks: inside this block :func:`spark_for` opens its session (and
    cluster) at the first call and hands it to every later call for the same cluster config."""
    shared = _SharedSession(app_name)
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)
        shared.close()


_SHARED: ContextVar[_SharedSession | None] = ContextVar("bigimage_shared_spark_session", default=None)
