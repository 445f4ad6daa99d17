"""What the TFRecord input pipeline costs training, as a ratio against in-memory tensors, in one run.

    python benchmarks/train_input.py [--tfrecord-dir DIR] [--epochs 4] [--batch-size 32] [--json] [override ...]

Trains the configured model (default ``small_cnn``, 192 px) in this process, without distribution, for
the same number of steps on:

- ``tfrecord``: the training pipeline of task 3 (:func:`bigimage.train.inputs.build_inputs`: parallel
  reads, hash split, parallel decode, cache of decoded images, shuffle, batch, prefetch);
- ``tfrecord_nocache``: the same with ``train.cache=false`` (every epoch decodes the JPEGs again);
- ``memory``: the same training images decoded beforehand and fed from tensors already in memory
  (batches cut once and cached, then prefetched), the reference with no input cost.

Per variant, images/s is the median over the epochs after the first (the first one traces the model
and, for ``tfrecord``, fills the cache; it is reported apart). The variants alternate in rounds so a
load change on a shared machine hits all of them. The ratio ``tfrecord / memory`` is the goal
(>= 0.9: the input pipeline costs under 10%).

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
    parser.add_argument("--epochs", type=int, default=4, help="epochs per variant and round (the first is warm-up)")
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

    variants = {
        "memory": lambda: memory,
        "tfrecord": lambda: build_inputs(cfg, plan, training=True),
        "tfrecord_nocache": lambda: build_inputs(cfg_nocache, plan, training=True),
    }

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    rates: dict[str, list[float]] = {name: [] for name in variants}
    first: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, make in variants.items():
            keras.utils.set_random_seed(int(cfg.seed))
            model = compile_model(build_model(cfg, plan.num_classes), cfg)
            timer = Timer()
            model.fit(make(), epochs=args.epochs, steps_per_epoch=steps_per_epoch, callbacks=[timer], verbose=0)
            per_epoch = [steps_per_epoch * batch / seconds for seconds in timer.seconds]
            first[name].append(per_epoch[0])
            rates[name].extend(per_epoch[1:])

    result = {
        "source": source,
        "model": cfg.model.name,
        "image_size": int(cfg.image_size),
        "batch_size": batch,
        "train_records": plan.train_records,
        "steps_per_epoch": steps_per_epoch,
        "epochs_per_round": args.epochs,
        "rounds": args.rounds,
        "images_per_second": {name: statistics.median(values) for name, values in rates.items()},
        "first_epoch_images_per_second": {name: statistics.median(values) for name, values in first.items()},
    }
    ips = result["images_per_second"]
    result["ratio_tfrecord_vs_memory"] = ips["tfrecord"] / ips["memory"]
    result["ratio_tfrecord_nocache_vs_memory"] = ips["tfrecord_nocache"] / ips["memory"]
    result["ratio_first_epoch_tfrecord_vs_memory"] = (
        result["first_epoch_images_per_second"]["tfrecord"] / result["first_epoch_images_per_second"]["memory"]
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"data: {source}")
    print(f"model={result['model']} image_size={result['image_size']} batch_size={batch} "
          f"train_records={plan.train_records} steps/epoch={steps_per_epoch} epochs={args.epochs} x {args.rounds} rounds")
    print(f"{'variant':<18}{'images/s (median, warm)':>26}{'first epoch':>14}")
    for name in variants:
        print(f"{name:<18}{ips[name]:>26.1f}{result['first_epoch_images_per_second'][name]:>14.1f}")
    print(f"ratio tfrecord / memory          = {result['ratio_tfrecord_vs_memory']:.3f}  (goal >= 0.9)")
    print(f"ratio tfrecord_nocache / memory  = {result['ratio_tfrecord_nocache_vs_memory']:.3f}")
    print(f"ratio first epoch (cache fill)   = {result['ratio_first_epoch_tfrecord_vs_memory']:.3f}")


if __name__ == "__main__":
    main()
