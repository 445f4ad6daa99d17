"""A logged model's accuracy on its training run's validation and test subsets (the test set's only reader).

    python -m bigimage.train.evaluate --model-uri models:/bigimage-classifier/3 --run-id ID [--tracking-uri URI]

A set rewritten or re-split since the training is refused (exit 4). A process of its own, so that the
analysis never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from bigimage.train import inputs

EXIT_NOT_EVALUABLE = 4
SUBSETS = (inputs.VALIDATION, inputs.TEST)


class NotEvaluable(RuntimeError):
    """The run logged no config, or its TFRecord set or split is not what it trained on any more."""


def accuracy(model: Any, cfg: Any, plan: inputs.SplitPlan, subset: str, batch_size: int = 64) -> dict[str, Any]:
    """Correct predictions of ``model`` over every record of ``subset``, once each."""
    import numpy as np

    from bigimage.data import readers

    if plan.records(subset) == 0:
        return {"correct": 0, "records": 0, "accuracy": None}
    images = readers.decoded_records(inputs.subset_records(plan, subset), int(cfg.image_size), as_uint8=True)
    correct = records = 0
    for batch, classes in images.batch(batch_size).as_numpy_iterator():
        predicted = np.argmax(model.predict_on_batch(batch), axis=-1)
        correct += int(np.sum(predicted == classes))
        records += len(classes)
    return {"correct": correct, "records": records, "accuracy": correct / records}


def run_config(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException
    from omegaconf import OmegaConf

    from bigimage.tracking.runs import CONFIG_ARTIFACT

    with tempfile.TemporaryDirectory() as folder:
        try:
            return OmegaConf.load(client.download_artifacts(run_id, CONFIG_ARTIFACT, folder))
        except (MlflowException, OSError) as error:
            raise NotEvaluable(
                f"run {run_id} has no {CONFIG_ARTIFACT} to take its data and split from: {error}"
            ) from None


def check_digests(client: Any, run_id: str, cfg: Any, manifest: Any, plan: inputs.SplitPlan) -> None:
    """Raise :class:`NotEvaluable` unless the planned subsets have the digests the run logged for them."""
    from bigimage.tracking import datasets

    logged = {i.dataset.name: i.dataset.digest for i in client.get_run(run_id).inputs.dataset_inputs}
    planned = datasets.split_sets(
        manifest, str(cfg.tfrecord_dir), str(cfg.dataset.name), plan.description, plan.class_counts
    )
    for subset in SUBSETS:
        expected = planned[subset]
        if logged.get(expected.name) != expected.digest:
            raise NotEvaluable(
                f"run {run_id} logged {expected.name} with digest {logged.get(expected.name)}, the set at "
                f"{cfg.tfrecord_dir} splits to {expected.digest} now ({plan.description}): it was rewritten or "
                "re-split since the training, so its records may include ones the model trained on"
            )


def evaluate_run_model(model_uri: str, run_id: str) -> dict[str, dict[str, Any]]:
    """The accuracy of ``model_uri`` on run ``run_id``'s validation and test subsets (module doc)."""
    import mlflow

    from bigimage.data import readers
    from bigimage.train.task import local_tfrecord_dir

    client = mlflow.MlflowClient()
    cfg = run_config(client, run_id)
    data_dir = local_tfrecord_dir(cfg)
    manifest = readers.read_manifest(data_dir, int(cfg.image_size))
    plan = inputs.plan_split(cfg, data_dir, manifest)
    check_digests(client, run_id, cfg, manifest, plan)
    model = mlflow.tensorflow.load_model(model_uri)
    return {subset: accuracy(model, cfg, plan, subset) for subset in SUBSETS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigimage.train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model-uri", required=True, help="models:/<name>/<version>, models:/<model id>, runs:/...")
    parser.add_argument("--run-id", required=True, help="the training run whose split the model is evaluated on")
    parser.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import mlflow

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
        mlflow.set_registry_uri(args.tracking_uri)
    try:
        result = evaluate_run_model(args.model_uri, args.run_id)
    except NotEvaluable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NOT_EVALUABLE
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
