"""Typed schemas behind ``conf/``: a wrong type or unknown key fails at composition with Hydra's message;
values that compose but cannot work fail in :func:`validate` (docs/configuration.md#validation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from bigimage.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# Closed choices. StrEnum members compare equal to their strings, so code may test ``deploy == "local"``;
# Hydra refuses any other value at composition and lists these.
Task = StrEnum("Task", ["preprocess", "speedtest", "train", "pipeline"])
Deploy = StrEnum("Deploy", ["local", "standalone", "dataproc"])
Launcher = StrEnum("Launcher", ["processes", "spark_barrier"])  # worker processes here, or Spark barrier tasks
Source = StrEnum("Source", ["files", "tfrecord"])
Split = StrEnum("Split", ["hash", "shard"])  # validation records by a hash of their bytes, or whole shards
OnShortData = StrEnum("OnShortData", ["repeat", "error"])
# mixed_bfloat16: bf16 compute, float32 variables; mixed_float16: GPUs only; auto: bf16 where the hardware has it.
Precision = StrEnum("Precision", ["float32", "mixed_bfloat16", "mixed_float16", "auto"])


class Strategy(StrEnum):
    default = "default"
    mirrored = "mirrored"
    multi_worker_mirrored = "multi_worker_mirrored"
    experimental_multi_worker_mirrored = "experimental_multi_worker_mirrored"

    @property
    def multi_worker(self) -> bool:
        return self in (Strategy.multi_worker_mirrored, Strategy.experimental_multi_worker_mirrored)


class Isolation(StrEnum):
    """Whether a multi-worker training's workers run in a private network namespace (bigimage.train.netns)."""

    required = "required"  # or the run stops saying why none can serve them
    preferred = "preferred"  # else the host network, with a warning
    off = "off"


# Set by the Dataproc driver script: this process is the job on the cluster (run the task here).
ON_DATAPROC_ENV = "BIGIMAGE_ON_DATAPROC"


@dataclass
class TaskConfig:
    name: Task = MISSING


@dataclass
class DataprocShape:
    """The seed's Dataproc cluster shape; same name, same shape locally and in the cloud."""

    single_node: bool = False
    master_machine_type: str = "n1-standard-8"
    master_boot_disk_type: str = "pd-ssd"
    master_boot_disk_size_gb: int = 500
    worker_count: int = 0
    worker_machine_type: str = "n1-standard-1"
    worker_boot_disk_type: str = "pd-standard"
    worker_boot_disk_size_gb: int = 0
    image_version: str = "3.0-debian13"  # Spark 4.1, as PySpark 4 here (docs/clusters.md)
    optional_components: list[str] = field(default_factory=list)


@dataclass
class DataprocJob:
    """Where and how to run on Dataproc (``cluster.deploy=dataproc``)."""

    project: str | None = None
    region: str = "europe-west2"
    cluster_name: str | None = None
    staging_bucket: str | None = None
    delete_cluster: bool = False
    dry_run: bool = False


@dataclass
class ClusterConfig:
    name: str = MISSING
    deploy: Deploy = Deploy.local
    # None: derived from deploy (local[cores] or the started standalone master); else spark://host:port or yarn.
    master: str | None = None
    executors: int = 1
    executor_cores: int = 2  # 0: all cores of this machine (local deploy only)
    executor_memory: str = "2g"
    driver_memory: str = "2g"
    partitions_per_core: int = 2
    spark_conf: dict[str, str] = field(default_factory=dict)
    # Hosts that share no file system: the loopback cluster's workers each see empty /tmp, data/, outputs/
    # and home (bigimage.spark.isolate); a multi-host run either way (bigimage.train.multihost).
    share_nothing: bool = False
    shape: DataprocShape = field(default_factory=DataprocShape)
    dataproc: DataprocJob = field(default_factory=DataprocJob)


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = MISSING  # local path or gs://bucket/prefix holding <label>/<image> files
    # Synthetic data only: how many images and from which seed; ignored for real folders.
    num_images: int = 0
    generator_seed: int = 0
    classes: list[str] = field(default_factory=list)  # empty: sorted folder names


@dataclass
class BuiltGroup:
    """A group whose option is built by calling the function its ``_target_`` names with the group's config
    (e.g. ``bigimage.train.model.small_cnn``): a new option is a YAML file and that function."""

    _target_: str = MISSING
    name: str = MISSING


@dataclass
class StrategyConfig(BuiltGroup):
    name: Strategy = MISSING
    num_workers: int = 1
    # mirrored on a CPU-only machine: split the CPU into this many logical devices (0: use devices as found).
    logical_cpu_devices: int = 0
    launcher: Launcher = Launcher.processes
    worker_timeout_seconds: int = 1800
    isolation: Isolation = Isolation.required


@dataclass
class ModelConfig(BuiltGroup):
    weights: str | None = None  # never downloaded by default
    dropout: float = 0.2
    width: int = 32


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlruns/mlflow.db
    experiment: str = "bigimage"
    artifact_root: str | None = None  # None: beside a sqlite store's database file (<root>/mlruns/artifacts)
    system_metrics: bool = True
    system_metrics_interval: float = 2.0
    # Where analysis/best_config.py and the main job's report register the winning training run's model.
    registered_model: str = "bigimage-classifier"
    # Tags every run of this config carries (e.g. experiments/scaling_points.yaml: scaling_point=true).
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class PreprocessConfig:
    jpeg_quality: int = 90
    shard_prefix: str = "flowers"
    max_failed_listed: int = 10000
    # A tfrecord_dir holding files this project did not write is refused; true deletes them with the old set.
    replace_foreign: bool = False


@dataclass
class SpeedtestConfig:
    sources: list[Source] = field(default_factory=lambda: list(Source))
    batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    batch_numbers: list[int] = field(default_factory=lambda: [10, 30, 60])
    repetitions: int = 3
    warmup_batches: int = 2
    parallelism: int = 1
    # When batch_size x batch_number exceeds the data: "repeat" the data, or "error".
    on_short_data: OnShortData = OnShortData.repeat
    # Threads of each timed tf.data pipeline; 0: the cores of the executor it runs on, read back from Spark.
    pipeline_threads: int = 0


@dataclass
class TrainConfig:
    learning_rate: float = 0.001
    validation_fraction: float = 0.2
    # Held out from every choice, stratified per class by a hash keyed with split_seed (bigimage.train.inputs).
    test_fraction: float = 0.1
    split_seed: int = 0
    precision: Precision = Precision.float32  # Keras' mixed-precision policy (bigimage.train.precision)
    augment: bool = False
    shuffle_buffer: int = 1000
    split: Split = Split.hash
    # Keep decoded images after the first epoch, in memory or in a file cache under cache_dir (None:
    # <paths.data_dir>/cache/decoded) as they fit (bigimage.train.cache).
    cache: bool = True
    cache_max_memory_fraction: float = 0.5
    cache_dir: str | None = None
    # None: <paths.data_dir>/checkpoints/<key of the training-relevant config>, so a rerun resumes.
    checkpoint_dir: str | None = None


@dataclass
class PipelineConfig:
    """What ``task=pipeline`` runs after preprocessing: Hydra-style overrides per step (data, not code)."""

    speedtest_overrides: list[str] = field(
        default_factory=lambda: ["speedtest.batch_numbers=[10,30]", "speedtest.repetitions=2"]
    )
    strategies: list[Strategy] = field(default_factory=lambda: [Strategy.default, Strategy.mirrored])
    train_overrides: list[str] = field(default_factory=list)
    report: bool = True


SCALING_POINT_KEYS = ("num_images", "executors", "batches")


@dataclass
class ScalingConfig:
    """A design of small runs for the scaling model and the ``point`` this job runs; points are dicts of
    ints (not dataclasses) so that one can be added on the command line."""

    point: str | None = None
    points: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class SearchConfig:
    """The Optuna study and trial of a search's job, set by the sweeper (empty otherwise), for the pruner."""

    study_name: str | None = None
    storage: str | None = None
    trial: int | None = None
    prune: bool = False
    confirm_of: int | None = None  # a confirmation run: the trial whose configuration it trains again


@dataclass
class PathsConfig:
    root_dir: str = str(PROJECT_ROOT)
    data_dir: str = str(PROJECT_ROOT / "data")
    output_dir: str = str(PROJECT_ROOT / "outputs")


@dataclass
class Config:
    task: TaskConfig = MISSING
    cluster: ClusterConfig = MISSING
    dataset: DatasetConfig = MISSING
    strategy: StrategyConfig = MISSING
    model: ModelConfig = MISSING
    tracking: TrackingConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    speedtest: SpeedtestConfig = field(default_factory=SpeedtestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tfrecord_dir: str = MISSING
    image_size: int = 192
    num_shards: int = 16
    batch_size: int = 32
    epochs: int = 10
    seed: int = 42
    search: SearchConfig = field(default_factory=SearchConfig)
    # The metric(s) of a training's result that run.py returns for a sweeper to optimise.
    optimized_metric: Any = "best_val_accuracy"


def register_configs() -> None:
    """Register the schema (idempotent); its typed group fields check every group's YAML when merged."""
    ConfigStore.instance().store(name="base_config", node=Config)


def compose_option(group: str, option: str) -> DictConfig:
    """The option ``option`` of the config group ``group`` (``cluster``, ``four``) as Hydra composes it into
    the primary config, its schema checked; inside a Hydra app or outside one. An unknown option raises
    Hydra's ``MissingConfigException``, which names the group's options."""
    from contextlib import nullcontext

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    outside = not GlobalHydra.instance().is_initialized()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3") if outside else nullcontext():
        return cast(DictConfig, compose(config_name="config", overrides=[f"{group}={option}"])[group])


class ConfigError(UserError, ValueError):
    """A configuration value that composes but cannot work; raised before any work starts."""


def _check_positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value!r} is not valid; it must be a whole number >= 1")


def _check_not_negative(key: str, value: int, zero_means: str = "") -> None:
    if value < 0:
        raise ConfigError(f"{key}={value} must be >= 0" + (f" (0: {zero_means})" if zero_means else ""))


MAX_IMAGE_SIZE = 16384  # a decoded 16384 px RGB image is 0.8 GB: beyond it no worker of these machines copes
# The store schemes MLflow's tracking client accepts (a database URL may add a driver: postgresql+psycopg2).
TRACKING_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


def _validate_tracking_uri(uri: str | None) -> None:
    if not uri:
        return
    scheme = str(uri).split("://", 1)[0].split("+", 1)[0].lower() if "://" in str(uri) else ""
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"tracking.uri={uri}: MLflow has no store for the scheme {scheme!r}; use a folder, "
            "sqlite:///path/to/mlflow.db, http(s)://host:port of an MLflow server, or a database URL "
            f"({', '.join(s for s in TRACKING_SCHEMES if s)})"
        )


def validate(cfg: DictConfig) -> None:
    """Every rule that spans fields, checked once per run before Spark or TensorFlow start; raises
    :class:`ConfigError` naming the key, the value and what is valid."""
    _validate_scaling(cfg.scaling)  # first: the experiment's other keys are read through it
    for key in ("image_size", "num_shards", "batch_size", "epochs"):
        _check_positive(key, cfg[key])
    _check_positive("cluster.executors", cfg.cluster.executors)
    _check_not_negative("cluster.executor_cores", cfg.cluster.executor_cores, "all local cores")
    if OmegaConf.is_missing(cfg.dataset, "root") or not str(cfg.dataset.root).strip():
        raise ConfigError(
            f"dataset.root is not set for dataset={cfg.dataset.name}; "
            "give a folder of <label>/<image> files, e.g. dataset=folder dataset.root=/data/flowers or gs://bucket/flowers"
        )
    if cfg.tracking.system_metrics and not cfg.tracking.system_metrics_interval > 0:
        raise ConfigError(
            f"tracking.system_metrics_interval={cfg.tracking.system_metrics_interval} must be > 0 seconds "
            "(or tracking.system_metrics=false to record none)"
        )
    if not 1 <= cfg.preprocess.jpeg_quality <= 100:
        raise ConfigError(f"preprocess.jpeg_quality={cfg.preprocess.jpeg_quality} must be in 1..100")
    if cfg.image_size > MAX_IMAGE_SIZE:
        decoded = cfg.image_size**2 * 3 / 1e9
        raise ConfigError(
            f"image_size={cfg.image_size} is above {MAX_IMAGE_SIZE}: one decoded image would take {decoded:.1f} GB "
            f"(image_size^2 x 3 bytes) before a batch of them; use image_size <= {MAX_IMAGE_SIZE}"
        )
    _validate_tracking_uri(cfg.tracking.uri)
    _validate_strategy(cfg.strategy)
    _validate_train(cfg)
    _validate_speedtest(cfg.speedtest)


def _validate_strategy(strategy: DictConfig) -> None:
    _check_positive("strategy.num_workers", strategy.num_workers)
    multi_worker = Strategy(strategy.name).multi_worker
    if not multi_worker and strategy.num_workers != 1:
        raise ConfigError(
            f"strategy={strategy.name} runs in one process, so strategy.num_workers must be 1 (got {strategy.num_workers}); "
            "use strategy=multi_worker_mirrored for several workers"
        )
    if strategy.launcher == Launcher.spark_barrier and not multi_worker:
        raise ConfigError(
            f"strategy.launcher=spark_barrier runs one worker per Spark barrier task, which only a multi-worker "
            f"strategy uses; strategy={strategy.name} runs in one process: use strategy.launcher=processes, "
            "or strategy=multi_worker_mirrored (or experimental_multi_worker_mirrored) with strategy.launcher=spark_barrier"
        )
    _check_not_negative("strategy.logical_cpu_devices", strategy.logical_cpu_devices, "devices as found")
    if strategy.worker_timeout_seconds <= 0:
        raise ConfigError(f"strategy.worker_timeout_seconds={strategy.worker_timeout_seconds} must be > 0")


def expected_replicas(cfg: Config) -> int | None:
    """Replicas in sync as far as the config tells on a CPU-only machine (None: only TF can tell)."""
    name = Strategy(cfg.strategy.name)
    if name == Strategy.default:
        return 1
    if name == Strategy.mirrored:
        return cfg.strategy.logical_cpu_devices or None
    return cfg.strategy.num_workers  # one CPU replica per worker


def check_batch_size(global_batch_size: int, replicas: int, strategy_name: str) -> int:
    """Per-replica batch size; raises ConfigError when the global batch does not divide by the replicas."""
    if global_batch_size % replicas:
        raise ConfigError(
            f"batch_size={global_batch_size} is the global batch size and must divide by the {replicas} "
            f"replicas in sync of strategy={strategy_name}; choose a multiple of {replicas} "
            f"(e.g. batch_size={max(replicas, global_batch_size // replicas * replicas)})"
        )
    return global_batch_size // replicas


def _validate_train(cfg: DictConfig) -> None:
    replicas = expected_replicas(cast(Config, cfg))  # a DictConfig of Config
    if replicas:
        check_batch_size(cfg.batch_size, replicas, cfg.strategy.name)
    if not 0.0 < cfg.train.validation_fraction < 1.0:
        raise ConfigError(f"train.validation_fraction={cfg.train.validation_fraction} must be between 0 and 1")
    if not 0.0 <= cfg.train.test_fraction < 1.0 - cfg.train.validation_fraction:
        raise ConfigError(
            f"train.test_fraction={cfg.train.test_fraction} must be at least 0 and leave records to train on "
            f"beside train.validation_fraction={cfg.train.validation_fraction}"
        )
    if not 0.0 < cfg.train.cache_max_memory_fraction <= 1.0:
        raise ConfigError(f"train.cache_max_memory_fraction={cfg.train.cache_max_memory_fraction} must be in (0, 1]")
    if cfg.model.name == "mobilenet_v2" and cfg.image_size < 32:
        raise ConfigError(f"model=mobilenet_v2 needs image_size >= 32 (got {cfg.image_size})")


def _validate_scaling(scaling: DictConfig) -> None:
    if scaling.point is not None and scaling.point not in scaling.points:
        raise ConfigError(
            f"scaling.point={scaling.point} is not one of the design's points: {', '.join(scaling.points) or 'none'}"
        )
    for name, point in scaling.points.items():
        if sorted(point) != sorted(SCALING_POINT_KEYS) or min(point.values()) < 1:
            raise ConfigError(
                f"scaling.points.{name}={dict(point)} must give {', '.join(SCALING_POINT_KEYS)}, each >= 1"
            )


def _validate_speedtest(speed: DictConfig) -> None:
    if not speed.sources:
        raise ConfigError(f"speedtest.sources is empty; give at least one of: {', '.join(Source)}")
    for key in ("batch_sizes", "batch_numbers"):
        values = list(speed[key])
        if not values:
            raise ConfigError(f"speedtest.{key} is empty; give at least one value >= 1")
        for value in values:
            _check_positive(f"speedtest.{key}", value)
    for key in ("repetitions", "parallelism"):
        _check_positive(f"speedtest.{key}", speed[key])
    _check_not_negative("speedtest.warmup_batches", speed.warmup_batches)
    _check_not_negative("speedtest.pipeline_threads", speed.pipeline_threads, "the executor's cores")
