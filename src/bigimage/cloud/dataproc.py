"""Run a task as a PySpark job on a Dataproc cluster of the config's shape (``cluster.deploy=dataproc``).

``cluster.dataproc.dry_run=true`` prints the equivalent ``gcloud`` commands instead (docs/clusters.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import tomllib
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import bigimage
from bigimage.config import PROJECT_ROOT, Config, DataprocShape, Strategy

SINGLE_NODE_PROPERTY = "dataproc:dataproc.allow.zero.workers"
PIP_PACKAGES_PROPERTY = "dataproc:pip.packages"
BOOT_DISK_TYPES = ("pd-standard", "pd-ssd", "pd-balanced")
CONFIG_NAME = "bigimage-config.yaml"
PACKAGE_ZIP = "bigimage.zip"
DRIVER_NAME = "bigimage_driver.py"
JOB_ARGS = ["--config", CONFIG_NAME]  # the driver script's arguments
# Not installed on the cluster: Spark is the image's own; the rest is local tooling.
NOT_ON_CLUSTER = {"pyspark", "hydra-joblib-launcher", "seaborn"}
_CLUSTER_NAME = re.compile(r"^[a-z](?:[-a-z0-9]{0,49}[a-z0-9])?$")
JOB_POLL_SECONDS = 5.0
CLUSTER_TIMEOUT_SECONDS = 1800.0


class DataprocError(RuntimeError):
    """A Dataproc run that cannot start or that failed; the message says what to set or look at."""


def cluster_name(cfg: Config) -> str:
    """``cluster.dataproc.cluster_name``, else ``bigimage-<shape>``; checked against Dataproc's rules."""
    name = str(cfg.cluster.dataproc.cluster_name or f"bigimage-{cfg.cluster.name}")
    if not _CLUSTER_NAME.match(name):
        raise DataprocError(
            f"cluster.dataproc.cluster_name={name!r} is not a valid Dataproc cluster name: lowercase letters, "
            "digits and hyphens, starting with a letter, not ending with a hyphen, at most 51 characters"
        )
    return name


def cluster_pip_packages(root: Path = PROJECT_ROOT) -> list[str]:
    """The package's run-time dependencies for the cluster as ``name==version``, pinned as requirements.lock."""
    pins: dict[str, str] = {}
    for line in (root / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("==", 1)
            pins[canonicalize_name(name.strip())] = version.split(";")[0].strip()
    packages = []
    for spec in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]:
        name = canonicalize_name(Requirement(spec).name)
        if name not in NOT_ON_CLUSTER:
            if name not in pins:
                raise DataprocError(f"{name} is not pinned in {root / 'requirements.lock'}: regenerate the lock")
            packages.append(f"{name}=={pins[name]}")
    return packages


def cluster_properties(cfg: Config) -> dict[str, str]:
    """Cluster properties of the request: single node, and the Python packages the job needs."""
    properties: dict[str, str] = {}
    if cfg.cluster.shape.single_node:
        properties[SINGLE_NODE_PROPERTY] = "true"
    packages = cluster_pip_packages()
    if packages:
        properties[PIP_PACKAGES_PROPERTY] = ",".join(packages)
    return properties


def job_properties(cfg: Config) -> dict[str, str]:
    """Spark properties of the job: the shape's executors (YARN sizes the containers from them)."""
    cluster = cfg.cluster
    properties = {
        # Off (Dataproc turns it on): the job holds the shape's executors, none miscounted as lost.
        "spark.dynamicAllocation.enabled": "false",
        "spark.executor.instances": str(int(cluster.executors)),
        "spark.executor.memory": str(cluster.executor_memory),
        "spark.driver.memory": str(cluster.driver_memory),
    }
    if int(cluster.executor_cores) > 0:
        properties["spark.executor.cores"] = str(int(cluster.executor_cores))
    properties.update({str(key): str(value) for key, value in cluster.spark_conf.items()})
    return properties


def _check_shape(cfg: Config) -> None:
    shape = cfg.cluster.shape
    from google.cloud import dataproc_v1

    if not shape.single_node and int(shape.worker_count) < 2:
        raise DataprocError(
            f"cluster.shape.worker_count={shape.worker_count}: a standard Dataproc cluster needs >= 2 workers; "
            "set cluster.shape.single_node=true for one machine"
        )
    for role, _, _, disk, disk_gb in _machines(shape):
        if disk not in BOOT_DISK_TYPES:
            raise DataprocError(
                f"cluster.shape.{role}_boot_disk_type={disk!r} is not valid; choose one of: {', '.join(BOOT_DISK_TYPES)}"
            )
        if disk_gb < 10:
            raise DataprocError(f"cluster.shape.{role}_boot_disk_size_gb={disk_gb} must be >= 10")
    known = set(dataproc_v1.Component.__members__) - {"COMPONENT_UNSPECIFIED"}
    for component in shape.optional_components:
        if str(component).upper() not in known:
            raise DataprocError(
                f"cluster.shape.optional_components: {component!r} is not a Dataproc component; "
                f"choose from: {', '.join(sorted(known))}"
            )


def build_cluster(cfg: Config, project: str) -> Any:
    """The ``dataproc_v1.Cluster`` create request of the config's shape."""
    from google.cloud import dataproc_v1

    _check_shape(cfg)
    shape = cfg.cluster.shape
    groups = {
        f"{role}_config": dataproc_v1.InstanceGroupConfig(
            num_instances=count,
            machine_type_uri=machine,
            disk_config=dataproc_v1.DiskConfig(boot_disk_type=disk, boot_disk_size_gb=disk_gb),
        )
        for role, count, machine, disk, disk_gb in _machines(shape)
    }
    config = dataproc_v1.ClusterConfig(
        **groups,
        software_config=dataproc_v1.SoftwareConfig(
            image_version=str(shape.image_version),
            properties=cluster_properties(cfg),
            optional_components=[str(component).upper() for component in shape.optional_components],
        ),
    )
    if cfg.cluster.dataproc.staging_bucket:
        config.config_bucket = _bucket_name(str(cfg.cluster.dataproc.staging_bucket))
    return dataproc_v1.Cluster(
        project_id=project,
        cluster_name=cluster_name(cfg),
        config=config,
        labels={"app": "bigimage", "shape": str(cfg.cluster.name)},
    )


def _machines(shape: DataprocShape) -> list[tuple[str, int, str, str, int]]:
    """(role, count, machine type, boot disk type, boot disk GB) of the master and, unless single node, the workers."""
    machines = [("master", 1, shape.master_machine_type, shape.master_boot_disk_type, shape.master_boot_disk_size_gb)]
    if not shape.single_node:
        worker = (shape.worker_machine_type, shape.worker_boot_disk_type, shape.worker_boot_disk_size_gb)
        machines.append(("worker", shape.worker_count, *worker))
    return [(role, int(count), str(machine), str(disk), int(gb)) for role, count, machine, disk, gb in machines]


def build_pyspark_job(cfg: Config, main_uri: str, package_uri: str, config_uri: str, job_id: str | None = None) -> Any:
    """The ``dataproc_v1.Job`` that runs the task's driver with the package and the resolved config."""
    from google.cloud import dataproc_v1

    job = dataproc_v1.Job(
        placement=dataproc_v1.JobPlacement(cluster_name=cluster_name(cfg)),
        pyspark_job=dataproc_v1.PySparkJob(
            main_python_file_uri=main_uri,
            python_file_uris=[package_uri],
            file_uris=[config_uri],
            args=JOB_ARGS,
            properties=job_properties(cfg),
        ),
        labels={"app": "bigimage", "task": str(cfg.task.name), "shape": str(cfg.cluster.name)},
    )
    if job_id:
        job.reference = dataproc_v1.JobReference(job_id=job_id)
    return job


def _properties_flag(properties: dict[str, str]) -> str:
    items = [f"{key}={value}" for key, value in properties.items()]
    if any("," in item for item in items):
        # gcloud's alternate delimiter (`gcloud topic escaping`): values may then contain commas.
        return "--properties=^#^" + "#".join(items)
    return "--properties=" + ",".join(items)


def _gcloud(cfg: Config, project: str | None, *words: str) -> list[str]:
    where = [f"--region={cfg.cluster.dataproc.region}", *([f"--project={project}"] if project else [])]
    return ["gcloud", "dataproc", *words, *where]


def gcloud_create_command(cfg: Config, project: str | None = None) -> list[str]:
    """``gcloud dataproc clusters create`` with the same shape as :func:`build_cluster`."""
    _check_shape(cfg)
    shape = cfg.cluster.shape
    command = _gcloud(cfg, project, "clusters", "create", cluster_name(cfg))
    command.append(f"--image-version={shape.image_version}")
    command.append("--single-node" if shape.single_node else f"--num-workers={int(shape.worker_count)}")
    for role, _, machine, disk, disk_gb in _machines(shape):
        command += [f"--{role}-machine-type={machine}", f"--{role}-boot-disk-type={disk}"]
        command.append(f"--{role}-boot-disk-size={disk_gb}GB")
    if shape.optional_components:
        command.append("--optional-components=" + ",".join(str(c).upper() for c in shape.optional_components))
    if cfg.cluster.dataproc.staging_bucket:
        command.append(f"--bucket={_bucket_name(str(cfg.cluster.dataproc.staging_bucket))}")
    properties = cluster_properties(cfg)
    properties.pop(SINGLE_NODE_PROPERTY, None)  # --single-node sets it
    if properties:
        command.append(_properties_flag(properties))
    command.append(f"--labels=app=bigimage,shape={cfg.cluster.name}")
    return command


def gcloud_submit_command(cfg: Config, driver: str, package: str, config: str, project: str | None = None) -> list[str]:
    """``gcloud dataproc jobs submit pyspark`` equivalent to :func:`build_pyspark_job`."""
    command = _gcloud(cfg, project, "jobs", "submit", "pyspark", driver, f"--cluster={cluster_name(cfg)}")
    command += [f"--py-files={package}", f"--files={config}", _properties_flag(job_properties(cfg))]
    command.append(f"--labels=app=bigimage,task={cfg.task.name}")
    return [*command, "--", *JOB_ARGS]


def format_command(command: list[str]) -> str:
    """A pasteable shell command, one flag per line."""
    lines: list[str] = []
    current: list[str] = []
    in_job_args = False
    for part in command:
        if part.startswith("-") and current and not in_job_args:
            lines.append(" ".join(current))
            current = []
        in_job_args = in_job_args or part == "--"
        current.append(shlex.quote(part))
    lines.append(" ".join(current))
    return " \\\n    ".join(lines)


@dataclass
class JobFiles:
    driver: Path
    package: Path
    config: Path


def package_zip(destination: Path) -> Path:
    """``bigimage.zip`` of the installed package (pure Python; for ``--py-files``)."""
    source = Path(bigimage.__file__).resolve().parent
    with zipfile.ZipFile(destination, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                archive.write(path, Path("bigimage") / path.relative_to(source))
    return destination


def write_job_files(cfg: Config, directory: Path) -> JobFiles:
    """The three files a job needs: driver script, package zip, resolved config."""
    directory.mkdir(parents=True, exist_ok=True)
    driver = directory / DRIVER_NAME
    shutil.copyfile(PROJECT_ROOT / "dataproc_driver.py", driver)
    package = package_zip(directory / PACKAGE_ZIP)
    config = directory / CONFIG_NAME
    config.write_text(OmegaConf.to_yaml(cfg, resolve=True))  # Hydra hands tasks their config without hydra.*
    return JobFiles(driver=driver, package=package, config=config)


def configured_project(cfg: Config) -> str | None:
    """``cluster.dataproc.project``, else $GOOGLE_CLOUD_PROJECT, else $CLOUDSDK_CORE_PROJECT."""
    project = (
        cfg.cluster.dataproc.project
        or os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("CLOUDSDK_CORE_PROJECT")
    )
    return str(project) if project else None


def resolve_project(cfg: Config) -> str:
    """:func:`configured_project`, else the Application Default Credentials' project; else DataprocError."""
    project = configured_project(cfg)
    if not project:
        with contextlib.suppress(Exception):  # no Application Default Credentials: no project either
            import google.auth

            project = google.auth.default()[1]
    if not project:
        raise DataprocError(
            "no Google Cloud project for Dataproc: set cluster.dataproc.project=YOUR_PROJECT "
            "(or GOOGLE_CLOUD_PROJECT=YOUR_PROJECT in the environment)"
        )
    return str(project)


def check_credentials() -> Any:
    """Application Default Credentials, or a DataprocError saying how to provide them."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except DefaultCredentialsError as error:
        raise DataprocError(
            "no Google Cloud credentials for Dataproc (Application Default Credentials): run "
            "`gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json "
            f"for a service account ({error})"
        ) from error
    return credentials


def check_paths(cfg: Config) -> list[str]:
    """Inputs and outputs the cluster must reach: they have to be gs:// URLs. Returns the problems."""
    problems = _train_problems(cfg) if str(cfg.task.name) == "train" else []
    reads = [("tfrecord_dir", cfg.tfrecord_dir)]
    if str(cfg.task.name) != "train":  # training reads only the TFRecords
        reads.insert(0, ("dataset.root", cfg.dataset.root))
    for key, value in reads:
        if not str(value).startswith("gs://"):
            problems.append(f"{key}={value} is not a gs:// URL, so the Dataproc cluster cannot reach it")
    uri = cfg.tracking.uri
    if not uri or str(uri).startswith(("sqlite:", "file:", "/")):
        problems.append(
            f"tracking.uri={uri} is local: the run's MLflow records would stay on the cluster; "
            "give an MLflow server the cluster can reach (tracking.uri=http://HOST:5000)"
        )
    return problems


def _train_problems(cfg: Config) -> list[str]:
    """A multi-worker training needs Spark barrier tasks and a checkpoint a rerun on other hosts finds."""
    if not Strategy(cfg.strategy.name).multi_worker:
        return []
    problems = []
    if str(cfg.strategy.launcher) != "spark_barrier":
        problems.append(
            f"strategy.launcher={cfg.strategy.launcher} would start all {cfg.strategy.num_workers} workers on the "
            "master node; give strategy.launcher=spark_barrier to run one per Spark executor on the cluster's workers"
        )
    if not str(cfg.train.checkpoint_dir or "").startswith("gs://"):
        problems.append(
            f"train.checkpoint_dir={cfg.train.checkpoint_dir} is not a gs:// URL, so a rerun on other hosts could "
            "not resume; give train.checkpoint_dir=gs://BUCKET/checkpoints/NAME"
        )
    return problems


def _bucket_name(bucket: str) -> str:
    return bucket.removeprefix("gs://").split("/", 1)[0]


def ensure_cluster(cfg: Config, project: str, client: Any, echo: Callable[[str], None] = print) -> Any:
    """Get the named cluster if it is running, else create it from the shape; returns the Cluster."""
    from google.api_core.exceptions import NotFound
    from google.cloud import dataproc_v1

    region = str(cfg.cluster.dataproc.region)
    name = cluster_name(cfg)
    try:
        cluster = client.get_cluster(project_id=project, region=region, cluster_name=name)
    except NotFound:
        echo(f"[dataproc] creating cluster {name} in {region} (shape {cfg.cluster.name}); this takes a few minutes")
        operation = client.create_cluster(
            request={"project_id": project, "region": region, "cluster": build_cluster(cfg, project)}
        )
        return operation.result(timeout=CLUSTER_TIMEOUT_SECONDS)
    state = dataproc_v1.ClusterStatus.State(cluster.status.state).name
    if state in ("RUNNING", "UPDATING"):
        echo(f"[dataproc] reusing cluster {name} ({state}) in {region}")
        return cluster
    if state not in ("CREATING", "STARTING", "REPAIRING"):
        raise DataprocError(
            f"cluster {name} in {region} is {state}; delete it (gcloud dataproc clusters delete {name} "
            f"--region={region}) or choose another cluster.dataproc.cluster_name"
        )
    echo(f"[dataproc] cluster {name} is {state}; waiting")
    deadline = time.monotonic() + CLUSTER_TIMEOUT_SECONDS
    while state != "RUNNING":
        if state not in ("CREATING", "STARTING", "REPAIRING", "UPDATING"):
            raise DataprocError(f"cluster {name} went to {state}: {cluster.status.detail}")
        if time.monotonic() > deadline:
            raise DataprocError(f"cluster {name} did not become RUNNING within {CLUSTER_TIMEOUT_SECONDS:g} s")
        time.sleep(10)
        cluster = client.get_cluster(project_id=project, region=region, cluster_name=name)
        state = dataproc_v1.ClusterStatus.State(cluster.status.state).name
    return cluster


def upload_job_files(files: JobFiles, bucket: str, prefix: str, storage_client: Any) -> dict[str, str]:
    """Copy the job files to gs://bucket/prefix/; returns their gs:// URIs by role."""
    target = storage_client.bucket(bucket)
    for path in vars(files).values():
        target.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))
    return {role: f"gs://{bucket}/{prefix}/{path.name}" for role, path in vars(files).items()}


class DriverOutput:
    """Follows a job's driver output in GCS (``<uri>.000000000``, ``.000000001``, ...) and prints new text."""

    def __init__(self, storage_client: Any, echo: Callable[[str], None] = print) -> None:
        self.storage, self.echo = storage_client, echo
        self.index = self.offset = 0

    def poll(self, driver_output_uri: str) -> None:
        match = re.match(r"gs://([^/]+)/(.*)", driver_output_uri or "")
        if match is None:
            return
        bucket, name = self.storage.bucket(match.group(1)), match.group(2)
        while (blob := bucket.get_blob(f"{name}.{self.index:09d}")) is not None:
            if blob.size and blob.size > self.offset:
                data = blob.download_as_bytes(start=self.offset)
                self.offset += len(data)
                self.echo(data.decode("utf-8", errors="replace").rstrip("\n"))
            if bucket.get_blob(f"{name}.{self.index + 1:09d}") is None:
                return
            self.index, self.offset = self.index + 1, 0


def run_job(
    cfg: Config,
    project: str,
    job: Any,
    job_client: Any,
    storage_client: Any,
    echo: Callable[[str], None] = print,
    poll_seconds: float = JOB_POLL_SECONDS,
) -> Any:
    """Submit the job, print its driver output while it runs, return the finished Job; raise on failure."""
    from google.cloud import dataproc_v1

    region = str(cfg.cluster.dataproc.region)
    submitted = job_client.submit_job(request={"project_id": project, "region": region, "job": job})
    job_id = submitted.reference.job_id
    echo(f"[dataproc] job {job_id} submitted to {cluster_name(cfg)}")
    output = DriverOutput(storage_client, echo)
    try:
        while True:
            current = job_client.get_job(project_id=project, region=region, job_id=job_id)
            output.poll(current.driver_output_resource_uri)
            state = dataproc_v1.JobStatus.State(current.status.state).name
            if state in ("DONE", "ERROR", "CANCELLED"):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        echo(f"[dataproc] interrupted: cancelling job {job_id}")
        job_client.cancel_job(project_id=project, region=region, job_id=job_id)
        raise
    output.poll(current.driver_output_resource_uri)
    if state != "DONE":
        raise DataprocError(
            f"Dataproc job {job_id} ended {state}: {current.status.details}; driver output: "
            f"{current.driver_output_resource_uri or '(none)'}"
        )
    echo(f"[dataproc] job {job_id} finished")
    return current


def dry_run(cfg: Config, directory: Path | None = None, echo: Callable[[str], None] = print) -> tuple[str, str]:
    """Print the gcloud commands that do what run_on_dataproc would do; return them."""
    project = configured_project(cfg)
    directory = directory or Path(cfg.paths.output_dir) / "dataproc" / cluster_name(cfg)
    files = write_job_files(cfg, Path(directory))
    create = format_command(gcloud_create_command(cfg, project))
    submit = format_command(
        gcloud_submit_command(cfg, str(files.driver), str(files.package), str(files.config), project)
    )
    echo("# Dry run (cluster.dataproc.dry_run=true): nothing was created. The equivalent commands:")
    for problem in check_paths(cfg):
        echo(f"# warning: {problem}")
    echo(f"{create}\n\n{submit}")
    if cfg.cluster.dataproc.delete_cluster:
        echo("\n" + format_command([*_gcloud(cfg, project, "clusters", "delete", cluster_name(cfg)), "--quiet"]))
    return create, submit


def run_on_dataproc(
    cfg: Config,
    *,
    cluster_client: Any = None,
    job_client: Any = None,
    storage_client: Any = None,
    echo: Callable[[str], None] = print,
) -> None:
    """The ``cluster.deploy=dataproc`` entry: run the configured task as a job on the shape's cluster
    (clients default to ones for ``cluster.dataproc.region`` with the Application Default Credentials)."""
    if cfg.cluster.dataproc.dry_run:
        dry_run(cfg, echo=echo)
        return
    project = resolve_project(cfg)
    region = str(cfg.cluster.dataproc.region)
    if cluster_client is None or job_client is None or storage_client is None:
        credentials = check_credentials()
        from google.cloud import dataproc_v1, storage

        endpoint = {"api_endpoint": f"{region}-dataproc.googleapis.com:443"}
        where = {"credentials": credentials, "client_options": endpoint}
        cluster_client = cluster_client or dataproc_v1.ClusterControllerClient(**where)
        job_client = job_client or dataproc_v1.JobControllerClient(**where)
        storage_client = storage_client or storage.Client(project=project, credentials=credentials)
    problems = check_paths(cfg)
    if problems:
        raise DataprocError("cannot run on Dataproc as configured:\n  - " + "\n  - ".join(problems))
    _check_shape(cfg)
    try:
        cluster = ensure_cluster(cfg, project, cluster_client, echo)
        bucket = _bucket_name(str(cfg.cluster.dataproc.staging_bucket or cluster.config.config_bucket))
        if not bucket:
            raise DataprocError("no staging bucket: set cluster.dataproc.staging_bucket=gs://BUCKET")
        job_id = f"bigimage-{cfg.task.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with tempfile.TemporaryDirectory(prefix="bigimage-dataproc-") as scratch:
            files = write_job_files(cfg, Path(scratch))
            uris = upload_job_files(files, bucket, f"bigimage-jobs/{job_id}", storage_client)
        job = build_pyspark_job(cfg, uris["driver"], uris["package"], uris["config"], job_id=job_id)
        run_job(cfg, project, job, job_client, storage_client, echo)
    finally:
        if cfg.cluster.dataproc.delete_cluster:
            delete_cluster(cfg, project, cluster_client, echo)


def delete_cluster(cfg: Config, project: str, client: Any, echo: Callable[[str], None] = print) -> None:
    """Delete the shape's cluster (also one left half-created); a failure is reported, never raised."""
    from google.api_core.exceptions import NotFound

    name = cluster_name(cfg)
    region = str(cfg.cluster.dataproc.region)
    echo(f"[dataproc] deleting cluster {name} (cluster.dataproc.delete_cluster=true)")
    try:
        client.delete_cluster(request={"project_id": project, "region": region, "cluster_name": name}).result(
            timeout=CLUSTER_TIMEOUT_SECONDS
        )
    except NotFound:
        return
    except Exception as error:
        print(
            f"[dataproc] could not delete cluster {name}: {error}; delete it with "
            f"`gcloud dataproc clusters delete {name} --region={region}`",
            file=sys.stderr,
        )
