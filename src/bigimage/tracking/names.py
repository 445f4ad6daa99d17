"""MLflow names that the tasks log and the analysis reads (docs/contracts.md, "MLflow").

Kept apart from both sides so that neither imports the other: the analysis never loads TensorFlow or Spark.
"""

#: Per-epoch metrics of a training run, step = epoch index from 0.
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds", "images_per_second")

#: The speed test's table artifact (``mlflow.log_table``): one row per source x batch size x batch number x repetition.
SPEEDTEST_TABLE = "speedtest.json"

#: The contract columns of :data:`SPEEDTEST_TABLE`, in order; all but ``source`` are numbers.
SPEEDTEST_COLUMNS = (
    "source",
    "batch_size",
    "batch_number",
    "repetition",
    "images",
    "bytes",
    "seconds",
    "images_per_second",
    "bytes_per_second",
)
