"""One Spark start for several tasks (issue 13): spark_for inside one_session."""

from __future__ import annotations

from pyspark import SparkContext

from bigimage.spark.cluster import one_session, spark_for
from tests.conftest import compose_config


def test_tasks_inside_one_session_get_the_session_the_first_opened_and_it_stops_at_the_end() -> None:
    cluster = compose_config(["cluster=local", "cluster.executor_cores=1"]).cluster
    with one_session("bigimage-tests-shared"):
        with spark_for(cluster, "first") as first:
            app = first.sparkContext.applicationId
            assert first.sparkContext.parallelize(range(4), 2).sum() == 6
        with spark_for(compose_config(["cluster=local", "cluster.executor_cores=1"]).cluster, "second") as second:
            assert second is first and second.sparkContext.applicationId == app, "not started again"
            assert SparkContext._active_spark_context is not None, "a task's end does not stop it"
        assert first.sparkContext.appName == "bigimage-tests-shared (first)"
    assert SparkContext._active_spark_context is None, "the block's end stops it"
