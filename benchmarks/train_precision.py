"""mixed_bfloat16 against float32 in real trainings: images/s and the judged validation accuracy over seeds.

    python benchmarks/train_precision.py [--seeds 3] [--epochs 8] [--json] [override ...]

Trains ``task=train`` through ``run.py`` (strategy ``default``, the workers' thread settings, the
input pipeline and its cache as a training has them) on the default data set's TFRecords (written by
``task=preprocess`` first when missing), once per precision and seed, the precisions alternating so
that a change of load hits both; every run goes to a throwaway MLflow store. Per precision it reports
the median of the runs' training images/s (each run's median over its epochs after the first, which
fills the cache) and the mean and spread of ``best_val_accuracy`` (the judged epoch's) over the seeds.
The goals: on a CPU with bf16 units, ``mixed_bfloat16`` at least 2x float32's images/s, with a mean
accuracy within 1 point of float32's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("float32", "mixed_bfloat16")


def _run(overrides: list[str]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *overrides], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"run.py {' '.join(overrides)} failed:\n{done.stderr[-3000:]}")


def _training(uri: str, experiment: str) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"no experiment {experiment} in {uri}: the training did not log")
    (run,) = client.search_runs([found.experiment_id])
    rates = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "images_per_second"))
    return {
        "images_per_second": statistics.median(value for step, value in rates if step > 0),
        "best_val_accuracy": run.data.metrics["best_val_accuracy"],
        "policy": run.data.tags.get("precision_policy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. image_size=128")
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="bigimage-precision-")
    uri = f"sqlite:///{store}/mlflow.db"
    common = [f"tracking.uri={uri}", *args.overrides]
    _run(["task=preprocess", "tracking.experiment=data", *common])  # reuses an unchanged set at once
    runs: dict[str, list[dict[str, Any]]] = {precision: [] for precision in PRECISIONS}
    for seed in range(args.seeds):
        for precision in PRECISIONS if seed % 2 == 0 else reversed(PRECISIONS):
            experiment = f"{precision}-{seed}"
            _run(
                [
                    "task=train", "strategy=default", f"train.precision={precision}", f"seed={seed}",
                    f"epochs={args.epochs}", f"tracking.experiment={experiment}", *common,
                ]
            )  # fmt: skip
            runs[precision].append({"seed": seed, **_training(uri, experiment)})
            print(f"{precision:<15} seed {seed}: {runs[precision][-1]}", file=sys.stderr, flush=True)
    summary = {
        precision: {
            "images_per_second": statistics.median(r["images_per_second"] for r in found),
            "mean_best_val_accuracy": statistics.mean(r["best_val_accuracy"] for r in found),
            "best_val_accuracy": [round(r["best_val_accuracy"], 4) for r in found],
            "policy": found[0]["policy"],
        }
        for precision, found in runs.items()
    }
    fp32, bf16 = summary["float32"], summary["mixed_bfloat16"]
    speedup = bf16["images_per_second"] / fp32["images_per_second"]
    points = 100 * (bf16["mean_best_val_accuracy"] - fp32["mean_best_val_accuracy"])
    if args.json:
        print(json.dumps({"runs": runs, "summary": summary, "speedup": speedup, "accuracy_points": points}))
        return
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()}; overrides: {' '.join(args.overrides) or 'none'}")
    for precision, entry in summary.items():
        print(
            f"{precision:<15} {entry['images_per_second']:8.1f} images/s (median of {args.seeds} runs)  "
            f"best_val_accuracy mean {entry['mean_best_val_accuracy']:.4f} {entry['best_val_accuracy']}"
        )
    print(f"mixed_bfloat16 / float32 images/s = {speedup:.2f}  (goal >= 2 on a CPU with bf16 units)")
    print(f"accuracy: mixed_bfloat16 minus float32 = {points:+.1f} points (goal: within 1)")


if __name__ == "__main__":
    main()
