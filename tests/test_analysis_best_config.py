"""Rankings with intervals, costs from the price table, exclusions, best_config tags, and the script."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from bigimage.analysis_lib import best_config as bc
from bigimage.analysis_lib import common, pricing
from bigimage.tracking import query
from tests.mlflow_fixtures import (
    ON_DATAPROC,
    SHAPES,
    log_run,
    make_store,
    run_script,
    runs_by_name,
    scenario_store,
)


def dataproc_row(shape: dict, region: str = "us-central1") -> pd.Series:
    """A load_runs row of a run that ran on Dataproc in ``region`` with ``shape``."""
    params = {**shape, **ON_DATAPROC["params"], "cluster.dataproc.region": region}
    return pd.Series(
        {**{f"params.{k}": v for k, v in params.items()}, **{f"tags.{k}": v for k, v in ON_DATAPROC["tags"].items()}}
    )


def test_interval_is_student_t_and_absent_for_one_run():
    values = [0.80, 0.82, 0.81]
    iv = common.mean_interval(values)
    lo, hi = stats.t.interval(0.95, df=2, loc=0.81, scale=stats.sem(values))
    assert (iv.mean, iv.low, iv.high, iv.n, iv.method) == (
        pytest.approx(0.81),
        pytest.approx(lo),
        pytest.approx(hi),
        3,
        "t",
    )
    one = common.mean_interval([0.7])
    assert one.low is None and one.high is None and "n=1, no interval" in one.text()
    assert one.overlaps(iv) is None
    assert common.mean_interval([1.0, 1.1]).overlaps(common.mean_interval([1.05, 1.06])) is True
    assert common.mean_interval([1.0, 1.0]).overlaps(common.mean_interval([2.0, 2.0])) is False


def test_distinguishability_statements():
    a = bc.Ranked({"k": "a"}, common.mean_interval([0.9, 0.91, 0.9]), ["1"])
    b = bc.Ranked({"k": "b"}, common.mean_interval([0.5, 0.51, 0.5]), ["2"])
    c = bc.Ranked({"k": "c"}, common.mean_interval([0.89, 0.92, 0.9]), ["3"])
    d = bc.Ranked({"k": "d"}, common.mean_interval([0.88]), ["4"])
    assert bc._distinguishable([a, b], "x")["distinguishable"] is True
    assert bc._distinguishable([a, c], "x")["distinguishable"] is False
    one = bc._distinguishable([a, d], "x")
    assert one["distinguishable"] is None and "n=1" in one["statement"]
    assert bc._distinguishable([a], "x")["distinguishable"] is None


def test_hourly_cost_adds_machines_dataproc_fee_and_disks():
    prices = pricing.load_prices()
    assert prices.date and prices.source
    assert {"us-central1", "europe-west2"} <= set(prices.regions)  # europe-west2: the default cluster.dataproc.region
    us = prices.regions["us-central1"]
    hourly, how = pricing.run_hourly(dataproc_row(SHAPES["four"]), prices)
    m = us.machines["n1-standard-2"]
    expected = (
        4 * m["hourly"]  # master + 3 workers
        + 8 * prices.dataproc_per_vcpu_hour  # 4 x 2 vCPU
        + (500 * us.disks["pd-ssd"] + 3 * 1365 * us.disks["pd-standard"]) / prices.hours_per_month
    )
    assert hourly == pytest.approx(expected)
    assert "3 x n1-standard-2" in how and "us-central1" in how
    eu = prices.regions["europe-west2"]
    assert pricing.run_hourly(dataproc_row(SHAPES["single"], "europe-west2"), prices)[0] == pytest.approx(
        eu.machines["n1-standard-8"]["hourly"]
        + 8 * prices.dataproc_per_vcpu_hour
        + 500 * eu.disks["pd-ssd"] / prices.hours_per_month
    )
    unknown = dataproc_row({"cluster.shape.master_machine_type": "e2-micro"})
    hourly, how = pricing.run_hourly(unknown, prices)
    assert hourly is None and "no price for e2-micro" in how
    assert pricing.run_hourly(dataproc_row({"cluster.name": "x"}), prices)[0] is None
    assert pricing.cost_per_1000(3.6, 10.0, 1000.0) == pytest.approx(0.01)


def test_only_runs_that_ran_on_dataproc_are_priced_by_their_own_region(tmp_path):
    """The default cluster=local run (this machine's cores) gets no cost, whatever its shape params say;
    a Dataproc run is priced at its own region's prices; a region the table lacks is named, not guessed."""
    store = make_store(tmp_path / "store")
    prices = pricing.load_prices()
    local_shape = {"cluster.name": "local", "cluster.deploy": "local", **SHAPES["single"]}
    metrics = {"images_per_second": 500.0, "seconds": 2.0, "images": 1000.0}
    log_run(
        store,
        "pre-local",
        task="preprocess",
        params=local_shape,
        metrics=metrics,
        tags={"spark.deploy": "local", "spark.master": "local[2]"},
    )
    # Asked for Dataproc, but Spark read back a local master (the tag is what counts).
    log_run(
        store,
        "pre-asked-dataproc",
        task="preprocess",
        metrics=metrics,
        params={**local_shape, **ON_DATAPROC["params"]},
        tags={"spark.deploy": "local", "spark.master": "local[2]"},
    )
    eu = {"cluster.name": "four", **SHAPES["four"], **ON_DATAPROC["params"], "cluster.dataproc.region": "europe-west2"}
    log_run(
        store,
        "pre-four-eu",
        task="preprocess",
        params=eu,
        tags=ON_DATAPROC["tags"],
        metrics={"images_per_second": 200.0, "seconds": 5.0, "images": 1000.0},
    )
    tokyo = {
        "cluster.name": "maximal",
        **SHAPES["maximal"],
        **ON_DATAPROC["params"],
        "cluster.dataproc.region": "asia-northeast1",
    }
    log_run(
        store,
        "pre-maximal-tokyo",
        task="preprocess",
        params=tokyo,
        tags=ON_DATAPROC["tags"],
        metrics={"images_per_second": 100.0, "seconds": 10.0, "images": 1000.0},
    )

    selection, runs = query.load_runs(store.uri, store.experiment_name)
    result = bc.analyse(selection, runs, prices=prices)
    # local and Dataproc runs are ranked apart; the winner's group is the Dataproc one (two shapes)
    assert [r.key["cluster.name"] for r in result.preprocess["by_speed"]] == ["four", "maximal"]
    assert [r.key["cluster.name"] for r in result.preprocess["by_cost"]] == ["four"]  # the only priced run
    local = next(g for g in result.groups["preprocess"] if not g.chosen)
    assert [r.key["cluster.name"] for r in local.rankings["by_speed"]] == ["local"]
    four = result.preprocess["by_cost"][0]
    assert four.run_ids == [store.ids["pre-four-eu"]]
    assert four.score.mean == pytest.approx(
        pricing.run_hourly(runs.set_index("run_name").loc["pre-four-eu"], prices)[0] * 5.0 / 3600
    )
    assert "europe-west2" in four.extra["cost_note"]
    table = result.preprocess_table.set_index("run_id")
    assert pd.isna(table.loc[store.ids["pre-local"], pricing.JOB])
    assert pd.isna(table.loc[store.ids["pre-asked-dataproc"], pricing.JOB])
    assert "not priced: ran on local" in table.loc[store.ids["pre-asked-dataproc"], "cost_note"]
    notes = "\n".join(result.notes)
    assert "local: no cost (not priced: ran on local (spark.master local[2])" in notes
    assert "no prices for region asia-northeast1 in the price table (it has us-central1, europe-west2" in notes
    doc = result.as_dict()
    assert (
        doc["prices"]["regions"] == ["us-central1", "europe-west2"]
        and "spark.deploy=dataproc" in doc["prices"]["priced"]
    )
    text = bc.render_text(result)
    assert "only runs with tag spark.deploy=dataproc" in text


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return scenario_store(tmp_path_factory)


@pytest.fixture(scope="module")
def result(scenario):
    selection, runs = query.load_runs(scenario.uri, scenario.experiment_name)
    return bc.analyse(selection, runs)


def test_training_ranking_uses_the_judged_epoch_with_intervals(result, scenario):
    ranked = [(r.key["strategy.name"], r.key["batch_size"], r.key["cluster.name"], r.score.n) for r in result.training]
    assert ranked == [
        ("mirrored", 32, "local", 3),
        ("default", 16, "local", 1),
        ("multi_worker_mirrored", 32, "local", 2),
        ("default", 64, "local", 1),
    ]
    top, gap_only, mwms, _ = result.training
    assert top.score.mean == pytest.approx(0.815) and top.score.low < 0.815 < top.score.high
    assert mwms.score.mean == pytest.approx(0.74)  # val_accuracy at its best epoch 4, not the last (0.69)
    assert gap_only.score.mean == pytest.approx(0.75)  # at its best epoch 9, not its overfitting onset 5 (0.72)
    assert gap_only.score.low is None  # n=1: no interval, so the top cannot be told from it
    assert result.statements()["training"]["distinguishable"] is None
    assert "a single run" in result.statements()["training"]["statement"]
    assert set(result.winners["train"]["run_ids"]) == {
        scenario.ids["mirrored-32-a"],
        scenario.ids["mirrored-32-b"],
        scenario.ids["mirrored-32-c"],
    }


def test_every_bad_run_is_excluded_with_its_reason(result):
    reasons = {e.run_name: e.reason for e in result.excluded}
    expected = {
        "failed": "status FAILED",
        "running": "status RUNNING",
        "nan": "non-finite loss",
        "one-epoch": "only 1 epoch",
        "no-val-loss": "missing metric history",
        "foreign": "params of another schema: missing strategy.name, batch_size, cluster.name",
        "pre-failed": "status FAILED",
        "pre-no-metrics": "missing or non-positive metric(s): images_per_second, seconds",
        "speed-no-table": "no table artifact speedtest.json",
    }
    assert set(reasons) == set(expected)
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons[name])


def test_preprocess_ranking_by_speed_and_cost(result, scenario):
    speed = [(r.key["cluster.name"], round(r.score.mean), r.score.n) for r in result.preprocess["by_speed"]]
    assert speed == [("single", 300, 3), ("four", 200, 3), ("maximal", 100, 3)]
    # the failed run's absurd 1e9 images/s never reaches the ranking
    assert all(r.score.high < 400 for r in result.preprocess["by_speed"])
    prices = pricing.load_prices()
    costs = {r.key["cluster.name"]: r for r in result.preprocess["by_cost"]}
    hourly_single = pricing.run_hourly(dataproc_row(SHAPES["single"]), prices)[0]
    seconds = [1000.0 / (300 * (1 + 0.02 * (rep - 1))) for rep in range(3)]
    assert costs["single"].score.mean == pytest.approx(sum(hourly_single * s / 3600 for s in seconds) / 3)
    assert [r.key["cluster.name"] for r in result.preprocess["by_cost"]] == ["single", "four", "maximal"]
    assert costs["single"].score.low is not None
    assert result.statements()["preprocess"]["distinguishable"] is True
    assert set(result.winners["preprocess"]["run_ids"]) == {scenario.ids[f"pre-single-{i}"] for i in range(3)}


def test_speedtest_ranking_from_the_tables(result, scenario):
    tf = [r for r in result.speedtest["by_speed"] if r.key["source"] == "tfrecord"]
    assert [r.key["cluster.name"] for r in tf] == ["single", "four", "maximal"]
    assert all(r.score.n == 3 for r in tf)  # 3 runs (of 3 repetitions each): one value per run
    files = {r.key["cluster.name"]: r.score.mean for r in result.speedtest["by_speed"] if r.key["source"] == "files"}
    assert set(files) == {"single", "four", "maximal"}
    assert tf[0].score.mean == pytest.approx(2 * files["single"], rel=1e-6)
    assert result.winners["speedtest"]["key"] == {
        "source": "tfrecord",
        "cluster.name": "single",
        "cores": None,  # the scenario's runs did not read back what Spark granted
        "executors": None,
    }
    assert set(result.winners["speedtest"]["run_ids"]) == {scenario.ids[f"speed-single-{i}"] for i in range(3)}
    assert len(result.speedtest["by_cost"]) == 6


def test_rank_by_cost_and_best_config_tags(scenario):
    selection, runs = query.load_runs(scenario.uri, parent_run_id=scenario.ids["_pipeline"])
    res = bc.analyse(selection, runs, rank_by="cost")
    assert res.winners["preprocess"]["by"] == "cost"
    bc.write_tags(res)
    tags = {n: r.data.tags.get("best_config") for n, r in runs_by_name(scenario).items()}
    for name in ("mirrored-32-a", "mirrored-32-b", "mirrored-32-c", "pre-single-0", "speed-single-2"):
        assert tags[name] == "true", name
    for name in ("mwms-32-a", "default-64", "pre-four-0", "pre-maximal-1", "speed-four-0"):
        assert tags[name] == "false", name
    for name in ("failed", "foreign", "pre-failed", "speed-no-table", "pipeline"):
        assert tags[name] is None, name


def test_script_json_parses(scenario):
    proc = run_script(
        "best_config",
        "--tracking-uri",
        scenario.uri,
        "--parent-run",
        scenario.ids["_pipeline"],
        "--json",
        "--no-write-tags",
        "--rank-by",
        "speed",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["training"][0]["strategy.name"] == "mirrored" and doc["training"][0]["score_n"] == 3
    assert doc["training"][1]["score_ci_low"] is None
    assert doc["conclusions"]["training"]["distinguishable"] is None
    assert doc["preprocess"]["by_speed"][0]["cluster.name"] == "single"
    assert doc["winners"]["speedtest"]["key"]["source"] == "tfrecord"
    assert doc["prices"]["date"] and len(doc["excluded"]) == 9


def test_main_text_and_no_runs(scenario, capsys):
    assert bc.main(["--tracking-uri", scenario.uri, "--experiment", scenario.experiment_name, "--no-write-tags"]) == 0
    out = capsys.readouterr().out
    assert "Training configurations" in out and "distinguishable" in out and "Excluded:" in out
    assert bc.main(["--tracking-uri", scenario.uri, "--experiment", "missing"]) != 0
    assert "no experiment named 'missing'" in capsys.readouterr().err
    # runs exist, but none can be ranked: say so on stderr, exit non-zero, print nothing on stdout
    parent = log_run(scenario, "bad-parent", task="pipeline")
    log_run(
        scenario,
        "bad-child",
        task="train",
        params={"batch_size": 8},
        histories={"loss": [1.0]},
        parent=parent,
        status="FAILED",
    )
    assert bc.main(["--tracking-uri", scenario.uri, "--parent-run", parent, "--json"]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no run that can be ranked" in captured.err and "status FAILED" in captured.err
