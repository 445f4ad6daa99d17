"""listing: root/<label>/<file> trees, local and gs://, and the ways they can be wrong."""

from __future__ import annotations

import os

import pytest

from bigimage.data import storage
from bigimage.data.listing import LabelledImages, list_labelled_images


def make_tree(base: str, files: dict[str, bytes], empty_dirs: tuple[str, ...] = ()) -> None:
    for rel, data in files.items():
        storage.write_bytes(storage.join(base, *rel.split("/")), data)
    for rel in empty_dirs:
        if not storage.is_gcs(base):
            os.makedirs(os.path.join(base, rel), exist_ok=True)


TREE = {
    "tulips/t1.jpg": b"t1",
    "daisy/d2.jpg": b"d2-",
    "daisy/d1.jpg": b"d1",
    "roses/r1.png": b"r",
    "roses/notes.txt": b"not an image, still an item",
    "roses/2019/r2.jpg": b"nested",
    "LICENSE.txt": b"a file in root is not an item",
    "_SYNTHETIC.json": b"{}",
    "daisy/.DS_Store": b"hidden",
    ".hidden/x.jpg": b"hidden folder",
    "_temporary/x.jpg": b"job marker folder",
}


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "flowers")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/flowers"


def rel(result: LabelledImages) -> list[tuple[str, int]]:
    cut = len(result.root.rstrip("/")) + 1
    return [(path[cut:].replace(os.sep, "/"), index) for path, index in result.items]


def test_lists_sorted_classes_and_every_file(root):
    make_tree(root, TREE)
    result = list_labelled_images(root)
    assert result.root == root
    assert result.classes == ["daisy", "roses", "tulips"]
    assert rel(result) == [
        ("daisy/d1.jpg", 0),
        ("daisy/d2.jpg", 0),
        ("roses/2019/r2.jpg", 1),
        ("roses/notes.txt", 1),
        ("roses/r1.png", 1),
        ("tulips/t1.jpg", 2),
    ]
    assert result.sizes == [2, 3, 6, len(b"not an image, still an item"), 1, 2]
    assert result.empty_classes == []
    assert result.class_counts() == {"daisy": 2, "roses": 3, "tulips": 1}
    for path, _ in result.items:
        assert storage.exists(path)


def test_gcs_lists_with_one_call(gcs_bucket, monkeypatch):
    root = f"gs://{gcs_bucket}/flowers"
    make_tree(root, TREE)
    calls = []
    real = storage.list_files
    monkeypatch.setattr(storage, "list_files", lambda url: calls.append(url) or real(url))
    list_labelled_images(root)
    assert calls == [root]


def test_empty_class_folder_local(tmp_path):
    root = str(tmp_path / "data")
    make_tree(root, {"a/1.jpg": b"1", "c/2.jpg": b"2"}, empty_dirs=("b",))
    result = list_labelled_images(root)
    assert result.classes == ["a", "b", "c"]
    assert result.empty_classes == ["b"]
    assert rel(result) == [("a/1.jpg", 0), ("c/2.jpg", 2)]


def test_explicit_classes(root):
    make_tree(root, TREE)
    result = list_labelled_images(root, classes=["tulips", "daisy", "sunflowers"])
    assert result.classes == ["tulips", "daisy", "sunflowers"]  # given order is index order
    assert rel(result) == [("tulips/t1.jpg", 0), ("daisy/d1.jpg", 1), ("daisy/d2.jpg", 1)]
    assert result.empty_classes == ["sunflowers"]
    assert result.unlisted_folders == ["roses"]


def test_bad_explicit_classes(tmp_path):
    root = str(tmp_path / "data")
    make_tree(root, {"a/1.jpg": b"1"})
    with pytest.raises(ValueError, match="duplicates"):
        list_labelled_images(root, classes=["a", "a"])
    with pytest.raises(ValueError):
        list_labelled_images(root, classes=["a/b"])


def test_missing_root_local(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*root/<label>/\*\.jpg"):
        list_labelled_images(str(tmp_path / "nope"))


def test_missing_root_gcs(gcs_bucket):
    with pytest.raises(FileNotFoundError, match=r"holds no objects.*root/<label>/\*\.jpg"):
        list_labelled_images(f"gs://{gcs_bucket}/nope")


def test_root_is_a_file(tmp_path):
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="root/<label>"):
        list_labelled_images(str(tmp_path / "f.jpg"))


def test_root_without_class_folders(root):
    make_tree(root, {"a.jpg": b"1", "b.jpg": b"2"})
    with pytest.raises(ValueError, match=r"no class folders.*root/<label>/\*\.jpg"):
        list_labelled_images(root)


def test_empty_local_root(tmp_path):
    with pytest.raises(ValueError, match="no class folders"):
        list_labelled_images(str(tmp_path))


def test_trailing_slash_and_fingerprint(root):
    make_tree(root, TREE)
    a = list_labelled_images(root)
    b = list_labelled_images(root + "/")
    assert a.items == [(p.replace("//", "/").replace("gs:/", "gs://"), i) for p, i in b.items]
    assert a.fingerprint() == b.fingerprint()
    storage.write_bytes(storage.join(root, "tulips", "t2.jpg"), b"new")
    assert list_labelled_images(root).fingerprint() != a.fingerprint()


def test_fingerprint_independent_of_location(tmp_path, gcs_bucket):
    local = str(tmp_path / "x")
    remote = f"gs://{gcs_bucket}/y"
    make_tree(local, TREE)
    make_tree(remote, TREE)
    assert list_labelled_images(local).fingerprint() == list_labelled_images(remote).fingerprint()
