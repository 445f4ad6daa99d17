"""The trained network as an MLflow Model: what the chief worker logs at the end of a training run.

The Model holds the weights of the run's judged epoch (:mod:`bigimage.tracking.judged`; its tag
``judged_epoch`` names it) and is named after the run's configuration (:func:`model_name`, e.g.
``small_cnn-mirrored-bs32``: ``runs:/<run id>/<name>`` and the run's Logged models find it). It is saved
with MLflow's ``tensorflow`` flavor, which saves a tf.keras model (tf-keras here,
``TF_USE_LEGACY_KERAS=1``) as ``data/model.keras``. Its signature is what the network takes and gives: uint8 RGB images
``[-1, S, S, 3]`` named ``image`` -> float32 logits ``[-1, classes]`` named ``logits``; the input example
is one real image of the TFRecord set; the metadata hold the class names in class-index order, so
``argmax`` of a prediction indexes them. ``mlflow.pyfunc.load_model`` predicts on a uint8 numpy batch,
in a process with ``TF_USE_LEGACY_KERAS=1`` set before TensorFlow loads (the flavor records the module as
``tensorflow.keras``, which is Keras 3 otherwise and cannot read a tf-keras file).

The network is read back from the ``.keras`` file every worker saved, outside any tf.distribute
strategy: saving a model built under MultiWorkerMirroredStrategy runs collectives, which the other
workers, done by then, would never join (the chief then fails once they have exited).

The worker has no active MLflow run (the launcher holds it), so the run id and tracking URI are given
explicitly; the experiment is set to the run's own, since MLflow files a logged model under the active
experiment, not under its run's. The pip requirements are given rather than inferred: inferring them
loads the model again in a subprocess, which takes longer than the logging itself.
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
    """Log the network saved at ``keras_path`` as the MLflow Model ``card.name`` of run ``run_id``; returns
    its ``models:/<id>`` URI. ``step``: the epoch whose weights it holds (MLflow links that epoch's metrics
    to the model), also its tag ``judged_epoch``."""
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
