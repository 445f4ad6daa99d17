"""The main job end to end on a tiny generated set, then the analysis scripts on the runs it made."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from bigimage.config import PROJECT_ROOT


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("pipeline")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable, "run.py", f"tracking.uri={store}", f"tracking.artifact_root={tmp / 'artifacts'}",
            f"paths.data_dir={tmp / 'data'}", f"paths.output_dir={tmp / 'outputs'}",
            "dataset.num_images=60", "image_size=32", "num_shards=4", "epochs=2", "batch_size=8",
            "pipeline.speedtest_overrides=['speedtest.repetitions=1','speedtest.batch_numbers=[2]']",
        ],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )
    return store, tmp, result


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
    assert sorted(run.data.params["strategy.name"] for run in steps if run.data.tags["task"] == "train") == ["default", "mirrored"]
    report = Path(pipeline.data.tags["report"])
    assert report.is_file() and report.is_relative_to(tmp / "outputs")
    for figure in ("learning_curves.png", "throughput_by_batch_size.png", "preprocess_time_by_cluster.png"):
        assert (report.parent / figure).stat().st_size > 0
    assert f"mlflow ui --backend-store-uri {store}" in result.stdout
    assert f"report: {report}" in result.stdout


@pytest.mark.parametrize("script", ["overfitting", "best_config", "report"])
def test_analysis_scripts_json_on_real_runs(pipeline_store, script: str) -> None:
    store, tmp, result = pipeline_store
    assert result.returncode == 0
    extra = ["--output-dir", str(tmp / f"report-{script}")] if script == "report" else []
    output = subprocess.run(
        [sys.executable, f"analysis/{script}.py", "--tracking-uri", store, "--experiment", "bigimage", "--json", *extra],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
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
