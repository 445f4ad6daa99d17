"""The trained network as an MLflow Model (``tensorflow`` flavor, tf-keras), logged by the chief worker.

It is read back from the saved ``.keras`` file outside any strategy: saving under MultiWorkerMirroredStrategy
runs collectives the finished workers never join. Signature and metadata: docs/mlflow.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
REQUIREMENTS = ("tensorflow", "tf-keras")


@dataclass(frozen=True)
class ModelCard:
    """What the logged model says about itself beyond the network: classes, input size, an example."""

    class_names: list[str]
    image_size: int
    shard_paths: list[str]  # where the input example is read from
    name: str  # the logged model's name (:func:`model_name`)


def model_name(cfg: Any) -> str:
    """The logged model's name: what the run trained, how and in what batches (``small_cnn-mirrored-bs32``)."""
    return f"{cfg.model.name}-{cfg.strategy.name}-bs{cfg.batch_size}"


def signature(image_size: int, num_classes: int) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes), OUTPUT_NAME)]),
    )


def example_images(shard_paths: list[str], image_size: int, count: int = 1) -> Any:
    """The first ``count`` images of the shards, decoded as uint8 ``[count, S, S, 3]``."""
    import numpy as np

    from bigimage.data import readers

    records = readers.record_dataset(shard_paths).take(count)
    images = [readers.decode_record(record, image_size, as_uint8=True)[0].numpy() for record in records]
    return np.stack(images)


def log_model(keras_path: str, card: ModelCard, tracking_uri: str | None, run_id: str, step: int) -> str:
    """Log the network at ``keras_path`` as run ``run_id``'s Model ``card.name`` holding epoch ``step``'s
    weights; returns its ``models:/`` URI. MLflow files it under the active experiment: the run's own."""
    import mlflow
    import tf_keras as keras

    model = keras.models.load_model(keras_path)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    info = mlflow.tensorflow.log_model(
        model,
        name=card.name,
        run_id=run_id,
        signature=signature(card.image_size, len(card.class_names)),
        input_example=example_images(card.shard_paths, card.image_size),
        metadata={"class_names": list(card.class_names), "image_size": card.image_size, "input": "uint8 RGB 0..255"},
        pip_requirements=[f"{name}=={metadata.version(name)}" for name in REQUIREMENTS],
        step=max(step, 0),
        tags={"judged_epoch": str(step)},
    )
    log.info("logged the model as %s (runs:/%s/%s)", info.model_uri, run_id, card.name)
    return info.model_uri
