"""The PySpark main file of a Dataproc job that ``run_on_dataproc`` submits: an entry point, like
``run.py``, kept out of the package it runs.

It runs on the cluster's master node with the package on the Python path (``--py-files
bigimage.zip``) and the resolved config next to it (``--files bigimage-config.yaml``)::

    driver.py --config bigimage-config.yaml

It marks the process as the Dataproc job (so ``spark_for`` opens the session on the cluster's YARN
instead of refusing, and ``run_task`` runs the task here rather than hand it back to Dataproc). Kept free
of package imports at module level so a missing dependency on the cluster shows up as a clear error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _find_config(name: str) -> Path:
    candidates = [Path(name), Path.cwd() / Path(name).name, Path(__file__).resolve().parent / Path(name).name]
    try:
        from pyspark import SparkFiles

        candidates.append(Path(SparkFiles.get(Path(name).name)))
    except Exception:
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {name!r} not found in {', '.join(str(c) for c in candidates)}")


def run_here(cfg) -> dict:
    """The configured task on this machine in its own MLflow run, tagged with the Dataproc job."""
    from bigimage.tasks import run_task

    tags = {"cluster.deploy": "dataproc"}
    if os.environ.get("DATAPROC_JOB_ID"):
        tags["dataproc.job_id"] = os.environ["DATAPROC_JOB_ID"]
    return run_task(cfg, extra_tags=tags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a bigimage task as a Dataproc job.")
    parser.add_argument("--config", required=True, help="the resolved config YAML shipped with --files")
    args = parser.parse_args(argv)
    from bigimage.config import ON_DATAPROC_ENV

    os.environ[ON_DATAPROC_ENV] = "1"
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(_find_config(args.config))
    print(f"[dataproc] task={cfg.task.name} cluster={cfg.cluster.name} python={sys.executable}", flush=True)
    run_here(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
