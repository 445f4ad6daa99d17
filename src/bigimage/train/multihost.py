"""What a training whose workers run on other hosts may use: shared storage and a tracking server only
(docs/clusters.md#across-hosts-that-share-no-file-system).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlparse

from bigimage.config import ConfigError
from bigimage.train.netns import needs_network

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import ClusterConfig, Config

SERVER_HINT = (
    "start an MLflow tracking server every worker can reach, e.g. `mlflow server --host 0.0.0.0 --port 5000 "
    "--backend-store-uri sqlite:///mlruns/mlflow.db --artifacts-destination gs://BUCKET/mlflow-artifacts` "
    "(it serves the artifacts too), and give tracking.uri=http://HOST:5000"
)


def is_multi_host(cluster: ClusterConfig, launcher: str) -> bool:
    """Whether the barrier tasks may run on other hosts than this one (module doc)."""
    from bigimage.spark.session import loopback_master

    if str(launcher) != "spark_barrier":
        return False
    if cluster.share_nothing or str(cluster.deploy) == "dataproc":
        return True
    return bool(cluster.master) and not loopback_master(str(cluster.master))


def _shared_url(value: str) -> bool:
    """A URL every host resolves the same way (gs://, hdfs://, ...), not a path on one machine."""
    return urlparse(value).scheme not in ("", "file")


def check_shared(cfg: Config, tracking_uri: str | None, artifact_uri: str | None, checkpoint_dir: str) -> None:
    """Raise ConfigError, naming the key and what to set, for anything a multi-host run cannot share."""
    if not is_multi_host(cfg.cluster, str(cfg.strategy.launcher)):
        return
    where = f"the {cfg.strategy.num_workers} workers of strategy.launcher=spark_barrier run on other hosts"
    for key, uri in (("tracking.uri", tracking_uri), ("the run's artifact location", artifact_uri)):
        if uri is not None and not needs_network(uri):  # None: no MLflow run, nothing is logged
            raise ConfigError(
                f"{key}={uri} is a store on this machine, but {where} and the chief logs into the run from "
                f"there: {SERVER_HINT}"
            )
    for key, value in (("tfrecord_dir", str(cfg.tfrecord_dir)), ("train.checkpoint_dir", checkpoint_dir)):
        if not _shared_url(value):
            raise ConfigError(
                f"{key}={value} is a path on this machine, but {where}: give shared storage every worker "
                f"reads, e.g. {key}=gs://BUCKET/{'tfrecords/NAME' if key == 'tfrecord_dir' else 'checkpoints/NAME'}"
            )
