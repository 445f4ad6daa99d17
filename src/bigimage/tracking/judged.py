"""Which epoch a training run is judged at, one rule for every choice made from a run: the epoch of
its highest ``val_accuracy``, the earliest on ties (docs/analysis.md, "The judged epoch"). Kept apart
from both sides: the analysis never loads TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from bigimage.tracking import names

#: The per-epoch metric that picks the epoch, and the direction that counts as better.
MONITOR = names.VAL_ACCURACY
MODE = "max"

#: The training run's metrics that hold the judged epoch and the value of :data:`MONITOR` there.
EPOCH_METRIC = "best_epoch"
VALUE_METRIC = "best_val_accuracy"


def judged_epoch(history: Iterable[Mapping[str, float]]) -> tuple[float, int]:
    """``(value, epoch)`` of the judged epoch of a history (entries with ``epoch`` and :data:`MONITOR`);
    ``(nan, -1)`` when no epoch has a finite value."""
    scored = [
        (float(entry[MONITOR]), int(entry["epoch"]))
        for entry in history
        if MONITOR in entry and math.isfinite(float(entry[MONITOR]))
    ]
    if not scored:
        return float("nan"), -1
    best = max(value for value, _ in scored)
    return best, min(epoch for value, epoch in scored if value == best)
