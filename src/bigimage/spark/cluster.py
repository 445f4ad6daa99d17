"""The one place that turns ``cfg.cluster`` into a running Spark master and a session on it.

    with spark_for(cfg.cluster, "bigimage-preprocess") as spark:
        ...

- ``deploy=local``: ``local[executors x executor_cores]`` in this process (or ``cluster.master``).
- ``deploy=standalone``: a real standalone master and the shape's workers on loopback
  (executors workers x executor_cores cores x executor_memory), stopped afterwards, also on error,
  Ctrl-C or SIGTERM. With ``cluster.master=spark://host:port`` (or ``yarn``) the existing cluster
  is used instead and nothing is started or stopped.
- ``deploy=dataproc``: only inside the job that :func:`bigimage.cloud.dataproc.run_on_dataproc`
  submitted (the Dataproc driver); there the master is the cluster's YARN. From a laptop,
  ``run.py`` calls ``run_on_dataproc(cfg)`` instead of the task.
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
from bigimage.spark.standalone import StandaloneCluster, StandaloneError, check_master_reachable, check_memory

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import ClusterConfig


log = logging.getLogger(__name__)

EXECUTOR_WAIT_SECONDS = 90.0
MASTER_CONNECT_SECONDS = 5.0


class ClusterError(RuntimeError):
    """A cluster config that cannot give a Spark session here."""


def standalone_shape(cluster: ClusterConfig) -> tuple[int, int, str]:
    """(workers, cores per worker, memory per worker) of a shape on a standalone cluster."""
    cores = int(cluster.executor_cores) or os.cpu_count() or 1
    return int(cluster.executors), cores, str(cluster.executor_memory)


def _with_spark_conf(cluster: ClusterConfig, extra: dict[str, str]) -> Any:
    """A copy of the cluster node with ``extra`` added to its spark_conf.

    ``spark.bigimage.deploy`` is read back by log_spark_resources; ``spark.bigimage.standalone.workDir``
    says where a started cluster keeps its logs and executor directories.
    """
    from omegaconf import OmegaConf

    node: dict[str, Any]
    if OmegaConf.is_config(cluster):
        node = cast(dict[str, Any], OmegaConf.to_container(cluster, resolve=True))
    else:  # a dataclass or a plain namespace in tests
        from dataclasses import asdict, is_dataclass

        node = asdict(cluster) if is_dataclass(cluster) and not isinstance(cluster, type) else dict(vars(cluster))
    node["spark_conf"] = {**dict(node.get("spark_conf") or {}), **extra}
    return OmegaConf.create(node)


def share_nothing_dirs(cluster: Any = None) -> tuple[str, ...]:
    """What a worker of a share-nothing cluster (``cluster.share_nothing``) sees empty: temporary files,
    this project's ``data/`` and ``outputs/`` and the home directory, as on a host of its own (nothing
    for a ``cluster`` config without ``share_nothing``)."""
    from pathlib import Path

    from bigimage.config import PROJECT_ROOT

    if cluster is not None and not cluster.get("share_nothing"):
        return ()

    dirs = ("/tmp", tempfile.gettempdir(), PROJECT_ROOT / "data", PROJECT_ROOT / "outputs", Path.home())
    return tuple(dict.fromkeys(os.path.realpath(directory) for directory in dirs))


@contextmanager
def spark_for(cfg_cluster: ClusterConfig, app_name: str) -> Iterator[Any]:
    """A SparkSession on the master that ``cfg_cluster`` describes; everything started here stops on exit.

    Inside :func:`one_session` the session (and a cluster started for it) is opened once, at the first
    call, and handed to every later call for the same cluster config; it stops when that block ends.
    """
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
    if deploy == "dataproc":
        if not os.environ.get(ON_DATAPROC_ENV):
            raise ClusterError(
                "cluster.deploy=dataproc runs the task as a job on a Dataproc cluster: call "
                "bigimage.cloud.dataproc.run_on_dataproc(cfg) (run.py does) instead of opening a session here; "
                "to use a running cluster's master directly, set cluster.deploy=standalone cluster.master=URL"
            )
        with spark_session(cluster, app_name, master=master or "yarn") as spark:
            wait_for_executors(spark, int(cluster.executors), timeout_seconds=EXECUTOR_WAIT_SECONDS)
            yield spark
        return
    if master:
        # An existing cluster: fail in seconds on a wrong URL rather than waiting on it.
        check_master_reachable(str(master), timeout_seconds=MASTER_CONNECT_SECONDS)
        with spark_session(cluster, app_name, master=str(master)) as spark:
            wait_for_executors(spark, int(cluster.executors), timeout_seconds=EXECUTOR_WAIT_SECONDS)
            yield spark
        return

    with _started_standalone(cluster, app_name) as spark:
        yield spark


@contextmanager
def _started_standalone(cluster: Any, app_name: str) -> Iterator[Any]:
    """A standalone cluster of ``cluster``'s shape started on loopback, and a session on it."""
    check_java()
    workers, cores, memory = standalone_shape(cluster)
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

        config: Any = cfg_cluster
        cluster = OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else repr(config)
        if self.spark is not None and cluster == self.cluster:
            return self.spark
        # One SparkContext per process: another cluster config replaces the session (rare: a step's own
        # cluster.* overrides), and the next call for it gets the new one.
        self.close()
        token = _SHARED.set(None)  # this call opens the session for real
        try:
            self.spark = self.stack.enter_context(spark_for(cfg_cluster, f"{self.app_name} ({app_name})"))
        finally:
            _SHARED.reset(token)
        self.cluster = cluster
        return self.spark

    def close(self) -> None:
        self.spark, self.cluster = None, None
        stack, self.stack = self.stack, ExitStack()
        stack.close()


@contextmanager
def one_session(app_name: str) -> Iterator[None]:
    """One Spark start for several tasks: inside this block :func:`spark_for` opens its session (and any
    standalone cluster it starts) at the first call and hands the same session to every later call for
    the same cluster config, instead of a start (seconds) and a stop per task; the session
    stops when the block ends, also on error. Each task still reads back and logs what the running
    session has (``log_spark_resources``)."""
    shared = _SharedSession(app_name)
    token = _SHARED.set(shared)
    try:
        yield
    finally:
        _SHARED.reset(token)
        shared.close()


_SHARED: ContextVar[_SharedSession | None] = ContextVar("bigimage_shared_spark_session", default=None)

__all__ = ["ClusterError", "StandaloneError", "one_session", "spark_for", "standalone_shape", "ON_DATAPROC_ENV"]
