"""Costs that match the bill: every cost shown says what it covers, the job alone or the cluster's life,
and the cluster's life adds the start-up the runs recorded (and Dataproc's creation and deletion)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.entities import Metric, Param

from bigimage.analysis_lib import best_config as bc
from bigimage.analysis_lib import forecast, predict, pricing
from bigimage.analysis_lib import report as rp
from bigimage.tracking import query
from tests.mlflow_fixtures import ON_DATAPROC, SHAPES, log_run, make_store, speedtest_table

IMAGES = 1000.0
JOB_SECONDS = 10.0
STARTUP = 5.0


def dataproc_preprocess(store, name: str, wall: float | None = None) -> str:
    """A Dataproc run of ``four`` that wrote 1,000 images in a 10 s job after a 5 s Spark start-up; with
    ``wall``, its MLflow run lasted that many seconds."""
    params = {"cluster.name": "four", **SHAPES["four"], **ON_DATAPROC["params"]}
    tags = {"mlflow.runName": name, "task": "preprocess", **ON_DATAPROC["tags"]}
    run_id = store.client.create_run(store.experiment_id, tags=tags, start_time=1_000_000).info.run_id
    metrics = {"images": IMAGES, "seconds": JOB_SECONDS, "images_per_second": IMAGES / JOB_SECONDS}
    metrics["startup_seconds"] = STARTUP
    store.client.log_batch(
        run_id,
        metrics=[Metric(key, value, 1_000_000, 0) for key, value in metrics.items()],
        params=[Param(key, value) for key, value in params.items()],
    )
    end = 1_000_000 + int(1000 * wall) if wall is not None else 1_000_000
    store.client.set_terminated(run_id, "FINISHED", end_time=end)
    store.ids[name] = run_id
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = make_store(tmp_path_factory.mktemp("costs"))
    dataproc_preprocess(store, "short")  # its MLflow run's clock says 0 s: the recorded parts count
    dataproc_preprocess(store, "long", wall=40.0)  # 40 s from start to end: 25 s beyond start-up and job
    params = {"cluster.name": "four", **SHAPES["four"], **ON_DATAPROC["params"]}
    metrics = {"seconds": 2.0, "startup_seconds": STARTUP}
    log_run(
        store,
        "read",
        task="speedtest",
        params=params,
        tags=ON_DATAPROC["tags"],
        metrics=metrics,
        table=speedtest_table(100),
    )
    return store


@pytest.fixture(scope="module")
def result(store):
    selection, runs = query.load_runs(store.uri, store.experiment_name)
    return bc.analyse(selection, runs)


def hourly(store) -> float:
    selection, runs = query.load_runs(store.uri, store.experiment_name)
    return pricing.run_hourly(runs.set_index("run_name").loc["short"], pricing.load_prices())[0]


def per_1000(store, seconds: float, images: float = IMAGES) -> float:
    return hourly(store) * seconds / 3600 / images * 1000


def test_the_cluster_life_adds_the_recorded_start_up_and_dataproc_creation_and_deletion(result, store):
    create_delete = result.prices.dataproc_create_delete_seconds
    assert create_delete > 0  # analysis/prices.yaml's estimate
    table = result.preprocess_table.set_index("run_id")
    short, long = table.loc[store.ids["short"]], table.loc[store.ids["long"]]
    assert short[pricing.JOB] == pytest.approx(per_1000(store, JOB_SECONDS))
    assert short[pricing.CLUSTER_LIFE] == pytest.approx(per_1000(store, JOB_SECONDS + STARTUP + create_delete))
    assert short[pricing.CLUSTER_LIFE] - short[pricing.JOB] == pytest.approx(per_1000(store, STARTUP + create_delete))
    assert long[pricing.LIFE_SECONDS] == pytest.approx(40.0 + create_delete)  # the run's wall time counts whole
    four = result.preprocess["by_cost"][0]
    assert four.score.n == 2 and four.score.mean == pytest.approx(per_1000(store, JOB_SECONDS))
    assert four.extra["scored_by"] == pricing.JOB
    life = per_1000(store, (JOB_SECONDS + STARTUP + 40.0) / 2 + create_delete)
    assert four.extra[pricing.CLUSTER_LIFE] == pytest.approx(life)
    assert four.extra[pricing.LIFE_INCLUDES] == (
        f"start-up 5 s + rest of the run 12.5 s + creation and deletion {create_delete:.3g} s (estimate)"
    )


def test_a_speed_test_run_s_life_is_spread_over_every_image_it_read(result, store):
    read = speedtest_table(100)
    create_delete = result.prices.dataproc_create_delete_seconds
    for item in result.speedtest["by_cost"]:
        assert item.extra[pricing.CLUSTER_LIFE] == pytest.approx(
            per_1000(store, 2.0 + STARTUP + create_delete, float(read["images"].sum()))
        )


def test_every_best_config_output_says_what_each_cost_covers(result):
    text = bc.render_text(result)
    assert pricing.covers(result.prices.dataproc_create_delete_seconds) in text
    assert f"by the job's cost per 1,000 images ({pricing.JOB}; {pricing.CLUSTER_LIFE}" in text
    rows = bc.tables(result)["preprocess_by_cost"]
    assert {pricing.JOB, pricing.CLUSTER_LIFE, pricing.LIFE_INCLUDES} <= set(rows[0])
    doc = json.loads(json.dumps(result.as_dict(), default=str))
    assert doc["prices"]["covers"] == {pricing.JOB: pricing.JOB_COVERS, pricing.CLUSTER_LIFE: pricing.LIFE_COVERS}
    item = doc["preprocess"]["by_cost"][0]
    assert item["scored_by"] == pricing.JOB and item[pricing.CLUSTER_LIFE] > item["score_mean"]


def test_the_report_says_what_each_cost_covers(store, tmp_path):
    report = rp.make_report(store.uri, experiment=store.experiment_name, output_dir=tmp_path, write_tags=False)
    markdown = report.path.read_text()
    # under each cost table: preprocessing, the speed test, the forecast
    assert markdown.count(pricing.covers(report.result.prices.dataproc_create_delete_seconds)) == 3
    cheapest = next(line for line in markdown.splitlines() if "Fastest cluster shape for preprocessing" in line)
    assert "per 1,000 images for the job alone (" in cheapest and "over the cluster's life, what the bill" in cheapest
    forecast_section = markdown[markdown.index("## Forecast") :]
    assert pricing.JOB_COVERS in forecast_section


def scaling_runs(store) -> None:
    """Local task 1 runs at two sizes and two core counts, each recording a 4 s start-up."""
    for images in (500.0, 1000.0, 2000.0):
        for cores in (1, 2):
            metrics = {
                "images": images,
                "seconds": 1.0 + 0.004 * images / cores,
                "spark.total_cores": cores,
                "spark.executors": 1,
                "startup_seconds": 4.0,
            }
            log_run(
                store,
                f"pre-{images:g}-{cores}",
                task="preprocess",
                params={"cluster.name": "local"},
                tags={"spark.deploy": "local"},
                metrics=metrics,
            )


def test_the_forecast_gives_both_costs_and_the_cluster_life_adds_the_runs_start_up(tmp_path, capsys):
    store = make_store(tmp_path / "store")
    scaling_runs(store)
    selection, runs = query.load_runs(store.uri, store.experiment_name)
    options = forecast.Options(shapes=("single", "local"), bootstrap=200, local_cores=2, region="us-central1")
    result = forecast.build(selection, runs, options)
    shapes = result.as_dict()["tasks"]["preprocess"]["shapes"]
    single, create_delete = shapes["single"], result.prices.dataproc_create_delete_seconds
    assert single[pricing.LIFE_SECONDS] == pytest.approx(single["predicted_seconds"] + 4.0 + create_delete)
    life_over_job = single[pricing.LIFE_SECONDS] / single["predicted_seconds"]
    assert single[pricing.CLUSTER_LIFE] == pytest.approx(single[pricing.JOB] * life_over_job)
    assert "start-up and the rest of a run 4 s (median of 6 fitted run(s))" in single[pricing.LIFE_INCLUDES]
    assert shapes["local"][pricing.JOB] is None and shapes["local"][pricing.CLUSTER_LIFE] is None
    metrics = predict.metrics(result)
    assert metrics[f"forecast.preprocess.single.{pricing.CLUSTER_LIFE}"] == pytest.approx(single[pricing.CLUSTER_LIFE])
    assert predict.covers(result) in predict.render_text(result)
    code = predict.main(
        ["--tracking-uri", store.uri, "--experiment", store.experiment_name, "--json", "--no-log-run"]
        + ["--bootstrap", "200", "--local-cores", "2", "--shapes", "single"]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["covers"][pricing.CLUSTER_LIFE] == pricing.LIFE_COVERS


def test_wall_time_is_read_from_the_run_and_missing_parts_are_said(tmp_path):
    row = pd.Series({"start_time": 1000, "end_time": 31000, "tags.spark.deploy": "local"})
    life = pricing.life(row, 10.0, 150.0)
    assert (life.seconds, life.startup, life.other, life.create_delete) == (30.0, 0.0, 20.0, 0.0)
    assert pricing.includes([life]) == "start-up not recorded + rest of the run 20 s"
    assert pricing.wall_seconds(pd.Series({"start_time": 1000, "end_time": None})) is None
