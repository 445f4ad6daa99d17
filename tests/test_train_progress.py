"""The launcher's line per finished epoch, read from the chief's progress file as it grows."""

from __future__ import annotations

import json
import logging

from omegaconf import OmegaConf

from bigimage.train.progress import EpochLines


def _event(epoch: int) -> str:
    values = {"loss": 1.0 - epoch / 10, "val_accuracy": 0.5 + epoch / 10, "epoch_seconds": 2.5}
    return json.dumps({"event": "epoch_end", "epoch": epoch, "images_per_second": 400.0, **values}) + "\n"


def test_each_finished_epoch_is_logged_once_and_a_partial_line_waits(tmp_path, caplog):
    config = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create({"epochs": 8, "strategy": {"name": "mirrored"}}), config)
    lines = EpochLines.for_config(str(tmp_path), str(config))
    caplog.set_level(logging.INFO, logger="bigimage.train")
    lines.poll()  # no progress file yet: nothing, no error
    (tmp_path / "progress").mkdir()
    progress = tmp_path / "progress" / "worker-0.jsonl"
    begin = json.dumps({"event": "epoch_begin", "epoch": 0}) + "\n"
    second = _event(1)
    progress.write_text(begin + _event(0) + second[:20])
    lines.poll()
    with progress.open("a") as handle:
        handle.write(second[20:])
    lines.poll()
    lines.poll()
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "train mirrored: epoch 1/8: 2.5 s, 400 images/s; loss 1.0000 val_accuracy 0.5000",
        "train mirrored: epoch 2/8: 2.5 s, 400 images/s; loss 0.9000 val_accuracy 0.6000",
    ]
