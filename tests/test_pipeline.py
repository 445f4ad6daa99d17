"""The main job end to end on a tiny generated set, then the analysis scripts on the runs it made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from bigimage.config import PROJECT_ROOT

pytestmark = pytest.mark.slow  # the whole pipeline, end to end, in a subprocess


@pytest.mark.timeout(960)
def test_main_job_runs_every_step_and_ends_with_the_report(pipeline_store) -> None:
    store, tmp, result = pipeline_store
    assert result.returncode == 0, result.stderr[-4000:]
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("bigimage")
    runs = client.search_runs([experiment.experiment_id])
    pipeline = next(run for run in runs if run.data.tags["task"] == "pipeline")
    steps = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id]
    assert sorted(run.data.tags["task"] for run in steps) == ["analysis", "preprocess", "speedtest", "train", "train"]
    assert all(run.info.status == "FINISHED" for run in [pipeline, *steps])
    # One Spark start for the pipeline (issue 13): both Spark steps ran in one application, each logging it
    spark_steps = [run for run in steps if run.data.tags["task"] in ("preprocess", "speedtest")]
    assert len({run.data.tags["spark.app_id"] for run in spark_steps}) == 1
    assert all("spark.total_cores" in run.data.metrics for run in spark_steps)
    assert sorted(run.data.params["strategy.name"] for run in steps if run.data.tags["task"] == "train") == [
        "default",
        "mirrored",
    ]
    report = Path(pipeline.data.tags["report"])
    assert report.is_file() and report.is_relative_to(tmp / "outputs")
    for figure in ("learning_curves.png", "throughput_by_batch_size.png", "preprocess_time_by_cluster.png"):
        assert (report.parent / figure).stat().st_size > 0
    last = result.stdout.strip().splitlines()[-1]  # the command that opens the UI on this experiment's runs
    assert (
        last.startswith("[pipeline] MLflow UI") and f"mlflow_ui.py --tracking-uri {store} --experiment bigimage" in last
    )
    assert f"report: {report}" in result.stdout


def test_main_job_ends_with_a_champion_and_mlflow_native_runs(pipeline_store) -> None:
    store, tmp, result = pipeline_store
    assert result.returncode == 0, result.stderr[-4000:]
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("bigimage").experiment_id])
    by_task = {}
    for run in runs:
        by_task.setdefault(run.data.tags["task"], []).append(run)
    champion = client.get_model_version_by_alias("bigimage-classifier", "champion")
    assert champion.run_id in {run.info.run_id for run in by_task["train"]}
    assert "[pipeline] model: models:/bigimage-classifier@champion" in result.stdout
    # One TFRecord set: written by task 1, read by task 2 and both trainings, under one digest.
    inputs = {
        (run.data.tags["task"], i.dataset.name, i.tags[0].value): i.dataset.digest
        for run in runs
        for i in run.inputs.dataset_inputs
    }
    assert {key[:2] for key in inputs} == {
        ("preprocess", "synthetic"),
        ("speedtest", "synthetic"),
        ("train", "synthetic.train"),
        ("train", "synthetic.validation"),
        ("train", "synthetic.test"),
    }
    # One set: task 1 wrote it, task 2 timed it; each training split it the same way into three subsets
    # with digests of their own.
    whole = {digest for key, digest in inputs.items() if key[0] != "train"}
    subsets = {(key[1], digest) for key, digest in inputs.items() if key[0] == "train"}
    assert len(whole) == 1 and len(subsets) == 3 and whole.isdisjoint(digest for _, digest in subsets)
    for run in runs:
        task = run.data.tags["task"]
        if task != "analysis":
            assert any(key.startswith("system/") for key in run.data.metrics), (task, sorted(run.data.metrics))
            assert run.data.params and all(value.strip() and value != "None" for value in run.data.params.values())
    assert not any(key.startswith(("strategy.", "model.", "train.")) for key in by_task["preprocess"][0].data.params)
    assert not any(
        key.startswith(("speedtest.", "preprocess.", "pipeline."))
        for run in by_task["train"]
        for key in run.data.params
    )
    assert not any(key.startswith("bytes_per_second") for key in by_task["speedtest"][0].data.metrics)
    (pipeline,) = by_task["pipeline"]
    assert (
        "train.best_val_accuracy" in pipeline.data.metrics
        and "train.default.best_val_accuracy" not in pipeline.data.metrics
    )
    (analysis,) = [
        run for run in by_task["analysis"] if run.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id
    ]
    assert analysis.data.tags["registered_model"] == "models:/bigimage-classifier@champion"
    assert analysis.info.run_name.startswith(f"analysis parent {pipeline.info.run_id[:8]}: ")
    assert {"top_config.mean_val_accuracy", "runs_judged", "runs_overfitting", "runs_excluded"} <= set(
        analysis.data.metrics
    )
    # what it analysed, as params; the params of every run are what it did, not how the config names code
    assert analysis.data.params["experiment"] == "bigimage"
    assert (
        analysis.data.params["parent_run_id"] == pipeline.info.run_id and "overfitting.patience" in analysis.data.params
    )
    assert analysis.data.tags["mlflow.source.name"] == "run.py"
    assert all(len(run.data.params) <= 31 for run in by_task["train"])
    assert not any(
        key.endswith("_target_") or key.startswith("cluster.shape") for run in runs for key in run.data.params
    )


@pytest.mark.parametrize("script", ["overfitting", "best_config", "report"])
def test_analysis_scripts_json_on_real_runs(pipeline_store, script: str) -> None:
    store, tmp, result = pipeline_store
    assert result.returncode == 0
    extra = ["--output-dir", str(tmp / f"report-{script}")] if script == "report" else []
    output = subprocess.run(
        [
            sys.executable,
            f"analysis/{script}.py",
            "--tracking-uri",
            store,
            "--experiment",
            "bigimage",
            "--json",
            *extra,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert output.returncode == 0, output.stderr[-3000:]
    parsed = json.loads(output.stdout)
    if script == "overfitting":
        assert len(parsed["runs"]) == 2 and parsed["excluded"] == []
    else:
        assert set(parsed["winners"]) == {"train", "preprocess", "speedtest"}
        assert parsed["winners"]["train"]["key"]["strategy.name"] in ("default", "mirrored")
    if script == "report":
        assert Path(parsed["report"]).is_file()
