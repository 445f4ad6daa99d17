"""An analysis run's headline results as its own metrics, tags and name (listed in docs/analysis.md), so
analysis runs sort, filter and tell themselves apart in the MLflow UI's runs table without opening the
report. The metrics have names of their own (a training run's ``best_val_accuracy`` is another quantity);
the name reads ``analysis <what was analysed>: <winner>``, e.g. ``analysis parent 1a2b3c4d: mirrored bs=32 local``.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from bigimage.analysis_lib import best_config
from bigimage.tracking import names
from bigimage.tracking.store import log_batch, retry_busy


def metrics(result: best_config.BestConfigResult) -> dict[str, float]:
    verdicts = result.overfitting.verdicts
    values = {
        "runs_judged": float(len(verdicts)),
        "runs_overfitting": float(sum(1 for verdict in verdicts if verdict.overfitting)),
        "runs_excluded": float(len(result.excluded)),
    }
    if result.training:
        values["top_config.mean_val_accuracy"] = float(result.training[0].score.mean)
    scores = (result.champion or {}).get("scores", {})
    names = {"val_accuracy": "champion.val_accuracy", "test_accuracy": "champion.test_accuracy"}
    names |= {f"test_accuracy_{side}": f"champion.test_accuracy_{side}" for side in ("low", "high")}
    values |= {metric: float(scores[key]) for key, metric in names.items() if key in scores}
    return values


def tags(result: best_config.BestConfigResult) -> dict[str, str]:
    out = {}
    if result.training:
        top = result.training[0]
        out.update({f"best.{key}": str(value) for key, value in top.key.items()})
        out["best.run_ids"] = ",".join(top.run_ids)[:5000]
    for section in ("preprocess", "speedtest"):
        winner = result.winners.get(section, {}).get("key", {})
        if "cluster.name" in winner:
            out[f"best.{section}.cluster.name"] = str(winner["cluster.name"])
    if result.champion:
        out[names.REGISTERED_MODEL] = result.champion["uri"]
        out["registered_model.version"] = result.champion["version"]
    return out


def run_name(result: best_config.BestConfigResult) -> str:
    selection = result.selection
    scope = (
        f"parent {selection.parent_run_id[:8]}"
        if selection.parent_run_id
        else f"experiment {selection.experiment_name}"
    )
    if not result.training:
        return f"analysis {scope}"
    key = result.training[0].key
    return f"analysis {scope}: {key['strategy.name']} bs={key['batch_size']} {key['cluster.name']}"


def log(client: MlflowClient, run_id: str, result: best_config.BestConfigResult) -> None:
    """Log the headline metrics and tags on the analysis run ``run_id`` and name it."""
    log_batch(client, run_id, metrics=metrics(result), tags=tags(result))
    retry_busy(lambda: client.update_run(run_id, name=run_name(result)))
