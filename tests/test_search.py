"""Search instead of grid (issue 15): the Optuna sweeper through run.py, on a real MLflow store and real
tiny TFRecords; the space, the seeded sequence and the parent's summary without training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from bigimage.analysis_lib import overfitting, training_cost
from bigimage.config import PROJECT_ROOT, register_configs, validate
from bigimage.errors import UserError
from bigimage.search import space, study, summary, sweep, trial
from bigimage.tracking import names, query, redact
from bigimage.tracking.callbacks import MlflowSweepCallback
from bigimage.tracking.runs import ENV_EXPERIMENT_ID, ENV_PARENT_RUN_ID, ENV_SWEEP_ID, tracked_run
from bigimage.tracking.store import connect
from tests.mlflow_fixtures import run_script
from tests.tfrecord_fixtures import write_tfrecord_dir

optuna.logging.set_verbosity(optuna.logging.WARNING)
EXPERIMENT = "search"


# --- without training ---------------------------------------------------------------------------------


def test_space_from_hydra_sweep_syntax_and_command_line_wins() -> None:
    parsed = space.parse(
        {
            "strategy": "choice(default, mirrored)",
            "batch_size": "choice(8, 16, 32)",
            "train.learning_rate": "tag(log, interval(0.0001, 0.01))",
            "model.width": "range(16, 65, step=16)",
        },
        ["batch_size=16,32", "model.width=32", "epochs=2"],
    )
    assert parsed.distributions == {
        "strategy": CategoricalDistribution(["default", "mirrored"]),
        "train.learning_rate": FloatDistribution(0.0001, 0.01, log=True),
        "batch_size": CategoricalDistribution([16, 32]),
    }
    assert parsed.fixed == ["model.width=32", "epochs=2"]
    assert space.distribution(OverridesParser.create().parse_override("w=range(16, 65, step=16)")) == IntDistribution(
        16, 64, step=16
    )
    assert space.trial_overrides({"train.learning_rate": 1e-05, "strategy": "mirrored"}) == [
        "train.learning_rate=1e-05",
        "strategy=mirrored",
    ]
    with pytest.raises(space.SearchSpaceError, match="empty"):
        space.parse({}, ["epochs=2"])


def test_hparams_search_configs_compose() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        single = compose("config", overrides=["hparams_search=train_optuna"], return_hydra_config=True)
        cost = compose("config", overrides=["hparams_search=train_optuna_cost"], return_hydra_config=True)
    for cfg in (single, cost):
        validate(cfg)
    assert single.task.name == "train" and single.optimized_metric == "best_val_accuracy"
    assert single.hydra.sweeper._target_.endswith("OptunaSearchSweeper")
    assert sorted(single.hydra.sweeper.params) == [
        "batch_size",
        "model.dropout",
        "model.width",
        "strategy",
        "train.learning_rate",
    ]
    assert single.hydra.sweeper.sampler.seed == single.seed  # seeded by the run's seed
    assert list(cost.optimized_metric) == ["best_val_accuracy", "seconds_per_epoch"]
    assert list(cost.hydra.sweeper.direction) == ["maximize", "minimize"] and cost.hydra.sweeper.pruner is None


def test_objective_is_the_optimized_metric() -> None:
    cfg = OmegaConf.create({"task": {"name": "train"}, "optimized_metric": "best_val_accuracy"})
    metrics = {"best_val_accuracy": 0.75, "seconds_per_epoch": 3.0}
    assert trial.objective(cfg, metrics) == 0.75
    cfg.optimized_metric = ["best_val_accuracy", "seconds_per_epoch"]
    assert trial.objective(cfg, metrics) == [0.75, 3.0]
    cfg.optimized_metric = "val_f1"
    with pytest.raises(UserError, match="val_f1"):
        trial.objective(cfg, metrics)
    cfg.task.name = "preprocess"
    assert trial.objective(cfg, {"images": 3}) is None


def test_study_storage_sits_beside_the_mlflow_store(tmp_path: Path) -> None:
    assert study.default_storage(f"sqlite:///{tmp_path}/m/mlflow.db") == f"sqlite:///{tmp_path}/m/optuna.db"
    assert redact.url("postgresql://me:secret@db/optuna") == "postgresql://***@db/optuna"


class TableLauncher:
    """Stands for Hydra's launcher: each job 'trains' instantly, its value a function of its params."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def launch(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        results = []
        for overrides in batch:
            self.batches.append(list(overrides))
            params = dict(item.split("=", 1) for item in overrides)
            result = JobReturn()
            result.status = JobStatus.COMPLETED
            result.return_value = -((float(params["x"]) - 0.3) ** 2) + 0.1 * int(params["n"])
            results.append(result)
        return results


def table_settings(name: str, storage: str | None, seed: int) -> sweep.Settings:
    """A search of six trials over ``x`` and ``n`` (what :class:`TableLauncher` jobs read)."""
    return sweep.Settings(
        name,
        storage,
        "maximize",
        n_trials=6,
        n_jobs=1,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2),
        pruner=None,
        pruner_spec=None,
        params={"x": "interval(0.0, 1.0)", "n": "choice(1, 2, 3)"},
    )


def _table_search(tmp_path: Path, name: str, seed: int) -> tuple[list[dict], TableLauncher]:
    settings = table_settings(name, f"sqlite:///{tmp_path}/optuna.db", seed)
    config = OmegaConf.create({"tracking": {"uri": None}})
    search = sweep.open_search(settings, [], config, None)
    launcher = TableLauncher()
    sweep.run(search, settings.n_trials, settings.n_jobs, launcher)  # type: ignore[arg-type]
    return [t.params for t in search.study.get_trials()], launcher


def test_seeded_search_repeats_its_sequence(tmp_path: Path) -> None:
    first, launcher = _table_search(tmp_path, "a", seed=7)
    again, _ = _table_search(tmp_path, "b", seed=7)
    other, _ = _table_search(tmp_path, "c", seed=8)
    assert len(first) == 6 and first == again  # TPE's own trials (after 2 random ones) repeat too
    assert other != first
    assert "search.trial=5" in launcher.batches[-1] and "search.prune=false" in launcher.batches[-1]


def test_study_storages_of_two_stores_never_meet(tmp_path: Path) -> None:
    assert study.default_storage(f"sqlite:///{tmp_path}/m/mlflow.db") == f"sqlite:///{tmp_path}/m/optuna.db"
    assert study.default_storage(f"sqlite:///{tmp_path}/m/x.db") == f"sqlite:///{tmp_path}/m/optuna-x.db"
    server = study.default_storage("http://me:secret@server:5000")
    assert server.startswith(f"sqlite:///{PROJECT_ROOT}/mlruns/optuna-http-server-5000-") and "secret" not in server
    assert server == study.default_storage("http://server:5000")  # the same store, logged in or not
    assert server not in (study.default_storage("http://server:5001"), study.default_storage("http://server:5000/b"))


def test_two_stores_in_one_folder_keep_their_studies_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same search on two sqlite stores of one folder: each store's study starts afresh and holds its own
    trials; a storage given to both is refused on the second, in one line."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = tmp_path / "stores"
    storages = []
    for name in ("mlflow.db", "other.db", "third.db"):
        uri = f"sqlite:///{folder / name}"
        _, experiment_id = connect(uri, EXPERIMENT)
        client = mlflow.MlflowClient(uri)
        parent = client.create_run(experiment_id).info.run_id
        shared = storages[0] if name == "third.db" else None
        search = sweep.open_search(
            table_settings("same", shared, seed=1), [], OmegaConf.create({"tracking": {"uri": uri}}), None
        )
        if shared is not None:
            with pytest.raises(summary.ForeignStudyError, match="this MLflow store does not hold"):
                summary.prepare_parent(client, search.study, parent, experiment_id, {})
            continue
        assert not search.study.get_trials()  # nothing of the other store's search
        summary.prepare_parent(client, search.study, parent, experiment_id, {})
        sweep.run(search, 2, 1, TableLauncher())  # type: ignore[arg-type]
        storages.append(search.storage_url)
    assert storages == [f"sqlite:///{folder}/optuna.db", f"sqlite:///{folder}/optuna-other.db"]


def sweep_config(tmp_path: Path, uri: str) -> DictConfig:
    """What the sweep callback and a trial's run read of a search's config."""
    return OmegaConf.create(
        {
            "task": {"name": "train"},
            "tracking": {"uri": uri, "experiment": EXPERIMENT, "artifact_root": None, "system_metrics": False},
            "hydra": {"overrides": {"task": ["hparams_search=train_optuna"]}, "sweep": {"dir": str(tmp_path / "m")}},
        }
    )


def trial_job(config: DictConfig, number: int, stopped: bool = False) -> str:
    """A trial's job as run.py runs it in a sweep (its run joins the sweep's parent through the environment);
    ``stopped``: interrupted, as SIGTERM or Ctrl-C interrupts it. Returns its run id."""
    started: list[str] = []
    try:
        with tracked_run(config, "train", extra_tags={trial.TAG_STUDY: "resume", trial.TAG_TRIAL: str(number)}) as run:
            started.append(run.info.run_id)
            mlflow.log_metric("best_val_accuracy", 0.5)
            if stopped:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if not stopped:
            raise
    return started[0]


def search_part(config: DictConfig, searched: optuna.Study, experiment_id: str, stop_last: bool) -> tuple[str, str]:
    """One sweep of a search: its parent, one trial that finishes, maybe one stopped; (parent, last trial's run)."""
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    parent = callback.parent_run_id
    assert parent is not None
    summary.prepare_parent(mlflow.MlflowClient(), searched, parent, experiment_id, {})
    asked = searched.ask()
    last = trial_job(config, asked.number)
    searched.tell(asked, 0.5)
    if stop_last:
        asked = searched.ask()
        last = trial_job(config, asked.number, stopped=True)
        searched.tell(asked, state=TrialState.FAIL)
    callback.on_multirun_end(config)
    return parent, last


def test_a_resumed_search_ends_finished_and_its_killed_trial_stays_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search stopped in its second trial, then rerun: the new parent ends FINISHED with its own trial; the
    stopped trial's run, moved under it, stays KILLED and names the parent it was started under."""
    for key in ("MLFLOW_TRACKING_URI", ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_SWEEP_ID):
        monkeypatch.delenv(key, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    config = sweep_config(tmp_path, uri)
    _, experiment_id = connect(uri, EXPERIMENT)
    searched = study.open_study("resume", study.open_storage(study.default_storage(uri)), "maximize")
    first, killed = search_part(config, searched, experiment_id, stop_last=True)
    second, _ = search_part(config, searched, experiment_id, stop_last=False)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(first).info.status == "KILLED"
    assert client.get_run(first).data.tags["search.continued_in"] == second
    resumed = client.get_run(second)
    assert resumed.info.status == "FINISHED" and "error" not in resumed.data.tags
    assert resumed.data.tags["children"] == "1" and resumed.data.tags["children_moved_in"] == "2"
    stopped = client.get_run(killed)
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["mlflow.parentRunId"] == second
    assert stopped.data.tags[summary.TAG_MOVED_FROM] == first


@pytest.mark.parametrize("reason", [None, "the study already holds 2 of 2 trials; nothing to confirm"])
def test_a_sweep_without_jobs_fails_unless_it_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str | None
) -> None:
    """No job recorded and no reason: the jobs died unrecorded, FAILED; a search with nothing left says why."""
    for key in ("MLFLOW_TRACKING_URI", ENV_PARENT_RUN_ID, ENV_EXPERIMENT_ID, ENV_SWEEP_ID):
        monkeypatch.delenv(key, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    config = sweep_config(tmp_path, uri)
    callback = MlflowSweepCallback()
    callback.on_multirun_start(config)
    parent = callback.parent_run_id
    assert parent is not None
    if reason is not None:
        mlflow.MlflowClient().set_tag(parent, names.TAG_NOTHING_TO_RUN, reason)
    callback.on_multirun_end(config)
    assert mlflow.MlflowClient(uri).get_run(parent).info.status == ("FAILED" if reason is None else "FINISHED")


def test_summary_on_the_parent_and_the_pareto_front(mlflow_store: str, mlflow_experiment: str) -> None:
    client = mlflow.MlflowClient(mlflow_store)
    parent = client.create_run(mlflow_experiment).info.run_id
    storage = study.open_storage(mlflow_store.replace("mlflow.db", "optuna.db"))
    two = study.open_study("cost", storage, ["maximize", "minimize"], optuna.samplers.NSGAIISampler(seed=1))
    x = FloatDistribution(0, 1)
    points = {0: (0.9, 5.0), 1: (0.8, 2.0), 2: (0.7, 3.0), 3: (0.5, 1.0)}  # 2 is dominated by 1
    runs = {}
    for number, values in points.items():
        two.add_trial(optuna.trial.create_trial(params={"x": number / 4}, distributions={"x": x}, values=list(values)))
        tags = {trial.TAG_STUDY: "cost", trial.TAG_TRIAL: str(number), "mlflow.parentRunId": parent, "task": "train"}
        run = client.create_run(mlflow_experiment, tags=tags)
        client.log_metric(run.info.run_id, "best_val_accuracy", values[0])
        client.log_metric(run.info.run_id, "seconds_per_epoch", values[1])
        client.log_param(run.info.run_id, "train.learning_rate", str(number / 4))
        for key, value in {"strategy.name": "default", "batch_size": "16", "cluster.name": "local"}.items():
            client.log_param(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)
        runs[number] = run.info.run_id
    summary.summarise(client, two, ["best_val_accuracy", "seconds_per_epoch"], parent)
    front = mlflow.load_table(summary.PARETO_TABLE, run_ids=[parent])
    assert sorted(front["number"]) == [0, 1, 3]
    assert sorted(front["run_id"]) == sorted(runs[n] for n in (0, 1, 3))
    artifacts = {a.path for a in client.list_artifacts(parent, "search")}
    assert {"search/pareto_front.png", "search/trials.csv"} <= artifacts
    assert client.get_run(parent).data.metrics["search.trials_finished"] == 4
    # best_config's cost ranking finds the same front in the same runs
    _, table = query.load_runs(mlflow_store, None, parent)
    ranked = training_cost.rank_by_cost(table)
    assert {r.run_ids[0] for r in ranked if r.extra["pareto_optimal"]} == set(front["run_id"])


def test_a_pruned_run_is_not_judged_for_overfitting(mlflow_store: str, mlflow_experiment: str) -> None:
    client = mlflow.MlflowClient(mlflow_store)
    run = client.create_run(mlflow_experiment, tags={"task": "train", "pruned": "true", "pruned_epoch": "1"})
    for step, (loss, val_loss) in enumerate([(1.0, 1.0), (0.5, 1.5), (0.2, 2.0)]):
        client.log_metric(run.info.run_id, "loss", loss, step=step)
        client.log_metric(run.info.run_id, "val_loss", val_loss, step=step)
    client.set_terminated(run.info.run_id)
    selection, runs = query.load_runs(mlflow_store, "tests", None)
    result = overfitting.analyse(selection, runs)
    assert result.verdicts == []
    assert "pruned by its search after epoch 1" in result.excluded[0].reason


# --- through run.py, with training --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("search-tfrec") / "set"
    write_tfrecord_dir(directory, num_images=60, image_size=32, num_shards=4)
    return str(directory)


def search_args(tmp_path: Path, tfrecords: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "run.py",
        "-m",
        *args,
        f"tfrecord_dir={tfrecords}",
        "image_size=32",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_dir={tmp_path / 'out'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        f"tracking.experiment={EXPERIMENT}",
        f"tracking.artifact_root={tmp_path / 'artifacts'}",
        "tracking.system_metrics=false",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "strategy.worker_timeout_seconds=300",
    ]


def run_search(tmp_path: Path, tfrecords: str, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        search_args(tmp_path, tfrecords, *args), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900, env=env
    )


def store_of(tmp_path: Path) -> tuple[mlflow.MlflowClient, list[mlflow.entities.Run]]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client, client.search_runs([experiment.experiment_id])


def study_of(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")


def parents_and_trials(runs: list[mlflow.entities.Run]) -> tuple[list, list]:
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    trials = [run for run in runs if trial.TAG_TRIAL in run.data.tags]
    return parents, trials


@pytest.mark.slow
def test_four_trial_search_parallel_one_parent_four_children(tmp_path: Path, tfrecords: str) -> None:
    """4 trials of 2 epochs, two at a time through joblib, against one sqlite store and one study."""
    result = run_search(
        tmp_path,
        tfrecords,
        "hparams_search=train_optuna",
        "hydra.sweeper.n_trials=4",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=4",  # pruning on, but no trial sees 4 finished ones
        "hydra.sweeper.confirm.top=0",
        "hydra.sweeper.n_jobs=2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "epochs=2",
        "strategy=default",
        "batch_size=8,16",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client, runs = store_of(tmp_path)
    parents, trials = parents_and_trials(runs)
    assert len(parents) == 1 and len(trials) == 4 and len(runs) == 5
    parent = parents[0]
    assert [run.info.status for run in runs] == ["FINISHED"] * 5  # no RUNNING run left behind
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in trials)
    finished = study_of(tmp_path, "train_optuna").get_trials(states=(TrialState.COMPLETE,))
    assert len(finished) == 4
    values = {t.number: t.value for t in finished}
    for run in trials:  # the value run.py returned is the one the run logged
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(values[int(run.data.tags[trial.TAG_TRIAL])])
        assert run.data.tags["pruned"] == "false"
    metrics = parent.data.metrics
    assert metrics["search.trials_finished"] == 4 and metrics["search.trials_failed"] == 0
    assert metrics["search.best_value"] == pytest.approx(max(values.values()))
    assert parent.data.tags["search.best_by"] == "single_trial" and metrics["search.compute_epochs"] == 8
    assert parent.data.params["search.best.batch_size"] in ("8", "16")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/optimization_history.png", "search/param_importances.png", "search/trials.csv"} <= artifacts


@pytest.mark.slow
def test_hopeless_trial_is_pruned_under_multi_worker(tmp_path: Path, tfrecords: str) -> None:
    """Two earlier trials reached 1.0 at every epoch; a trial that cannot learn (learning rate 1e-9) is
    pruned after its first epoch, its two workers stopping together; its run ends FINISHED, tagged."""
    storage = study.open_storage(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    seeded = study.open_study("prune", storage, "maximize")
    for _ in range(2):
        seeded.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    result = run_search(
        tmp_path,
        tfrecords,
        "hparams_search=train_optuna",
        "hydra.sweeper.study_name=prune",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.confirm.top=0",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "epochs=3",
        "strategy=multi_worker_mirrored",
        "batch_size=16",
        "model.width=16",
        "model.dropout=0.0",
        "train.learning_rate=choice(1e-9)",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client, runs = store_of(tmp_path)
    parents, trials = parents_and_trials(runs)
    (run,) = trials
    assert run.info.status == "FINISHED"
    assert run.data.tags["pruned"] == "true" and run.data.tags["pruned_epoch"] == "0"
    assert run.data.params["workers"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0]  # stopped at once
    pruned = study_of(tmp_path, "prune").get_trials(states=(TrialState.PRUNED,))
    assert [t.number for t in pruned] == [2]
    assert parents[0].data.metrics["search.trials_pruned"] == 1


@pytest.mark.slow
def test_multi_fidelity_search_counts_pruned_epochs_and_confirms_its_winner(tmp_path: Path, tfrecords: str) -> None:
    """Successive halving over epochs: two earlier trials (3 epochs each) reached 1.0 at every epoch, so the
    search's own trial, which cannot learn (learning rate 1e-9), stops at the first rung, after 1 epoch; that
    epoch counts in the search's compute. Then the best trial is trained again with two other seeds, as child
    runs of the search's parent, whose best value is their mean, not the 1.0 of the best single trial."""
    storage = study.open_storage(f"sqlite:///{tmp_path / 'mlruns' / 'optuna.db'}")
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    seeded = study.open_study("mf", storage, "maximize", pruner=halving)
    for _ in range(2):
        earlier = seeded.ask({"train.learning_rate": CategoricalDistribution([1e-9])})
        for step in (1, 2, 3):
            earlier.report(1.0, step)
            assert not earlier.should_prune()  # the pruner records the rungs it reached
        earlier.set_user_attr(trial.ATTR_EPOCHS, 3)
        seeded.tell(earlier, 1.0)
    result = run_search(
        tmp_path,
        tfrecords,
        "hparams_search=train_optuna",
        "hydra/sweeper/pruner=successive_halving",
        "hydra.sweeper.study_name=mf",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.confirm.top=1",
        "hydra.sweeper.confirm.seeds=2",
        "epochs=3",
        "seed=5",
        "strategy=default",
        "batch_size=16",
        "model.width=16",
        "model.dropout=0.0",
        "train.learning_rate=choice(1e-9)",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (pruned,) = study_of(tmp_path, "mf").get_trials(states=(TrialState.PRUNED,))
    assert pruned.number == 2 and pruned.user_attrs[trial.ATTR_EPOCHS] == 1
    client, runs = store_of(tmp_path)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    metrics = parent.data.metrics
    assert metrics["search.trials_pruned"] == 1 and metrics["search.compute_epochs_pruned"] == 1
    assert metrics["search.compute_epochs_confirm"] == 2 * 3
    assert metrics["search.compute_epochs"] == 3 + 3 + 1 + 2 * 3
    confirming = [run for run in runs if trial.TAG_CONFIRM_OF in run.data.tags]
    assert len(confirming) == 2 and {run.data.tags[trial.TAG_CONFIRM_OF] for run in confirming} == {"0"}
    assert all(run.data.tags["mlflow.parentRunId"] == parent.info.run_id for run in confirming)
    assert all(run.info.status == "FINISHED" and trial.TAG_TRIAL not in run.data.tags for run in confirming)
    assert sorted(run.data.params["seed"] for run in confirming) == ["6", "7"]  # seed + 1, seed + 2
    values = [run.data.metrics["best_val_accuracy"] for run in confirming]
    mean = sum(values) / 2
    assert metrics["search.best_value"] == pytest.approx(mean) and metrics["best_val_accuracy"] == pytest.approx(mean)
    assert metrics["search.best_value"] < 1.0  # not the best single trial's value
    assert metrics["search.best_value_low"] <= mean <= metrics["search.best_value_high"]
    assert metrics["search.best_value_runs"] == 2
    assert parent.data.tags["search.best_by"] == "confirmation" and parent.data.tags["search.best_trial"] == "0"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert "search/confirmation.csv" in artifacts


def second_trial_started(tmp_path: Path) -> bool:
    """Whether the MLflow run of trial 1 is there. Not before the study exists: the search makes the MLflow
    store first, and a client opened while it migrates the schema would race it (docs/pitfalls.md)."""
    store = tmp_path / "mlruns" / "mlflow.db"
    if not (tmp_path / "mlruns" / "optuna.db").exists():
        return False
    try:
        client = mlflow.MlflowClient(f"sqlite:///{store}")
        experiment = client.get_experiment_by_name(EXPERIMENT)
        filter_string = f"tags.`{trial.TAG_TRIAL}` = '1'"
        return experiment is not None and bool(client.search_runs([experiment.experiment_id], filter_string))
    except Exception:  # the store is being made
        return False


@pytest.mark.slow
def test_interrupted_search_resumes_to_the_requested_trials(tmp_path: Path, tfrecords: str) -> None:
    """Stopped (SIGTERM) during its second trial, the search is run again and ends with the 2 trials asked."""
    args = ["hparams_search=train_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.confirm.top=0", "epochs=1",
            "strategy=default", "batch_size=8"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    with open(tmp_path / "first.log", "w") as log_file:
        process = subprocess.Popen(
            search_args(tmp_path, tfrecords, *args), cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=log_file
        )
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and process.poll() is None:  # stopped once the second trial's run is open
        time.sleep(1.0)
        if second_trial_started(tmp_path):
            time.sleep(2.0)
            process.send_signal(signal.SIGTERM)  # what kill sends; Ctrl-C unwinds the same way
            break
    process.wait(timeout=120)
    assert process.returncode != 0, (tmp_path / "first.log").read_text()[-3000:]
    result = run_search(tmp_path, tfrecords, *args)
    assert result.returncode == 0, result.stderr[-4000:]
    trials = study_of(tmp_path, "train_optuna").get_trials()
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert [t.state for t in trials].count(TrialState.FAIL) == 1  # the one the stop cut short
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    _, runs = store_of(tmp_path)
    parents, trial_runs = parents_and_trials(runs)
    first, second = sorted(parents, key=lambda run: run.info.start_time)
    assert first.data.tags["search.continued_in"] == second.info.run_id
    assert second.data.tags["search.resumed_from"] == first.info.run_id
    assert {run.data.tags["mlflow.parentRunId"] for run in trial_runs} == {second.info.run_id}
    assert not [run for run in runs if run.info.status == "RUNNING"]
    assert (first.info.status, second.info.status) == ("KILLED", "FINISHED")  # the rerun finished its trials
    (stopped,) = [run for run in trial_runs if run.info.status == "KILLED"]  # the trial the stop cut short
    assert stopped.data.tags[summary.TAG_MOVED_FROM] == first.info.run_id
    assert second.data.metrics["search.trials_finished"] == 2 and len(trial_runs) == 3
    again = run_search(tmp_path, tfrecords, *args)  # the study holds its 2 trials: nothing to run, a success
    assert again.returncode == 0, again.stderr[-4000:]
    parents, trial_runs = parents_and_trials(store_of(tmp_path)[1])
    third = max(parents, key=lambda run: run.info.start_time)
    assert third.info.status == "FINISHED" and "2 of 2 trials" in third.data.tags[names.TAG_NOTHING_TO_RUN]
    assert len(trial_runs) == 3


@pytest.mark.slow
def test_cost_search_pareto_front_and_best_config_agree(tmp_path: Path, tfrecords: str) -> None:
    result = run_search(
        tmp_path,
        tfrecords,
        "hparams_search=train_optuna_cost",
        "hydra.sweeper.n_trials=3",
        "epochs=2",
        "strategy=default",
        "batch_size=8,16",
        "model.width=16,32",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    client, runs = store_of(tmp_path)
    parents, trials = parents_and_trials(runs)
    parent = parents[0].info.run_id
    # the table as mlflow.load_table reads it (which searches the process's default store, not this one)
    front = pd.read_json(client.download_artifacts(parent, summary.PARETO_TABLE, str(tmp_path)), orient="split")
    assert {"best_val_accuracy", "seconds_per_epoch", "run_id"} <= set(front.columns) and len(front) >= 1
    assert "search/pareto_front.png" in {a.path for a in client.list_artifacts(parent, "search")}
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ranked = run_script(
        "best_config", "--tracking-uri", uri, "--parent-run", parent, "--rank-by", "cost", "--json", "--no-register"
    )
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    by_cost = json.loads(ranked.stdout)["training_by_cost"]
    assert len(by_cost) == 3
    assert {run_id for row in by_cost if row["pareto_optimal"] for run_id in row["run_ids"]} == set(front["run_id"])
