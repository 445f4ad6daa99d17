"""One training process: the entry point every strategy runs in, locally or on a cluster.

    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": 1}}' \\
    python -m bigimage.train.worker --config resolved.yaml --task-index 1 --num-workers 2 \\
        --work-dir DIR [--tracking-uri URI --run-id ID] [--result-file FILE] [--parent-pid PID]

``--config`` is the resolved config :func:`bigimage.train.task.run_train` writes; ``TF_CONFIG`` comes
from the environment (none for one worker). The MLflow run is passed explicitly (never
``MLFLOW_RUN_ID``) and only the chief (task index 0) logs into it (what: docs/training.md) and writes
its final metrics to ``--result-file``; each worker appends its progress to
``<work-dir>/progress/worker-<i>.jsonl``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any

from bigimage.data import storage
from bigimage.tracking import names
from bigimage.train.shared_checkpoint import SharedCheckpoint

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config
    from bigimage.train.export import ModelCard

# TF_USE_LEGACY_KERAS is set by the package (bigimage/train/__init__.py), which loads before this module.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# oneDNN's kernels: TensorFlow leaves them off on CPUs without AVX-512 VNNI, where this model trains far
# slower without them (bigimage.train.threads). Read once, when TensorFlow is imported.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

log = logging.getLogger("bigimage.train.worker")
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _watch_parent(parent_pid: int) -> None:
    """Exit when the launcher dies, so no orphaned worker keeps a collective waiting forever: on Linux
    by the kernel (``PR_SET_PDEATHSIG``; a polling thread needs the GIL, which a TensorFlow call waiting
    for a peer can hold), elsewhere by a thread that polls."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent_pid:  # died before prctl took effect
            os._exit(3)
        return

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def train_worker(
    cfg: Any,
    *,
    task_index: int = 0,
    num_workers: int = 1,
    work_dir: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
) -> dict[str, float]:
    """Train under ``cfg.strategy`` as worker ``task_index`` of ``num_workers``; returns the final metrics.
    Must be the process's first TensorFlow work (strategies and logical devices need TensorFlow uninitialised)."""
    from bigimage.train import strategies

    configure_process(cfg)
    strategy = strategies.make_strategy(cfg)  # before any other TF op: MWMS starts its gRPC server here

    import tf_keras as keras

    from bigimage.config import check_batch_size
    from bigimage.train import precision
    from bigimage.train.callbacks import RunLogger, TrainingObserver
    from bigimage.train.model import build_model, compile_model

    is_chief = task_index == 0
    replicas = int(strategy.num_replicas_in_sync)
    global_batch = int(cfg.batch_size)
    per_replica = check_batch_size(global_batch, replicas, cfg.strategy.name)
    keras.utils.set_random_seed(int(cfg.seed))
    policy = precision.configure(cfg)  # before any model is built
    plan, steps_per_epoch, val_steps, cache, train_data, val_data, card, manifest = _inputs(
        cfg, strategy, task_index, global_batch
    )

    with strategy.scope():
        model = compile_model(build_model(cfg, plan.num_classes), cfg)

    shared = SharedCheckpoint(str(cfg.train.checkpoint_dir), is_chief)  # a gs:// one is staged locally
    run_logger = RunLogger(tracking_uri, run_id) if is_chief else RunLogger(None, None)
    shape = {"replicas": replicas, "global_batch_size": global_batch, "per_replica_batch_size": per_replica}
    _log_setup(run_logger, shape, num_workers, plan, steps_per_epoch, val_steps, model, shared.url, cache.tags())
    run_logger.tags({"precision_policy": policy.policy, "precision_reason": policy.reason})
    _log_split(run_logger, cfg, manifest, plan)
    observer = TrainingObserver(
        task_index=task_index, global_batch_size=global_batch, steps_per_epoch=steps_per_epoch,
        work_dir=work_dir, run_logger=run_logger, checkpoint_dir=shared.local_dir,
    )  # fmt: skip
    log.info("worker %d/%d: strategy=%s, %s, %s", task_index, num_workers, cfg.strategy.name, shape, plan.description)
    callbacks = _callbacks(cfg, strategy, shared, observer, run_logger, num_workers)
    seconds = _fit(model, int(cfg.epochs), train_data, val_data, steps_per_epoch, val_steps, callbacks)
    summary = {**shape, names.TRAINING_SECONDS: seconds}
    try:
        return _finish(model, observer, run_logger, shared, summary, card)
    finally:
        cache.cleanup()
        shared.cleanup()


def _callbacks(
    cfg: Any, strategy: Any, shared: SharedCheckpoint, observer: Any, run_logger: Any, num_workers: int
) -> list[Any]:
    """The fit's callbacks, in order: ``BackupAndRestore`` first (an epoch is reported once its
    checkpoint exists); the judged epoch's weights kept beside the checkpoint (so a resumed run keeps
    them); the observer; a gs:// checkpoint's upload, once the epoch is checkpointed and logged; a
    search trial's pruning last, seeing an epoch once it is logged."""
    import tf_keras as keras

    from bigimage.train.callbacks import pruning_callbacks

    return [
        keras.callbacks.BackupAndRestore(backup_dir=shared.local_dir, delete_checkpoint=True),
        _judged_checkpoint(shared.local_dir),
        observer,
        shared.callback(),
        *pruning_callbacks(cfg, strategy, observer.is_chief, run_logger, num_workers),
    ]


def configure_process(cfg: Any) -> Any:
    """TensorFlow's set-up before the process's first op: imported quietly, Keras' output sent through logging,
    the op thread pools sized (:mod:`bigimage.train.threads`), then the logical CPU devices of ``mirrored``."""
    from bigimage import tensorflow_runtime
    from bigimage.train import strategies, threads

    tensorflow_runtime.load_tensorflow()
    import tf_keras as keras

    keras.utils.disable_interactive_logging()
    op_threads = threads.configure(cfg)
    strategies.configure_devices(cfg)
    return op_threads


def _fit(
    model: Any, epochs: int, train_data: Any, val_data: Any, steps: int, val_steps: int, callbacks: list[Any]
) -> float:
    """``model.fit`` over the distributed inputs; returns its wall-clock seconds. It prints nothing: the
    observer (:mod:`bigimage.train.callbacks`) logs one line per epoch."""
    started = time.perf_counter()
    model.fit(
        train_data,
        epochs=epochs,
        steps_per_epoch=steps,
        verbose=0,
        validation_data=val_data,
        validation_steps=val_steps,
        callbacks=callbacks,
    )
    return time.perf_counter() - started


def _inputs(cfg: Config, strategy: Any, task_index: int, global_batch: int) -> tuple[Any, ...]:
    """This worker's split plan, steps per epoch (training, validation), input cache, distributed datasets
    (training, validation), the card of the model they train and the set's manifest."""
    from bigimage.data import readers
    from bigimage.train import inputs
    from bigimage.train.cache import choose_cache
    from bigimage.train.export import ModelCard, model_name

    manifest = readers.read_manifest(cfg.tfrecord_dir, int(cfg.image_size))
    plan = inputs.plan_split(cfg, cfg.tfrecord_dir, manifest)
    inputs.check_batch_fits(global_batch, plan.train_records, str(cfg.tfrecord_dir), exact=True)
    steps_per_epoch = inputs.steps(plan.train_records, global_batch, training=True)
    val_steps = inputs.steps(plan.val_records, global_batch, training=False)
    # Memory, a local file or no cache, checked against this machine before any image is decoded.
    cache = choose_cache(cfg, plan)
    atexit.register(cache.cleanup)  # also when training fails; folders of killed workers go next time
    log.info("worker %d: input cache %s: %s", task_index, cache.mode, cache.reason)
    train_data, val_data = inputs.distributed_inputs(strategy, cfg, plan, cache)
    card = ModelCard(
        list(manifest.classes), int(cfg.image_size), readers.shard_paths(cfg.tfrecord_dir, manifest), model_name(cfg)
    )
    return plan, steps_per_epoch, val_steps, cache, train_data, val_data, card, manifest


def _log_setup(
    run_logger: Any,
    shape: dict[str, int],
    num_workers: int,
    plan: Any,
    steps_per_epoch: int,
    val_steps: int,
    model: Any,
    checkpoint_dir: str,
    cache_tags: dict[str, str],
) -> None:
    """The chief's params and tags: what the strategy really gave and how the data was split."""
    import tensorflow as tf
    import tf_keras as keras

    from bigimage.train import inputs
    from bigimage.train.threads import onednn_state

    run_logger.params(
        {
            "replicas": shape["replicas"],
            "per_replica_batch_size": shape["per_replica_batch_size"],  # global: the batch_size param
            "workers": num_workers,
            names.TRAIN_RECORDS: plan.train_records,
            names.VAL_RECORDS: plan.val_records,
            names.TEST_RECORDS: plan.test_records,
            "steps_per_epoch": steps_per_epoch,
            "model_parameters": model.count_params(),
        }
    )
    run_logger.tags(  # how, in words and derived numbers: as tags, they keep the params few to read
        {
            names.SPLIT: plan.description,
            "validation_steps": val_steps,
            "input_sharding": inputs.INPUT_SHARDING,
            names.CHECKPOINT_DIR: checkpoint_dir,
            "tf_version": tf.__version__,
            "keras": f"tf_keras {keras.__version__}",
            # TensorFlow's CPU settings (bigimage.train.threads): tags, not params, as the result is the same
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tf_onednn": onednn_state(),
            **cache_tags,
        }
    )


def _log_split(run_logger: Any, cfg: Any, manifest: Any, plan: Any) -> None:
    """The chief logs the three subsets as dataset inputs, named after ``tfrecord_dir`` as the user gave it."""
    from bigimage.tracking import datasets
    from bigimage.train.task import SOURCE_KEY

    if not run_logger.enabled:
        return
    source = str(cfg.get(SOURCE_KEY) or cfg.tfrecord_dir)
    subsets = datasets.split_sets(manifest, source, str(cfg.dataset.name), plan.description, plan.class_counts)
    datasets.log_split_sets(run_logger.client, run_logger.run_id, subsets)


JUDGED_WEIGHTS = "judged-epoch.weights.h5"  # in the checkpoint directory


def _judged_checkpoint(checkpoint_dir: str) -> Any:
    """Keras' ``ModelCheckpoint`` keeping the judged epoch's weights (:mod:`bigimage.tracking.judged`): only
    a strict improvement replaces them (ties keep the earliest epoch); a resumed training starts from the
    best value of the epochs before the interruption, whose weights the file still holds."""
    import tf_keras as keras

    from bigimage.tracking import judged
    from bigimage.train.callbacks import read_history

    path = os.path.join(checkpoint_dir, JUDGED_WEIGHTS)
    earlier = (read_history(checkpoint_dir) or {}).get("epochs", []) if os.path.exists(path) else []
    best, _ = judged.judged_epoch(earlier)
    return keras.callbacks.ModelCheckpoint(
        path,
        monitor=judged.MONITOR,
        mode=judged.MODE,
        save_best_only=True,
        save_weights_only=True,
        initial_value_threshold=best if math.isfinite(best) else None,
    )


def _finish(
    model: Any,
    observer: Any,
    run_logger: Any,
    checkpoint: SharedCheckpoint,
    summary: dict[str, float],
    card: ModelCard,
) -> dict[str, float]:
    """The final metrics; the chief logs them with the history and the model of the judged epoch (raw and
    as an MLflow Model). Every worker saves the model (collectives may be involved); only the chief's is kept."""
    from bigimage.tracking import curves, judged
    from bigimage.train import export
    from bigimage.train.callbacks import HISTORY_NAME

    history = observer.history
    best_value, best_epoch = judged.judged_epoch(history)
    save_root = tempfile.mkdtemp(prefix=f"bigimage-model-{observer.task_index}-")
    try:
        model_path = os.path.join(save_root, "model.keras")
        model.save(model_path)
        final = {key: value for key, value in (history[-1] if history else {}).items() if key != "epoch"}
        result = {
            **final,
            **summary,
            judged.VALUE_METRIC: best_value,
            judged.EPOCH_METRIC: best_epoch,
            "epochs_run": sum(1 for entry in history if entry["epoch"] >= (observer.first_epoch or 0)),
            names.RESUMED_FROM_EPOCH: observer.first_epoch or 0,
        }
        if observer.is_chief:
            model_epoch = _judged_model(model_path, checkpoint.local_dir, best_epoch, history)
            run_logger.metrics(
                {key: result[key] for key in (judged.VALUE_METRIC, judged.EPOCH_METRIC, names.TRAINING_SECONDS)}
            )
            run_logger.tags({"model_epoch": model_epoch})
            run_logger.artifact(_write_history(history, os.path.join(save_root, "history")))
            title = f"judged epoch {best_epoch}: val_accuracy {best_value:.4f}" if best_epoch >= 0 else ""
            run_logger.figure(curves.figure(history, best_epoch, title), curves.ARTIFACT)
            run_logger.artifact(model_path, "model")
            if run_logger.enabled:
                export.log_model(model_path, card, run_logger.tracking_uri, run_logger.run_id, step=model_epoch)
            # The run finished: its running history and judged weights go with the checkpoint BackupAndRestore deleted.
            for name in (HISTORY_NAME, JUDGED_WEIGHTS):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(checkpoint.local_dir, name))
            checkpoint.finish()  # and its shared copy
        return result
    finally:
        shutil.rmtree(save_root, ignore_errors=True)


def _judged_model(model_path: str, checkpoint_dir: str, judged_epoch: int, history: list[dict]) -> int:
    """Put the judged epoch's weights into the model saved at ``model_path``; returns the epoch whose
    weights it now holds (else the last). On the saved file, outside any strategy: loading weights into a
    model built under MultiWorkerMirroredStrategy assigns its on-read variables, which fails there."""
    import tf_keras as keras

    path = os.path.join(checkpoint_dir, JUDGED_WEIGHTS)
    last = int(history[-1]["epoch"]) if history else -1
    if judged_epoch < 0 or not os.path.exists(path):
        log.warning("no weights of a judged epoch in %s: the model holds the last epoch's (%d)", path, last)
        return last
    model = keras.models.load_model(model_path)
    model.load_weights(path)
    model.save(model_path)
    log.info("model: the judged epoch %d's weights (of %d epochs)", judged_epoch, last + 1)
    return judged_epoch


def _write_history(history: list[dict[str, Any]], directory: str) -> str:
    """``history.json`` and ``history.csv`` (one row per epoch) in ``directory``; returns it."""
    import pandas as pd

    from bigimage.tracking.names import EPOCH_METRICS

    os.makedirs(directory)
    with open(os.path.join(directory, "history.json"), "w", encoding="utf-8") as handle:
        json.dump(history, handle, indent=1)
    pd.DataFrame(history, columns=["epoch", *EPOCH_METRICS]).to_csv(os.path.join(directory, "history.csv"), index=False)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigimage.train.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="resolved config YAML")
    parser.add_argument("--task-index", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--work-dir", default=None, help="progress files go under <work-dir>/progress")
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="default: $MLFLOW_TRACKING_URI, where the launchers put it (a URI may hold a password, and a "
        "command line is readable by every local user)",
    )
    parser.add_argument("--run-id", default=None, help="MLflow run the chief logs into (never MLFLOW_RUN_ID)")
    parser.add_argument("--result-file", default=None, help="the chief writes its final metrics here (JSON)")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s worker-{args.task_index} %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("tensorflow", "absl"):  # INFO there: device lists and timings on every epoch
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if args.parent_pid:
        _watch_parent(args.parent_pid)

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(args.config)
    log.info("pid %d, TF_CONFIG=%s", os.getpid(), os.environ.get("TF_CONFIG", "<none>"))
    result = train_worker(
        cfg,
        task_index=args.task_index,
        num_workers=args.num_workers,
        work_dir=args.work_dir,
        tracking_uri=args.tracking_uri,
        run_id=args.run_id,
    )
    if args.result_file and args.task_index == 0:
        storage.write_bytes(args.result_file, json.dumps(result, indent=1).encode())
    log.info("done: %s", result)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
