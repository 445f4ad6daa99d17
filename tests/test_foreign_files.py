"""What a tfrecord_dir holds that the project did not write is never deleted or replaced (issue 26).

A destination is the project's when all it holds is a set the project wrote (a manifest carrying the
project's marker, and the shards it lists), the lock of a job, or what a dead job left, known by the
job record the project wrote into it (never by a name). Anything else is refused with one line before
anything is touched, unless ``preprocess.replace_foreign=true``, which names what it will delete.
The lock lives inside the destination and goes with the job. ``tfrecord_dir`` and ``dataset.root``
inside one another are refused before Spark starts.

Three ways a set is published, each a param as in test_publish.py: ``exchange`` (local, the atomic
directory swap), ``objects`` (local without the swap: the manifest as commit point) and ``gcs`` (the
emulator).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bigimage.config import PROJECT_ROOT
from bigimage.data import dirlock, readers, schema, shards, storage
from bigimage.data.listing import list_labelled_images
from bigimage.errors import UserError
from bigimage.spark.preprocess import run_preprocess
from tests.conftest import compose_config
from tests.tfrecord_sets import assert_one_complete_set, leftovers, publish_set, stage_set

Images = tuple[list[str], list[tuple[str, int]]]

USER_FOLDER = {"_staging-photos/holiday.jpg": b"the user's photo"}
USER_FILES = {**USER_FOLDER, "notes.txt": b"the user's notes"}
COURSE_SHARDS = {"flowers00-230.tfrec": b"the user's records, 0", "flowers01-230.tfrec": b"the user's records, 1"}
FOREIGN_MANIFESTS = {
    "web-app": b'{"name": "my web app", "icons": []}',
    "not-json": b"\x00\x01 not json at all",
    # the project's schema of before, without its marker: the user's own, or a copy of unknown origin
    "schema-without-marker": json.dumps(
        {
            "classes": ["a"],
            "image_size": 32,
            "num_records": 1,
            "shards": {"a00-1.tfrec": 1},
            "class_counts": {"a": 1},
            "source": "",
            "source_fingerprint": "",
            "jpeg_quality": 90,
        }
    ).encode(),
}


def plant(destination: str, files: dict[str, bytes]) -> None:
    """Write the user's files (relative path -> bytes) into the destination."""
    for relative, data in files.items():
        storage.write_bytes(storage.join(destination, relative), data)


def contents(destination: str) -> dict[str, bytes]:
    """Every file under the destination, relative path -> bytes."""
    prefix = destination.rstrip("/") + "/"
    return {info.path[len(prefix) :]: storage.read_bytes(info.path) for info in storage.list_files(destination)}


def beside(destination: str) -> list[str]:
    """What is in the destination's parent besides the destination: nothing, once a job has ended."""
    if storage.is_gcs(destination):
        parent, prefix = destination.rstrip("/").rsplit("/", 1)[0], destination.rstrip("/") + "/"
        return [info.path for info in storage.list_files(parent) if not info.path.startswith(prefix)]
    real = Path(os.path.realpath(destination))
    return sorted(entry.name for entry in real.parent.iterdir() if entry.name != real.name)


def refused(destination: str, images: Images, pattern: str) -> shards.PublishError:
    """A job to ``destination`` is refused with one line matching ``pattern``, as a user's mistake."""
    with pytest.raises(shards.PublishError, match=pattern) as refusal:
        publish_set(destination, images[1], images[0], "new")
    assert isinstance(refusal.value, UserError) and "\n" not in str(refusal.value)
    assert beside(destination) == [], "no lock or staging is left outside the destination"
    return refusal.value


# ---------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("planted", [USER_FILES, USER_FOLDER], ids=["with-notes", "alone"])
def test_a_staging_named_folder_of_the_user_survives_the_refusal(destination: str, images: Images, planted) -> None:
    """It was removed for its name (``_staging-*``) before the folder was refused, or without a word."""
    plant(destination, planted)
    refused(destination, images, r"_staging-photos/.*Nothing was replaced")
    assert contents(destination) == planted


@pytest.mark.parametrize("manifest", FOREIGN_MANIFESTS.values(), ids=FOREIGN_MANIFESTS.keys())
def test_a_manifest_the_project_did_not_write_survives(destination: str, images: Images, manifest: bytes) -> None:
    """A lone manifest.json (a web app's, say) was silently replaced: only one with the project's
    schema and marker is the project's."""
    plant(destination, {schema.MANIFEST_NAME: manifest})
    refused(destination, images, rf"{re.escape(schema.MANIFEST_NAME)}.*Nothing was replaced")
    assert contents(destination) == {schema.MANIFEST_NAME: manifest}


def test_tfrec_files_without_a_manifest_are_the_users(destination: str, images: Images) -> None:
    """The user's own .tfrec files (no manifest) were deleted and replaced without a word."""
    plant(destination, COURSE_SHARDS)
    refused(destination, images, r"flowers00-230\.tfrec, flowers01-230\.tfrec.*replace_foreign=true")
    assert contents(destination) == COURSE_SHARDS


def test_a_shard_named_file_beside_a_set_is_not_taken_for_a_leftover(destination: str, images: Images) -> None:
    """A file named like a shard that the manifest does not list was deleted as a dead job's leftover."""
    before = publish_set(destination, images[1], images[0], "first")
    plant(destination, {"mine-00-5.tfrec": b"the user's records"})
    refused(destination, images, r"mine-00-5\.tfrec.*Nothing was replaced")
    assert contents(destination)["mine-00-5.tfrec"] == b"the user's records"
    assert readers.read_manifest(destination).shards == before.shards, "the set is as it was"


def test_replace_foreign_names_what_it_deletes_then_deletes_it(
    destination: str, images: Images, caplog: pytest.LogCaptureFixture
) -> None:
    plant(destination, {**COURSE_SHARDS, **USER_FILES, schema.MANIFEST_NAME: FOREIGN_MANIFESTS["web-app"]})
    classes, items = images
    with caplog.at_level(logging.WARNING, logger="bigimage.data.shards"):
        with shards.Publication(destination, replace_foreign=True) as publication:
            said = caplog.text  # before anything is written
            assert contents(destination).keys() >= {*COURSE_SHARDS, *USER_FILES}, "nothing deleted yet"
            manifest = publication.publish(
                stage_set(publication.staging_dir, items, classes),
                "new",
                schema.Manifest(classes=classes, image_size=32, num_records=0, shards={}),
            )
    for name in ["flowers00-230.tfrec", "flowers01-230.tfrec", "_staging-photos/", "notes.txt", schema.MANIFEST_NAME]:
        assert name in said
    assert "replace_foreign" in said and "delete" in said
    assert_one_complete_set(destination, len(items))
    assert sorted(contents(destination)) == sorted([*manifest.shards, schema.MANIFEST_NAME])
    assert beside(destination) == []


def test_a_file_in_the_way_is_refused_in_one_line(tmp_path: Path, images: Images) -> None:
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "tfrec").write_text("the user's file")
    refused(str(tmp_path / "sets" / "tfrec"), images, r"not a directory")
    assert (tmp_path / "sets" / "tfrec").read_text() == "the user's file"


def test_the_root_of_the_file_system_is_refused_before_anything_is_written(images: Images) -> None:
    """``tfrecord_dir=/`` left ``/..lock`` behind (the lock beside the destination) before it was refused."""
    with pytest.raises(shards.PublishError, match=r"tfrecord_dir / is the root") as refusal:
        publish_set("/", images[1], images[0], "new")
    assert isinstance(refusal.value, UserError)
    assert not os.path.lexists("/..lock") and not os.path.lexists(os.path.join("/", dirlock.LOCK_NAME))


# -------------------------------------------------------------------------------------- lock


def test_the_lock_lives_in_the_destination_and_goes_with_the_job(destination: str, images: Images) -> None:
    """The lock was a file beside the destination (``.<name>.lock``), left there for good."""
    classes, items = images
    publish_set(destination, items, classes, "first")
    with shards.Publication(destination) as publication:
        assert storage.exists(storage.join(destination, dirlock.LOCK_NAME))
        assert not any(".lock" in name for name in beside(destination))
        manifest = publication.publish(
            stage_set(publication.staging_dir, items, classes),
            "second",
            schema.Manifest(classes=classes, image_size=32, num_records=0, shards={}),
        )
        # the set is swapped in (local) or committed: the destination is still this job's until it ends
        with pytest.raises(dirlock.DestinationBusyError), shards.Publication(destination):
            pass
    assert sorted(contents(destination)) == sorted([*manifest.shards, schema.MANIFEST_NAME])
    assert beside(destination) == []


def test_a_waiting_writer_gets_the_destination_once_the_first_has_ended(destination: str, images: Images) -> None:
    """A writer that waits for the lock opens the lock file of the folder that is swapped out: it must
    find that out once it holds it, and take the lock of the folder swapped in, never hold a second one."""
    classes, items = images
    publish_set(destination, items, classes, "old")
    events: list[str] = []
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with shards.Publication(destination, wait_seconds=60) as publication:
                events.append("second in")
                publication.publish(
                    stage_set(publication.staging_dir, items, classes),
                    "second",
                    schema.Manifest(classes=classes, image_size=32, num_records=0, shards={}),
                )
        except BaseException as error:  # reported below
            errors.append(error)

    waiter = threading.Thread(target=second)
    with shards.Publication(destination) as publication:
        waiter.start()
        time.sleep(1.0)  # the second job has opened the lock file and waits
        assert events == []
        publication.publish(
            stage_set(publication.staging_dir, items, classes),
            "first",
            schema.Manifest(classes=classes, image_size=32, num_records=0, shards={}),
        )
        time.sleep(0.5)
        assert events == [], "the set swapped in is still this job's"
        events.append("first out")
    waiter.join(60)
    assert not errors, errors
    assert events == ["first out", "second in"]
    manifest = assert_one_complete_set(destination, len(items))
    assert all(name.startswith("second-") for name in manifest.shards)
    assert leftovers(destination) == [] and beside(destination) == []


# ------------------------------------------------------------------------------------ dead jobs


def run_dead_job(mode: str, destination: str, root: Path, prefix: str, kill_at: int) -> list[str]:
    """A job in a process of its own (tests/dead_job_driver.py), SIGKILLed just before its storage
    call ``kill_at`` (0: not killed); returns the storage calls it made."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.dead_job_driver", mode, destination, str(root), prefix, str(kill_at)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = -9 if kill_at else 0
    assert result.returncode == expected, result.stderr[-3000:]
    return [line.split()[2] for line in result.stdout.splitlines() if line.startswith("op ")]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_what_a_job_killed_at_any_storage_call_leaves_is_cleaned_by_the_next(
    destination: str, request: pytest.FixtureRequest, make_image_tree: Callable[..., Path]
) -> None:
    """Leftovers are known by the job record the project wrote into them, not by their names: a job
    killed (SIGKILL) before each of its storage calls in turn leaves nothing the next job refuses,
    and the next job leaves one complete set, nothing else in the destination and nothing beside it."""
    mode = request.node.callspec.params["destination"]
    root = make_image_tree(per_class=2)
    listing = list_labelled_images(str(root))
    publish_set(destination, listing.items, listing.classes, "first")
    ops = run_dead_job(mode, destination, root, "calibration", 0)
    assert len(ops) >= 8, ops
    for number in range(1, len(ops) + 1):
        run_dead_job(mode, destination, root, f"k{number:02d}", number)  # a gs:// lock it left is taken over
        manifest = publish_set(destination, listing.items, listing.classes, f"n{number:02d}")
        assert all(name.startswith(f"n{number:02d}-") for name in manifest.shards)
        assert_one_complete_set(destination, len(listing.items))
        assert sorted(contents(destination)) == sorted([*manifest.shards, schema.MANIFEST_NAME]), ops[number - 1]
        assert beside(destination) == [], (number, ops[number - 1])


# ------------------------------------------------------------------------------- task=preprocess


def test_a_tfrecord_dir_and_dataset_root_inside_one_another_are_refused(
    tmp_path: Path, make_image_tree: Callable[..., Path]
) -> None:
    """A tfrecord_dir inside the dataset root became a class of its own in the next run (0 images, its
    files counted as failed, class indices shifted); a root inside tfrecord_dir would be swapped away."""
    root = make_image_tree(per_class=1)
    before = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    cases = [
        (str(root), str(root / "tfrec"), "is inside dataset.root"),
        (str(root), str(root), "is dataset.root itself"),
        (str(root), str(tmp_path), "contains dataset.root"),
        ("gs://bucket/flowers", "gs://bucket/flowers/tfrec", "is inside dataset.root"),
        ("gs://bucket/flowers/", "gs://bucket", "contains dataset.root"),
    ]
    for dataset_root, tfrecord_dir, message in cases:
        cfg = compose_config(
            ["task=preprocess", "dataset=folder", f"dataset.root={dataset_root}", f"tfrecord_dir={tfrecord_dir}"]
        )
        with pytest.raises(UserError, match=message) as refusal:
            run_preprocess(cfg)
        assert "\n" not in str(refusal.value) and "choose" in str(refusal.value).lower()
    assert sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*")) == before
    for dataset_root, tfrecord_dir in [
        ("gs://bucket/flowers", "gs://bucket/flowers-tfrec"),
        (str(root), str(tmp_path / "images-tfrec")),
        (str(root), "gs://bucket/tfrec"),
    ]:
        shards.check_apart(dataset_root, tfrecord_dir)  # beside one another: fine


# --------------------------------------------------------------------------------- the command


def _mlflow_line(line: str) -> bool:
    return bool(re.match(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.", line))


@pytest.mark.timeout(300)
def test_each_refusal_is_one_line_and_exit_1_from_the_command(
    tmp_path: Path, make_image_tree: Callable[..., Path]
) -> None:
    """``python run.py task=preprocess ...``: every refusal ended in a traceback (PublishError); a
    tfrecord_dir inside the dataset root was not refused at all."""
    root = make_image_tree(per_class=1)
    foreign = tmp_path / "foreign"
    plant(str(foreign), USER_FILES)
    in_the_way = tmp_path / "in-the-way"
    in_the_way.write_text("the user's file")
    cases = {
        "foreign": (str(foreign), r"_staging-photos/, notes\.txt.*Nothing was replaced.*replace_foreign=true"),
        "nested": (str(root / "tfrec"), r"inside dataset\.root"),
        "file": (str(in_the_way), r"not a directory"),
        "root": ("/", r"tfrecord_dir=/ contains dataset\.root"),  # so it is refused before it is looked at
    }
    for case, (tfrecord_dir, pattern) in cases.items():
        result = subprocess.run(
            [
                sys.executable,
                "run.py",
                "task=preprocess",
                "dataset=folder",
                f"dataset.root={root}",
                f"tfrecord_dir={tfrecord_dir}",
                f"tracking.uri=sqlite:///{tmp_path / 'stores' / case / 'mlflow.db'}",
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "HYDRA_FULL_ERROR": "0"},
            timeout=240,
        )
        lines = [line for line in result.stderr.splitlines() if not _mlflow_line(line)]
        assert result.returncode == 1, (case, result.stderr[-3000:])
        assert len(lines) == 1 and lines[0].startswith("error: tfrecord_dir"), (case, lines)
        assert re.search(pattern, lines[0]), (case, lines[0])
    assert contents(str(foreign)) == USER_FILES and in_the_way.read_text() == "the user's file"
    assert not (root / "tfrec").exists()
    assert not os.path.lexists("/..lock") and not os.path.lexists(os.path.join("/", dirlock.LOCK_NAME))
