"""Like with like: rankings never pool runs that differ in a setting that changes the result, and the
speed test's intervals count each run once."""

from __future__ import annotations

import pandas as pd
import pytest

from bigimage.analysis_lib import best_config as bc
from bigimage.analysis_lib import common, comparable, training_cost
from bigimage.tracking import query
from tests.mlflow_fixtures import ON_DATAPROC, SHAPES, healthy_shifted, log_run, make_store, speedtest_table

BEST = max(healthy_shifted(0.0)["val_accuracy"])  # the judged val_accuracy of healthy_shifted(0)


def train_params(strategy: str, images: int, **extra: str) -> dict:
    """A training run's params on a data set of ``images`` records (80% train, 20% validation)."""
    return {
        "strategy.name": strategy,
        "batch_size": "32",
        "cluster.name": "local",
        "strategy.num_workers": "1",
        "dataset.name": "synthetic",
        "image_size": "64",
        "train_records": str(images * 4 // 5),
        "val_records": str(images // 5),
        **extra,
    }


def log_training(store, name: str, params: dict, delta: float) -> str:
    """A healthy training run whose judged val_accuracy is ``BEST + delta``."""
    history = healthy_shifted(delta)
    metrics = {"best_val_accuracy": BEST + delta, "seconds_per_epoch": 1.0}
    return log_run(store, name, task="train", params=params, histories=history, metrics=metrics)


def analyse(store, rank_by: str = "speed") -> bc.BestConfigResult:
    selection, runs = query.load_runs(store.uri, store.experiment_name)
    return bc.analyse(selection, runs, rank_by=rank_by)


def test_training_runs_on_different_data_sizes_are_ranked_apart(tmp_path):
    """Pooled, default would win (mean of +0.1 and -0.2 against mirrored's -0.3 and -0.1); on the same
    data, mirrored wins on 2,000 images, the group the winner comes from (as many configurations, more data)."""
    store = make_store(tmp_path / "store")
    small = {"default": 0.1, "mirrored": -0.3}
    large = {"default": -0.2, "mirrored": -0.1}
    for strategy, delta in small.items():
        log_training(store, f"{strategy}-250", train_params(strategy, 250), delta)
    for strategy, delta in large.items():
        log_training(store, f"{strategy}-2000", train_params(strategy, 2000), delta)
    result = analyse(store)
    assert [(r.key["strategy.name"], r.score.n) for r in result.training] == [("mirrored", 1), ("default", 1)]
    assert result.training[0].score.mean == pytest.approx(BEST - 0.1)
    assert result.winners["train"]["run_ids"] == [store.ids["mirrored-2000"]]
    groups = {g.label: g for g in result.groups["train"]}
    assert set(groups) == {"images=250", "images=2000"} and groups["images=2000"].chosen
    small_ranking = groups["images=250"].rankings[bc.TRAINING_RANKING]
    assert [r.key["strategy.name"] for r in small_ranking] == ["default", "mirrored"]
    assert "differ in images" in result.group_choice["train"] and "images=2000" in result.group_choice["train"]
    rows = bc.tables(result)["training"]
    assert [(row["group"], row["strategy.name"]) for row in rows] == [
        ("images=2000" + bc.WINNERS_GROUP, "mirrored"),
        ("images=2000" + bc.WINNERS_GROUP, "default"),
        ("images=250", "default"),
        ("images=250", "mirrored"),
    ]
    assert "comparable runs (train): the runs form 2 comparable groups" in bc.render_text(result)
    # the cost ranking's Pareto fronts are per group too
    by_cost = {r.run_ids[0]: r.extra for r in result.training_by_cost}
    assert by_cost[store.ids["default-250"]][training_cost.GROUP] == "images=250"
    assert by_cost[store.ids["default-250"]]["pareto_optimal"] and by_cost[store.ids["mirrored-2000"]]["pareto_optimal"]


@pytest.mark.parametrize(
    ("setting", "values"),
    [
        ("dataset.name", ("synthetic", "flowers")),
        ("image_size", ("64", "128")),
        ("train.validation_fraction", ("0.2", "0.3")),
        ("train.test_fraction", ("0.1", "0.2")),
        ("train.split", ("hash", "shard")),
        ("train.augment", ("False", "True")),
    ],
)
def test_every_result_changing_setting_splits_the_training_runs(tmp_path, setting, values):
    store = make_store(tmp_path / "store")
    for index, value in enumerate(values):
        log_training(store, f"run-{index}", train_params("default", 1000, **{setting: value}), 0.0)
    groups = analyse(store).groups["train"]
    assert sorted(g.label for g in groups) == sorted(f"{setting}={value}" for value in values)


def test_a_run_from_before_the_test_split_held_none_out(tmp_path):
    """No ``train.test_fraction`` param is a test fraction of 0: pooled with runs that log 0, not with 0.1."""
    store = make_store(tmp_path / "store")
    log_training(store, "old", train_params("default", 1000), 0.0)
    log_training(store, "none", train_params("default", 1000, **{"train.test_fraction": "0"}), 0.0)
    log_training(store, "held-out", train_params("default", 1000, **{"train.test_fraction": "0.1"}), 0.0)
    groups = {g.label: g.run_ids for g in analyse(store).groups["train"]}
    assert groups == {
        "train.test_fraction=0": sorted([store.ids["old"], store.ids["none"]]),
        "train.test_fraction=0.1": [store.ids["held-out"]],
    }


def test_the_workers_of_a_strategy_are_part_of_its_configuration(tmp_path):
    store = make_store(tmp_path / "store")
    for workers, delta in (("2", 0.0), ("4", -0.1)):
        params = train_params("multi_worker_mirrored", 1000, **{"strategy.num_workers": workers})
        log_training(store, f"mwms-{workers}", params, delta)
    ranking = analyse(store).training
    assert [(r.key["strategy.num_workers"], r.score.n) for r in ranking] == [("2", 1), ("4", 1)]


def preprocess(store, name: str, cluster: str, rate: float, deploy: str, images: float = 1000.0, **grant) -> str:
    """A preprocess run of ``cluster`` at ``rate`` images/s where Spark read back ``deploy`` (and ``grant``:
    spark.total_cores, spark.executors)."""
    params = {"cluster.name": cluster, **SHAPES.get(cluster, {})}
    tags = {"spark.deploy": deploy}
    if deploy == "dataproc":
        params, tags = {**params, **ON_DATAPROC["params"]}, {**tags, **ON_DATAPROC["tags"]}
    metrics = {"images_per_second": rate, "seconds": images / rate, "images": images, **grant}
    return log_run(store, name, task="preprocess", params=params, tags=tags, metrics=metrics)


def test_local_and_dataproc_runs_of_one_shape_are_not_pooled(tmp_path):
    """Pooled, four would be fastest ((500 + 100) / 2 = 300 against single's 200): on Dataproc it is the
    slower of two shapes, and its local run is ranked in a group of its own."""
    store = make_store(tmp_path / "store")
    preprocess(store, "four-local", "four", 500.0, "local")
    preprocess(store, "four-dataproc", "four", 100.0, "dataproc")
    preprocess(store, "single-dataproc", "single", 200.0, "dataproc")
    result = analyse(store)
    assert [(r.key["cluster.name"], r.score.mean) for r in result.preprocess["by_speed"]] == [
        ("single", pytest.approx(200.0)),
        ("four", pytest.approx(100.0)),
    ]
    assert result.winners["preprocess"]["run_ids"] == [store.ids["single-dataproc"]]
    labels = sorted(g.label for g in result.groups["preprocess"])
    assert labels == ["spark.deploy=dataproc", "spark.deploy=local"]
    assert "differ in spark.deploy" in result.group_choice["preprocess"]


def test_data_sizes_and_core_counts_of_the_scaling_points_are_never_averaged(tmp_path):
    """The scaling experiment's local[1] and local[3] runs at 250 and 2,000 images all say cluster=local:
    each (size, cores) is one item of its size's group; the winner comes from the largest size."""
    store = make_store(tmp_path / "store")
    for images in (250.0, 2000.0):
        for cores, rate in ((1, 100.0), (3, 250.0)):
            grant = {"spark.total_cores": cores, "spark.executors": 1}
            preprocess(store, f"n{images:g}-c{cores}", "local", rate * images / 1000, "local", images, **grant)
    result = analyse(store)
    groups = {g.label: g for g in result.groups["preprocess"]}
    assert set(groups) == {"images=250", "images=2000"} and groups["images=2000"].chosen
    for images, group in (("250", groups["images=250"]), ("2000", groups["images=2000"])):
        ranking = group.rankings["by_speed"]
        assert [(r.key["cores"], r.score.n) for r in ranking] == [(3, 1), (1, 1)]
        assert ranking[0].run_ids == [store.ids[f"n{images}-c3"]]
    assert result.winners["preprocess"]["key"] == {"cluster.name": "local", "cores": 3, "executors": 1}
    assert comparable.shape_text(result.winners["preprocess"]["key"]) == "local (3 cores, 1 executor)"


def test_speedtest_intervals_have_one_value_per_run(tmp_path):
    """Two runs of one shape, three repetitions each: the interval is Student's t over the two runs' means
    (n=2), not over six repetitions that share a process."""
    store = make_store(tmp_path / "store")
    tables = {"a": speedtest_table(100.0, reps=3, jitter=0.2), "b": speedtest_table(130.0, reps=3, jitter=0.2)}
    for name, table in tables.items():
        log_run(store, name, task="speedtest", params={"cluster.name": "local"}, table=table)
    result = analyse(store)
    tfrecord = [r for r in result.speedtest["by_speed"] if r.key["source"] == "tfrecord"]
    assert len(tfrecord) == 1 and tfrecord[0].run_ids == sorted(store.ids.values())
    expected = common.mean_interval([run_mean(table, "tfrecord") for table in tables.values()])
    score = tfrecord[0].score
    assert (score.n, score.mean, score.low, score.high) == (
        2,
        pytest.approx(expected.mean),
        pytest.approx(expected.low),
        pytest.approx(expected.high),
    )
    figure = bc.speedtest_by_batch(result.speedtest_rows)  # the throughput figure's data: one row per run
    assert len(figure[(figure["source"] == "tfrecord") & (figure["batch_size"] == 8)]) == 2


def run_mean(table: pd.DataFrame, source: str) -> float:
    """A run's images/s reading ``source``: the mean over its repetitions of images / seconds."""
    mine = table[table["source"] == source].groupby("repetition")[["images", "seconds"]].sum()
    return float((mine["images"] / mine["seconds"]).mean())


def test_ranking_by_cost_without_priced_runs_still_shows_the_speeds(tmp_path):
    store = make_store(tmp_path / "store")
    preprocess(store, "local", "local", 100.0, "local")
    result = analyse(store, rank_by="cost")
    assert [r.key["cluster.name"] for r in result.preprocess["by_speed"]] == ["local"]
    assert "preprocess" not in result.winners  # no cost to pick a winner by
