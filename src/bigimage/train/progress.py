"""A line per finished epoch on the launcher's console, polled from the chief's progress file."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger("bigimage.train")

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class EpochLines:
    """Logs every ``epoch_end`` the chief wrote since the last :meth:`poll`."""

    def __init__(self, work_dir: str, epochs: int | None = None, label: str = "") -> None:
        self.path = os.path.join(work_dir, "progress", "worker-0.jsonl")
        self.total = f"/{epochs}" if epochs else ""
        self.label = label
        self.offset = 0

    @classmethod
    def for_config(cls, work_dir: str, config_path: str) -> EpochLines:
        """For the workers of ``work_dir`` that train the resolved config at ``config_path``."""
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.load(config_path)
            return cls(work_dir, int(cfg.epochs), f"train {cfg.strategy.name}: ")
        except Exception:  # a config without these keys still gets its epochs shown
            return cls(work_dir)

    def poll(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                handle.seek(self.offset)
                text = handle.read()
        except FileNotFoundError:
            return
        complete = text[: text.rfind("\n") + 1]  # a line still being written waits for the next poll
        self.offset += len(complete.encode("utf-8"))
        for line in complete.splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") != "epoch_end":
                continue
            values = " ".join(f"{key} {float(event[key]):.4f}" for key in METRICS if key in event)
            speed = f", {float(event['images_per_second']):.0f} images/s" if "images_per_second" in event else ""
            seconds = f" {float(event['epoch_seconds']):.1f} s" if "epoch_seconds" in event else ""
            log.info("%sepoch %d%s:%s%s; %s", self.label, int(event["epoch"]) + 1, self.total, seconds, speed, values)
