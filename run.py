"""Entry point: compose conf/, validate, open the MLflow run, dispatch to the task.

    python run.py [task=preprocess|speedtest|train|pipeline] [group=option ...] [key=value ...]
    python run.py -m task=preprocess cluster=single,maximal,four
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bigimage.config import register_configs
from bigimage.tasks import run_task

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_task(cfg)


if __name__ == "__main__":
    main()
