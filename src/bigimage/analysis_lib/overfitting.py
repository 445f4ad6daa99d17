"""Overfitting (with its onset epoch) and "validation above training", judged from the per-epoch
histories in MLflow (docs/analysis.md); runs that cannot be judged are excluded with the reason."""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from bigimage.analysis_lib import common, training_cost
from bigimage.tracking import judged, names, query

TAG_OVERFITTING = "overfitting"
TAG_ONSET = "overfitting_onset_epoch"
TAG_REASON = "overfitting_reason"
TAG_VAL_ABOVE = "val_above_train"

SCRIPT_HELP = (
    "Flag overfitting (with its onset epoch) and 'validation above training' per training run, "
    "and write the verdicts back to each run as MLflow tags."
)
VAL_ABOVE_TRAIN_EXPLANATION = (
    "not overfitting; usual causes: regularisation active only in training (dropout, augmentation), "
    "training accuracy averaged over an epoch while the model was still improving, an easier "
    "validation split, or training images leaking into the validation set"
)


def _threshold(default: float, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class Thresholds:
    """The judgement's knobs; each is also a command-line option (``--patience``, ...) with this help."""

    patience: int = _threshold(
        2, "epochs validation loss must stay above its minimum, with training loss falling, to call it overfitting"
    )
    gap_threshold: float = _threshold(0.10, "final training-minus-validation accuracy gap above which a run overfits")
    min_delta: float = _threshold(0.0, "a validation loss counts as above the minimum only by more than this")
    val_above_margin: float = _threshold(
        0.01, "flag 'validation above training' when final val_accuracy exceeds accuracy by more than this"
    )


@dataclass
class Verdict:
    """The judgement of one training run."""

    run_id: str
    run_name: str | None
    epochs: int
    overfitting: bool
    onset_epoch: int | None
    reason: str
    gap: float | None  # final training accuracy minus final validation accuracy
    val_above_train: bool
    val_above_train_note: str
    min_val_loss_epoch: int
    judged_epoch: int | None  # bigimage.tracking.judged; None without a val_accuracy history
    judged_val_accuracy: float | None  # val_accuracy at the judged epoch
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        return self.run_name or self.run_id[:8]

    def row(self) -> dict:
        """The verdict as a row of the tables (terminal and report)."""
        return {
            "run": self.label,
            "epochs": self.epochs,
            "overfitting": "yes" if self.overfitting else "no",
            "onset epoch": self.onset_epoch,
            "judged epoch": self.judged_epoch,
            "final gap": self.gap,
            "val above train": "yes" if self.val_above_train else "no",
            "reason": self.reason,
        }

    def tags(self) -> dict[str, str]:
        tags = {
            TAG_OVERFITTING: "true" if self.overfitting else "false",
            TAG_REASON: self.reason,
            TAG_VAL_ABOVE: "true" if self.val_above_train else "false",
        }
        if self.onset_epoch is not None:
            tags[TAG_ONSET] = str(self.onset_epoch)
        return tags


@dataclass
class Exclusion:
    run_id: str
    run_name: str | None
    task: str | None
    reason: str

    @classmethod
    def of(cls, row: pd.Series, reason: str) -> Exclusion:
        """The exclusion of a :func:`query.load_runs` row."""
        return cls(row["run_id"], row.get("run_name"), row.get("task"), reason)

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return f"{self.run_name or self.run_id} ({self.run_id}, task {self.task}): {self.reason}"


class NotJudgeable(ValueError):
    """A run whose curves cannot be judged; the message says why."""


def is_training_run(row: pd.Series) -> bool:
    """Tag ``task=train``, or (no task tag) a run that logged both ``loss`` and ``val_loss``."""
    task = row.get("task")
    if isinstance(task, str) and task:
        return task == "train"
    return query.metric(row, names.LOSS) is not None and query.metric(row, names.VAL_LOSS) is not None


def _series(history: pd.DataFrame, key: str) -> pd.Series | None:
    """One metric of a long-format history as a step-indexed series of the values really logged."""
    h = history[history["key"] == key]
    if h.empty:
        return None
    h = h.sort_values(["step", "timestamp"], kind="stable").drop_duplicates("step", keep="last")
    return h.set_index("step")["value"].astype(float)


def _history_steps(history: pd.DataFrame, notes: list[str]) -> tuple[list[int], pd.Series, pd.Series]:
    """The epochs with both losses, and the two loss curves; raises NotJudgeable when unusable."""
    loss, val_loss = _series(history, names.LOSS), _series(history, names.VAL_LOSS)
    missing = [key for key, series in ((names.LOSS, loss), (names.VAL_LOSS, val_loss)) if series is None]
    if missing or loss is None or val_loss is None:
        raise NotJudgeable(f"missing metric history: {', '.join(missing)}")
    nonfinite = sorted({int(step) for step, value in [*loss.items(), *val_loss.items()] if not math.isfinite(value)})
    if nonfinite:
        raise NotJudgeable(f"non-finite loss (NaN/inf) at epoch(s) {nonfinite}: training diverged, curves not usable")
    steps = sorted(set(loss.index) & set(val_loss.index))
    if len(steps) < 2:
        raise NotJudgeable(f"only {len(steps)} epoch(s) with both loss and val_loss: no curve to judge")
    if steps != list(range(int(steps[0]), int(steps[0]) + len(steps))):
        notes.append(f"epochs are not contiguous ({steps[:3]}...); judged on the logged epochs only")
    return steps, loss, val_loss


@dataclass(frozen=True)
class _LossRise:
    """How validation loss behaved after its minimum."""

    min_index: int  # position of the minimum in the judged epochs
    min_epoch: int
    rise_epochs: int  # consecutive epochs above the minimum right after it
    end_index: int  # position of the last of those epochs
    overfitting: bool  # rose for `patience` epochs while training loss fell


def _loss_rise(
    steps: list[int], train_loss: np.ndarray, val_loss: np.ndarray, thresholds: Thresholds, notes: list[str]
) -> _LossRise:
    min_index = int(np.argmin(val_loss))
    rise_epochs = 0
    for value in val_loss[min_index + 1 :]:
        if value <= val_loss[min_index] + thresholds.min_delta:
            break
        rise_epochs += 1
    end_index = min_index + rise_epochs
    rose = rise_epochs >= thresholds.patience
    overfitting = rose and train_loss[end_index] < train_loss[min_index]
    if rose and not overfitting:
        notes.append(
            f"validation loss rose for {rise_epochs} epochs after epoch {steps[min_index]} but training loss did "
            f"not fall ({train_loss[min_index]:.4g} -> {train_loss[end_index]:.4g}): unstable training rather than overfitting"
        )
    return _LossRise(min_index, int(steps[min_index]), rise_epochs, end_index, overfitting)


@dataclass(frozen=True)
class _AccuracyGap:
    """Training minus validation accuracy per epoch, and what its last value says."""

    gaps: pd.Series | None  # by epoch; None without accuracy histories
    final: float | None
    val_above_note: str  # non-empty when validation accuracy ends above training accuracy


def _accuracy_gap(
    steps: list[int],
    accuracy: pd.Series | None,
    val_accuracy: pd.Series | None,
    thresholds: Thresholds,
    notes: list[str],
) -> _AccuracyGap:
    if accuracy is None or val_accuracy is None:
        notes.append("no accuracy/val_accuracy history: accuracy-gap check and validation-above-training check skipped")
        return _AccuracyGap(None, None, "")
    gaps = (accuracy - val_accuracy).reindex(steps)  # NaN where either is missing
    gaps = gaps[np.isfinite(gaps)]
    if gaps.empty:
        return _AccuracyGap(None, None, "")
    final, last = float(gaps.iloc[-1]), gaps.index[-1]
    note = ""
    if -final > thresholds.val_above_margin:
        note = (
            f"validation accuracy {float(val_accuracy[last]):.4g} is above training accuracy "
            f"{float(accuracy[last]):.4g} at the last epoch (by {-final:.4g}): {VAL_ABOVE_TRAIN_EXPLANATION}"
        )
    return _AccuracyGap(gaps, final, note)


def _judged(steps: list[int], val_accuracy: pd.Series | None) -> tuple[float | None, int | None]:
    """(val_accuracy, epoch) at the judged epoch of the judged steps (:mod:`bigimage.tracking.judged`)."""
    if val_accuracy is None:
        return None, None
    history = [{"epoch": step, judged.MONITOR: val_accuracy[step]} for step in steps if step in val_accuracy.index]
    value, epoch = judged.judged_epoch(history)
    return (value, epoch) if epoch >= 0 else (None, None)


def judge(run_id: str, run_name: str | None, history: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> Verdict:
    """Judge one run from its long-format history; :class:`NotJudgeable` says why its curves cannot be."""
    notes: list[str] = []
    steps, loss, val_loss = _history_steps(history, notes)
    train_curve, val_curve = loss.loc[steps].to_numpy(float), val_loss.loc[steps].to_numpy(float)
    rise = _loss_rise(steps, train_curve, val_curve, thresholds, notes)
    val_accuracy = _series(history, names.VAL_ACCURACY)
    gap = _accuracy_gap(steps, _series(history, "accuracy"), val_accuracy, thresholds, notes)
    by_gap = gap.final is not None and gap.final > thresholds.gap_threshold
    judged_value, judged_epoch = _judged(steps, val_accuracy)

    parts = []
    onset = None
    if rise.overfitting:
        onset = rise.min_epoch
        parts.append(
            f"validation loss rose for {rise.rise_epochs} epoch(s) after its minimum at epoch {rise.min_epoch} "
            f"({val_curve[rise.min_index]:.4g} -> {val_curve[rise.end_index]:.4g}) while training loss fell "
            f"({train_curve[rise.min_index]:.4g} -> {train_curve[rise.end_index]:.4g})"
        )
    if by_gap and gap.gaps is not None:
        parts.append(
            f"final training-minus-validation accuracy gap {gap.final:.4g} exceeds {thresholds.gap_threshold:g}"
        )
        if onset is None:
            within = [step for step in gap.gaps.index if gap.gaps[step] <= thresholds.gap_threshold]
            onset = int(within[-1]) if within else rise.min_epoch
            if not within:
                parts.append("the gap was above the threshold from the first epoch")
    overfitting = rise.overfitting or by_gap
    reason = "; ".join(parts) if overfitting else _no_overfitting_reason(steps, rise, gap, thresholds)
    return Verdict(
        run_id=run_id,
        run_name=run_name,
        epochs=len(steps),
        overfitting=overfitting,
        onset_epoch=onset,
        reason=reason,
        gap=gap.final,
        val_above_train=bool(gap.val_above_note),
        val_above_train_note=gap.val_above_note,
        min_val_loss_epoch=rise.min_epoch,
        judged_epoch=judged_epoch,
        judged_val_accuracy=judged_value,
        notes=notes,
    )


def _no_overfitting_reason(steps: list[int], rise: _LossRise, gap: _AccuracyGap, thresholds: Thresholds) -> str:
    gap_text = (
        f"final accuracy gap {gap.final:.4g} <= {thresholds.gap_threshold:g}"
        if gap.final is not None
        else "no accuracy gap measured"
    )
    if rise.min_index == len(steps) - 1:
        loss_text = f"validation loss still at its minimum in the last epoch ({rise.min_epoch})"
    else:
        loss_text = (
            f"validation loss did not stay above its minimum (epoch {rise.min_epoch}) for {thresholds.patience} "
            "epochs with training loss falling"
        )
    return f"no overfitting: {loss_text}; {gap_text}"


@dataclass
class OverfittingResult:
    selection: query.RunSelection
    thresholds: Thresholds
    verdicts: list[Verdict]
    excluded: list[Exclusion]
    runs: pd.DataFrame  # the full runs table that was loaded
    histories: pd.DataFrame  # wide per-epoch histories (query.histories_wide) of the training runs
    tags_written: bool = False

    def as_dict(self) -> dict:
        return {
            "selection": self.selection.as_dict(),
            "thresholds": asdict(self.thresholds),
            "runs": [v.as_dict() for v in self.verdicts],
            "excluded": [e.as_dict() for e in self.excluded],
            "tags_written": self.tags_written,
            "summary": {
                "judged": len(self.verdicts),
                "overfitting": sum(v.overfitting for v in self.verdicts),
                "val_above_train": sum(v.val_above_train for v in self.verdicts),
                "excluded": len(self.excluded),
            },
        }


def analyse(
    selection: query.RunSelection,
    runs: pd.DataFrame,
    thresholds: Thresholds = Thresholds(),
) -> OverfittingResult:
    """Judge every training run of ``runs`` (a :func:`query.load_runs` table)."""
    verdicts: list[Verdict] = []
    excluded: list[Exclusion] = []
    candidates = runs[runs.apply(is_training_run, axis=1)] if not runs.empty else runs
    ok_status = []
    for _, row in candidates.iterrows():
        if row["status"] != "FINISHED":
            what = {
                "RUNNING": "still running, curves incomplete",
                "FAILED": "the run failed",
                "KILLED": "the run was killed",
                "SCHEDULED": "not started",
            }.get(row["status"], "not finished")
            excluded.append(Exclusion.of(row, f"status {row['status']}: {what}"))
        elif training_cost.is_pruned(row):  # a search stopped it: short curves, no verdict
            reason = f"pruned by its search after epoch {row.get('tags.pruned_epoch')}: stopped early, not judged"
            excluded.append(Exclusion.of(row, reason))
        else:
            ok_status.append(row)
    run_ids = [r["run_id"] for r in ok_status]
    long = query.load_histories(
        selection.tracking_uri,
        run_ids,
        (names.LOSS, names.VAL_LOSS, names.ACCURACY, names.VAL_ACCURACY),
        runs=candidates,
    )
    wide = query.histories_wide(long)
    for row in ok_status:
        hist = long[long["run_id"] == row["run_id"]]
        try:
            verdicts.append(judge(row["run_id"], row["run_name"], hist, thresholds))
        except NotJudgeable as exc:
            excluded.append(Exclusion.of(row, str(exc)))
    return OverfittingResult(selection, thresholds, verdicts, excluded, runs, wide)


def write_tags(result: OverfittingResult) -> None:
    """Write the analysis tags back to each judged run (tags only, never metrics)."""
    client = query.client_for(result.selection.tracking_uri)
    for v in result.verdicts:
        query.set_tags(result.selection.tracking_uri, v.run_id, v.tags())
        if v.onset_epoch is None:  # drop an onset left by an earlier analysis of the same run
            with contextlib.suppress(Exception):  # there was none, or the store is busy: the tag stays
                client.delete_tag(v.run_id, TAG_ONSET)
    result.tags_written = True


def add_threshold_args(parser: argparse.ArgumentParser) -> None:
    for threshold in fields(Thresholds):
        parser.add_argument(
            "--" + threshold.name.replace("_", "-"),
            type=type(threshold.default),
            default=threshold.default,
            help=f"{threshold.metadata['help']} (default: {threshold.default})",
        )


def thresholds_from_args(args: argparse.Namespace) -> Thresholds:
    if args.patience < 1:
        raise SystemExit("error: --patience must be >= 1")
    return Thresholds(**{threshold.name: getattr(args, threshold.name) for threshold in fields(Thresholds)})


def render_text(result: OverfittingResult) -> str:
    out = [f"Runs: {result.selection.describe()}", "", common.markdown_table([v.row() for v in result.verdicts])]
    out += [f"{v.run_name or v.run_id}: {v.val_above_train_note}" for v in result.verdicts if v.val_above_train]
    if result.excluded:
        out += ["", "Excluded:"] + [f"  {e.text()}" for e in result.excluded]
    out += ["", "tags written back" if result.tags_written else "tags not written (--no-write-tags)"]
    return "\n".join(out) + "\n"


@common.exits_without_runs
def main(argv: list[str] | None = None) -> int:
    parser = common.source_parser("overfitting.py", SCRIPT_HELP)
    add_threshold_args(parser)
    parser.add_argument("--no-write-tags", action="store_true", help="only report; do not tag the runs")
    args = parser.parse_args(argv)
    thresholds = thresholds_from_args(args)
    selection, runs = query.load_runs(args.tracking_uri, args.experiment, args.parent_run)
    result = analyse(selection, runs, thresholds)
    return common.finish(
        args,
        result,
        bool(result.verdicts),
        f"no training run that can be judged in {selection.describe()}",
        write_tags,
        render_text,
    )
