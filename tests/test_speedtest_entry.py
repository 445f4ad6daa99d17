"""run_speedtest as run.py calls it: no session handed in, so it starts and stops its own Spark."""

from __future__ import annotations

from pathlib import Path

import mlflow

from bigimage.speedtest.task import run_speedtest
from tests.conftest import compose_config, jpeg_bytes
from tests.tfrecord_fixtures import write_tfrecord_dir


def test_run_speedtest_starts_its_own_spark(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for label, colour in (("a", (10, 200, 10)), ("b", (200, 10, 10))):
        (root / label).mkdir(parents=True)
        for index in range(4):
            (root / label / f"{index}.jpg").write_bytes(jpeg_bytes(30, 24, colour, seed=index))
    write_tfrecord_dir(tmp_path / "tfrecords", num_images=8, image_size=16, num_shards=2)
    cfg = compose_config(
        [
            "task=speedtest",
            "dataset=folder",
            f"dataset.root={root}",
            f"tfrecord_dir={tmp_path / 'tfrecords'}",
            "image_size=16",
            "cluster=single",
            "speedtest.batch_sizes=[4]",
            "speedtest.batch_numbers=[2]",
            "speedtest.repetitions=2",
            "speedtest.warmup_batches=0",
        ]
    )
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("speedtest-entry", artifact_location=str(tmp_path / "art"))
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        metrics = run_speedtest(cfg)
    logged = mlflow.get_run(run.info.run_id).data
    table = mlflow.load_table("speedtest.json", run_ids=[run.info.run_id])
    assert len(table) == 4 and (table.images == 8).all() and not table.repeated.any()
    assert logged.tags["spark.master"] == "local[8]"  # cluster=single: 1 x 8 task slots, even on a smaller machine
    assert logged.metrics["spark.total_cores"] == 8
    assert metrics["images_per_second.tfrecord.bs4"] > 0 and metrics["startup_seconds"] > 0
