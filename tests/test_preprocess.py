"""Task 1 for real: a local SparkSession writing TFRecords that the course's reader reads back."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest

from bigimage.data import schema, storage
from bigimage.data.listing import list_labelled_images
from bigimage.spark.preprocess import NoUsableImagesError, assign_shards, run_preprocess, write_tfrecords
from bigimage.spark.session import spark_session
from tests.conftest import IMAGE_TREE_CLASSES, compose_config, jpeg_bytes, write_large_image_tree


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    with spark_session(compose_config().cluster, "bigimage-tests") as session:
        yield session


def read_back(directory: str) -> list[dict]:
    """Every record, parsed with a plain TFRecordDataset and the course's feature spec."""
    import tensorflow as tf

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "class": tf.io.FixedLenFeature([], tf.int64),
        "label": tf.io.FixedLenFeature([], tf.string),
        "size": tf.io.FixedLenFeature([2], tf.int64),
        "one_hot_class": tf.io.VarLenFeature(tf.float32),
    }
    files = sorted(str(path) for path in Path(directory).glob("*.tfrec"))
    records = []
    for serialized in tf.data.TFRecordDataset(files):
        example = tf.io.parse_single_example(serialized, spec)
        image = tf.io.decode_jpeg(example["image"])
        records.append(
            {
                "class": int(example["class"]),
                "label": example["label"].numpy().decode(),
                "size": example["size"].numpy().tolist(),
                "one_hot": tf.sparse.to_dense(example["one_hot_class"]).numpy().tolist(),
                "shape": tuple(image.shape),
                "jpeg": example["image"].numpy()[:2] == b"\xff\xd8",
                "image_bytes": example["image"].numpy(),
            }
        )
    return records


def test_shards_mix_classes_and_cover_every_item() -> None:
    items = [(f"{label}/{index}.jpg", class_index) for class_index, label in enumerate("abc") for index in range(10)]
    shards = assign_shards(items, 4, seed=1)
    assert sorted(item for shard in shards for item in shard) == sorted(items)
    assert all(len({class_index for _, class_index in shard}) > 1 for shard in shards)
    assert assign_shards(items, 4, seed=1) == shards


def test_every_valid_image_once_with_its_label(spark, make_image_tree: Callable[..., Path], tmp_path: Path) -> None:
    root = make_image_tree(per_class=5)
    (root / "daisy" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    truncated = jpeg_bytes(300, 300, (10, 200, 10))
    (root / "roses" / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (root / "tulips" / "notes.txt").write_text("not an image")
    (root / "sunflowers").mkdir()  # an empty class folder
    vanished = root / "tulips" / "vanished.jpg"
    vanished.write_bytes(jpeg_bytes(250, 250, (0, 0, 0)))
    listing = list_labelled_images(str(root))
    vanished.unlink()  # listed, then unreadable when the task opens it
    destination = tmp_path / "tfrec"

    manifest, results, seconds = write_tfrecords(spark, listing, str(destination), 192, 90, 3, "flowers", seed=0)

    records = read_back(str(destination))
    assert len(records) == 15 == manifest.num_records
    assert Counter(record["label"] for record in records) == {label: 5 for label in IMAGE_TREE_CLASSES}
    for record in records:
        assert listing.classes[record["class"]] == record["label"]
        assert record["shape"] == (192, 192, 3) and record["size"] == [192, 192] and record["jpeg"]
        assert record["one_hot"] == [1.0 if index == record["class"] else 0.0 for index in range(len(listing.classes))]
    failed = {Path(path).name: reason for result in results for path, reason in result.failed}
    assert set(failed) == {"corrupt.jpg", "truncated.jpg", "notes.txt", "vanished.jpg"}
    assert "FileNotFoundError" in failed["vanished.jpg"]
    names = sorted(os.listdir(destination))
    assert names == sorted([*manifest.shards, schema.MANIFEST_NAME]), "no staging or temp files are left"
    for name, count in manifest.shards.items():
        assert schema.records_in_shard_name(name) == count
    assert manifest.class_counts == {"daisy": 5, "roses": 5, "sunflowers": 0, "tulips": 5}
    assert seconds > 0


SAME_RECORDS_DIGEST = "0407d6250a760dd065e2a8487d15a2b464d956a7f42f1f30f933b5ee35f1d56b"  # before issue 13


def test_same_input_and_settings_give_the_same_records_byte_for_byte(
    spark, make_image_tree: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 13: what task 1 computes does not change with how its Spark job runs (the worker daemon,
    the JIT settings): the job's shards are, byte for byte, what write_shard writes in this process for
    the same assignment, and the set is the one the same input and settings gave before."""
    import hashlib

    from bigimage.data import shards

    listing = list_labelled_images(str(make_image_tree(per_class=4)))
    destination = tmp_path / "tfrec"
    manifest, _, _ = write_tfrecords(spark, listing, str(destination), 64, 85, 3, "same", seed=7)
    written = [(destination / name).read_bytes() for name in sorted(manifest.shards)]
    here = tmp_path / "here"
    here.mkdir()
    expected = [
        Path(shards.write_shard(index, items, listing.classes, 64, 85, str(here)).staged or "").read_bytes()
        for index, items in enumerate(assign_shards(listing.items, 3, seed=7))
    ]
    assert written == expected
    assert hashlib.sha256(b"".join(written)).hexdigest() == SAME_RECORDS_DIGEST


def test_rerun_replaces_the_previous_set(spark, make_image_tree: Callable[..., Path], tmp_path: Path) -> None:
    listing = list_labelled_images(str(make_image_tree(per_class=3)))
    destination = str(tmp_path / "tfrec")
    write_tfrecords(spark, listing, destination, 64, 80, 6, "first", seed=0)
    manifest, _, _ = write_tfrecords(spark, listing, destination, 64, 80, 2, "second", seed=0)
    assert sorted(os.listdir(destination)) == sorted([*manifest.shards, schema.MANIFEST_NAME])
    assert all(name.startswith("second") for name in manifest.shards)
    assert len(read_back(destination)) == 9


def test_failed_job_leaves_previous_set_and_no_staging(
    spark, make_image_tree: Callable[..., Path], tmp_path: Path
) -> None:
    listing = list_labelled_images(str(make_image_tree(per_class=3)))
    destination = str(tmp_path / "tfrec")
    before, _, _ = write_tfrecords(spark, listing, destination, 64, 80, 2, "good", seed=0)
    listing.classes = listing.classes[:1]  # a class index out of range makes a Spark task raise
    with pytest.raises(Exception):
        write_tfrecords(spark, listing, destination, 64, 80, 2, "bad", seed=0)
    assert sorted(os.listdir(destination)) == sorted([*before.shards, schema.MANIFEST_NAME])
    assert len(read_back(destination)) == 9


def test_sigterm_mid_write_returns_only_when_its_tasks_have_ended(spark, tmp_path: Path) -> None:
    """SIGTERM mid-job: the write cancels its tasks and waits for them before the staging goes, so no
    task stages into a removed folder (Spark would print that task's traceback on the console).
    Without the wait, tasks still ran when the write returned (in 12 of 12 tries by a script, about
    one run in three of this test)."""
    import signal
    import threading
    import time

    from bigimage import termination

    listing = list_labelled_images(str(write_large_image_tree(tmp_path / "big", per_class=40)))
    destination = tmp_path / "tfrec"

    def terminate_once_a_shard_is_staged() -> None:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".tfrec.swap-*/part-*")) and time.monotonic() < deadline:
            time.sleep(0.02)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    with termination.signals_raise(), pytest.raises(termination.Terminated):
        threading.Thread(target=terminate_once_a_shard_is_staged, daemon=True).start()
        write_tfrecords(spark, listing, str(destination), 320, 80, 40, "cut", seed=0)  # tasks start all the time

    executors = spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()
    assert sum(executor.numRunningTasks() for executor in executors) == 0
    assert not list(tmp_path.glob(".tfrec.swap-*")) and not destination.exists()
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None


def test_nothing_usable_fails_and_writes_nothing(spark, tmp_path: Path) -> None:
    root = tmp_path / "junk"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"junk")
    (root / "b").mkdir()
    (root / "b" / "y.txt").write_text("text")
    destination = tmp_path / "tfrec"
    with pytest.raises(NoUsableImagesError, match="none of the 2 files"):
        write_tfrecords(spark, list_labelled_images(str(root)), str(destination), 64, 80, 2, "x", seed=0)
    assert not destination.exists() or os.listdir(destination) == []


def test_missing_or_empty_root_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="root/<label>"):
        list_labelled_images(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        list_labelled_images(str(tmp_path / "empty"))


def test_gcs_source_and_destination(
    spark, gcs_bucket: str, make_image_tree: Callable[..., Path], tmp_path: Path
) -> None:
    root = make_image_tree(per_class=2)
    for path in sorted(root.rglob("*.jpg")):
        storage.copy(str(path), f"gs://{gcs_bucket}/flowers/{path.parent.name}/{path.name}")
    listing = list_labelled_images(f"gs://{gcs_bucket}/flowers")
    assert len(listing.items) == 6
    destination = f"gs://{gcs_bucket}/tfrecords"
    manifest, _, _ = write_tfrecords(spark, listing, destination, 96, 90, 2, "flowers", seed=0)
    listed = sorted(info.path.rsplit("/", 1)[-1] for info in storage.list_files(destination))
    assert listed == sorted([*manifest.shards, schema.MANIFEST_NAME]), "no staging objects are left"
    local = storage.local_cache_copy(destination, tmp_path / "cache")
    records = read_back(local)
    assert len(records) == 6 and {record["shape"] for record in records} == {(96, 96, 3)}


def test_shards_and_manifest_follow_the_umask(spark, make_image_tree: Callable[..., Path], tmp_path: Path) -> None:
    """Issue 10 item 7: with umask 022 other users of a shared file system can read the set (was 0600)."""
    import stat

    listing = list_labelled_images(str(make_image_tree(per_class=2)))
    destination = tmp_path / "tfrec"
    previous = os.umask(0o022)  # the Spark workers were started under the pytest process's umask: 022 here too
    try:
        manifest, _, _ = write_tfrecords(spark, listing, str(destination), 32, 80, 2, "flowers", seed=0)
    finally:
        os.umask(previous)
    modes = {name: stat.S_IMODE((destination / name).stat().st_mode) for name in os.listdir(destination)}
    assert modes == {name: 0o644 for name in [*manifest.shards, schema.MANIFEST_NAME]}
    assert stat.S_IMODE(destination.stat().st_mode) == 0o755


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_second_writer_fails_at_once_and_never_breaks_the_first(
    spark, where: str, make_image_tree: Callable[..., Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Issue 10 item 4: a second job started while the first is writing used to delete the first's
    staging, so the first failed. Now it fails at once naming the first; the first publishes."""
    import dataclasses
    import re
    import socket
    import threading
    import time

    from tests.tfrecord_sets import assert_one_complete_set, leftovers

    listing = list_labelled_images(str(make_image_tree(per_class=3)))
    destination = str(tmp_path / "tfrec") if where == "local" else f"gs://{request.getfixturevalue('gcs_bucket')}/tfrec"
    write_tfrecords(spark, listing, destination, 32, 80, 2, "old", seed=0)
    gate = tmp_path / "gate.jpg"
    os.mkfifo(gate)  # the first job's task that reads it waits until the test writes it
    slow = dataclasses.replace(listing, items=[*listing.items, (str(gate), 0)])
    outcome: dict[str, object] = {}

    def first_job() -> None:
        try:
            outcome["manifest"] = write_tfrecords(spark, slow, destination, 32, 80, 2, "first", seed=0)[0]
        except BaseException as error:  # reported by the assertions below
            outcome["error"] = error

    def open_gate() -> None:
        with open(gate, "wb") as handle:
            handle.write(jpeg_bytes(64, 64, (10, 200, 10)))

    def staged() -> bool:
        if where == "gcs":
            return any("/_staging-" in info.path for info in storage.list_files(destination))
        return bool(
            list(tmp_path.glob(".tfrec.swap-*/part-*.tfrec")) or list(tmp_path.glob("tfrec/_staging-*/part-*.tfrec"))
        )

    first = threading.Thread(target=first_job)
    first.start()
    try:
        deadline = time.monotonic() + 60
        while not staged():  # the first job is half-way: one shard staged, one waiting at the gate
            assert time.monotonic() < deadline and first.is_alive(), outcome
            time.sleep(0.05)
        started = time.monotonic()
        holder = rf"pid {os.getpid()} on host {re.escape(socket.gethostname())}, started \d+ s ago"
        with pytest.raises(Exception, match=holder) as refused:
            write_tfrecords(spark, listing, destination, 32, 80, 2, "second", seed=0)
        assert type(refused.value).__name__ == "DestinationBusyError"
        assert time.monotonic() - started < 5, "it failed at once"
    finally:
        threading.Thread(target=open_gate, daemon=True).start()
        first.join(120)
    assert "error" not in outcome, outcome.get("error")
    manifest = assert_one_complete_set(destination, len(listing.items) + 1)
    assert manifest.shards == outcome["manifest"].shards and all(name.startswith("first-") for name in manifest.shards)
    assert leftovers(destination) == []


def test_seconds_run_from_the_first_task_start(spark, make_image_tree: Callable[..., Path], tmp_path: Path) -> None:
    """docs/contracts.md: task 1's ``seconds`` runs from the first task's start to the set committed; it was taken
    from the job's submission, so a wait for free executor slots (or Python workers) counted too."""
    import threading
    import time

    listing = list_labelled_images(str(make_image_tree(per_class=2)))
    markers = tmp_path / "busy"
    markers.mkdir()

    def occupy(slot: int) -> None:  # in a Spark worker: say it holds a slot, then keep it 3 s
        (markers / str(slot)).touch()
        time.sleep(3)

    busy = threading.Thread(target=lambda: spark.sparkContext.parallelize(range(2), 2).foreach(occupy))
    busy.start()
    deadline = time.monotonic() + 60
    while len(list(markers.iterdir())) < 2:
        assert time.monotonic() < deadline, "the busy job never took both slots"
        time.sleep(0.02)
    before = time.time()
    _, results, seconds = write_tfrecords(spark, listing, str(tmp_path / "tfrec"), 32, 80, 2, "flowers", seed=0)
    after = time.time()
    busy.join()
    first_task = min(result.started for result in results)
    assert first_task - before > 1.0, "the tasks had to wait for free slots"
    assert 0 < seconds <= after - first_task


def test_task_logs_the_design_metrics(mlflow_store: str, make_image_tree: Callable[..., Path], tmp_path: Path) -> None:
    root = make_image_tree(per_class=3)
    (root / "daisy" / "broken.jpg").write_bytes(b"broken")
    cfg = compose_config(
        [
            "task=preprocess",
            "dataset=folder",
            f"dataset.root={root}",
            f"tfrecord_dir={tmp_path / 'out'}",
            "image_size=64",
            "num_shards=2",
            f"tracking.uri={mlflow_store}",
        ]
    )
    experiment_id = mlflow.create_experiment("preprocess", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_preprocess(cfg)
    stored = mlflow.get_run(run.info.run_id)
    metrics = stored.data.metrics
    assert metrics["images"] == 9 and metrics["failed_images"] == 1 and metrics["shards"] == 2
    assert metrics["bytes_written"] > 0 and metrics["seconds"] > 0 and metrics["startup_seconds"] > 0
    assert metrics["images_per_second"] == pytest.approx(9 / metrics["seconds"])
    assert stored.data.tags["spark.master"] == "local[2]" or stored.data.tags["spark.master"].startswith("local[")
    assert metrics["spark.executors"] == 1 and metrics["spark.total_cores"] >= 1
    failed = mlflow.artifacts.load_dict(f"{stored.info.artifact_uri}/failed_images.json")
    assert [Path(entry["path"]).name for entry in failed] == ["broken.jpg"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_interrupted_run_leaves_the_previous_set_and_no_staging(tmp_path: Path) -> None:
    """Ctrl-C in the middle of the Spark job: the previous shards stay, nothing staged is left behind."""
    import signal
    import subprocess
    import sys
    import time

    from bigimage.config import PROJECT_ROOT

    root = write_large_image_tree(tmp_path / "big")
    destination = tmp_path / "tfrec"
    common = [
        sys.executable,
        "run.py",
        "task=preprocess",
        "dataset=folder",
        f"dataset.root={root}",
        f"tfrecord_dir={destination}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "num_shards=8",
    ]
    first = subprocess.run([*common, "image_size=32"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    before = sorted(os.listdir(destination))

    job = subprocess.Popen(
        [*common, "image_size=640"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not list(tmp_path.glob(".tfrec.swap-*/part-*.tfrec")):  # the new set is built beside the old
        assert job.poll() is None and time.time() < deadline, "the job ended before it staged anything"
        time.sleep(0.05)
    time.sleep(1.0)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=120)

    assert job.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert sorted(os.listdir(destination)) == before
    assert not list(tmp_path.glob(".tfrec.swap-*")), "nothing staged is left beside it"
    assert len(read_back(str(destination))) == 600
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bigimage").experiment_id], order_by=["start_time DESC"])
    assert runs[0].info.status == "KILLED" and "interrupted" in runs[0].data.tags["error"]
