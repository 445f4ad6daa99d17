"""File names that are not UTF-8 in a dataset folder: used, or counted with the reason, like any other file.

Linux names are bytes; Python gives the ones that are not UTF-8 with surrogates in place of the bytes
that do not decode. Task 1 crashed on them after Spark had finished (issue 26).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import mlflow

from bigimage.data import readers
from bigimage.data.listing import list_labelled_images, printable
from bigimage.spark.preprocess import run_preprocess
from tests.conftest import compose_config, jpeg_bytes


def test_the_fingerprint_and_printable_take_any_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    odd = os.path.join(os.fsencode(tmp_path / "a"), b"caf\xe9.jpg")
    with open(odd, "wb") as handle:
        handle.write(b"x")
    listing = list_labelled_images(str(tmp_path))
    assert [os.fsencode(path) for path, _ in listing.items] == [odd]
    assert len(listing.fingerprint()) == 64
    assert printable(listing.items[0][0]).endswith("caf\\xe9.jpg")


def test_a_file_name_that_is_not_utf8_is_used_or_counted(
    mlflow_store: str, make_image_tree: Callable[..., Path], tmp_path: Path
) -> None:
    """A non-UTF-8 file name crashed the job after Spark had finished (UnicodeEncodeError in the
    listing's fingerprint), the file neither used nor counted. An image under such a name is used; a
    bad file under one is counted with its reason; a class folder under one cannot be a label (labels
    are UTF-8 text), so it is counted with the reason."""
    root = make_image_tree(per_class=2)
    daisy = os.fsencode(root / "daisy")
    with open(os.path.join(daisy, b"caf\xe9.jpg"), "wb") as handle:
        handle.write(jpeg_bytes(120, 90, (250, 250, 250)))
    with open(os.path.join(daisy, b"broken\xff.jpg"), "wb") as handle:
        handle.write(b"not an image")
    odd_class = os.path.join(os.fsencode(root), b"lil\xe9s")
    os.mkdir(odd_class)
    with open(os.path.join(odd_class, b"0.jpg"), "wb") as handle:
        handle.write(jpeg_bytes(100, 100, (200, 100, 250)))
    cfg = compose_config(
        [
            "task=preprocess",
            "dataset=folder",
            f"dataset.root={root}",
            f"tfrecord_dir={tmp_path / 'out'}",
            "image_size=32",
            "num_shards=2",
            f"tracking.uri={mlflow_store}",
        ]
    )
    with mlflow.start_run() as run:
        run_preprocess(cfg)
    stored = mlflow.get_run(run.info.run_id)
    assert stored.data.metrics["images"] == 7 and stored.data.metrics["failed_images"] == 2
    failed = mlflow.artifacts.load_dict(f"{stored.info.artifact_uri}/failed_images.json")
    reasons = {os.fsencode(entry["path"]): entry["reason"] for entry in failed}
    assert set(reasons) == {os.path.join(daisy, b"broken\xff.jpg"), odd_class}, reasons
    assert "UTF-8" in reasons[odd_class]
    manifest = readers.read_manifest(str(tmp_path / "out"))
    assert manifest.classes == ["daisy", "roses", "tulips"] and manifest.class_counts["daisy"] == 3
