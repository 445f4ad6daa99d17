"""A TFRecord set as an MLflow dataset, so runs on the same data share a digest (docs/mlflow.md,
"Datasets"); the digest is read from the manifest, never from the shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, DataType, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from bigimage.data import schema
from bigimage.tracking import names
from bigimage.tracking.store import BUSY, DATASET_RACE, retry_busy

OUTPUT, BENCHMARK, TRAINING, VALIDATION, TESTING = "output", "benchmark", "training", "validation", "testing"
#: A training run's subsets (bigimage.train.inputs: train, validation, test) -> their input context and name suffix.
SUBSET_CONTEXT = {"train": TRAINING, "validation": VALIDATION, "test": TESTING}
SUBSET_SUFFIX = {"train": ".train", "validation": ".validation", "test": ".test"}


def manifest_digest(manifest: schema.Manifest) -> str:
    """10 hex digits (MLflow shows short digests) over the source fingerprint and settings (module doc)."""
    settings = {
        "source_fingerprint": manifest.source_fingerprint,
        "image_size": manifest.image_size,
        "jpeg_quality": manifest.jpeg_quality,
        "classes": list(manifest.classes),
        "class_counts": dict(sorted(manifest.class_counts.items())),
        "records_per_shard": sorted(manifest.shards.values()),
    }
    if not manifest.source_fingerprint:
        settings["shards"] = sorted(manifest.shards)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def feature_schema() -> Schema:
    """The TFRecord features (``bigimage.data.schema``) as an MLflow schema."""
    return Schema(
        [
            ColSpec(DataType.binary, schema.IMAGE),
            ColSpec(DataType.long, schema.CLASS),
            ColSpec(DataType.string, schema.LABEL),
            ColSpec(Array(DataType.long), schema.SIZE),
            ColSpec(Array(DataType.float), schema.ONE_HOT_CLASS),
        ]
    )


class TFRecordSet(MetaDataset):
    """A :class:`MetaDataset` with a profile (records, shards, image size, records per class); with
    ``subset`` it counts that subset of the split ``split``, whose rule the digest covers too."""

    def __init__(
        self,
        manifest: schema.Manifest,
        tfrecord_dir: str,
        name: str,
        subset: str | None = None,
        split: str = "",
        class_counts: dict[str, int] | None = None,
    ):
        counts = dict(manifest.class_counts) if class_counts is None else class_counts
        self._profile = {
            "num_records": sum(counts.values()),
            "num_shards": len(manifest.shards),
            "image_size": manifest.image_size,
            "class_counts": counts,
            **({"subset": subset, names.SPLIT: split} if subset else {}),
        }
        digest = manifest_digest(manifest)
        if subset:
            digest = hashlib.sha256(f"{digest}|{subset}|{split}".encode()).hexdigest()[:10]
        with warnings.catch_warnings():  # MLflow registers its local source twice ("" and "file") and says so
            warnings.filterwarnings("ignore", "The specified dataset source can be interpreted in multiple ways")
            source = resolve_dataset_source(tfrecord_dir)
        super().__init__(source, name, digest, feature_schema())

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def log_tfrecord_set(
    manifest: schema.Manifest, tfrecord_dir: str, name: str, context: str, tags: dict[str, str] | None = None
) -> TFRecordSet:
    """Log the whole set as a dataset input of the active run. Returns what was logged. Parallel jobs on
    one set (a joblib sweep) may both find it missing and both insert it; the loser retries and links to
    the winner's row."""
    dataset = TFRecordSet(manifest, tfrecord_dir, name)
    retry_busy(lambda: mlflow.log_input(dataset, context=context, tags=tags), transient=BUSY + DATASET_RACE)
    return dataset


def split_sets(
    manifest: schema.Manifest, tfrecord_dir: str, name: str, split: str, class_counts: dict[str, list[int]]
) -> dict[str, TFRecordSet]:
    """The subsets of a training run's split (``class_counts``: subset -> records per class index) as
    datasets, by subset: what the run logs (:func:`log_split_sets`) and what a later check compares."""
    return {
        subset: TFRecordSet(
            manifest,
            tfrecord_dir,
            name + SUBSET_SUFFIX[subset],
            subset,
            split,
            dict(zip(manifest.classes, counts, strict=True)),
        )
        for subset, counts in class_counts.items()
    }


def log_split_sets(client: MlflowClient, run_id: str, subsets: dict[str, TFRecordSet]) -> None:
    """Log each subset (:func:`split_sets`) as a dataset input of run ``run_id``, with its context and
    the split in its tags."""
    for subset, dataset in subsets.items():
        split = dataset.profile[names.SPLIT]
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, SUBSET_CONTEXT[subset]), InputTag(names.SPLIT, split)]
        entry = DatasetInput(dataset._to_mlflow_entity(), tags)
        retry_busy(functools.partial(client.log_inputs, run_id, datasets=[entry]), transient=BUSY + DATASET_RACE)
