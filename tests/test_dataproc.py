"""Dataproc: the cluster and job requests of the seed's shapes, field by field; the dry-run commands
against gcloud's documented flags; early failures; the run flow against in-memory fakes of the APIs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import dataproc_v1

from bigimage.cloud import dataproc
from bigimage.cloud.dataproc import (
    PIP_PACKAGES_PROPERTY,
    SINGLE_NODE_PROPERTY,
    DataprocError,
    build_cluster,
    build_pyspark_job,
    cluster_pip_packages,
    run_on_dataproc,
)
from bigimage.config import PROJECT_ROOT
from tests.conftest import compose_config

GB_TOTAL_WORKER_DISK = 4096


def dataproc_cfg(shape: str, *overrides: str):
    return compose_config([f"cluster={shape}", "cluster.deploy=dataproc", *overrides])


# ------------------------------------------------------------------------------- cluster requests
def test_single_request_is_one_n1_standard_8_with_500gb_ssd_and_no_workers() -> None:
    cluster = build_cluster(dataproc_cfg("single"), "my-project")
    assert isinstance(cluster, dataproc_v1.Cluster)
    assert cluster.project_id == "my-project"
    assert cluster.cluster_name == "bigimage-single"
    master = cluster.config.master_config
    assert master.num_instances == 1
    assert master.machine_type_uri == "n1-standard-8"
    assert master.disk_config.boot_disk_type == "pd-ssd"
    assert master.disk_config.boot_disk_size_gb == 500
    assert "worker_config" not in cluster.config or cluster.config.worker_config.num_instances == 0
    software = cluster.config.software_config
    assert software.properties[SINGLE_NODE_PROPERTY] == "true"
    assert software.image_version == "3.0-debian13"


@pytest.mark.parametrize(
    ("shape", "workers", "machine"),
    [("maximal", 7, "n1-standard-1"), ("four", 3, "n1-standard-2")],
)
def test_multi_node_requests_match_the_seed_shapes(shape: str, workers: int, machine: str) -> None:
    cluster = build_cluster(dataproc_cfg(shape), "my-project")
    config = cluster.config
    assert cluster.cluster_name == f"bigimage-{shape}"
    assert config.master_config.num_instances == 1
    assert config.master_config.machine_type_uri == machine
    assert config.master_config.disk_config.boot_disk_type == "pd-ssd"
    assert config.master_config.disk_config.boot_disk_size_gb == 500
    assert config.worker_config.num_instances == workers
    assert config.worker_config.machine_type_uri == machine
    assert config.worker_config.disk_config.boot_disk_type == "pd-standard"
    # The seed's 4096 GB of standard disk shared over the workers.
    assert config.worker_config.disk_config.boot_disk_size_gb == GB_TOTAL_WORKER_DISK // workers
    assert SINGLE_NODE_PROPERTY not in config.software_config.properties
    assert config.software_config.image_version == "3.0-debian13"
    assert list(config.software_config.optional_components) == []


def test_optional_components_image_version_and_packages() -> None:
    cfg = dataproc_cfg(
        "four", "cluster.shape.optional_components=[JUPYTER,zeppelin]", "cluster.shape.image_version=2.1-debian11"
    )
    software = build_cluster(cfg, "p").config.software_config
    assert list(software.optional_components) == [dataproc_v1.Component.JUPYTER, dataproc_v1.Component.ZEPPELIN]
    assert software.image_version == "2.1-debian11"
    packages = software.properties[PIP_PACKAGES_PROPERTY].split(",")
    names = {re.split(r"[=<>]", package)[0] for package in packages}
    assert {"hydra-core", "mlflow", "tensorflow"} <= names
    assert "pyspark" not in names  # the image's own Spark runs the job


def test_pip_packages_are_pinned_and_comma_free() -> None:
    for package in cluster_pip_packages():
        assert "," not in package and " " not in package, package


def test_bad_shapes_fail_before_any_request() -> None:
    with pytest.raises(DataprocError, match="pd-standard, pd-ssd, pd-balanced"):
        build_cluster(dataproc_cfg("four", "cluster.shape.worker_boot_disk_type=hdd"), "p")
    with pytest.raises(DataprocError, match="not a Dataproc component"):
        build_cluster(dataproc_cfg("four", "cluster.shape.optional_components=[JUPITER]"), "p")
    with pytest.raises(DataprocError, match="needs >= 2 workers"):
        build_cluster(dataproc_cfg("four", "cluster.shape.worker_count=1"), "p")
    with pytest.raises(DataprocError, match="not a valid Dataproc cluster name"):
        build_cluster(dataproc_cfg("four", "cluster.dataproc.cluster_name=My_Cluster"), "p")


def test_job_request_carries_package_config_and_shape() -> None:
    cfg = dataproc_cfg("maximal", "task=preprocess")
    job = build_pyspark_job(cfg, "gs://b/x/driver.py", "gs://b/x/bigimage.zip", "gs://b/x/c.yaml", job_id="j1")
    assert job.placement.cluster_name == "bigimage-maximal"
    assert job.reference.job_id == "j1"
    pyspark = job.pyspark_job
    assert pyspark.main_python_file_uri == "gs://b/x/driver.py"
    assert list(pyspark.python_file_uris) == ["gs://b/x/bigimage.zip"]
    assert list(pyspark.file_uris) == ["gs://b/x/c.yaml"]
    assert list(pyspark.args) == ["--config", dataproc.CONFIG_NAME]
    assert pyspark.properties["spark.executor.instances"] == "7"
    assert pyspark.properties["spark.executor.cores"] == "1"
    assert pyspark.properties["spark.executor.memory"] == "1g"


# ------------------------------------------------------------------- dry run against gcloud's docs
# From `gcloud dataproc clusters create --help` / cloud.google.com/sdk/gcloud/reference/dataproc/clusters/create
# and .../dataproc/jobs/submit/pyspark: flag -> value format (None: a switch without value).
MACHINE = r"[a-z][a-z0-9]*-[a-z]+-\d+"
DISK_SIZE = r"\d+(KB|MB|GB|TB)"
DISK_TYPE = r"pd-(balanced|ssd|standard)"
REGION = r"[a-z]+-[a-z]+\d+"
LABELS = r"[a-z][-_a-z0-9]*=[-_a-z0-9]*(,[a-z][-_a-z0-9]*=[-_a-z0-9]*)*"
# Documented property prefixes of clusters create (the `dataproc:` prefix: cloud.google.com/dataproc/docs/
# concepts/configuring-clusters/cluster-properties).
PROPERTY_PREFIXES = {
    "capacity-scheduler",
    "core",
    "distcp",
    "hadoop-env",
    "hdfs",
    "hive",
    "mapred",
    "mapred-env",
    "pig",
    "spark",
    "spark-env",
    "yarn",
    "yarn-env",
    "dataproc",
}
CREATE_FLAGS = {
    "--region": REGION,
    "--project": r"[a-z][-a-z0-9]{4,28}[a-z0-9]",
    "--image-version": r"\d+\.\d+(\.\d+)?(-[a-z]+\d+)?",
    "--single-node": None,
    "--num-workers": r"\d+",
    "--master-machine-type": MACHINE,
    "--worker-machine-type": MACHINE,
    "--master-boot-disk-type": DISK_TYPE,
    "--worker-boot-disk-type": DISK_TYPE,
    "--master-boot-disk-size": DISK_SIZE,
    "--worker-boot-disk-size": DISK_SIZE,
    "--optional-components": r"[A-Z_]+(,[A-Z_]+)*",
    "--bucket": r"[a-z0-9][-_.a-z0-9]+",
    "--properties": r"(\^(?P<delim>[^^])\^)?.+",
    "--labels": LABELS,
}
SUBMIT_FLAGS = {
    "--cluster": r"[a-z](?:[-a-z0-9]{0,49}[a-z0-9])?",
    "--region": REGION,
    "--project": CREATE_FLAGS["--project"],
    "--py-files": r"[^,]+\.(py|zip|egg)(,[^,]+\.(py|zip|egg))*",
    "--files": r"[^,]+(,[^,]+)*",
    "--properties": r"(\^(?P<delim>[^^])\^)?.+",
    "--labels": LABELS,
}


def _commands(text: str) -> list[list[str]]:
    """The shell commands in the printed text, split as a POSIX shell would (continuations joined)."""
    commands = []
    for block in re.split(r"\n\s*\n", text.replace("\\\n", " ")):
        lines = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if lines:
            commands.append(shlex.split(" ".join(lines)))
    return commands


def _split_flags(tokens: list[str]) -> tuple[list[str], dict[str, str | None], list[str]]:
    positionals, flags, job_args = [], {}, []
    for index, token in enumerate(tokens):
        if token == "--":
            job_args = tokens[index + 1 :]
            break
        if token.startswith("--"):
            name, _, value = token.partition("=")
            assert name not in flags, f"{name} given twice"
            flags[name] = value if "=" in token else None
        else:
            positionals.append(token)
    return positionals, flags, job_args


def _check_properties(value: str, prefixed: bool) -> dict[str, str]:
    delimiter = ","
    match = re.match(r"\^([^^])\^", value)
    if match:
        delimiter, value = match.group(1), value[match.end() :]
    properties = {}
    for item in value.split(delimiter):
        key, sep, prop_value = item.partition("=")
        assert sep and key and prop_value, f"property {item!r} is not KEY=VALUE"
        if prefixed:
            prefix, colon, _ = key.partition(":")
            assert colon and prefix in PROPERTY_PREFIXES, f"property {key!r} has no documented prefix"
        properties[key] = prop_value
    return properties


def _check_flags(flags: dict[str, str | None], documented: dict[str, str | None]) -> None:
    for name, value in flags.items():
        assert name in documented, f"{name} is not a documented flag"
        pattern = documented[name]
        if pattern is None:
            assert value is None, f"{name} takes no value"
        else:
            assert value is not None and re.fullmatch(pattern, value), f"{name}={value!r} does not match {pattern}"


@pytest.mark.parametrize("shape", ["single", "maximal", "four"])
def test_dry_run_prints_gcloud_commands_in_documented_syntax(shape: str, tmp_path: Path, capsys) -> None:
    cfg = dataproc_cfg(
        shape,
        "cluster.dataproc.dry_run=true",
        "cluster.dataproc.project=my-project",
        f"paths.output_dir={tmp_path}",
        "task=preprocess",
    )
    run_on_dataproc(cfg)  # dry run: no credentials, no clients
    text = capsys.readouterr().out
    create, submit = _commands(text)

    assert create[:4] == ["gcloud", "dataproc", "clusters", "create"]
    positionals, flags, job_args = _split_flags(create[4:])
    assert positionals == [f"bigimage-{shape}"] and job_args == []
    _check_flags(flags, CREATE_FLAGS)
    assert flags["--region"] == "europe-west2" and flags["--project"] == "my-project"
    assert flags["--image-version"] == "3.0-debian13"
    shape_cfg = cfg.cluster.shape
    assert flags["--master-machine-type"] == shape_cfg.master_machine_type
    assert flags["--master-boot-disk-type"] == "pd-ssd" and flags["--master-boot-disk-size"] == "500GB"
    if shape == "single":
        assert "--single-node" in flags
        assert not {"--num-workers", "--worker-machine-type", "--worker-boot-disk-size"} & set(flags)
    else:
        workers = int(shape_cfg.worker_count)
        assert "--single-node" not in flags
        assert flags["--num-workers"] == str(workers)
        assert flags["--worker-machine-type"] == shape_cfg.worker_machine_type
        assert flags["--worker-boot-disk-type"] == "pd-standard"
        assert flags["--worker-boot-disk-size"] == f"{GB_TOTAL_WORKER_DISK // workers}GB"
    properties = _check_properties(flags["--properties"], prefixed=True)
    assert "mlflow" in properties[PIP_PACKAGES_PROPERTY]

    assert submit[:5] == ["gcloud", "dataproc", "jobs", "submit", "pyspark"]
    positionals, flags, job_args = _split_flags(submit[5:])
    _check_flags(flags, SUBMIT_FLAGS)
    assert len(positionals) == 1 and positionals[0].endswith(".py")
    assert flags["--cluster"] == f"bigimage-{shape}"
    assert job_args == ["--config", dataproc.CONFIG_NAME]
    job_properties = _check_properties(flags["--properties"], prefixed=False)
    assert job_properties["spark.executor.instances"] == str(cfg.cluster.executors)
    # The files the command names exist, so it can be pasted as printed.
    driver, package, config = Path(positionals[0]), Path(flags["--py-files"]), Path(flags["--files"])
    assert driver.is_file() and config.is_file() and config.name == dataproc.CONFIG_NAME
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
    assert "bigimage/spark/cluster.py" in names
    assert driver.read_text() == (PROJECT_ROOT / "dataproc_driver.py").read_text()
    assert not any("__pycache__" in name for name in names)
    assert "warning: dataset.root" in text  # local paths the cluster cannot reach are pointed out


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_real_gcloud_parses_the_dry_run_commands(tmp_path: Path, capsys) -> None:
    """gcloud validates flags before it needs an account: with none configured, a command that parses
    stops at the credentials step, one that does not stops at argument parsing."""
    cfg = dataproc_cfg(
        "maximal",
        "cluster.dataproc.dry_run=true",
        "cluster.dataproc.project=my-project",
        f"paths.output_dir={tmp_path}",
    )
    run_on_dataproc(cfg)
    commands = _commands(capsys.readouterr().out)
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)

    def run(command: list[str]) -> str:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        return done.stderr

    for command in commands:
        stderr = run(command)
        assert "unrecognized arguments" not in stderr and "argument --" not in stderr, stderr
        assert re.search(r"(account|credential|auth)", stderr, re.IGNORECASE), stderr
    # The check has teeth: a wrong flag or value is refused at parsing.
    assert "unrecognized arguments" in run([*commands[0], "--no-such-flag"])
    assert "argument --num-workers" in run([*commands[0][:5], "--region=europe-west2", "--num-workers=many"])


# ----------------------------------------------------------------------------- failing early
def test_missing_project_fails_early_with_what_to_set(monkeypatch, tmp_path: Path) -> None:
    for key in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS", "GCLOUD_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "empty-gcloud"))
    monkeypatch.setattr(
        "google.auth.default",
        lambda *a, **k: (_ for _ in ()).throw(
            __import__("google.auth.exceptions", fromlist=["x"]).DefaultCredentialsError("none")
        ),
    )
    with pytest.raises(DataprocError, match="cluster.dataproc.project=YOUR_PROJECT"):
        run_on_dataproc(dataproc_cfg("single"))


def test_missing_credentials_fail_early_with_what_to_set(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "empty-gcloud"))
    from google.auth.exceptions import DefaultCredentialsError

    def no_credentials(*args, **kwargs):
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr("google.auth.default", no_credentials)
    with pytest.raises(DataprocError, match="gcloud auth application-default login.*GOOGLE_APPLICATION_CREDENTIALS"):
        run_on_dataproc(dataproc_cfg("single", "cluster.dataproc.project=p"))


def test_local_paths_fail_before_any_cluster_is_created() -> None:
    fake = FakeDataproc()
    with pytest.raises(DataprocError, match="dataset.root=.* not a gs:// URL"):
        run_on_dataproc(dataproc_cfg("four", "cluster.dataproc.project=p"), **fake.clients())
    assert fake.calls == []


# --------------------------------------------------------------------- the run flow, against fakes
class FakeOperation:
    def __init__(self, value=None):
        self.value = value

    def result(self, timeout=None):
        return self.value


class FakeBlob:
    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    @property
    def size(self):
        return len(self.store.get(self.name, b""))

    def upload_from_filename(self, path: str) -> None:
        self.store[self.name] = Path(path).read_bytes()

    def download_as_bytes(self, start: int = 0) -> bytes:
        return self.store[self.name][start:]


class FakeBucket:
    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def blob(self, path: str) -> FakeBlob:
        return FakeBlob(self.store, f"gs://{self.name}/{path}")

    def get_blob(self, path: str):
        key = f"gs://{self.name}/{path}"
        return FakeBlob(self.store, key) if key in self.store else None


class FakeDataproc:
    """ClusterController, JobController and Storage clients in memory; records the calls."""

    def __init__(self, existing_state: str | None = None, job_ends: str = "DONE"):
        self.calls: list[tuple[str, object]] = []
        self.objects: dict[str, bytes] = {}
        self.existing_state = existing_state
        self.job_ends = job_ends
        self.polls = 0

    def clients(self) -> dict:
        return {
            "cluster_client": self,
            "job_client": SimpleNamespace(submit_job=self.submit_job, get_job=self.get_job, cancel_job=self.cancel_job),
            "storage_client": SimpleNamespace(bucket=lambda name: FakeBucket(self.objects, name)),
        }

    def _cluster(self, state: str):
        cluster = dataproc_v1.Cluster(cluster_name="c")
        cluster.status.state = dataproc_v1.ClusterStatus.State[state]
        cluster.config.config_bucket = "staging-bucket"
        return cluster

    def get_cluster(self, project_id, region, cluster_name):
        self.calls.append(("get_cluster", cluster_name))
        if self.existing_state is None:
            raise NotFound("no such cluster")
        return self._cluster(self.existing_state)

    def create_cluster(self, request):
        self.calls.append(("create_cluster", request["cluster"]))
        return FakeOperation(self._cluster("RUNNING"))

    def delete_cluster(self, request):
        self.calls.append(("delete_cluster", request["cluster_name"]))
        return FakeOperation()

    def submit_job(self, request):
        self.calls.append(("submit_job", request["job"]))
        self.job = request["job"]
        return self.job

    def get_job(self, project_id, region, job_id):
        self.polls += 1
        job = dataproc_v1.Job(reference=dataproc_v1.JobReference(job_id=job_id))
        output = "gs://staging-bucket/google-cloud-dataproc-metainfo/x/driveroutput"
        job.driver_output_resource_uri = output
        self.objects.setdefault(f"{output}.000000000", b"")
        self.objects[f"{output}.000000000"] += f"line {self.polls}\n".encode()
        state = "RUNNING" if self.polls < 3 else self.job_ends
        job.status.state = dataproc_v1.JobStatus.State[state]
        job.status.details = "boom" if state == "ERROR" else ""
        return job

    def cancel_job(self, project_id, region, job_id):
        self.calls.append(("cancel_job", job_id))


def _gs_cfg(shape: str, *overrides: str):
    return dataproc_cfg(
        shape,
        "cluster.dataproc.project=p",
        "dataset=folder",
        "dataset.root=gs://data/flowers",
        "tfrecord_dir=gs://data/tfrecords",
        "tracking.uri=http://mlflow.example:5000",
        "task=preprocess",
        *overrides,
    )


def test_run_creates_the_cluster_submits_streams_and_deletes(monkeypatch, capsys) -> None:
    monkeypatch.setattr(dataproc, "JOB_POLL_SECONDS", 0)
    fake = FakeDataproc()
    lines: list[str] = []
    monkeypatch.setattr(dataproc.time, "sleep", lambda seconds: None)
    run_on_dataproc(_gs_cfg("four", "cluster.dataproc.delete_cluster=true"), echo=lines.append, **fake.clients())
    names = [name for name, _ in fake.calls]
    assert names == ["get_cluster", "create_cluster", "submit_job", "delete_cluster"]
    created = fake.calls[1][1]
    assert created.config.worker_config.num_instances == 3
    job = fake.calls[2][1]
    uploaded = sorted(fake.objects)
    for uri in (job.pyspark_job.main_python_file_uri, *job.pyspark_job.python_file_uris, *job.pyspark_job.file_uris):
        assert uri.startswith("gs://staging-bucket/bigimage-jobs/") and uri in uploaded
    config_text = fake.objects[job.pyspark_job.file_uris[0]].decode()
    assert "gs://data/flowers" in config_text and "deploy: dataproc" in config_text
    streamed = "\n".join(lines)
    assert "line 1" in streamed and "line 3" in streamed  # the driver output, as it came


def test_run_reuses_a_running_cluster_and_reports_a_failed_job(monkeypatch) -> None:
    monkeypatch.setattr(dataproc.time, "sleep", lambda seconds: None)
    fake = FakeDataproc(existing_state="RUNNING", job_ends="ERROR")
    with pytest.raises(DataprocError, match="ended ERROR: boom"):
        run_on_dataproc(
            _gs_cfg("maximal", "cluster.dataproc.delete_cluster=true"), echo=lambda line: None, **fake.clients()
        )
    names = [name for name, _ in fake.calls]
    assert "create_cluster" not in names
    assert names[-1] == "delete_cluster"  # deleted when asked, also after a failure


def test_cluster_in_error_state_is_not_reused(monkeypatch) -> None:
    fake = FakeDataproc(existing_state="ERROR")
    with pytest.raises(DataprocError, match="is ERROR; delete it"):
        run_on_dataproc(_gs_cfg("single"), echo=lambda line: None, **fake.clients())


# ------------------------------------------------------------------ the driver that runs on the cluster
def test_driver_runs_a_real_task_in_its_own_tracked_run(tmp_path: Path, make_image_tree) -> None:
    """The driver as Dataproc runs it, from the job files: task=preprocess through the task table, tracked
    like run_task, on the Spark the cluster gives (here a local master standing in for YARN)."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = make_image_tree(per_class=2)
    cfg = dataproc_cfg(
        "single",
        "cluster.master='local[2]'",
        "task=preprocess",
        "dataset=folder",
        f"dataset.root={root}",
        f"tfrecord_dir={tmp_path / 'tfrecords'}",
        "num_shards=2",
        "image_size=32",
        f"tracking.uri={uri}",
        "tracking.experiment=driver-task",
    )
    files = dataproc.write_job_files(cfg, tmp_path / "job")
    environment = {key: value for key, value in os.environ.items() if key != "BIGIMAGE_ON_DATAPROC"}
    result = subprocess.run(
        [sys.executable, files.driver.name, "--config", files.config.name],
        cwd=files.driver.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["driver-task"], output_format="list")
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert runs[0].data.metrics["images"] == 6
    assert runs[0].data.tags["cluster.deploy"] == "dataproc"
    assert runs[0].data.tags["spark.master"] == "local[2]"  # read back from the running Spark
