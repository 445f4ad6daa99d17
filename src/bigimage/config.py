"""Typed schemas behind ``conf/``: a wrong type or unknown key fails at composition with Hydra's message.

Each group's YAML options start from the schema registered here (``defaults: [base_<group>, _self_]``).
Rules that span fields (a positive batch size, a dataset root for ``dataset=folder``) live in
:func:`validate`, which ``run.py`` calls once before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]

TASKS = ("preprocess", "speedtest", "train", "pipeline")
DEPLOY_MODES = ("local", "standalone", "dataproc")
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "experimental_multi_worker_mirrored")
SPEEDTEST_SOURCES = ("files", "tfrecord")
# Set by the Dataproc driver script: this process is the job on the cluster (run the task here).
ON_DATAPROC_ENV = "BIGIMAGE_ON_DATAPROC"


@dataclass
class TaskConfig:
    name: str = MISSING


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
    image_version: str = "2.2-debian12"
    optional_components: list[str] = field(default_factory=list)


@dataclass
class DataprocJob:
    """Where and how to run on Dataproc (``cluster.deploy=dataproc``)."""

    project: Optional[str] = None
    region: str = "europe-west2"
    cluster_name: Optional[str] = None
    staging_bucket: Optional[str] = None
    delete_cluster: bool = False
    dry_run: bool = False


@dataclass
class ClusterConfig:
    name: str = MISSING
    deploy: str = "local"
    # None: derived from deploy (local[cores] or the started standalone master); else spark://host:port or yarn.
    master: Optional[str] = None
    executors: int = 1
    executor_cores: int = 2  # 0: all cores of this machine (local deploy only)
    executor_memory: str = "2g"
    driver_memory: str = "2g"
    partitions_per_core: int = 2
    spark_conf: dict[str, str] = field(default_factory=dict)
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
class StrategyConfig:
    name: str = MISSING
    num_workers: int = 1
    # mirrored on a CPU-only machine: split the CPU into this many logical devices (0: use devices as found).
    logical_cpu_devices: int = 0
    # multi-worker: how workers are launched (processes on loopback, or Spark barrier tasks).
    launcher: str = "processes"
    worker_timeout_seconds: int = 1800


@dataclass
class ModelConfig:
    name: str = MISSING
    weights: Optional[str] = None  # never downloaded by default
    dropout: float = 0.2
    width: int = 32


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlruns/mlflow.db
    experiment: str = "bigimage"
    artifact_root: Optional[str] = None  # None: <root>/mlruns/artifacts


@dataclass
class PreprocessConfig:
    jpeg_quality: int = 90
    shard_prefix: str = "flowers"
    max_failed_listed: int = 10000


@dataclass
class SpeedtestConfig:
    sources: list[str] = field(default_factory=lambda: list(SPEEDTEST_SOURCES))
    batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    batch_numbers: list[int] = field(default_factory=lambda: [10, 30, 60])
    repetitions: int = 3
    warmup_batches: int = 2
    parallelism: int = 1
    # When batch_size x batch_number exceeds the data: "repeat" the data, or "error".
    on_short_data: str = "repeat"


@dataclass
class TrainConfig:
    learning_rate: float = 0.001
    validation_fraction: float = 0.2
    augment: bool = False
    shuffle_buffer: int = 1000
    # Train/validation split: "hash" (per record, deterministic hash of its bytes) or "shard" (whole shards).
    split: str = "hash"
    # Keep decoded images (uint8) in memory after the first epoch; off for sets larger than RAM.
    cache: bool = True
    # None: <paths.data_dir>/checkpoints/<key>, key derived from the training-relevant config, so a
    # rerun of the same config resumes (BackupAndRestore) from its last finished epoch.
    checkpoint_dir: Optional[str] = None


@dataclass
class PipelineConfig:
    """What ``task=pipeline`` runs after preprocessing: Hydra-style overrides per step (data, not code)."""

    speedtest_overrides: list[str] = field(
        default_factory=lambda: ["speedtest.batch_numbers=[10,30]", "speedtest.repetitions=2"]
    )
    # One training run per strategy, each with these overrides.
    strategies: list[str] = field(default_factory=lambda: ["default", "mirrored"])
    train_overrides: list[str] = field(default_factory=list)
    report: bool = True


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
    tfrecord_dir: str = MISSING
    image_size: int = 192
    num_shards: int = 16
    batch_size: int = 32
    epochs: int = 10
    seed: int = 42


def register_configs() -> None:
    """Register the schemas so the YAML files can extend them (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, node in (
        ("task", TaskConfig),
        ("cluster", ClusterConfig),
        ("dataset", DatasetConfig),
        ("strategy", StrategyConfig),
        ("model", ModelConfig),
        ("tracking", TrackingConfig),
    ):
        store.store(group=group, name=f"base_{group}", node=node)


class ConfigError(ValueError):
    """A configuration value that composes but cannot work; raised before any work starts."""


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _check_positive(key: str, value: Any) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} is not valid; it must be a whole number >= 1")


def validate(cfg: DictConfig) -> None:
    """Check rules that span fields, once, before Spark or TensorFlow start. Raises ConfigError."""
    _check_choice("task", cfg.task.name, TASKS)
    _check_choice("cluster.deploy", cfg.cluster.deploy, DEPLOY_MODES)
    _check_choice("strategy", cfg.strategy.name, STRATEGIES)
    for strategy in cfg.pipeline.strategies:
        _check_choice("pipeline.strategies", strategy, STRATEGIES)
    for key in ("image_size", "num_shards", "batch_size", "epochs"):
        _check_positive(key, cfg[key])
    _check_positive("strategy.num_workers", cfg.strategy.num_workers)
    _check_positive("cluster.executors", cfg.cluster.executors)
    if cfg.cluster.executor_cores < 0:
        raise ConfigError(f"cluster.executor_cores={cfg.cluster.executor_cores} must be >= 0 (0: all local cores)")
    if OmegaConf.is_missing(cfg.dataset, "root") or not str(cfg.dataset.root).strip():
        raise ConfigError(
            f"dataset.root is not set for dataset={cfg.dataset.name}; "
            "give a folder of <label>/<image> files, e.g. dataset=folder dataset.root=/data/flowers or gs://bucket/flowers"
        )
    if not 1 <= cfg.preprocess.jpeg_quality <= 100:
        raise ConfigError(f"preprocess.jpeg_quality={cfg.preprocess.jpeg_quality} must be in 1..100")
    if not 0.0 < cfg.train.validation_fraction < 1.0:
        raise ConfigError(f"train.validation_fraction={cfg.train.validation_fraction} must be between 0 and 1")
    speed = cfg.speedtest
    for source in speed.sources:
        _check_choice("speedtest.sources", source, SPEEDTEST_SOURCES)
    for key in ("batch_sizes", "batch_numbers"):
        values = list(speed[key])
        if not values:
            raise ConfigError(f"speedtest.{key} is empty; give at least one value >= 1")
        for value in values:
            _check_positive(f"speedtest.{key}", value)
    for key in ("repetitions", "parallelism"):
        _check_positive(f"speedtest.{key}", speed[key])
    if speed.warmup_batches < 0:
        raise ConfigError(f"speedtest.warmup_batches={speed.warmup_batches} must be >= 0")
    _check_choice("speedtest.on_short_data", speed.on_short_data, ("repeat", "error"))
