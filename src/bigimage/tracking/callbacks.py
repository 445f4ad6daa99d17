"""Hydra callback that makes a multirun one MLflow parent run with a child run per job, creating the
store, the experiment and the parent in the launching process (docs/pitfalls.md: parallel jobs race on
them), and masking Hydra's run files of every job (:mod:`bigimage.tracking.redact`).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.entities import RunStatus
from omegaconf import DictConfig

from bigimage import termination
from bigimage.tracking import liveness, names, query, redact
from bigimage.tracking.runs import ENV_EXPERIMENT_ID, ENV_PARENT_RUN_ID, ENV_SWEEP_ID, run_tags
from bigimage.tracking.store import connect, log_batch, retry_busy

log = logging.getLogger(__name__)


HYDRA_RUN_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes in <output_dir>/.hydra
MULTIRUN_FILE = "multirun.yaml"  # what a sweeper writes in the sweep's folder


def hydra_files(config: DictConfig) -> Iterator[Path]:
    """Hydra's own files of the job that ``config`` (with its ``hydra`` node) describes, and of its sweep."""
    hydra = config.hydra
    if hydra.output_subdir is not None:
        for name in HYDRA_RUN_FILES:
            yield Path(str(hydra.runtime.output_dir), str(hydra.output_subdir), name)
    if hydra.mode == RunMode.MULTIRUN:
        yield sweep_file(config)


def sweep_file(config: DictConfig) -> Path:
    """The sweeper's copy of the sweep's config."""
    return Path(str(config.hydra.sweep.dir), MULTIRUN_FILE)


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.heartbeat: liveness.Heartbeat | None = None
        self.signals_held = False

    def __getstate__(self) -> dict[str, Any]:
        # joblib's launcher pickles the callbacks into its worker processes: the heartbeat (a thread)
        # and the signal handlers belong to this process and stay here.
        return {**self.__dict__, "heartbeat": None, "signals_held": False}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mask the secrets of ``config`` in Hydra's files, written just before, and in the log from now on."""
        redact.protect(config)
        for path in hydra_files(config):
            redact.rewrite_yaml(path)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        redact.protect(config)  # Hydra's launcher logs every job's overrides
        _, experiment_id = connect(config.tracking.uri, config.tracking.experiment, config.tracking.artifact_root)
        overrides = list(config.hydra.overrides.task)
        sweep = {"sweep_dir": str(config.hydra.sweep.dir), "mlflow.runName": f"sweep {' '.join(overrides)}"[:250]}
        tags = run_tags(f"sweep:{config.task.name}", overrides, sweep)
        client = mlflow.MlflowClient()
        run = retry_busy(lambda: client.create_run(experiment_id, tags=tags))
        self.parent_run_id = run.info.run_id
        self.signals_held = termination.install()
        self.heartbeat = liveness.Heartbeat(self.parent_run_id, mlflow.get_tracking_uri()).start()
        os.environ[ENV_PARENT_RUN_ID] = self.parent_run_id
        os.environ[ENV_EXPERIMENT_ID] = experiment_id
        os.environ[ENV_SWEEP_ID] = self.parent_run_id
        # A job that raises stops Hydra's sweep before on_multirun_end: close the parent at exit then.
        atexit.register(self.on_multirun_end, config)
        log.info("sweep parent run %s in experiment %r", self.parent_run_id, config.tracking.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        redact.rewrite_yaml(sweep_file(config))  # also when no job started
        if self.parent_run_id is None:
            return
        parent_run_id: str = self.parent_run_id
        client = mlflow.MlflowClient()
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id

        # A job whose process died unable to end its run (joblib kills its workers when the sweep is
        # stopped) is ended KILLED here, as analysis/stale_runs.py would end it.
        for child in query.children(client, [experiment_id], parent_run_id):
            if child.info.status == "RUNNING":
                verdict = liveness.judge(child, older_than_seconds=float("inf"))
                if verdict.stale:
                    liveness.mark_killed(client, verdict, marked_by="the sweep's end")
        found = query.children(client, [experiment_id], parent_run_id)
        # launched by this sweep (a run without the tag counts as its)
        children = [run for run in found if run.data.tags.get(names.TAG_SWEEP_ID, parent_run_id) == parent_run_id]
        failed = [run for run in children if run.info.status != "FINISHED"]
        signum = termination.last_signal()
        killed = signum is not None or any(run.info.status == "KILLED" for run in children)
        if killed:  # stopped (SIGTERM, SIGHUP, Ctrl-C in a job): the sweep did not fail, it was cut short
            status = RunStatus.KILLED
        else:
            # no job and no reason given (a search whose study is complete gives one): the jobs died unrecorded
            launched = bool(children) or names.TAG_NOTHING_TO_RUN in parent.data.tags
            status = RunStatus.FAILED if failed or not launched else RunStatus.FINISHED
        if self.heartbeat is not None:
            self.heartbeat.stop()
        tags: dict[str, Any] = {"children": len(children), "children_failed": len(failed)}
        if len(found) > len(children):
            tags["children_moved_in"] = len(found) - len(children)  # earlier sweeps' runs, kept as they ended
        if killed:
            tags[names.TAG_ERROR] = (
                f"terminated by {signal.Signals(signum).name}" if signum else "a job was interrupted"
            )
        log_batch(client, parent_run_id, tags=tags)
        retry_busy(lambda: client.set_terminated(parent_run_id, RunStatus.to_string(status)))
        if self.signals_held:
            termination.uninstall()
            self.signals_held = False
        for key in (ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_SWEEP_ID):
            os.environ.pop(key, None)
        self.parent_run_id = None
