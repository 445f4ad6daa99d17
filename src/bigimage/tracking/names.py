"""The MLflow names that one module writes and another reads (docs/contracts.md, "MLflow"), apart from
both so neither imports the other; ``tests/test_mlflow_names.py`` fails on a key spelled again as a literal.
"""

# --- every run (bigimage.tracking.runs) -------------------------------------------------------
TAG_TASK = "task"  # preprocess, speedtest, train, pipeline, analysis, sweep:<task>
TAG_SWEEP_ID = "sweep_id"  # the sweep (its parent run's id) that launched a job's run
TAG_ERROR = "error"  # why a run ended FAILED or KILLED
TAG_NOTHING_TO_RUN = "nothing_to_run"  # a sweep's parent: why it launched no job and still succeeded

# --- every Spark task (bigimage.spark.session.log_spark_resources) ----------------------------
SPARK_MASTER = "spark.master"  # tag: the master URL Spark ran on
SPARK_DEPLOY = "spark.deploy"  # tag: local, standalone, yarn or dataproc, read back from the SparkContext
SPARK_EXECUTORS = "spark.executors"  # metric: executors granted
SPARK_TOTAL_CORES = "spark.total_cores"  # metric: cores granted over all executors

# --- tasks 1 and 2 (bigimage.spark.preprocess, bigimage.speedtest.task) ----------------------
IMAGES = "images"  # metric: images written (task 1)
SECONDS = "seconds"  # metric: the job's own seconds (task 1: first task to commit; task 2: the grid)
IMAGES_PER_SECOND = "images_per_second"  # metric (also per epoch in task 3)
STARTUP_SECONDS = "startup_seconds"  # metric: Spark's start-up, apart from the job
SHARDS = "shards"  # metric: TFRecord shards written (task 1)

# --- task 2 (bigimage.speedtest) --------------------------------------------------------------
#: The speed test's table artifact (``mlflow.log_table``): one row per source x batch size x batch number x repetition.
SPEEDTEST_TABLE = "speedtest.json"
#: The contract columns of :data:`SPEEDTEST_TABLE`, in order; all but ``source`` are numbers.
SPEEDTEST_COLUMNS = (
    "source",
    "batch_size",
    "batch_number",
    "repetition",
    IMAGES,
    "bytes",
    SECONDS,
    IMAGES_PER_SECOND,
    "bytes_per_second",
)
PIPELINE_THREADS = "speedtest.pipeline_threads"  # tag (and config key): threads of one tf.data pipeline
EFFECTIVE_PARALLELISM = "speedtest.effective_parallelism"  # tag: grid points timed side by side
TFRECORD_SPEEDUP = "tfrecord_speedup"  # metric: TFRecord over files images/s

# --- task 3 (bigimage.train) ------------------------------------------------------------------
#: Per-epoch metrics of a training run, step = epoch index from 0.
LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY = "loss", "accuracy", "val_loss", "val_accuracy"
EPOCH_METRICS = (LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY, "epoch_seconds", IMAGES_PER_SECOND)
SECONDS_PER_EPOCH = "seconds_per_epoch"  # metric: model.fit's seconds over the epochs run
TRAINING_SECONDS = "training_seconds"  # metric: model.fit's seconds
CHECKPOINT_DIR = "checkpoint_dir"  # param
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # tag
SPLIT = "split"  # param, and tag of each subset's dataset input: the split's rule
TRAIN_RECORDS = "train_records"  # params: the records of each subset
VAL_RECORDS = "val_records"
TEST_RECORDS = "test_records"

# --- the pipeline's parent run (bigimage.pipeline) and the analysis run -----------------------
TAG_REPORT = "report"  # the report's path
REGISTERED_MODEL = "registered_model"  # tag: models:/<name>@champion; the analysis run's param: the name
