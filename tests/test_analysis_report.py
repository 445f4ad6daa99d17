"""The report: figures, Markdown, the analysis run and its artifacts, and the script."""

from __future__ import annotations

import json

import pytest

from bigimage.analysis_lib import report as rp
from bigimage.tracking import query
from tests.mlflow_fixtures import run_script, runs_by_name, scenario_store

FILES = (rp.REPORT_FILE, rp.JSON_FILE, rp.FIG_CURVES, rp.FIG_THROUGHPUT, rp.FIG_PREPROCESS)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return scenario_store(tmp_path_factory)


def _artifacts(store, run_id) -> dict[str, int]:
    return {a.path: a.file_size for a in store.client.list_artifacts(run_id)}


def test_report_of_a_pipeline_is_written_and_logged_as_a_child_analysis_run(scenario, tmp_path):
    out = tmp_path / "report"
    rep = rp.make_report(scenario.uri, parent_run_id=scenario.ids["_pipeline"], output_dir=out)
    assert rep.path == out / "report.md"
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / rp.FIG_CURVES).read_bytes()[:4] == b"\x89PNG"
    md = rep.path.read_text()
    for fragment in (
        "## Overfitting",
        "## Best training configuration",
        "## Preprocessing: cluster shapes",
        "## Speed test: cluster shapes",
        "## Runs left out",
        "| mwms-32-a ",
        "This is not overfitting",
        "strategy mirrored, batch size 32",
        "is distinguishable from the next",
        f"![Learning curves]({rp.FIG_CURVES})",
        "status FAILED",
        "params of another schema",
        rep.run_id,
    ):
        assert fragment in md, fragment
    doc = json.loads((out / rp.JSON_FILE).read_text())
    assert doc["best_config"]["winners"]["train"]["key"]["strategy.name"] == "mirrored"

    run = scenario.client.get_run(rep.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == scenario.experiment_id
    assert run.data.tags["task"] == "analysis"
    assert run.data.tags["mlflow.parentRunId"] == scenario.ids["_pipeline"]
    logged = _artifacts(scenario, rep.run_id)
    assert set(FILES) <= set(logged) and all(logged[f] > 0 for f in FILES)
    # the report also wrote the analysis tags back
    tags = runs_by_name(scenario)
    assert tags["mwms-32-a"].data.tags["overfitting_onset_epoch"] == "4"
    assert tags["mirrored-32-a"].data.tags["best_config"] == "true"

    # a second report over the same parent ignores the first analysis run (now one of its children)
    again = rp.make_report(
        scenario.uri, parent_run_id=scenario.ids["_pipeline"], output_dir=tmp_path / "again", write_tags=False
    )
    assert rep.run_id not in {e.run_id for e in again.result.excluded}
    assert len(again.result.excluded) == len(rep.result.excluded)


def test_build_report_for_an_experiment_without_throughput_data(scenario, tmp_path):
    # the sweep holds training runs only: the speed and preprocessing figures are left out, with a note
    path = rp.make_report(
        scenario.uri, parent_run_id=scenario.ids["_sweep"], output_dir=tmp_path / "r", write_tags=False, log_run=False
    ).path
    assert path == tmp_path / "r" / "report.md" and path.stat().st_size > 0
    assert (tmp_path / "r" / rp.FIG_CURVES).stat().st_size > 0
    assert not (tmp_path / "r" / rp.FIG_THROUGHPUT).exists()
    md = path.read_text()
    assert "no usable speed-test table" in md and "no usable preprocess run" in md


def test_script_json_and_analysis_run_in_the_experiment(scenario, tmp_path):
    out = tmp_path / "cli"
    proc = run_script(
        "report",
        "--tracking-uri",
        scenario.uri,
        "--experiment",
        scenario.experiment_name,
        "--output-dir",
        str(out),
        "--json",
        "--no-write-tags",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Downloading artifacts" not in proc.stderr  # MLflow's progress bar, one per table loaded
    doc = json.loads(proc.stdout)
    assert doc["report"] == str(out / "report.md")
    assert sorted(doc["figures"]) == sorted([rp.FIG_CURVES, rp.FIG_PREPROCESS, rp.FIG_THROUGHPUT])
    assert any("overfit" in c for c in doc["conclusions"])
    run = scenario.client.get_run(doc["analysis_run_id"])
    assert run.data.tags["task"] == "analysis" and "mlflow.parentRunId" not in run.data.tags
    assert set(FILES) <= set(_artifacts(scenario, run.info.run_id))


def test_no_runs_and_default_output_dir(scenario, capsys):
    assert rp.main(["--tracking-uri", scenario.uri, "--experiment", "missing", "--json"]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no experiment named 'missing'" in captured.err
    assert rp.default_output_dir().parent == query.PROJECT_ROOT / "reports"
