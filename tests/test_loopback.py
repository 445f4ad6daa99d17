"""Nobody let in: everything a local run starts listens on loopback only (issue 10).

Each run below is watched (:mod:`tests.listening`): every TCP listener of this process and of every
process it starts (Spark JVMs, executors, Python workers, TensorFlow workers, the storage emulator)
must be on 127.0.0.0/8 or ::1, or inside a private network namespace that holds only ``lo``.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from bigimage.config import PROJECT_ROOT
from bigimage.spark.cluster import spark_for
from bigimage.train import launch, netns
from bigimage.train.launch import free_ports
from bigimage.train.task import run_train
from tests.conftest import compose_config, train_config
from tests.listening import children, interfaces, interfaces_in, listeners_of, processes_in, watch_listeners
from tests.listening import netns as netns_of
from tests.mlflow_server import mlflow_server
from tests.test_train_runs import progress
from tests.tfrecord_fixtures import write_tfrecord_dir

UI_ON = "+cluster.spark_conf={spark.ui.enabled: 'true'}"  # the UI binds apart from the driver: check it too


def _netns_available() -> bool:
    try:
        netns.PrivateNetwork().close()
    except netns.NetnsUnavailable:
        return False
    return True


needs_netns = pytest.mark.skipif(
    not _netns_available(), reason="no private network namespace here (the fallback warns)"
)


def assert_loopback_only(watch, *, at_least: int) -> None:
    assert len(watch.listeners) >= at_least, f"too few listeners seen to judge:\n{watch.report()}"
    assert not watch.exposed, f"listening beyond loopback:\n{watch.report()}"


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfr")
    write_tfrecord_dir(directory, num_images=48, image_size=32, num_shards=2)
    return str(directory)


# ---------------------------------------------------------------------------------- Spark (item 2)
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_preprocess_on_local_spark_listens_on_loopback_only(mlflow_experiment, make_image_tree, tmp_path) -> None:
    from bigimage.spark.preprocess import run_preprocess

    cfg = compose_config(
        [
            "task=preprocess", "cluster=local", "dataset=folder", f"dataset.root={make_image_tree(per_class=2)}",
            f"tfrecord_dir={tmp_path / 'out'}", "image_size=32", "num_shards=2", UI_ON,
        ]
    )  # fmt: skip
    with watch_listeners() as watch, mlflow.start_run(experiment_id=mlflow_experiment):
        run_preprocess(cfg)
    java = [listener for listener in watch.listeners if "java" in listener.command]
    assert len(java) >= 3, watch.report()  # driver RPC, block manager, UI (and py4j)
    assert_loopback_only(watch, at_least=3)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_standalone_cluster_listens_on_loopback_with_authentication(mlflow_experiment) -> None:
    from bigimage.spark.session import log_spark_resources
    from bigimage.spark.standalone import auth_conf

    cfg = compose_config(
        ["cluster=four", "cluster.deploy=standalone", "cluster.executors=1", "cluster.executor_cores=1",
         "cluster.executor_memory=512m", "cluster.driver_memory=1g", UI_ON]
    )  # fmt: skip
    began = time.monotonic()
    with watch_listeners() as watch, spark_for(cfg.cluster, "loopback-auth") as spark:
        assert spark.sparkContext.parallelize(range(8), 2).map(lambda x: x * 2).sum() == 56  # an executor ran it
        conf = spark.sparkContext.getConf()
        secret = auth_conf(spark.sparkContext.master)["spark.authenticate.secret"]
        work_dir = Path(conf.get("spark.bigimage.standalone.workDir"))
        with mlflow.start_run(experiment_id=mlflow_experiment) as run:
            log_spark_resources(spark)
        watch.poll()
        logs = {path: path.read_text(errors="replace") for path in work_dir.rglob("*") if path.is_file()}
        properties = work_dir / "spark-daemons.conf"
        properties_mode = properties.stat().st_mode
        everyone = [" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])]
    print(f"\n[timing] standalone cluster with authentication, one job: {time.monotonic() - began:.1f} s")
    assert_loopback_only(watch, at_least=6)  # master, worker, executor, driver: RPC and UIs
    assert conf.get("spark.authenticate") == "true"
    daemon_logs = [text for path, text in logs.items() if path.suffix == ".log" or path.name == "stderr"]
    assert len(daemon_logs) >= 3  # master, worker, executor
    assert all("authentication enabled" in text for text in daemon_logs), "a Spark process runs without auth"
    assert not any("Started REST server" in text for text in daemon_logs)  # it takes no authentication
    # The secret is in no command line (any local user reads those), no log and no MLflow record.
    assert [path for path, text in logs.items() if secret in text] == [properties]
    assert properties_mode & 0o077 == 0  # the daemons' properties: their owner's only
    assert not any(secret in command for command in everyone + sorted(watch.commands))
    logged = MlflowClient().get_run(run.info.run_id).data
    assert secret not in repr((logged.params, logged.tags, logged.metrics))


# ------------------------------------------------------------------------- TensorFlow workers (item 1)
@pytest.mark.slow
@needs_netns
@pytest.mark.timeout(300)
def test_multi_worker_training_listens_on_loopback_only(tmp_path, tfrecords, mlflow_experiment) -> None:
    cfg = train_config(tmp_path, tfrecords, "strategy=multi_worker_mirrored", "strategy.num_workers=2", "epochs=1")
    began = time.monotonic()
    with watch_listeners() as watch, mlflow.start_run(experiment_id=mlflow_experiment) as run:
        metrics = run_train(cfg)
    print(f"\n[timing] 2 workers x 1 epoch in a private network: {time.monotonic() - began:.1f} s")
    assert metrics["replicas"] == 2
    assert_loopback_only(watch, at_least=2)
    workers = {entries[0]["pid"] for entries in progress(cfg, run.info.run_id).values()}
    spaces = {watch.netns_of[pid] for pid in workers}
    assert len(workers) == 2 and len(spaces) == 1 and spaces != {netns_of()}  # one private namespace, shared
    (space,) = spaces
    assert len([seen for seen in watch.listeners if seen.netns == space]) >= 2  # both gRPC servers, seen in there
    assert processes_in(space) == []  # torn down with the training
    # The chief logged from inside through the sqlite store on the shared file system.
    assert [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")] == [0]


@pytest.fixture
def http_store(tmp_path, monkeypatch) -> Iterator[tuple[str, str]]:
    """A real ``mlflow server`` on loopback as the process's tracking URI; yields its URL and an experiment."""
    previous = mlflow.get_tracking_uri()
    with mlflow_server(tmp_path / "server") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        try:
            yield url, mlflow.create_experiment("loopback-http")
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.mark.slow
@needs_netns
@pytest.mark.timeout(400)
def test_multi_worker_training_logging_over_http_listens_on_loopback_only(tmp_path, tfrecords, http_store) -> None:
    """The tracking server and its artifacts reached over HTTP on 127.0.0.1, relayed into the namespace."""
    url, experiment = http_store
    cfg = train_config(tmp_path, tfrecords, "strategy=multi_worker_mirrored", "strategy.num_workers=2", "epochs=1")
    began = time.monotonic()
    with watch_listeners() as watch, mlflow.start_run(experiment_id=experiment) as run:
        metrics = run_train(cfg)
    print(f"\n[timing] 2 workers x 1 epoch in a private network, logging over HTTP: {time.monotonic() - began:.1f} s")
    assert metrics["replicas"] == 2
    assert_loopback_only(watch, at_least=3)  # the tracking server, two gRPC servers, the relay
    workers = {entries[0]["pid"] for entries in progress(cfg, run.info.run_id).values()}
    spaces = {watch.netns_of[pid] for pid in workers}
    assert len(workers) == 2 and len(spaces) == 1 and spaces != {netns_of()}  # one private namespace, shared
    (space,) = spaces
    port = int(url.rsplit(":", 1)[1])
    inside = {(seen.address, seen.port) for seen in watch.listeners if seen.netns == space}
    assert ("127.0.0.1", port) in inside  # the relay to the tracking server, on the namespace's loopback
    on_host = [seen for seen in watch.listeners if seen.netns == netns_of()]
    assert on_host and not [seen for seen in on_host if seen.exposed], watch.report()  # what `ss` shows here
    assert processes_in(space) == []  # torn down with the training
    logged = MlflowClient(url).get_run(run.info.run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags[launch.NETWORK_TAG] == launch.PRIVATE_NETWORK
    assert {"loss", "val_accuracy", "images_per_second"} <= set(logged.data.metrics)  # the chief logged, relayed
    assert [m.step for m in MlflowClient(url).get_metric_history(run.info.run_id, "val_accuracy")] == [0]
    assert MlflowClient(url).list_artifacts(run.info.run_id, "worker_logs")


def _path_without(tmp_path: Path, *names: str) -> str:
    """A PATH with every command of this one but ``names`` (symbolic links in one folder)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in filter(os.path.isdir, os.environ["PATH"].split(os.pathsep)):
        for entry in os.scandir(directory):
            target = folder / entry.name
            if entry.name not in names and not target.exists() and os.access(entry.path, os.X_OK):
                target.symlink_to(entry.path)
    return str(folder)


@pytest.mark.timeout(300)
def test_required_isolation_without_namespaces_ends_in_one_line(tmp_path, tfrecords) -> None:
    """No ``unshare`` on PATH: the default ``strategy.isolation=required`` refuses before any worker starts."""
    command = [
        sys.executable, "run.py", "task=train", "strategy=multi_worker_mirrored", "strategy.num_workers=2",
        f"tfrecord_dir={tfrecords}", "image_size=32", "batch_size=16", "epochs=1",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}",
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PATH"] = _path_without(tmp_path, "unshare", "nsenter")
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=280)
    lines = [line for line in done.stderr.splitlines() if line.strip() and " INFO mlflow." not in line]
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: strategy.isolation=required, but no private network namespace"), lines
    assert "`unshare`/`nsenter` (util-linux) are not installed" in lines[0] and "install util-linux" in lines[0]
    assert "strategy.isolation=preferred" in lines[0]
    assert not list((tmp_path / "out").rglob("worker-*.log"))  # no worker started


@pytest.mark.slow
@needs_netns
@pytest.mark.timeout(300)
def test_barrier_training_on_local_spark_listens_on_loopback_only(tmp_path, tfrecords, mlflow_experiment) -> None:
    cfg = train_config(
        tmp_path, tfrecords, "strategy=multi_worker_mirrored", "strategy.launcher=spark_barrier", "epochs=1",
        "cluster=local", "cluster.executors=1", "cluster.executor_cores=2",
    )  # fmt: skip
    began = time.monotonic()
    with watch_listeners() as watch, mlflow.start_run(experiment_id=mlflow_experiment) as run:
        metrics = run_train(cfg)
    print(f"\n[timing] 2 barrier workers x 1 epoch on local Spark: {time.monotonic() - began:.1f} s")
    assert metrics["replicas"] == 2
    assert_loopback_only(watch, at_least=4)  # driver, block manager, two gRPC servers
    workers = {entries[0]["pid"] for entries in progress(cfg, run.info.run_id).values()}
    spaces = {watch.netns_of[pid] for pid in workers}
    assert len(workers) == 2 and len(spaces) == 1 and spaces != {netns_of()}
    assert processes_in(spaces.pop()) == []


# ------------------------------------------------------------------------------ the namespace itself
@needs_netns
def test_private_network_is_shared_unreachable_and_torn_down() -> None:
    server = "import socket; s = socket.create_server(('::', 0), family=socket.AF_INET6, dualstack_ipv6=True); print(s.getsockname()[1], flush=True); s.accept()[0].recv(1)"
    with netns.private_network() as network:
        assert network is not None, "no namespace although this machine allows one"
        listener = subprocess.Popen(network.command([sys.executable, "-c", server]), stdout=subprocess.PIPE, text=True)
        port = int(listener.stdout.readline())
        space = netns_of(listener.pid)
        assert space != netns_of() and interfaces(listener.pid) == ["lo"]
        assert [(seen.address, seen.port, seen.private_netns) for seen in listeners_of(listener.pid)] == [
            ("::", port, True)
        ]
        with pytest.raises(OSError):  # listening on every interface, yet nothing here reaches it
            socket.create_connection(("127.0.0.1", port), timeout=2)
        client = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).send(b'x')"
        assert (
            subprocess.run(network.command([sys.executable, "-c", client]), check=False).returncode == 0
        )  # a fellow does
        assert listener.wait(timeout=10) == 0
    assert network.holder.poll() is not None and processes_in(space) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become nobody")
def test_private_network_without_root_uses_a_user_namespace() -> None:
    probe = "import bigimage.train.netns as n, subprocess, sys; p = n.PrivateNetwork(); print(p.user_namespace, subprocess.run(p.command(['cat', '/proc/self/net/dev'])).returncode); p.close()"
    # nobody imports a copy of the package: the checkout may sit in a folder only root can enter
    # (a clone under `mktemp -d`, mode 0700), which is no property of the code under test.
    readable = Path(tempfile.mkdtemp(prefix="bigimage-nobody-"))
    try:
        readable.chmod(0o755)
        shutil.copytree(PROJECT_ROOT / "src" / "bigimage", readable / "bigimage")
        for python in (sys.executable, "/usr/bin/python3"):  # an interpreter nobody may run
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", probe]
            done = subprocess.run(
                nobody, check=False, capture_output=True, text=True, env={"PYTHONPATH": str(readable)}, cwd="/"
            )
            if "Permission denied" not in done.stderr:
                break
    finally:
        shutil.rmtree(readable, ignore_errors=True)
    if "not permitted" in done.stderr or "Permission denied" in done.stderr:
        pytest.skip(f"nobody cannot make a user namespace or run Python here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "True 0", done.stdout  # a user namespace; the command ran inside
    assert interfaces_in(done.stdout) == ["lo"]


@pytest.fixture
def host_server() -> Iterator[socket.socket]:
    """A TCP server on the host's 127.0.0.1 that answers each connection with ``b"hello "`` and what it read."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with client:
                client.sendall(b"hello " + client.recv(64))

    threading.Thread(target=answer, daemon=True).start()
    with server:
        yield server


RELAYED_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as sock:
    sock.sendall(b"from inside")
    sock.shutdown(socket.SHUT_WR)
    print(sock.recv(64).decode())
"""


@needs_netns
def test_private_network_relays_to_servers_on_the_hosts_loopback(host_server) -> None:
    port = host_server.getsockname()[1]
    uris = [f"http://127.0.0.1:{port}/api", f"http://localhost:{port}", "sqlite:////tmp/mlflow.db"]
    with netns.private_network(uris, isolation=netns.REQUIRED) as network:
        assert network is not None
        for host in ("127.0.0.1", "localhost"):
            done = subprocess.run(
                network.command([sys.executable, "-c", RELAYED_CLIENT, host, str(port)]),
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert done.returncode == 0 and done.stdout.strip() == "hello from inside", done.stderr
        relay = [(seen.address, seen.port, seen.private_netns) for seen in listeners_of(network.holder.pid)]
        assert ("127.0.0.1", port, True) in relay  # the relay listens in the namespace, on its loopback
        other = free_ports(1)[0]  # nothing there on the host, and not relayed: unreachable from inside
        done = subprocess.run(network.command([sys.executable, "-c", RELAYED_CLIENT, "127.0.0.1", str(other)]),
                              capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert done.returncode != 0 and "ConnectionRefusedError" in done.stderr
        holder = network.holder.pid
    assert not psutil.pid_exists(holder) or psutil.Process(holder).status() == psutil.STATUS_ZOMBIE


def test_which_endpoints_a_namespace_relays(monkeypatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")
    relayed, beyond = netns.routes(
        [
            "http://user:pw@127.0.0.1:5000", "https://localhost/mlflow", "postgresql+psycopg2://me@[::1]/db",
            "mlflow-artifacts:/1/abc/artifacts", "gs://bucket/ckpt", "/tmp/ckpt", "sqlite:////tmp/m.db", None,
            "http://127.0.0.1:5000/again", "http://mlflow.example.com:5000", "databricks", "hdfs://localhost/x",
        ]
    )  # fmt: skip
    assert [str(each) for each in relayed] == ["127.0.0.1:5000", "localhost:443", "[::1]:5432", "127.0.0.1:9023"]
    assert beyond == ["http://mlflow.example.com:5000", "databricks", "hdfs://localhost/x"]  # hdfs: no known port
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    assert netns.routes(["gs://bucket/ckpt"]) == ([], ["gs://bucket/ckpt"])  # Cloud Storage itself


def test_required_isolation_refuses_in_one_line_what_no_namespace_serves(monkeypatch) -> None:
    remote = "http://me:s3cret@mlflow.example.com:5000"
    with pytest.raises(netns.IsolationError) as refused, netns.private_network([remote], isolation="required"):
        pass
    message = str(refused.value)
    assert "\n" not in message and "s3cret" not in message and "http://***@mlflow.example.com:5000" in message
    assert "strategy.isolation=preferred" in message
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    with pytest.raises(netns.IsolationError, match="util-linux"), netns.private_network(isolation="required"):
        pass


def test_isolation_off_uses_the_host_network_without_trying(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("strategy.isolation=off made a namespace")

    monkeypatch.setattr(netns, "PrivateNetwork", refuse)
    with netns.private_network(["http://mlflow.example.com"], isolation="off") as network:
        assert network is None


def test_without_namespaces_the_workers_fall_back_with_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING), netns.private_network() as network:
        assert network is None
    assert "no private network namespace" in caplog.text and "every network interface" in caplog.text


def test_workers_that_need_the_network_stay_on_it_with_a_warning(caplog) -> None:
    local = ["sqlite:////tmp/mlflow.db", "file:///tmp/artifacts", "/tmp/checkpoints", "mlruns"]
    remote = [
        "http://127.0.0.1:5000",
        "postgresql://me:s3cret@db/mlflow",
        "gs://bucket/ckpt",
        "mlflow-artifacts:/1",
        "databricks",
    ]
    assert [netns.needs_network(uri) for uri in local + remote] == [False] * len(local) + [True] * len(remote)
    with caplog.at_level(logging.WARNING), netns.private_network([*local, None, *remote[:2]]) as network:
        assert network is None
    assert "http://127.0.0.1:5000, postgresql://***@db/mlflow" in caplog.text
    assert "every network interface" in caplog.text
    assert "s3cret" not in caplog.text  # a password in a URI stays out of the log


# ------------------------------------------------------------------------------------- test emulators
def test_gcs_emulator_listens_on_loopback_only(gcs_emulator: str) -> None:
    (emulator,) = [pid for pid, command in children().items() if "gcp_storage_emulator" in command]
    found = listeners_of(emulator)
    assert found and not [listener for listener in found if listener.exposed], found
