"""dataset=flowers: the course's bucket root and its five classes, not the TFRecord folders beside them."""

from __future__ import annotations

from bigimage.config import validate
from bigimage.data import storage
from bigimage.data.listing import list_labelled_images
from tests.conftest import compose_config

FLOWERS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
# The public bucket's layout: class folders at the top (the course's gs://flowers-public/*/*.jpg),
# beside folders of TFRecords and a few loose files.
BUCKET_LAYOUT = {
    **{f"{name}/{index}.jpg": f"{name}-{index}".encode() for name in FLOWERS for index in range(2)},
    "tfrecords-jpeg-192x192-2/flowers00-230.tfrec": b"records",
    "tfrecords-jpeg-331x331/flowers00-230.tfrec": b"records",
    "tfrecords-jpeg-512x512/flowers00-230.tfrec": b"records",
    "LICENSE.txt": b"licence",
}


def test_flowers_config_is_the_course_root_with_its_five_classes() -> None:
    cfg = compose_config(["dataset=flowers"])
    validate(cfg)
    assert cfg.dataset.root == "gs://flowers-public"
    assert list(cfg.dataset.classes) == FLOWERS


def test_a_bucket_shaped_like_flowers_public_lists_exactly_the_five_classes(gcs_bucket: str) -> None:
    cfg = compose_config(["dataset=flowers"])
    root = str(cfg.dataset.root).replace("gs://flowers-public", f"gs://{gcs_bucket}", 1)
    for name, data in BUCKET_LAYOUT.items():
        storage.write_bytes(f"gs://{gcs_bucket}/{name}", data)

    listed = list_labelled_images(root, list(cfg.dataset.classes))  # as task=preprocess lists it
    assert listed.classes == FLOWERS
    assert listed.class_counts() == {name: 2 for name in FLOWERS}
    assert all(path.endswith(".jpg") for path, _ in listed.items)
    assert listed.empty_classes == []
    assert listed.unlisted_folders == ["tfrecords-jpeg-192x192-2", "tfrecords-jpeg-331x331", "tfrecords-jpeg-512x512"]
    # Without the explicit classes, the TFRecord folders would have been taken as classes.
    assert len(list_labelled_images(root).classes) == 8
