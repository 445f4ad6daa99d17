"""The query layer: runs, nested descendants, histories, tables, from a real sqlite MLflow store."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from bigimage.tracking import query
from tests.mlflow_fixtures import OVERFIT, log_run, make_store, speedtest_table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = make_store(tmp_path_factory.mktemp("query"))
    top = log_run(s, "pipeline", task="pipeline")
    sweep = log_run(s, "sweep", task=None, parent=top)
    log_run(s, "child", task="train", params={"batch_size": 32}, histories=OVERFIT, parent=sweep)
    log_run(s, "nan-child", task="train", histories={"loss": [1.0, float("nan")]}, parent=sweep)
    log_run(s, "speed", task="speedtest", table=speedtest_table(100.0, reps=2), parent=top)
    log_run(s, "speed-no-table", task="speedtest", parent=top)
    log_run(s, "outsider", task="train", histories=OVERFIT)
    return s


def test_load_runs_of_experiment_is_a_tidy_table(store):
    selection, runs = query.load_runs(store.uri, store.experiment_name)
    assert selection.experiment_id == store.experiment_id and selection.parent_run_id is None
    assert set(runs["run_name"]) == {"pipeline", "sweep", "child", "nan-child", "speed", "speed-no-table", "outsider"}
    child = runs.set_index("run_name").loc["child"]
    assert child["task"] == "train" and child["status"] == "FINISHED"
    assert child["params.batch_size"] == "32"
    assert child["metrics.val_loss"] == pytest.approx(OVERFIT["val_loss"][-1])  # last value
    assert child["parent_run_id"] == store.ids["sweep"]
    assert "loss" in child["metric_keys"] and "val_accuracy" in child["metric_keys"]


def test_parent_run_selects_all_descendants_only(store):
    selection, runs = query.load_runs(store.uri, parent_run_id=store.ids["pipeline"])
    assert selection.parent_run_id == store.ids["pipeline"]
    # grandchildren through the sweep parent are included; the parent itself and the outsider are not
    assert set(runs["run_name"]) == {"sweep", "child", "nan-child", "speed", "speed-no-table"}
    _, sweep_runs = query.load_runs(store.uri, parent_run_id=store.ids["sweep"])
    assert set(sweep_runs["run_name"]) == {"child", "nan-child"}


def test_missing_experiment_parent_or_runs_raise_no_runs(store, tmp_path):
    with pytest.raises(query.NoRunsError, match="no experiment named 'nope'"):
        query.load_runs(store.uri, "nope")
    with pytest.raises(query.NoRunsError, match="no run with id"):
        query.load_runs(store.uri, parent_run_id="0" * 32)
    with pytest.raises(query.NoRunsError, match="no runs in descendants"):
        query.load_runs(store.uri, parent_run_id=store.ids["outsider"])
    empty = make_store(tmp_path / "empty", "empty")
    with pytest.raises(query.NoRunsError, match="no runs in experiment 'empty'"):
        query.load_runs(empty.uri, "empty")


def test_histories_long_and_wide(store):
    _, runs = query.load_runs(store.uri, store.experiment_name)
    ids = [store.ids["child"], store.ids["nan-child"], store.ids["pipeline"]]
    long = query.load_histories(store.uri, ids, ("loss", "val_loss"), runs=runs)
    assert set(long.columns) == {"run_id", "key", "step", "value", "timestamp"}
    child = long[(long["run_id"] == store.ids["child"]) & (long["key"] == "val_loss")].sort_values("step")
    assert child["step"].tolist() == list(range(10))
    assert child["value"].tolist() == pytest.approx(OVERFIT["val_loss"])
    # a NaN that was logged is kept as NaN (not dropped as "missing")
    nan_loss = long[(long["run_id"] == store.ids["nan-child"]) & (long["key"] == "loss")].sort_values("step")
    assert nan_loss["value"].iloc[0] == 1.0 and math.isnan(nan_loss["value"].iloc[1])
    assert long[long["run_id"] == store.ids["pipeline"]].empty
    wide = query.histories_wide(long)
    row = wide[(wide["run_id"] == store.ids["child"]) & (wide["step"] == 4)].iloc[0]
    assert row["loss"] == pytest.approx(0.4) and row["val_loss"] == pytest.approx(0.45)


def test_load_run_table_reports_missing_tables_and_restores_global_uri(store):
    before = mlflow.get_tracking_uri()
    table, problems = query.load_run_table(
        store.uri, "speedtest.json", [store.ids["speed"], store.ids["speed-no-table"]]
    )
    assert mlflow.get_tracking_uri() == before
    assert set(table["run_id"]) == {store.ids["speed"]}
    assert len(table) == len(speedtest_table(100.0, reps=2))
    assert {"source", "batch_size", "repetition", "images", "seconds"} <= set(table.columns)
    assert list(problems) == [store.ids["speed-no-table"]]


def test_load_run_table_draws_no_progress_bar(store, monkeypatch, capfd):
    # the pipeline's report step and every script load tables through here; MLflow's default draws a bar
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")  # unset now, restored after the test
    table, _ = query.load_run_table(store.uri, "speedtest.json", [store.ids["speed"]])
    assert not table.empty
    assert "Downloading artifacts" not in capfd.readouterr().err


def test_set_tags_writes_tags_not_metrics(store):
    run_id = store.ids["outsider"]
    metrics_before = store.client.get_run(run_id).data.metrics
    query.set_tags(store.uri, run_id, {"some_tag": "x"})
    run = store.client.get_run(run_id)
    assert run.data.tags["some_tag"] == "x"
    assert run.data.metrics == metrics_before


def test_default_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    assert query.default_tracking_uri() == "sqlite:////somewhere/else.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = query.default_tracking_uri()
    assert uri == f"sqlite:///{query.PROJECT_ROOT}/mlruns/mlflow.db"
    assert (query.PROJECT_ROOT / "pyproject.toml").exists()


def test_param_and_metric_helpers():
    row = pd.Series({"params.batch_size": "32", "metrics.loss": float("nan"), "metrics.acc": 0.5})
    assert query.param(row, "batch_size") == "32" and query.param(row, "nope", "d") == "d"
    assert query.metric(row, "loss") is None and query.metric(row, "acc") == 0.5


def test_analysis_imports_neither_spark_nor_tensorflow():
    # our code: no import of Spark, TensorFlow or the task packages (static check of the sources)
    sources = [
        *(query.PROJECT_ROOT / "src/bigimage/analysis_lib").glob("*.py"),
        Path(query.__file__),
        *(query.PROJECT_ROOT / "analysis").glob("*.py"),
    ]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert not name.startswith(
                        ("pyspark", "tensorflow", "tf_keras", "keras", "bigimage.spark", "bigimage.train")
                    ), (path, name)
    # at run time: TensorFlow never loads and no Spark context starts (MLflow itself probes `import pyspark`
    # in mlflow.types.schema when it is installed; that loads the Python package but starts no JVM)
    code = (
        "import sys, bigimage.analysis_lib.report, bigimage.analysis_lib.best_config, bigimage.tracking.query; "
        "bad = [m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules]; "
        "ps = sys.modules.get('pyspark'); bad += ['SparkContext'] if ps and ps.SparkContext._active_spark_context else []; "
        "print(bad); sys.exit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
