"""What the TFRecord input pipeline costs training, as a ratio against in-memory tensors, in one run.

    python benchmarks/train_input.py [--tfrecord-dir DIR] [--epochs 4] [--batch-size 32] [--json] [override ...]

Trains the configured model (default ``small_cnn``, 192 px) in this process, without distribution, for
the same number of steps on:

- ``tfrecord``: the training pipeline of task 3 (:func:`bigimage.train.inputs.build_inputs`: parallel
  reads, hash split, parallel decode, cache of decoded images where :mod:`bigimage.train.cache` puts it
  on this machine (memory, file or none: printed), shuffle, batch, prefetch);
- ``tfrecord_nocache``: the same with ``train.cache=false`` (every epoch decodes the JPEGs again);
- ``memory``: the same training images decoded beforehand and fed from tensors already in memory
  (batches cut once and cached, then prefetched), the reference with no input cost.

Each training first runs one step on the in-memory batches (so tracing the model is timed in no
variant), then ``--epochs`` timed epochs. The headline counts every timed epoch, the first included:
it is the only one of ``tfrecord`` that reads the TFRecords (the later ones read its cache), so
leaving it out would hide exactly the cost measured here. Per variant, images/s = images of all timed
epochs / their seconds, median over rounds; the goal is ``tfrecord / memory`` >= 0.9 (the input
pipeline costs under 10%), reported with the cache and without it. The cached figure depends on
``--epochs`` (one reading epoch, ``epochs - 1`` cached ones): it is stated with it. The first epoch
and the later (warm) epochs are also reported apart. The variants alternate in rounds so a load
change on a shared machine hits all of them; the same ratios per CPU-second of this process (the work
per image, which other load disturbs far less than wall-clock rates) are printed too.

Without ``--tfrecord-dir``, the config's ``tfrecord_dir`` is used (the default data set's TFRecords:
``python run.py task=preprocess`` writes them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"


def _compose(overrides: list[str]):
    import hydra

    from bigimage.config import PROJECT_ROOT, register_configs

    register_configs()
    with hydra.initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra.compose("config", overrides=["task=train", *overrides])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tfrecord-dir", default=None)
    parser.add_argument(
        "--epochs", type=int, default=4, help="timed epochs per variant and round (the first reads the records)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all variants")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's batch_size")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.width=16")
    args = parser.parse_args()

    overrides = list(args.overrides)
    if args.tfrecord_dir:
        overrides.append(f"tfrecord_dir={args.tfrecord_dir}")
    if args.batch_size:
        overrides.append(f"batch_size={args.batch_size}")
    cfg = _compose(overrides)

    import tensorflow as tf
    import tf_keras as keras

    from bigimage.data.readers import TFRecordDirError, read_manifest
    from bigimage.train.cache import choose_cache
    from bigimage.train.inputs import build_inputs, plan_split, steps
    from bigimage.train.model import build_model, compile_model

    tfrecord_dir = str(cfg.tfrecord_dir)
    try:
        manifest = read_manifest(tfrecord_dir, int(cfg.image_size))
    except TFRecordDirError as error:
        sys.exit(f"error: {error}")
    source = tfrecord_dir
    cfg.tfrecord_dir = tfrecord_dir
    plan = plan_split(cfg, tfrecord_dir, manifest)
    batch = int(cfg.batch_size)
    steps_per_epoch = steps(plan.train_records, batch, training=True)

    # The reference: the same training images, decoded once, as tensors in memory.
    cfg_nocache = cfg.copy()
    cfg_nocache.train.cache = False
    decoded = build_inputs(cfg_nocache, plan, training=True, batch_size=plan.train_records).take(1)
    images, classes = next(iter(decoded))
    # Batches cut once and kept (cache after batch): each step only hands over a ready tensor.
    memory = (
        tf.data.Dataset.from_tensor_slices((images, classes))
        .batch(batch, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    for _ in memory.take(steps_per_epoch):  # fill the cache before timing
        pass

    cache = choose_cache(cfg, plan)  # what task 3 would do on this machine
    variants = {
        "memory": lambda: memory,
        "tfrecord": lambda: build_inputs(cfg, plan, training=True, cache=cache),
        "tfrecord_nocache": lambda: build_inputs(cfg_nocache, plan, training=True),
    }

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)
            self.cpu_seconds.append(time.process_time() - self.cpu_start)

    images_per_epoch = steps_per_epoch * batch
    whole: dict[str, list[float]] = {name: [] for name in variants}  # all timed epochs, the first included
    whole_cpu: dict[str, list[float]] = {name: [] for name in variants}  # the same per CPU-second of this process
    first: dict[str, list[float]] = {name: [] for name in variants}
    warm: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(args.rounds):
            for name, make in variants.items():
                keras.utils.set_random_seed(int(cfg.seed))
                model = compile_model(build_model(cfg, plan.num_classes), cfg)
                model.fit(memory, epochs=1, steps_per_epoch=1, verbose=0)  # trace outside the timing
                timer = Timer()
                model.fit(make(), epochs=args.epochs, steps_per_epoch=steps_per_epoch, callbacks=[timer], verbose=0)
                whole[name].append(images_per_epoch * len(timer.seconds) / sum(timer.seconds))
                whole_cpu[name].append(images_per_epoch * len(timer.cpu_seconds) / sum(timer.cpu_seconds))
                first[name].append(images_per_epoch / timer.seconds[0])
                warm[name].extend(images_per_epoch / seconds for seconds in timer.seconds[1:])
    finally:
        cache.cleanup()

    def median(values: dict[str, list[float]]) -> dict[str, float | None]:
        return {name: statistics.median(v) if v else None for name, v in values.items()}

    result = {
        "source": source,
        "model": cfg.model.name,
        "image_size": int(cfg.image_size),
        "batch_size": batch,
        "train_records": plan.train_records,
        "steps_per_epoch": steps_per_epoch,
        "epochs_per_round": args.epochs,
        "rounds": args.rounds,
        "cache": {"mode": cache.mode, "reason": cache.reason},
        "images_per_second": median(whole),
        # Work per image: other load on a shared machine disturbs it far less than wall-clock rates.
        "images_per_cpu_second": median(whole_cpu),
        "first_epoch_images_per_second": median(first),
        "warm_epoch_images_per_second": median(warm),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    ips, one, hot = (
        result["images_per_second"],
        result["first_epoch_images_per_second"],
        result["warm_epoch_images_per_second"],
    )
    result["ratio_tfrecord_vs_memory"] = ips["tfrecord"] / ips["memory"]
    result["ratio_tfrecord_nocache_vs_memory"] = ips["tfrecord_nocache"] / ips["memory"]
    cpu = result["images_per_cpu_second"]
    result["cpu_ratio_tfrecord_vs_memory"] = cpu["tfrecord"] / cpu["memory"]
    result["cpu_ratio_tfrecord_nocache_vs_memory"] = cpu["tfrecord_nocache"] / cpu["memory"]
    result["ratio_first_epoch_tfrecord_vs_memory"] = one["tfrecord"] / one["memory"]
    if hot["memory"]:
        result["ratio_warm_epochs_tfrecord_vs_memory"] = hot["tfrecord"] / hot["memory"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"data: {source}")
    print(
        f"model={result['model']} image_size={result['image_size']} batch_size={batch} "
        f"train_records={plan.train_records} steps/epoch={steps_per_epoch} epochs={args.epochs} x {args.rounds} rounds"
    )
    print(
        f"tfrecord cache: {cache.mode} ({cache.reason}); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<18}{f'images/s, all {args.epochs} epochs':>26}{'first epoch':>14}{'later epochs':>14}")
    for name in variants:
        later = f"{hot[name]:>14.1f}" if hot[name] else f"{'-':>14}"
        print(f"{name:<18}{ips[name]:>26.1f}{one[name]:>14.1f}{later}")
    print(
        f"ratio tfrecord / memory, all {args.epochs} epochs ({cache.mode} cache)  = "
        f"{result['ratio_tfrecord_vs_memory']:.3f}  (goal >= 0.9)"
    )
    print(
        f"ratio tfrecord_nocache / memory, all {args.epochs} epochs = {result['ratio_tfrecord_nocache_vs_memory']:.3f}  (goal >= 0.9)"
    )
    print(
        f"  per CPU-second of this process: tfrecord / memory {result['cpu_ratio_tfrecord_vs_memory']:.3f}, "
        f"tfrecord_nocache / memory {result['cpu_ratio_tfrecord_nocache_vs_memory']:.3f}"
    )
    print(
        f"ratio tfrecord / memory, first epoch (reads the records) = {result['ratio_first_epoch_tfrecord_vs_memory']:.3f}"
    )
    if "ratio_warm_epochs_tfrecord_vs_memory" in result:
        print(
            f"ratio tfrecord / memory, later epochs (from the cache)   = {result['ratio_warm_epochs_tfrecord_vs_memory']:.3f}"
        )


if __name__ == "__main__":
    main()
