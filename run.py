"""Entry point: compose conf/, validate, open the MLflow run, dispatch to the task.

    python run.py [task=preprocess|speedtest|train|pipeline] [group=option ...] [key=value ...]
    python run.py -m task=preprocess cluster=single,maximal,four
    python run.py -m hparams_search=train_optuna [hydra.sweeper.n_trials=N]

A mistake the user can fix (a bad value, a missing path) ends with one line saying what to change and
exit code 1, secrets masked (:mod:`bigimage.tracking.redact`); ``HYDRA_FULL_ERROR=1`` shows the traceback
instead.
"""

from __future__ import annotations

import errno
import os
import sys

import hydra
from omegaconf import DictConfig

from bigimage.config import register_configs
from bigimage.errors import UserError
from bigimage.search.trial import objective
from bigimage.tasks import run_task
from bigimage.tracking import redact

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float] | None:
    """Run the task; for a training run, return its ``optimized_metric`` (what a search optimises)."""
    try:
        return objective(cfg, run_task(cfg))
    except (UserError, OSError) as error:
        full = isinstance(error, OSError) and error.errno == errno.ENOSPC  # a disk that filled up: the user's to free
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (isinstance(error, UserError) or full):
            raise
        sys.exit(f"error: {redact.text(str(error))}" + ("; free space there, or write elsewhere" if full else ""))


if __name__ == "__main__":
    main()
