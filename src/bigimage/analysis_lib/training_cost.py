"""Training configurations by cost (``seconds_per_epoch``), and which of them are on the
accuracy/cost Pareto front within their comparable group: the cost-aware search's front."""

from __future__ import annotations

import pandas as pd

from bigimage.analysis_lib import common, comparable
from bigimage.search.trial import TAG_PRUNED
from bigimage.tracking import judged, names, query

BASE_PARAMS = ("strategy.name", "batch_size", "cluster.name")
HYPERPARAMS = (
    "strategy.num_workers",
    "model.name",
    "model.width",
    "model.dropout",
    "train.learning_rate",
    "train.precision",
    "epochs",
)
ACCURACY_METRIC = judged.VALUE_METRIC
COST_METRIC = names.SECONDS_PER_EPOCH
GROUP = "group"  # Ranked.extra: the comparable group's label


def is_pruned(row: pd.Series) -> bool:
    return str(row.get(f"tags.{TAG_PRUNED}", "")).lower() == "true"


def config_params(runs: pd.DataFrame) -> list[str]:
    """The params that tell training configurations apart among ``runs`` (module doc)."""
    varying = [
        key
        for key in HYPERPARAMS
        if f"params.{key}" in runs.columns and runs[f"params.{key}"].dropna().astype(str).nunique() > 1
    ]
    return [*BASE_PARAMS, *varying]


def rank_by_cost(runs: pd.DataFrame, confidence: float = 0.95) -> list[common.Ranked]:
    """FINISHED, unpruned training configurations by seconds per epoch, cheapest first per comparable
    group; ``extra`` holds the mean ``best_val_accuracy``, ``pareto_optimal`` and the group's label."""
    if runs.empty:
        return []
    training = runs[runs["task"] == "train"]
    keys = config_params(training)
    rows = []
    scores: dict[str, tuple[tuple, float, float]] = {}  # run id -> configuration, accuracy, cost
    for _, row in training.iterrows():
        accuracy, cost = query.metric(row, ACCURACY_METRIC), query.metric(row, COST_METRIC)
        # the accuracy ranking says why a run is left out (status, pruned, no metric)
        if row["status"] == "FINISHED" and not is_pruned(row) and accuracy is not None and cost is not None:
            rows.append(row)
            scores[row["run_id"]] = (tuple(str(query.param(row, name, "")) for name in keys), accuracy, cost)
    groups = comparable.groups(rows, comparable.TRAINING)
    return [item for group in groups for item in _rank_group(group, keys, scores, confidence)]


def _rank_group(
    group: comparable.Group, keys: list[str], scores: dict[str, tuple[tuple, float, float]], confidence: float
) -> list[common.Ranked]:
    """One comparable group's configurations by seconds per epoch, its Pareto front marked (module doc)."""
    members: dict[tuple, list[str]] = {}
    for run_id in group.run_ids:
        members.setdefault(scores[run_id][0], []).append(run_id)
    ranked = [
        common.Ranked(
            dict(zip(keys, key)),
            common.mean_interval([scores[run_id][2] for run_id in ids], confidence),
            ids,
            {ACCURACY_METRIC: common.mean_interval([scores[run_id][1] for run_id in ids]).mean},
        )
        for key, ids in members.items()
    ]
    for item in ranked:
        accuracy, cost = item.extra[ACCURACY_METRIC], item.score.mean
        item.extra["pareto_optimal"] = not any(
            other.extra[ACCURACY_METRIC] >= accuracy
            and other.score.mean <= cost
            and (other.extra[ACCURACY_METRIC] > accuracy or other.score.mean < cost)
            for other in ranked
        )
        item.extra[GROUP] = group.label
    ranked.sort(key=lambda r: (r.score.mean, -r.extra[ACCURACY_METRIC], str(r.key)))
    return ranked
