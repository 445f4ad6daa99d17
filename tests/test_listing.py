"""listing: root/<label>/<file> trees, local, gs:// and memory://, and the ways they can be wrong."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

from bigimage.config import PROJECT_ROOT
from bigimage.data import storage
from bigimage.data.listing import DatasetLayoutError, LabelledImages, list_labelled_images


def make_tree(base: str, files: dict[str, bytes], empty_dirs: tuple[str, ...] = ()) -> None:
    for rel, data in files.items():
        storage.write_bytes(storage.join(base, *rel.split("/")), data)
    for rel in empty_dirs:
        if not storage.is_remote(base):
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


@pytest.fixture(params=["local", "gcs", "memory"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "flowers")
    if request.param == "memory":  # any fsspec URL lists as gs:// does
        return f"memory://{tmp_path.name}/flowers"
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
    with pytest.raises(DatasetLayoutError, match="is not a directory.*root/<label>"):
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
    assert a.items == [(re.sub("(?<!:)//", "/", p), i) for p, i in b.items]
    assert a.fingerprint() == b.fingerprint()
    storage.write_bytes(storage.join(root, "tulips", "t2.jpg"), b"new")
    assert list_labelled_images(root).fingerprint() != a.fingerprint()


def test_fingerprint_independent_of_location(tmp_path, gcs_bucket):
    local = str(tmp_path / "x")
    remote = f"gs://{gcs_bucket}/y"
    make_tree(local, TREE)
    make_tree(remote, TREE)
    assert list_labelled_images(local).fingerprint() == list_labelled_images(remote).fingerprint()


# ------------------------------------------------------------------ links and unreadable folders (local)
def names(entries: list[tuple[str, str]], root: str) -> dict[str, str]:
    return {os.path.relpath(path, root): reason for path, reason in entries}


def test_a_self_looping_file_link_is_a_failure_not_a_crash(tmp_path):
    root = str(tmp_path / "data")
    make_tree(root, {"a/1.jpg": b"1", "b/2.jpg": b"2"})
    os.symlink("loop.jpg", os.path.join(root, "a", "loop.jpg"))  # a -> itself: ELOOP on every stat
    os.symlink("nowhere.jpg", os.path.join(root, "b", "gone.jpg"))
    os.mkfifo(os.path.join(root, "b", "pipe"))
    result = list_labelled_images(root)
    assert rel(result) == [("a/1.jpg", 0), ("b/2.jpg", 1)]
    failed = names(result.failed, root)
    assert set(failed) == {"a/loop.jpg", "b/gone.jpg", "b/pipe"}
    assert failed["a/loop.jpg"].startswith("symbolic link loop")
    assert failed["b/gone.jpg"] == "broken symbolic link to 'nowhere.jpg'"
    assert failed["b/pipe"] == "not a regular file or folder"


def test_a_class_folder_that_is_a_link_is_listed_like_a_real_one(tmp_path):
    elsewhere = str(tmp_path / "elsewhere" / "roses")
    make_tree(elsewhere, {"r1.jpg": b"r1", "sub/r2.jpg": b"r2-"})
    root = str(tmp_path / "data")
    make_tree(root, {"daisy/d1.jpg": b"d"})
    os.symlink(elsewhere, os.path.join(root, "roses"))
    os.symlink(os.path.join(elsewhere, "sub"), os.path.join(root, "daisy", "linked"))  # a linked sub-folder
    result = list_labelled_images(root)
    assert result.classes == ["daisy", "roses"]
    assert rel(result) == [
        ("daisy/d1.jpg", 0),
        ("daisy/linked/r2.jpg", 0),
        ("roses/r1.jpg", 1),
        ("roses/sub/r2.jpg", 1),
    ]
    assert result.sizes == [1, 3, 2, 3]
    assert result.empty_classes == [] and result.failed == []


def test_link_loops_between_folders_are_detected_and_reported(tmp_path):
    root = str(tmp_path / "data")
    make_tree(root, {"a/1.jpg": b"1", "b/2.jpg": b"2", "b/deep/3.jpg": b"3"})
    os.symlink("../b", os.path.join(root, "a", "to_b"))
    os.symlink("../../a", os.path.join(root, "b", "deep", "to_a"))  # a -> b -> a ...
    os.symlink("..", os.path.join(root, "b", "up"))  # back to the root
    os.symlink(".", os.path.join(root, "here"))  # a top-level "class" that is the root itself
    result = list_labelled_images(root)
    assert result.classes == ["a", "b"]
    assert rel(result) == [
        ("a/1.jpg", 0),
        ("a/to_b/2.jpg", 0),
        ("a/to_b/deep/3.jpg", 0),  # a link out of the class is followed
        ("b/2.jpg", 1),
        ("b/deep/3.jpg", 1),
        ("b/deep/to_a/1.jpg", 1),
    ]
    failed = names(result.failed, root)
    assert set(failed) == {"here", "a/to_b/deep/to_a", "a/to_b/up", "b/deep/to_a/to_b", "b/up"}
    for reason in failed.values():
        assert reason.startswith("symbolic link loop: leads back to ")
    assert failed["b/up"] == f"symbolic link loop: leads back to {os.path.realpath(root)}"


_LIST_AS_UNPRIVILEGED = """
import json, sys
from bigimage.data.listing import list_labelled_images
result = list_labelled_images(sys.argv[1])
print(json.dumps({"items": result.items, "failed": result.failed, "empty": result.empty_classes}))
"""


@contextmanager
def unreadable(*folders: str) -> Iterator[list[str]]:
    """Make ``folders`` unreadable for real; yields the command prefix that runs a child unable to read them.

    chmod 000 does not stop root: as root the child runs without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (setpriv), so the kernel refuses the listing as it would for any user.
    """
    if os.geteuid() != 0:
        prefix = []
    elif shutil.which("setpriv"):
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all", "--"]
    else:
        pytest.skip("as root, needs setpriv (util-linux) to drop the capabilities that read any folder")
    for folder in folders:
        os.chmod(folder, 0)
    try:
        if subprocess.run([*prefix, "ls", folders[0]], capture_output=True).returncode == 0:
            pytest.skip("the folder stays readable here")
        yield prefix
    finally:
        for folder in folders:
            os.chmod(folder, 0o755)


def test_an_unreadable_folder_is_named_and_counted(tmp_path):
    root = str(tmp_path / "data")
    make_tree(
        root, {"a/1.jpg": b"1", "a/private/2.jpg": b"2", "a/private/3.jpg": b"3", "b/4.jpg": b"4", "c/5.jpg": b"5"}
    )
    # a sub-folder, and a whole class folder
    with unreadable(os.path.join(root, "a", "private"), os.path.join(root, "c")) as prefix:
        result = subprocess.run(
            [*prefix, sys.executable, "-c", _LIST_AS_UNPRIVILEGED, root], capture_output=True, text=True
        )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert [os.path.relpath(path, root) for path, _ in listing["items"]] == ["a/1.jpg", "b/4.jpg"]
    assert listing["empty"] == ["c"]  # still a class, so the indices match the folders
    failed = names(listing["failed"], root)
    reason = "unreadable folder (Permission denied); the files in it are not counted"
    assert failed == {"a/private": reason, "c": reason}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_task1_counts_every_file_it_could_not_use(tmp_path):
    """run.py task=preprocess on a tree with every listing problem: each file is in the shards or in
    failed_images with its reason, and the linked class folder's images are in the shards."""
    from tests.conftest import jpeg_bytes

    images = {
        f"{label}/{index}.jpg": jpeg_bytes(64, 48, (40 * index, 90, 200)) for label in ("a", "b") for index in range(3)
    }
    root = tmp_path / "data"
    make_tree(str(root), {**images, "a/private/hidden_from_us.jpg": images["a/0.jpg"], "b/notes.txt": b"not an image"})
    make_tree(str(tmp_path / "elsewhere" / "c"), {"c0.jpg": images["a/1.jpg"], "c1.jpg": images["b/2.jpg"]})
    os.symlink(tmp_path / "elsewhere" / "c", root / "c")
    os.symlink("loop.jpg", root / "a" / "loop.jpg")
    os.symlink("..", root / "b" / "up")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with unreadable(str(root / "a" / "private")) as prefix:
        result = subprocess.run(
            [*prefix, sys.executable, "run.py", "task=preprocess", "dataset=folder", f"dataset.root={root}",
             f"tfrecord_dir={tmp_path / 'tfrec'}", "image_size=32", "num_shards=2", f"tracking.uri={store}",
             f"tracking.artifact_root={tmp_path / 'artifacts'}"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(store)
    run = client.search_runs([client.get_experiment_by_name("bigimage").experiment_id])[0]
    assert run.data.metrics["images"] == 8  # 3 + 3 + the 2 of the linked class folder
    failed = {
        Path(entry["path"]).relative_to(root).as_posix(): entry["reason"]
        for entry in mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/failed_images.json")
    }
    assert set(failed) == {"a/private", "a/loop.jpg", "b/up", "b/notes.txt"}
    assert failed["a/private"].startswith("unreadable folder (Permission denied)")
    assert failed["a/loop.jpg"].startswith("symbolic link loop")
    assert run.data.metrics["failed_images"] == 4
