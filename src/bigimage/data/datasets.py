"""The image tree a dataset config points at, generated first when it is the synthetic default."""

from __future__ import annotations

from typing import Any


def dataset_root(dataset: Any) -> str:
    """``dataset.root``; for ``dataset=synthetic`` the set is generated there once (fingerprinted)."""
    if dataset.name == "synthetic":
        from bigimage.data.synthetic import ensure_synthetic_dataset

        ensure_synthetic_dataset(dataset.root, dataset.num_images, dataset.generator_seed, list(dataset.classes))
    return str(dataset.root)
