"""spark.deploy is read back from the running SparkContext, never copied from cluster.deploy."""

from __future__ import annotations

from types import SimpleNamespace

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from bigimage.spark.session import deploy_from_context, log_spark_resources, spark_session
from tests.conftest import compose_config


def fake_spark(master: str, conf: dict[str, str] | None = None) -> SimpleNamespace:
    settings = SimpleNamespace(
        getAll=lambda: list((conf or {}).items()), get=lambda key, default=None: (conf or {}).get(key, default)
    )
    return SimpleNamespace(sparkContext=SimpleNamespace(master=master, getConf=lambda: settings))


@pytest.mark.parametrize(
    ("master", "conf", "expected"),
    [
        ("local[2]", {"spark.bigimage.deploy": "dataproc"}, "local"),
        ("local[*]", {}, "local"),
        ("spark://127.0.0.1:7077", {"spark.bigimage.deploy": "local"}, "standalone"),
        ("yarn", {"spark.bigimage.deploy": "dataproc"}, "yarn"),  # a YARN cluster that is not Dataproc
        ("yarn", {"spark.dataproc.sql.parquet.enableFooterCache": "true"}, "dataproc"),
        ("yarn", {"spark.yarn.tags": "dataproc_hash_1,dataproc_job_42,dataproc_master_index_0"}, "dataproc"),
        ("k8s://https://10.0.0.1:443", {}, "kubernetes"),
        ("mesos://host:5050", {}, "mesos"),
    ],
)
def test_deploy_comes_from_the_master_url_and_the_running_conf(master, conf, expected) -> None:
    assert deploy_from_context(fake_spark(master, conf)) == expected


def test_a_local_session_that_the_config_calls_dataproc_is_logged_as_local(mlflow_experiment: str) -> None:
    """What spark_for does on a config saying deploy=dataproc (it copies that into the Spark conf),
    while the session really runs in local mode: the tag says local."""
    cluster = compose_config(["cluster=local", "cluster.executor_cores=1"]).cluster
    cluster.spark_conf = {"spark.bigimage.deploy": "dataproc"}
    with mlflow.start_run(experiment_id=mlflow_experiment) as run, spark_session(cluster, "deploy-read-back") as spark:
        assert spark.sparkContext.getConf().get("spark.bigimage.deploy") == "dataproc"
        log_spark_resources(spark)
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["spark.master"] == "local[1]"
    assert tags["spark.deploy"] == "local"
