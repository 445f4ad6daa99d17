"""One MLflow run per task execution: params from the config, tags, the resolved config, and the
outcome however the process is stopped short of SIGKILL (docs/mlflow.md). A sweep's job finds its
parent run through the environment variables below (never ``MLFLOW_RUN_ID``: mlflow #15713).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from omegaconf import DictConfig, OmegaConf

from bigimage import termination
from bigimage.config import PROJECT_ROOT
from bigimage.tracking import liveness, names, redact
from bigimage.tracking.store import retry_busy

log = logging.getLogger(__name__)

ENV_PARENT_RUN_ID = "BIGIMAGE_PARENT_RUN_ID"
ENV_EXPERIMENT_ID = "BIGIMAGE_EXPERIMENT_ID"
ENV_SWEEP_ID = "BIGIMAGE_SWEEP_ID"
CONFIG_ARTIFACT = "config/config.yaml"
MAX_PARAM_LENGTH = 6000
# The Dataproc cluster a run would have had: read back (pricing) only from runs that ran there.
_UNREAD_ON_LOCAL = ("cluster.shape.", "cluster.dataproc.")
# Limits of how the machine ran it, not what the run did (they stay in config/config.yaml).
_OPERATIONAL = ("strategy.worker_timeout_seconds", "strategy.isolation", "train.cache_max_memory_fraction")


def flatten_config(cfg: DictConfig | Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, str]:
    """The resolved config as MLflow params with dotted keys, secrets masked; ``keys``: only these keys
    and what lies below them (None: all). Left out: empty values, ``_target_`` paths, the Dataproc shape
    of a run that did not run there, and :data:`_OPERATIONAL` (all stay in :data:`CONFIG_ARTIFACT`)."""
    container = redact.config(cfg)
    params: dict[str, str] = {}
    unread = _UNREAD_ON_LOCAL if container.get("cluster", {}).get("deploy") != "dataproc" else ()

    def selected(key: str) -> bool:
        if key.rsplit(".", 1)[-1] == "_target_" or key in _OPERATIONAL or key.startswith(unread):
            return False
        return keys is None or any(key == k or key.startswith(f"{k}.") for k in keys)

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif node not in (None, "", [], {}) and selected(prefix):
            text = json.dumps(node) if isinstance(node, (list, dict)) else str(node)
            params[prefix] = text[:MAX_PARAM_LENGTH]

    walk("", {key: value for key, value in container.items() if key != "hydra"})
    return params


def system_metrics(tracking: Any) -> bool:
    """Whether runs record MLflow system metrics (``tracking.system_metrics``), setting their sampling
    interval (``tracking.system_metrics_interval``) when they do. MLflow logs a sample only after a full
    interval, and drops the last partial one, so a run shorter than the interval has none."""
    if not tracking.get("system_metrics", False):
        return False
    mlflow.set_system_metrics_sampling_interval(float(tracking.system_metrics_interval))
    return True


def git_commit() -> str:
    """The project's commit, with ``-dirty`` when the tree has changes; ``unknown`` outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hydra_overrides() -> list[str]:
    """The command-line overrides of the current Hydra job ([] outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def run_tags(task: str, overrides: list[str] | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags every run gets, secrets masked: its task, the commit, the command-line overrides, its sweep,
    the process's (:func:`liveness.process_tags`), then ``extra``."""
    masked = [redact.text(override) for override in overrides or []]
    tags = {names.TAG_TASK: task, "git_commit": git_commit(), "overrides": " ".join(masked) or "(none)"}
    if os.environ.get(ENV_SWEEP_ID):
        tags[names.TAG_SWEEP_ID] = os.environ[ENV_SWEEP_ID]
    return redact.mapping({**tags, **liveness.process_tags(), **(extra or {})})


def _end(status: str) -> None:
    retry_busy(lambda: mlflow.end_run(status=status))


def _record_end(error: BaseException) -> None:
    """End the active run KILLED (Ctrl-C, SIGTERM, SIGHUP) or FAILED (anything else), saying why."""
    if isinstance(error, KeyboardInterrupt):  # Terminated is one too
        reason = str(error) if isinstance(error, termination.Terminated) else "interrupted (KeyboardInterrupt)"
        retry_busy(lambda: mlflow.set_tag(names.TAG_ERROR, reason))
        active = mlflow.active_run()
        run_id = active.info.run_id if active else "?"
        _end(RunStatus.to_string(RunStatus.KILLED))
        log.warning("MLflow run %s ended KILLED: %s", run_id, reason)
        return
    message = redact.text(f"{type(error).__name__}: {error}")
    retry_busy(lambda: mlflow.set_tag(names.TAG_ERROR, message[:5000]))
    trace = redact.text("".join(traceback.format_exception(error)))
    retry_busy(lambda: mlflow.log_text(trace, "error/traceback.txt"))
    _end(RunStatus.to_string(RunStatus.FAILED))


@contextmanager
def tracked_run(
    cfg: DictConfig,
    task: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
    param_keys: Sequence[str] | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Open a run that logs ``cfg`` (params: the keys ``param_keys`` select; the whole config as
    :data:`CONFIG_ARTIFACT`), secrets masked, with process tags and a heartbeat; it ends FAILED if the body
    raises, KILLED on Ctrl-C, SIGTERM or SIGHUP, FINISHED otherwise. Without explicit ids it joins the
    sweep named in the environment, if any."""
    parent_run_id = parent_run_id or os.environ.get(ENV_PARENT_RUN_ID) or None
    experiment_id = experiment_id or os.environ.get(ENV_EXPERIMENT_ID) or None
    redact.protect(cfg)
    tags = run_tags(task, hydra_overrides(), extra_tags)
    run = retry_busy(
        lambda: mlflow.start_run(
            run_name=run_name,
            experiment_id=experiment_id,
            parent_run_id=parent_run_id,
            nested=mlflow.active_run() is not None,
            tags=tags,
            log_system_metrics=system_metrics(cfg.get("tracking", {})),
        )
    )
    held = termination.install()
    heartbeat = liveness.Heartbeat(run.info.run_id, mlflow.get_tracking_uri()).start()
    try:
        retry_busy(lambda: mlflow.log_params(flatten_config(cfg, param_keys)))
        retry_busy(lambda: mlflow.log_text(OmegaConf.to_yaml(redact.config(cfg)), CONFIG_ARTIFACT))
        yield run
    except BaseException as error:
        heartbeat.stop()
        _record_end(error)
        raise
    else:
        heartbeat.stop()
        _end(RunStatus.to_string(RunStatus.FINISHED))
    finally:
        heartbeat.stop()
        if held:
            termination.uninstall()
