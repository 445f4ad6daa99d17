"""Runs end KILLED when their process is stopped: SIGTERM to a real run.py (pipeline with its Spark
preprocessing step, a multi-worker training sweep), and SIGKILL followed by ``analysis/stale_runs.py``.

Each end-to-end test starts ``run.py`` as a subprocess, waits for real progress (a Spark job staging
shards, training workers finishing epochs), signals it, then reads the MLflow store back and checks
that no process the job started is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from bigimage.config import PROJECT_ROOT
from bigimage.tracking import liveness
from tests.conftest import write_large_image_tree
from tests.tfrecord_fixtures import write_tfrecord_dir

TERMINATED_EXIT = 128 + signal.SIGTERM


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(what: str, condition, job: subprocess.Popen, seconds: float = 240):
    """Poll ``condition`` until it returns something truthy; fail if the job ends or time runs out first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if job.poll() is not None:
            _, stderr = job.communicate()
            pytest.fail(f"the job ended (code {job.returncode}) before {what}:\n{stderr[-3000:]}")
        time.sleep(0.1)
    job.kill()
    pytest.fail(f"no {what} within {seconds} s")


def runs(store: str, experiment: str = "bigimage") -> list[mlflow.entities.Run]:
    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(processes: list[psutil.Process], seconds: float = 60) -> None:
    _, alive = psutil.wait_procs(processes, timeout=seconds)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(p.pid, p.cmdline()[:4]) for p in alive]


def training_run_id(output_dir: Path) -> str | None:
    """The run id of the training in progress, from its work dir (the store is not polled while the job
    creates it: two processes creating a fresh sqlite schema at once break it)."""
    found = sorted(path.name for path in (output_dir / "train").glob("*") if path.is_dir())
    return found[0] if found else None


def progress_ends(output_dir: Path, run_id: str) -> dict[int, list[dict]]:
    """epoch_end lines per worker, from the progress files the workers append to."""
    directory = output_dir / "train" / run_id / "progress"
    ends: dict[int, list[dict]] = {}
    for path in sorted(directory.glob("worker-*.jsonl")) if directory.exists() else []:
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            if entry["event"] == "epoch_end":
                ends.setdefault(entry["task_index"], []).append(entry)
    return ends


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_mid_preprocessing_ends_the_pipeline_and_its_step_killed(tmp_path: Path) -> None:
    """SIGTERM to the main job while its preprocessing step's Spark job runs: both runs KILLED."""
    root = write_large_image_tree(tmp_path / "big", per_class=60)
    destination = tmp_path / "tfrec"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = start([
        "run.py", "task=pipeline", "dataset=folder", f"dataset.root={root}", f"tfrecord_dir={destination}",
        f"tracking.uri={store}", f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={tmp_path / 'data'}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}", "num_shards=8", "image_size=640",
    ])  # fmt: skip

    def staged() -> list[Path]:
        """The job's staging (beside a local destination, or inside it where the swap is unavailable)."""
        return [*tmp_path.glob(".tfrec.swap-*"), *destination.glob("_staging-*")]

    wait_for(
        "a staged shard", lambda: any(list(path.glob("part-*")) for path in staged()), job
    )  # a Spark task finished one
    started = descendants(job.pid)  # the Spark JVM and its Python workers
    assert started
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=120)

    assert job.returncode == TERMINATED_EXIT, stderr[-3000:]
    assert "Traceback" not in stderr  # a quiet exit (py4j logs the interrupted call as on Ctrl-C)
    assert_all_gone(started)
    assert staged() == [] and not destination.exists()  # nothing staged is left, nothing was published
    by_task = {run.data.tags["task"]: run for run in runs(store)}
    assert sorted(by_task) == ["pipeline", "preprocess"]  # the speed test never started
    for run in by_task.values():
        assert run.info.status == "KILLED", run.data.tags.get("error")
        assert run.data.tags["error"] == "terminated by SIGTERM"
    assert by_task["preprocess"].data.tags["mlflow.parentRunId"] == by_task["pipeline"].info.run_id
    assert f"run {by_task['pipeline'].info.run_id} ended KILLED: terminated by SIGTERM" in stdout + stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_to_a_multi_worker_training_sweep_kills_workers_and_ends_runs_killed(tmp_path: Path) -> None:
    tfrecords = tmp_path / "tfr"
    write_tfrecord_dir(tfrecords, num_images=80, image_size=32, num_shards=4)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output_dir = tmp_path / "out"
    job = start([
        "run.py", "-m", "task=train", "strategy=multi_worker_mirrored", "strategy.num_workers=2", "batch_size=16,32",
        f"tfrecord_dir={tfrecords}", "image_size=32", "epochs=200", f"tracking.uri={store}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}", f"paths.output_dir={output_dir}", f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ])  # fmt: skip
    run_id = wait_for("training run", lambda: training_run_id(output_dir), job)
    # Both workers have stepped through an epoch: the collective is running.
    wait_for("an epoch on both workers", lambda: len(progress_ends(output_dir, run_id)) == 2, job)
    started = descendants(job.pid)
    worker_pids = {entries[0]["pid"] for entries in progress_ends(output_dir, run_id).values()}
    assert worker_pids <= {p.pid for p in started}
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=120)

    assert job.returncode == TERMINATED_EXIT, stderr[-3000:]
    assert_all_gone(started)
    all_runs = runs(store)
    parent = next(run for run in all_runs if "mlflow.parentRunId" not in run.data.tags)
    children = [run for run in all_runs if run is not parent]
    assert len(children) == 1  # the second job of the sweep never started
    assert children[0].info.run_id == run_id
    assert children[0].info.status == "KILLED" and children[0].data.tags["error"] == "terminated by SIGTERM"
    assert parent.info.status == "KILLED" and parent.data.tags["error"] == "terminated by SIGTERM"
    assert MlflowClient(store).get_metric_history(run_id, "loss")  # what the chief logged before is kept


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_leaves_running_then_stale_runs_marks_it_killed(tmp_path: Path) -> None:
    tfrecords = tmp_path / "tfr"
    write_tfrecord_dir(tfrecords, num_images=40, image_size=32, num_shards=2)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output_dir = tmp_path / "out"
    job = start([
        "run.py", "task=train", "strategy=default", f"tfrecord_dir={tfrecords}", "image_size=32", "epochs=200",
        "batch_size=8", f"tracking.uri={store}", f"tracking.artifact_root={tmp_path / 'artifacts'}",
        f"paths.output_dir={output_dir}",
        f"paths.data_dir={tmp_path / 'data'}",
    ])  # fmt: skip
    run_id = wait_for("training run", lambda: training_run_id(output_dir), job)
    wait_for("an epoch", lambda: progress_ends(output_dir, run_id), job)
    started = descendants(job.pid)
    job.kill()
    job.communicate(timeout=60)
    assert_all_gone(started, seconds=30)  # the worker watches its launcher and exits with it
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it

    def stale_runs(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "analysis/stale_runs.py", "--tracking-uri", store, *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    listed = json.loads(stale_runs("--dry-run", "--json").stdout)
    assert [(row["run_id"], row["stale"], row["action"]) for row in listed["running"]] == [
        (run_id, True, "would mark KILLED")
    ]
    assert listed["marked"] == [] and client.get_run(run_id).info.status == "RUNNING"

    marked = stale_runs()
    assert run_id in marked.stdout and "marked KILLED" in marked.stdout
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    reason = f"stale: process {job.pid} on {socket.gethostname()} is gone"
    assert run.data.tags["error"].startswith(reason), run.data.tags["error"]
    assert run.data.tags["marked_stale_by"].startswith("analysis/stale_runs.py at ")
    assert run.info.start_time <= run.info.end_time <= time.time() * 1000  # ended at its last heartbeat
    assert MlflowClient(store).get_metric_history(run_id, "loss")  # what it logged before is kept
    again = json.loads(stale_runs("--json").stdout)
    assert again["running"] == [] and again["marked"] == []


# ---------------------------------------------------------------------------- fast: the pieces alone
def test_tracked_run_records_its_process_and_a_heartbeat(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from bigimage.tracking.runs import tracked_run
    from tests.conftest import compose_config

    monkeypatch.setattr(liveness, "HEARTBEAT_SECONDS", 0.2)
    cfg = compose_config(["task=preprocess", f"tracking.uri={mlflow_store}"])
    with tracked_run(cfg, task="preprocess") as run:
        first = MlflowClient().get_run(run.info.run_id).data.tags[liveness.TAG_HEARTBEAT]
        time.sleep(1.5)
        later = MlflowClient().get_run(run.info.run_id).data.tags[liveness.TAG_HEARTBEAT]
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags[liveness.TAG_PID] == str(os.getpid()) and tags[liveness.TAG_HOST] == socket.gethostname()
    assert abs(float(tags[liveness.TAG_STARTED]) - psutil.Process().create_time()) < 1
    assert liveness.parse_utc_iso(later) > liveness.parse_utc_iso(first)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is only held while a run is open


def test_stale_runs_judges_each_run_by_its_process_or_its_heartbeat(
    mlflow_store: str, mlflow_experiment: str, capsys: pytest.CaptureFixture
) -> None:
    from bigimage.analysis_lib.stale_runs import main

    client = MlflowClient(mlflow_store)
    now = time.time()
    here = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()

    def make(name: str, tags: dict[str, str], start: float = now) -> str:
        return client.create_run(mlflow_experiment, start_time=int(start * 1000), tags=tags, run_name=name).info.run_id

    me = liveness.process_tags()
    ids = {
        "alive here": make("alive here", me),
        "gone here": make("gone here", {**me, liveness.TAG_PID: str(gone.pid)}),
        "silent elsewhere": make(
            "silent elsewhere",
            {**me, liveness.TAG_HOST: "elsewhere", liveness.TAG_HEARTBEAT: liveness.utc_iso(now - 3600)},
        ),
        "beating elsewhere": make("beating elsewhere", {**me, liveness.TAG_HOST: "elsewhere"}),
        "old, no tags": make("old, no tags", {}, start=now - 3600),
        "new, no tags": make("new, no tags", {}),
    }
    ended = make("finished", {**me, liveness.TAG_PID: str(gone.pid)})
    client.set_terminated(ended, "FINISHED")

    assert main(["--tracking-uri", mlflow_store, "--experiment", "tests", "--older-than", "600", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stale = {"gone here", "silent elsewhere", "old, no tags"}
    assert sorted(report["marked"]) == sorted(ids[name] for name in stale)
    rows = {row["run_name"]: row for row in report["running"]}
    assert set(rows) == set(ids)  # the finished run is not looked at
    assert rows["gone here"]["reason"].startswith(f"process {gone.pid} on {here} is gone")
    assert rows["silent elsewhere"]["reason"].startswith("no heartbeat from elsewhere for 36")
    assert "no heartbeat tag" in rows["old, no tags"]["reason"]
    for name, run_id in ids.items():
        run = client.get_run(run_id)
        assert run.info.status == ("KILLED" if name in stale else "RUNNING"), name
        if name in stale:
            assert run.data.tags["error"] == f"stale: {rows[name]['reason']}"
    assert client.get_run(ended).info.status == "FINISHED"
    for run_id in ids.values():
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FINISHED")
