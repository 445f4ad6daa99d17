"""synthetic: deterministic, flowers-shaped, generated once, never half-complete."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from bigimage.data import synthetic
from bigimage.data.listing import list_labelled_images
from bigimage.data.synthetic import DEFAULT_CLASSES, FINGERPRINT_NAME, ensure_synthetic_dataset

CLASSES = list(DEFAULT_CLASSES)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("syn") / "flowers", 40, seed=7, classes=CLASSES, workers=1)


def test_layout_and_class_folders(small_set):
    assert sorted(p.name for p in small_set.iterdir() if p.is_dir()) == CLASSES
    assert (small_set / FINGERPRINT_NAME).is_file()
    listed = list_labelled_images(str(small_set))
    assert listed.classes == CLASSES
    assert len(listed.items) == 40
    assert set(listed.class_counts().values()) == {8}  # balanced
    for path, _ in listed.items:
        assert Path(path).suffix == ".jpg"
        assert Path(path).stem.isdigit()
    names = sorted(int(Path(p).stem) for p, _ in listed.items)
    assert names == list(range(40))


def test_sizes_in_range_with_varied_aspect(small_set):
    sizes = []
    for path in small_set.rglob("*.jpg"):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            sizes.append(img.size)
    assert all(240 <= w <= 500 and 240 <= h <= 500 for w, h in sizes)
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.9 and max(aspects) > 1.2  # portrait and landscape
    assert len(set(sizes)) > 20


def test_deterministic_and_independent_of_worker_count(tmp_path, small_set):
    again = ensure_synthetic_dataset(tmp_path / "again", 40, seed=7, classes=CLASSES, workers=2)
    assert snapshot(again) == snapshot(small_set)


def test_different_seed_differs(tmp_path, small_set):
    other = ensure_synthetic_dataset(tmp_path / "other", 40, seed=8, classes=CLASSES, workers=1)
    a, b = snapshot(small_set), snapshot(other)
    images = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != b.get(k) for k in images) == len(images)


def test_render_image_is_a_pure_function():
    one = synthetic.render_image("roses", CLASSES, 3, 11)
    assert one == synthetic.render_image("roses", CLASSES, 3, 11)
    assert one != synthetic.render_image("roses", CLASSES, 3, 12)
    assert one != synthetic.render_image("tulips", CLASSES, 3, 11)
    Image.open(io.BytesIO(one)).verify()


def test_second_call_reuses(small_set, monkeypatch):
    """Reused, not regenerated, whatever the machine's speed: nothing is rendered and every file (the
    root folder included, which a regeneration would swap for a new one) keeps its inode and mtime."""

    def identity(path: Path) -> tuple[int, int, int]:
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def refuse(*args: object) -> None:  # fails at once, before anything of the set is touched
        raise AssertionError("the set was generated again instead of being reused")

    before = {p: identity(p) for p in [small_set, *small_set.rglob("*")]}
    monkeypatch.setattr(synthetic, "_generate", refuse)
    assert ensure_synthetic_dataset(small_set, 40, seed=7, classes=CLASSES, workers=1) == small_set
    assert {p: identity(p) for p in [small_set, *small_set.rglob("*")]} == before


def test_changed_request_regenerates(tmp_path):
    root = tmp_path / "flowers"
    ensure_synthetic_dataset(root, 10, seed=1, classes=CLASSES, workers=1)
    ensure_synthetic_dataset(root, 12, seed=1, classes=CLASSES, workers=1)
    assert json.loads((root / FINGERPRINT_NAME).read_text())["num_images"] == 12
    assert len(list(root.rglob("*.jpg"))) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [".flowers.lock", "flowers"]  # no temp or old dirs


def test_generator_version_is_part_of_the_fingerprint(tmp_path, monkeypatch):
    root = tmp_path / "flowers"
    ensure_synthetic_dataset(root, 5, seed=1, classes=CLASSES, workers=1)
    stamp = (root / FINGERPRINT_NAME).stat().st_mtime_ns
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    time.sleep(0.01)
    ensure_synthetic_dataset(root, 5, seed=1, classes=CLASSES, workers=1)
    assert (root / FINGERPRINT_NAME).stat().st_mtime_ns != stamp


def test_interrupted_generation_is_not_taken_as_complete(tmp_path):
    """Kill a generation midway: nothing at root looks complete, and the next call starts afresh."""
    root = tmp_path / "flowers"
    code = (
        "from bigimage.data.synthetic import ensure_synthetic_dataset\n"
        f"ensure_synthetic_dataset({str(root)!r}, 5000, seed=1, classes={CLASSES!r}, workers=1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not any(tmp_path.glob(".flowers.tmp-*/*/*.jpg")):
            assert proc.poll() is None, "generation ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (root / FINGERPRINT_NAME).exists()
    assert any(tmp_path.glob(".flowers.tmp-*"))  # the partial set is only in a temp sibling

    ensure_synthetic_dataset(root, 10, seed=1, classes=CLASSES, workers=1)
    assert len(list(root.rglob("*.jpg"))) == 10
    # The dead process's temp dir is gone; only the (unlocked) lock file stays beside the set.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".flowers.lock", "flowers"]


def test_concurrent_calls_generate_once(tmp_path):
    """Parallel sweep jobs share the default set: one generates, the others wait and reuse it."""
    root = tmp_path / "flowers"
    code = (
        "import sys\n"
        "from bigimage.data import synthetic\n"
        "calls = []\n"
        "real = synthetic._generate\n"
        "synthetic._generate = lambda *a: calls.append(1) or real(*a)\n"
        f"synthetic.ensure_synthetic_dataset({str(root)!r}, 30, seed=2, classes={CLASSES!r}, workers=1)\n"
        "sys.stdout.write(str(len(calls)))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outputs) == ["0", "1"]
    assert len(list(root.rglob("*.jpg"))) == 30


def test_partial_set_without_fingerprint_is_not_overwritten(tmp_path):
    root = tmp_path / "photos"
    (root / "daisy").mkdir(parents=True)
    (root / "daisy" / "mine.jpg").write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="not a generated synthetic set"):
        ensure_synthetic_dataset(root, 5, seed=1, classes=CLASSES, workers=1)
    assert (root / "daisy" / "mine.jpg").read_bytes() == b"user data"


def test_empty_existing_dir_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    ensure_synthetic_dataset(root, 5, seed=1, classes=CLASSES, workers=1)
    assert len(list(root.rglob("*.jpg"))) == 5


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        ensure_synthetic_dataset(tmp_path / "x", 0, seed=1, classes=CLASSES)
    with pytest.raises(ValueError):
        ensure_synthetic_dataset(tmp_path / "x", 5, seed=1, classes=["a", "a"])
    with pytest.raises(ValueError):
        ensure_synthetic_dataset(tmp_path / "x", 5, seed=1, classes=["_hidden"])
