"""Task 2 for real: the speed-test grid on a local[2] SparkSession, logged to a real MLflow store.

One SparkSession for the module; tiny data (20 images, 32 px) so the full default grid runs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from bigimage.config import ConfigError, validate
from bigimage.data import schema, storage
from bigimage.data.readers import TFRecordDirError
from bigimage.data.tfrecord import frame_record
from bigimage.spark.session import spark_session
from bigimage.speedtest.grid import deal, effective_parallelism, expected_rows, grid_points
from bigimage.speedtest.results import ROW_COLUMNS
from bigimage.speedtest.task import plan_sources, run_speedtest
from bigimage.speedtest.timing import (
    FILES,
    TFRECORD,
    GridPoint,
    ShortDataError,
    SpeedtestDataError,
    TimingSettings,
    time_point,
)
from bigimage.tasks import run_task
from tests.conftest import compose_config, jpeg_bytes
from tests.tfrecord_fixtures import write_tfrecord_dir

IMAGE_SIZE = 32
NUM_IMAGES = 20  # 2 classes x 10 files, and 20 records in 4 shards
SMALL_GRID = [
    "speedtest.batch_sizes=[4,8]",
    "speedtest.batch_numbers=[2,5]",
    "speedtest.repetitions=2",
    "speedtest.warmup_batches=0",
]


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("speedtest-data")
    root = base / "images"
    for class_index, (label, colour) in enumerate({"daisy": (240, 240, 240), "roses": (200, 20, 40)}.items()):
        (root / label).mkdir(parents=True)
        for index in range(NUM_IMAGES // 2):
            jpeg = jpeg_bytes(40 + 3 * index, 36 + 2 * index, colour, seed=class_index * 100 + index)
            (root / label / f"{index}.jpg").write_bytes(jpeg)
    (root / "daisy" / "notes.txt").write_text("not an image")  # skipped by extension, and said so
    tfrecords = base / "tfrecords"
    write_tfrecord_dir(tfrecords, num_images=NUM_IMAGES, image_size=IMAGE_SIZE, num_shards=4)
    return {"root": root, "tfrecords": tfrecords, "base": base}


def speed_config(
    data: dict[str, Path], *overrides: str, root: str | None = None, tfrecords: str | None = None
) -> DictConfig:
    return compose_config(
        [
            "task=speedtest",
            "dataset=folder",
            f"dataset.root={root or data['root']}",
            f"tfrecord_dir={tfrecords or data['tfrecords']}",
            f"image_size={IMAGE_SIZE}",
            "cluster.executor_cores=2",
            *overrides,
        ]
    )


@pytest.fixture(scope="module")
def spark(data: dict[str, Path]) -> Iterator[object]:
    with spark_session(speed_config(data).cluster, "bigimage-speedtest-tests") as session:
        yield session


class Logged:
    def __init__(self, run_id: str, metrics: dict[str, float]) -> None:
        self.run_id = run_id
        self.returned = metrics
        self.run = mlflow.get_run(run_id)
        self.table = mlflow.load_table("speedtest.json", run_ids=[run_id])
        self.artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run_id)}


def run_logged(tmp_path: Path, cfg: DictConfig, spark: object | None) -> Logged:
    """run_speedtest inside a run of a fresh sqlite store, as run.py calls it."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("speedtest-test", artifact_location=str(tmp_path / "art"))
    mlflow.set_experiment(experiment_id=experiment_id)  # load_table reads from the current experiment
    with mlflow.start_run(experiment_id=experiment_id) as run:
        metrics = run_speedtest(cfg, spark=spark)
    return Logged(run.info.run_id, metrics)


def start_failing_run(tmp_path: Path) -> str:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.create_experiment("speedtest-test", artifact_location=str(tmp_path / "art"))


# ---------------------------------------------------------------------------------- grid, no Spark


def test_grid_points_and_row_count_formula() -> None:
    cfg = compose_config(["task=speedtest"])
    speed = cfg.speedtest
    points = grid_points(list(speed.sources), list(speed.batch_sizes), list(speed.batch_numbers))
    assert len(points) == 2 * 4 * 3
    assert expected_rows(speed) == 72 == len(points) * speed.repetitions
    assert {(p.source, p.batch_size, p.batch_number) for p in points} == {
        (s, b, n) for s in ("files", "tfrecord") for b in (8, 16, 32, 64) for n in (10, 30, 60)
    }
    groups = deal(points, 5)
    assert len(groups) == 5 and sorted(sum(groups, []), key=points.index) == points
    assert deal(points, 100) == [[point] for point in points]
    assert effective_parallelism(8, 2, 24) == 2 and effective_parallelism(3, 8, 2) == 2


@pytest.mark.parametrize(
    "override",
    [
        "speedtest.batch_sizes=[8,0]",
        "speedtest.batch_sizes=[-16]",
        "speedtest.batch_sizes=[]",
        "speedtest.batch_numbers=[10,-1]",
        "speedtest.repetitions=0",
        "speedtest.parallelism=0",
        "speedtest.warmup_batches=-1",
    ],
)
def test_bad_grid_values_are_refused_before_any_work(override: str, data: dict[str, Path], tmp_path: Path) -> None:
    cfg = speed_config(data, override, f"tracking.uri=sqlite:///{tmp_path}/m.db")
    with pytest.raises(ConfigError, match="speedtest"):
        validate(cfg)
    with pytest.raises(ConfigError, match="speedtest"):
        run_task(cfg)  # validates before starting Spark or opening a run
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("override", ["speedtest.on_short_data=skip", "speedtest.sources=[files,parquet]"])
def test_unknown_grid_choices_are_refused_at_composition(override: str, data: dict[str, Path]) -> None:
    with pytest.raises(ConfigCompositionException):
        speed_config(data, override)


def test_experiment_task2_composes_as_a_cluster_sweep() -> None:
    from hydra import compose, initialize_config_dir

    from bigimage.config import PROJECT_ROOT, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+experiment=task2_speedtest"], return_hydra_config=True)
    assert cfg.task.name == "speedtest"
    assert expected_rows(cfg.speedtest) == 72
    assert str(cfg.hydra.sweeper.params.cluster).replace(" ", "") == "single,maximal,four"


# ------------------------------------------------------------------------------------ the grid, Spark


def test_full_default_grid_is_logged(tmp_path: Path, data: dict[str, Path], spark: object, capsys) -> None:
    cfg = speed_config(data)  # the default grid: 4 batch sizes x 3 batch numbers x 3 repetitions x 2 sources
    logged = run_logged(tmp_path, cfg, spark)
    table = logged.table

    assert len(table) == 72 == expected_rows(cfg.speedtest)
    assert list(table.columns[: len(ROW_COLUMNS)]) == ROW_COLUMNS
    combos = set(zip(table.source, table.batch_size, table.batch_number, table.repetition))
    assert combos == {
        (s, b, n, r) for s in ("files", "tfrecord") for b in (8, 16, 32, 64) for n in (10, 30, 60) for r in range(3)
    }
    assert (table.images == table.batch_size * table.batch_number).all()
    assert (table.images_per_second > 0).all() and (table.bytes > 0).all() and (table.seconds > 0).all()
    assert ((table.images_per_second - table.images / table.seconds).abs() < 1e-6 * table.images_per_second).all()
    assert ((table.bytes_per_second - table.bytes / table.seconds).abs() < 1e-6 * table.bytes_per_second).all()
    # 20 images hold at most 2 batches of 8 after 2 warm-up batches: every point repeats, and says so.
    needed = (cfg.speedtest.warmup_batches + table.batch_number) * table.batch_size
    assert (table.repeated == (needed > NUM_IMAGES)).all() and table.repeated.all()

    metrics = logged.run.data.metrics
    for source in ("files", "tfrecord"):
        for batch_size in (8, 16, 32, 64):
            rows = table[(table.source == source) & (table.batch_size == batch_size)]
            key = f"images_per_second.{source}.bs{batch_size}"
            assert metrics[key] == pytest.approx(rows.images_per_second.median())
            assert logged.returned[key] == pytest.approx(metrics[key])
    medians = table.groupby("source").images_per_second.median()
    assert metrics["tfrecord_speedup"] == pytest.approx(medians["tfrecord"] / medians["files"])
    assert metrics["speedtest.rows"] == 72
    assert {"speedtest.json", "speedtest.csv", "speedtest.png"} <= logged.artifacts
    assert logged.run.data.tags["spark.master"] == "local[2]"
    assert metrics["spark.total_cores"] == 2
    assert logged.run.data.tags["speedtest.effective_parallelism"] == "1"
    assert "notes.txt" not in json.dumps(table.to_dict()) and "skipped" in logged.run.data.tags["speedtest.notes"]
    assert set(table.partition) == {0}

    out = capsys.readouterr().out
    assert "median images/s" in out and "TFRecord over files speed-up" in out
    csv = mlflow.artifacts.load_text(f"runs:/{logged.run_id}/speedtest.csv")
    assert len(csv.strip().splitlines()) == 73


def test_bytes_are_the_bytes_read(tmp_path: Path, data: dict[str, Path], spark: object) -> None:
    """One pass over all 20 images, no warm-up: bytes = the JPEG files' sizes / the records' lengths."""
    import tensorflow as tf

    cfg = speed_config(
        data,
        "speedtest.batch_sizes=[4]",
        "speedtest.batch_numbers=[5]",
        "speedtest.repetitions=2",
        "speedtest.warmup_batches=0",
    )
    table = run_logged(tmp_path, cfg, spark).table
    jpegs = sum(path.stat().st_size for path in data["root"].rglob("*.jpg"))
    records = sum(
        len(r.numpy()) for r in tf.data.TFRecordDataset(sorted(str(p) for p in data["tfrecords"].glob("*.tfrec")))
    )
    assert list(table[table.source == "files"].bytes) == [jpegs, jpegs]
    assert list(table[table.source == "tfrecord"].bytes) == [records, records]
    assert not table.repeated.any() and (table.images == 20).all()


def test_parallelism_spreads_points_and_records_the_effective_value(
    tmp_path: Path, data: dict[str, Path], spark: object
) -> None:
    logged = run_logged(tmp_path, speed_config(data, *SMALL_GRID, "speedtest.parallelism=2"), spark)
    assert len(logged.table) == 2 * 2 * 2 * 2
    assert set(logged.table.partition) == {0, 1}
    assert logged.run.data.tags["speedtest.effective_parallelism"] == "2"
    assert "speedtest.parallelism_note" not in logged.run.data.tags

    logged = run_logged(tmp_path / "more", speed_config(data, *SMALL_GRID, "speedtest.parallelism=6"), spark)
    tags = logged.run.data.tags
    assert tags["speedtest.effective_parallelism"] == "2"  # local[2]: two task slots
    assert "6 asked, 2 used" in tags["speedtest.parallelism_note"]
    assert (
        len(logged.table) == 16 and (logged.table.images == logged.table.batch_size * logged.table.batch_number).all()
    )


# --------------------------------------------------------------------------------------- gs:// sources


def upload_tree(local: Path, url: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            storage.copy(path, f"{url}/{path.relative_to(local).as_posix()}")


def test_gcs_sources_through_the_emulator(
    tmp_path: Path, data: dict[str, Path], spark: object, gcs_bucket: str
) -> None:
    root, tfrecords = f"gs://{gcs_bucket}/flowers", f"gs://{gcs_bucket}/tfrecords"
    upload_tree(data["root"], root)
    upload_tree(data["tfrecords"], tfrecords)
    cfg = speed_config(data, *SMALL_GRID, root=root, tfrecords=tfrecords)
    logged = run_logged(tmp_path, cfg, spark)
    table = logged.table
    assert len(table) == 16
    assert (table.images == table.batch_size * table.batch_number).all() and (table.images_per_second > 0).all()
    # bs 4 x 5 batches = all 20 images once: bytes equal the objects' bytes exactly.
    one_pass = table[(table.batch_size == 4) & (table.batch_number == 5)]
    jpegs = sum(path.stat().st_size for path in data["root"].rglob("*.jpg"))
    assert set(one_pass[one_pass.source == "files"].bytes) == {jpegs}
    local = run_logged(tmp_path / "local", speed_config(data, *SMALL_GRID), spark).table
    local_pass = local[(local.batch_size == 4) & (local.batch_number == 5) & (local.source == "tfrecord")]
    assert set(one_pass[one_pass.source == "tfrecord"].bytes) == set(local_pass.bytes)
    assert table[(table.batch_size == 8) & (table.batch_number == 5)].repeated.all()


def test_corrupt_gcs_shard_is_named(tmp_path: Path, data: dict[str, Path], spark: object, gcs_bucket: str) -> None:
    local = tmp_path / "tfrecords"
    shutil.copytree(data["tfrecords"], local)
    shard = flip_bytes(local)
    url = f"gs://{gcs_bucket}/tfrecords"
    upload_tree(local, url)
    cfg = speed_config(data, *SMALL_GRID, "speedtest.sources=[tfrecord]", tfrecords=url)
    experiment_id = start_failing_run(tmp_path)
    with mlflow.start_run(experiment_id=experiment_id):
        with pytest.raises(SpeedtestDataError, match=rf"gs://{gcs_bucket}/tfrecords/{shard.name}"):
            run_speedtest(cfg, spark=spark)


def test_any_fsspec_url_is_timed_as_the_local_copy(data: dict[str, Path]) -> None:
    """A memory:// source (an fsspec URL TensorFlow cannot read) goes through storage: the same images and
    the same bytes as the local copy, for the image files and for the TFRecords (staged in ram://)."""
    url = f"memory://speedtest-{uuid.uuid4().hex[:12]}"
    upload_tree(data["root"], f"{url}/flowers")
    upload_tree(data["tfrecords"], f"{url}/tfrecords")
    points = [GridPoint(FILES, 4, 5), GridPoint(TFRECORD, 4, 5)]  # 20 images: all of them, once
    settings = TimingSettings(repetitions=1, warmup_batches=0)
    read = {}
    for name, cfg in (
        ("local", speed_config(data)),
        ("memory", speed_config(data, root=f"{url}/flowers", tfrecords=f"{url}/tfrecords")),
    ):
        plans = plan_sources(cfg, points)
        read[name] = [(row["images"], row["bytes"]) for p in points for row in time_point(p, plans[p.source], settings)]
    assert read["memory"] == read["local"] and all(images == 20 for images, _ in read["memory"])


# -------------------------------------------------------------------------------------------- bad input


def flip_bytes(directory: Path) -> Path:
    """Corrupt the middle of the second shard (inside a record's data: its CRC no longer matches)."""
    shard = sorted(directory.glob("*.tfrec"))[1]
    raw = bytearray(shard.read_bytes())
    for offset in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[offset] ^= 0xFF
    shard.write_bytes(bytes(raw))
    return shard


def truncate(directory: Path) -> Path:
    """Cut the third shard in the middle of a record (an interrupted copy)."""
    shard = sorted(directory.glob("*.tfrec"))[2]
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) // 2 + 3])
    return shard


@pytest.mark.parametrize("damage", [flip_bytes, truncate])
def test_corrupt_shard_fails_naming_the_shard(tmp_path: Path, data: dict[str, Path], spark: object, damage) -> None:
    local = tmp_path / "tfrecords"
    shutil.copytree(data["tfrecords"], local)
    shard = damage(local)
    cfg = speed_config(data, *SMALL_GRID, tfrecords=str(local))
    experiment_id = start_failing_run(tmp_path)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with pytest.raises(SpeedtestDataError, match=shard.name) as error:
            run_speedtest(cfg, spark=spark)
    assert "corrupt" in str(error.value).lower() and "task=preprocess" in str(error.value)
    assert sum(name in str(error.value) for name in os.listdir(local)) == 1  # only the bad shard is named
    assert not mlflow.MlflowClient().list_artifacts(run.info.run_id)  # no table of fewer rows


def test_unparseable_shard_fails_naming_the_shard(tmp_path: Path, data: dict[str, Path], spark: object) -> None:
    local = tmp_path / "tfrecords"
    shutil.copytree(data["tfrecords"], local)
    shard = sorted(local.glob("*.tfrec"))[2]
    shard.write_bytes(b"".join(frame_record(b"not a tf.train.Example %d" % i) for i in range(5)))  # valid CRCs
    cfg = speed_config(data, *SMALL_GRID, "speedtest.sources=[tfrecord]", tfrecords=str(local))
    with mlflow.start_run(experiment_id=start_failing_run(tmp_path)):
        with pytest.raises(SpeedtestDataError, match=shard.name):
            run_speedtest(cfg, spark=spark)


def test_undecodable_image_file_is_named(tmp_path: Path, data: dict[str, Path], spark: object) -> None:
    root = tmp_path / "images"
    shutil.copytree(data["root"], root)
    bad = root / "roses" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    cfg = speed_config(data, *SMALL_GRID, "speedtest.sources=[files]", root=str(root))
    with mlflow.start_run(experiment_id=start_failing_run(tmp_path)):
        with pytest.raises(SpeedtestDataError, match="3.jpg"):
            run_speedtest(cfg, spark=spark)


@pytest.mark.parametrize("kind", ["missing", "empty", "no-records"])
def test_missing_or_empty_tfrecord_dir(tmp_path: Path, data: dict[str, Path], kind: str) -> None:
    directory = tmp_path / "tfrecords"
    if kind != "missing":
        directory.mkdir()
    if kind == "no-records":
        manifest = schema.Manifest(classes=["a"], image_size=IMAGE_SIZE, num_records=0, shards={})
        (directory / schema.MANIFEST_NAME).write_text(manifest.to_json())
    cfg = speed_config(data, tfrecords=str(directory))
    with pytest.raises(TFRecordDirError, match=str(directory)):
        run_speedtest(cfg, spark=None)  # fails before Spark starts


def test_missing_shard_is_reported(tmp_path: Path, data: dict[str, Path]) -> None:
    local = tmp_path / "tfrecords"
    shutil.copytree(data["tfrecords"], local)
    victim = sorted(local.glob("*.tfrec"))[0]
    victim.unlink()
    with pytest.raises(TFRecordDirError, match="missing"):
        run_speedtest(speed_config(data, tfrecords=str(local)), spark=None)


def test_missing_image_tree(tmp_path: Path, data: dict[str, Path]) -> None:
    with pytest.raises(SpeedtestDataError, match="does not exist"):
        run_speedtest(speed_config(data, root=str(tmp_path / "nowhere")), spark=None)


def test_short_data_error_mode_refuses_before_timing(data: dict[str, Path]) -> None:
    cfg = speed_config(data, *SMALL_GRID, "speedtest.on_short_data=error")
    with pytest.raises(ShortDataError, match=r"needs 40 images .* holds 20"):
        run_speedtest(cfg, spark=None)  # bs 8 x 5 batches > 20 images; checked before Spark starts


# ------------------------------------------------------------------------------- results, no Spark


def test_summary_and_table_from_known_rows() -> None:
    from bigimage.speedtest.results import format_table, rows_frame, summary_frame, summary_metrics

    rows = [
        {
            "source": source,
            "batch_size": bs,
            "batch_number": 2,
            "repetition": rep,
            "images": 2 * bs,
            "bytes": 1000 * bs,
            "seconds": 2 * bs / rate,
            "images_per_second": rate,
            "bytes_per_second": 500 * rate,
            "repeated": rep == 0,
        }
        for source, base in (("files", 100.0), ("tfrecord", 400.0))
        for bs in (8, 16)
        for rep, rate in enumerate((base, 2 * base, 3 * base))
    ]
    frame = rows_frame(rows)
    metrics = summary_metrics(frame)
    assert metrics["images_per_second.files.bs8"] == 200.0 and metrics["images_per_second.tfrecord.bs16"] == 800.0
    assert metrics["tfrecord_speedup"] == 4.0
    assert not any(key.startswith(("bytes_per_second", "tfrecord_speedup.")) for key in metrics)  # in the table
    summary = summary_frame(frame).set_index(["source", "batch_size"])
    assert summary.loc[("files", 8), "bytes_per_second"] == 100000.0
    assert (summary["tfrecord_speedup"] == 4.0).all()
    assert metrics["speedtest.rows"] == 12 and metrics["speedtest.repeated_rows"] == 4
    text = format_table(frame)
    assert "speed-up: 4.00x" in text and "4 of 12 rows read the data more than once" in text
    only_files = summary_metrics(frame[frame.source == "files"])
    assert "tfrecord_speedup" not in only_files
