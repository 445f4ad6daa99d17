"""Overfitting / validation-above-training verdicts, exclusions, tags written back, and the script."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bigimage.analysis_lib import overfitting as of
from bigimage.tracking import query
from tests.mlflow_fixtures import (
    GAP_ONLY,
    GAP_ONLY_ONSET,
    HEALTHY,
    HEALTHY_BEST,
    NAN,
    ONE_EPOCH,
    OVERFIT,
    OVERFIT_ONSET,
    VAL_ABOVE,
    run_script,
    runs_by_name,
    scenario_store,
)


def _long(h: dict) -> pd.DataFrame:
    return pd.DataFrame(
        [("r", k, i, float(v), i) for k, vals in h.items() for i, v in enumerate(vals)],
        columns=["run_id", "key", "step", "value", "timestamp"],
    )


def test_clear_overfitting_has_its_onset_and_both_reasons():
    v = of.judge("r", "x", _long(OVERFIT))
    assert v.overfitting and v.onset_epoch == OVERFIT_ONSET == v.min_val_loss_epoch
    assert "validation loss rose for 5 epoch(s) after its minimum at epoch 4" in v.reason
    assert "accuracy gap 0.29 exceeds 0.1" in v.reason
    assert v.gap == pytest.approx(0.29)
    # judged at its best val_accuracy (epoch 4 here), the one rule for every run
    assert v.judged_epoch == 4 and v.judged_val_accuracy == pytest.approx(max(OVERFIT["val_accuracy"]))
    assert not v.val_above_train
    assert v.tags() == {
        "overfitting": "true",
        "overfitting_onset_epoch": "4",
        "overfitting_reason": v.reason,
        "val_above_train": "false",
    }


def test_healthy_run_is_not_overfitting():
    v = of.judge("r", "x", _long(HEALTHY))
    assert not v.overfitting and v.onset_epoch is None
    assert v.judged_epoch == HEALTHY_BEST
    assert v.reason.startswith("no overfitting") and "last epoch" in v.reason
    assert "overfitting_onset_epoch" not in v.tags() and v.tags()["overfitting"] == "false"


def test_gap_alone_gives_the_last_epoch_within_the_threshold():
    v = of.judge("r", "x", _long(GAP_ONLY))
    assert v.overfitting and v.onset_epoch == GAP_ONLY_ONSET
    # the onset is reported, not used to score: the run is judged at its best val_accuracy, the last epoch here
    assert v.judged_epoch == 9 and v.judged_val_accuracy == pytest.approx(0.75)
    assert "gap 0.24 exceeds 0.1" in v.reason and "validation loss rose" not in v.reason
    # a looser threshold makes it healthy
    assert not of.judge("r", "x", _long(GAP_ONLY), of.Thresholds(gap_threshold=0.3)).overfitting


def test_patience_decides_the_loss_criterion():
    loose_gap = of.Thresholds(patience=6, gap_threshold=1.0)
    assert not of.judge("r", "x", _long(OVERFIT), loose_gap).overfitting  # rose for 5 < 6 epochs
    v = of.judge("r", "x", _long(OVERFIT), of.Thresholds(patience=5, gap_threshold=1.0))
    assert v.overfitting and v.onset_epoch == 4 and "gap" not in v.reason


def test_validation_above_training_is_flagged_but_not_called_overfitting():
    v = of.judge("r", "x", _long(VAL_ABOVE))
    assert v.val_above_train and not v.overfitting
    assert "not overfitting" in v.val_above_train_note and "dropout" in v.val_above_train_note
    assert v.tags()["val_above_train"] == "true" and v.tags()["overfitting"] == "false"


def test_rising_training_loss_is_instability_not_overfitting():
    h = {k: list(x) for k, x in HEALTHY.items()}
    h["val_loss"] = [1.0, 0.8, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]
    h["loss"] = [1.0, 0.8, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]
    v = of.judge("r", "x", _long(h))
    assert not v.overfitting
    assert any("unstable training" in n for n in v.notes)


@pytest.mark.parametrize(
    ("history", "match"),
    [
        (NAN, r"non-finite loss \(NaN/inf\) at epoch\(s\) \[2, 3\]"),
        (ONE_EPOCH, "only 1 epoch"),
        ({"loss": [1.0, 0.5]}, "missing metric history: val_loss"),
    ],
)
def test_curves_that_cannot_be_judged_raise(history, match):
    with pytest.raises(of.NotJudgeable, match=match):
        of.judge("r", "x", _long(history))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    return scenario_store(tmp_path_factory)


EXPECTED = {  # run name -> (overfitting, onset, val_above_train)
    "mirrored-32-a": (False, None, False),
    "mirrored-32-b": (False, None, False),
    "mirrored-32-c": (False, None, False),
    "mwms-32-a": (True, 4, False),
    "mwms-32-b": (True, 4, False),
    "default-64": (False, None, True),
    "default-16-gap": (True, 5, False),
    "foreign": (False, None, False),  # its curves can be judged; its params are ranked out by best_config
}
EXCLUDED = {
    "failed": "status FAILED",
    "running": "status RUNNING",
    "nan": "non-finite loss",
    "one-epoch": "only 1 epoch",
    "no-val-loss": "missing metric history: val_loss",
}


def test_analyse_scenario_flags_excludes_and_writes_tags(scenario):
    selection, runs = query.load_runs(scenario.uri, parent_run_id=scenario.ids["_pipeline"])
    metrics_before = {r.info.run_name: repr(sorted(r.data.metrics.items())) for r in runs_by_name(scenario).values()}
    result = of.analyse(selection, runs)
    got = {v.run_name: (v.overfitting, v.onset_epoch, v.val_above_train) for v in result.verdicts}
    assert got == EXPECTED
    reasons = {e.run_name: e.reason for e in result.excluded}
    assert set(reasons) == set(EXCLUDED)
    for name, fragment in EXCLUDED.items():
        assert fragment in reasons[name]
    of.write_tags(result)
    after = runs_by_name(scenario)
    for name, (over, onset, above) in EXPECTED.items():
        tags = after[name].data.tags
        assert tags["overfitting"] == str(over).lower()
        assert tags["val_above_train"] == str(above).lower()
        assert tags.get("overfitting_onset_epoch") == (None if onset is None else str(onset))
        assert tags["overfitting_reason"]
    for name in EXCLUDED:  # excluded runs are left alone
        assert "overfitting" not in after[name].data.tags
    # tags only: no metric was added or changed anywhere
    assert {n: repr(sorted(r.data.metrics.items())) for n, r in after.items()} == metrics_before


def test_script_json_is_one_parseable_document(scenario):
    proc = run_script(
        "overfitting",
        "--tracking-uri",
        scenario.uri,
        "--experiment",
        scenario.experiment_name,
        "--json",
        "--no-write-tags",
        "--patience",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["thresholds"]["patience"] == 3
    assert {r["run_name"]: (r["overfitting"], r["onset_epoch"], r["val_above_train"]) for r in doc["runs"]} == EXPECTED
    assert {e["run_name"] for e in doc["excluded"]} == set(EXCLUDED)
    assert doc["tags_written"] is False


def test_main_text_output_and_help(scenario, capsys):
    assert of.main(["--tracking-uri", scenario.uri, "--parent-run", scenario.ids["_sweep"], "--no-write-tags"]) == 0
    out = capsys.readouterr().out
    assert "mwms-32-a" in out and "Excluded:" in out and "not overfitting" in out
    with pytest.raises(SystemExit) as exit_info:
        of.main(["--help"])
    assert exit_info.value.code == 0
    helptext = capsys.readouterr().out
    assert "default: 2" in helptext and "default: 0.1" in helptext and "--tracking-uri" in helptext


def test_no_runs_fails_on_stderr_with_nothing_on_stdout(scenario, capsys):
    scenario.client.create_experiment("empty", artifact_location=(scenario.artifact_dir / "empty").as_uri())
    proc = run_script("overfitting", "--tracking-uri", scenario.uri, "--experiment", "empty", "--json")
    assert proc.returncode != 0 and proc.stdout == ""
    assert "no runs in experiment 'empty'" in proc.stderr
    assert of.main(["--tracking-uri", scenario.uri, "--experiment", "missing", "--json"]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no experiment named 'missing'" in captured.err


def test_bad_patience_is_refused(scenario):
    with pytest.raises(SystemExit, match="--patience must be >= 1"):
        of.main(["--tracking-uri", scenario.uri, "--patience", "0"])
