"""Metric names that the training workers log and the analysis reads (DESIGN, "MLflow contract").

Kept apart from both sides so that neither imports the other: the analysis never loads TensorFlow.
"""

#: The MLflow Model a training run logs its network as (``runs:/<run id>/model``); the registry step finds it by it.
MODEL_NAME = "model"

#: Per-epoch metrics of a training run, step = epoch index from 0.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "images_per_second")
