"""Training at the compute limit: the train step's achieved GFLOP/s against TensorFlow's fp32 matmul, in one run.

    python benchmarks/train_compute.py [--steps 30] [--epochs 3] [--rounds 2] [--before] [--json] [override ...]

Each measurement runs in a fresh process started with the training workers' environment
(:func:`bigimage.train.launch.worker_env`: oneDNN on) and set up as a worker sets itself up
(:func:`bigimage.train.worker.configure_process`: op thread pools sized to its share of the cores, the
logical CPU devices of ``mirrored``), then:

- ``matmul``: the machine's fp32 matrix-multiply rate, measured by TensorFlow in a process with all the
  cores (a 2048 x 2048 ``tf.linalg.matmul`` in a ``tf.function``, 2 n^3 FLOPs per product, median of 5
  timings of 10 products);
- ``default`` and ``mirrored`` (``strategy.logical_cpu_devices``, 2 by default): the configured model
  (``small_cnn`` at ``image_size``, global ``batch_size``) trained by ``model.fit`` on in-memory uint8
  batches (no input cost), ``--steps`` steps per epoch, in one ``fit`` as a training runs: a warm-up
  epoch (tracing, not timed), then ``--epochs`` timed epochs; images/s is the median epoch's.

The model's FLOPs are counted, not estimated: the train step (forward, loss, gradients, Adam update) is
lowered by XLA (``experimental_get_compiler_ir``, optimised HLO: what XLA keeps after removing dead code
such as the first layer's unused input gradient), and every ``convolution`` and ``dot`` in it counts
2 x output elements x window elements x input features (padding included). Achieved GFLOP/s = images/s x
FLOPs per image; the goals: ``default`` >= 0.6 of the matmul rate, ``mirrored`` >= 0.8 of ``default``'s
images/s. The variants alternate over ``--rounds`` rounds (medians reported) so a load change hits all.
``--before`` adds the settings before issue 13 (TensorFlow's defaults here: oneDNN off, pools of all the
cores in every process) for what the change bought, and ``--jit`` the step compiled by XLA. The load
average (``uptime``) is printed with every figure: rates mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"

MATMUL_N = 2048


def _compose(overrides: list[str]) -> Any:
    import hydra

    from bigimage.config import PROJECT_ROOT, register_configs

    register_configs()
    with hydra.initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra.compose("config", overrides=["task=train", *overrides])


# ------------------------------------------------------------------------------------------- counting FLOPs
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*\w+\[([\d,]*)\]")


def _dims(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _product(values: list[int]) -> int:
    result = 1
    for value in values:
        result *= value
    return result


def hlo_flops(hlo: str) -> tuple[int, list[tuple[str, int]]]:
    """FLOPs of every ``convolution`` and ``dot`` in an HLO module's text, and each one's."""
    shapes = {}
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            shapes[match.group(1)] = _dims(match.group(2))
    counted = []
    for line in hlo.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, out = match.group(1), _dims(match.group(2))
        operands = re.search(r"(?:convolution|dot)\(([^)]*)\)", line)
        if " convolution(" in line and operands:
            rhs = operands.group(1).split(",")[1].split()[-1].lstrip("%")
            window = re.search(r"window=\{size=([\dx]+)", line)
            labels = re.search(r"dim_labels=\w+_(\w+)->", line)
            if window is None or labels is None:
                raise ValueError(f"cannot read the convolution {name}")
            features = shapes[rhs][labels.group(1).index("i")]
            groups = re.search(r"feature_group_count=(\d+)", line)
            features //= int(groups.group(1)) if groups else 1
            macs = _product(out) * _product(_dims(window.group(1).replace("x", ","))) * features
            counted.append((name, 2 * macs))
        elif " dot(" in line and operands:
            lhs = operands.group(1).split(",")[0].split()[-1].lstrip("%")
            contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
            size = _product([shapes[lhs][i] for i in _dims(contracting.group(1))]) if contracting else 1
            counted.append((name, 2 * _product(out) * size))
    return sum(flops for _, flops in counted), counted


def train_step_flops(model: Any, images: Any, classes: Any) -> tuple[int, list[tuple[str, int]]]:
    """FLOPs of one ``model.train_step`` on this batch, counted in the optimised HLO of XLA."""
    import tensorflow as tf

    step = tf.function(lambda x, y: model.train_step((x, y)), jit_compile=True, autograph=False)
    return hlo_flops(step.experimental_get_compiler_ir(images, classes)(stage="optimized_hlo"))


# ------------------------------------------------------------------------------------------- child process
def _matmul_gflops(repeats: int = 5, products: int = 10) -> tuple[float, float]:
    """GFLOP/s of ``products`` separate products per timing (one call each, so none is merged with
    another), median of ``repeats`` timings: per wall-clock second and per CPU-second of this process."""
    import tensorflow as tf

    a = tf.random.stateless_normal((MATMUL_N, MATMUL_N), seed=(1, 2))
    b = tf.random.stateless_normal((MATMUL_N, MATMUL_N), seed=(3, 4))
    product = tf.function(lambda a, b: tf.linalg.matmul(a, b)[0, 0], autograph=False)
    product(a, b).numpy()
    rates, cpu_rates = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(products):
            product(a, b).numpy()
        flops = 2 * MATMUL_N**3 * products / 1e9
        rates.append(flops / (time.perf_counter() - started))
        cpu_rates.append(flops / (time.process_time() - cpu_started))
    return statistics.median(rates), statistics.median(cpu_rates)


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    cfg = _compose(spec["overrides"])
    from bigimage.train.strategies import configure_devices
    from bigimage.train.worker import configure_process

    if spec["threads"] == "worker":
        op = configure_process(cfg)
        pools = (op.intra_op, op.inter_op)
    else:  # TensorFlow's own pools, as before issue 13
        configure_devices(cfg)
        pools = (0, 0)
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    result: dict[str, Any] = {
        "onednn": bool(_pywrap_util_port.IsMklEnabled()),
        "threads": pools,
        "load_before": os.getloadavg()[0],
    }
    if spec.get("matmul"):
        result["matmul_gflops"], result["matmul_gflops_per_cpu"] = _matmul_gflops()
    if spec.get("train"):
        result.update(_train(cfg, spec, tf))
    result["load_after"] = os.getloadavg()[0]
    return result


def _epoch_timer(keras: Any) -> Any:
    """A Keras callback recording each epoch's wall-clock and CPU seconds (of this process)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self._started, self._cpu_started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._started)
            self.cpu_seconds.append(time.process_time() - self._cpu_started)

    return EpochTimer()


def _train(cfg: Any, spec: dict[str, Any], tf: Any) -> dict[str, Any]:
    import tf_keras as keras

    from bigimage.train.model import build_model, compile_model
    from bigimage.train.strategies import make_strategy

    strategy = make_strategy(cfg)
    size, batch = int(cfg.image_size), int(cfg.batch_size)
    keras.utils.set_random_seed(int(cfg.seed))
    images = tf.cast(tf.random.stateless_uniform((batch * 4, size, size, 3), (5, 6), 0, 256, tf.int32), tf.uint8)
    classes = tf.random.stateless_uniform((batch * 4,), (7, 8), 0, 5, tf.int32)
    data = tf.data.Dataset.from_tensor_slices((images, classes)).batch(batch, drop_remainder=True)
    data = data.cache().repeat().prefetch(tf.data.AUTOTUNE)
    with strategy.scope():
        model = compile_model(build_model(cfg, 5), cfg)
    model.jit_compile = bool(spec.get("jit"))
    # One fit, as a training runs: epoch 0 traces and warms up (untimed), the others are timed from their
    # start to their end. A fit per timed epoch would also time fit's own set-up and tear-down, which a
    # training pays once: destroying the iterator of a prefetched dataset at the end of a fit stalled
    # for about 1 s in about half the fits here (TFE_DeleteTensorHandle in the profile), a third of a
    # 30-step epoch.
    timer = _epoch_timer(keras)
    model.fit(data, epochs=1 + int(spec["epochs"]), steps_per_epoch=int(spec["steps"]), verbose=0, callbacks=[timer])
    seconds, cpu = timer.seconds[1:], timer.cpu_seconds[1:]
    images_per_epoch = int(spec["steps"]) * batch
    out: dict[str, Any] = {
        "images_per_second": statistics.median(images_per_epoch / s for s in seconds),
        "images_per_cpu_second": statistics.median(images_per_epoch / c for c in cpu),
        "replicas": int(strategy.num_replicas_in_sync),
    }
    if spec.get("count_flops"):
        total, counted = train_step_flops(model, images[:batch], classes[:batch])
        out["flops_per_image"] = total / batch
        out["flops_by_op"] = {name: flops / batch for name, flops in counted}
    return out


# ------------------------------------------------------------------------------------------- the run
def _run_child(spec: dict[str, Any], env_changes: dict[str, str | None]) -> dict[str, Any]:
    from bigimage.train.launch import worker_env

    env = worker_env()  # what a training worker starts with
    for key in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env.pop(key, None)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"a measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _variants(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any], dict[str, str | None]]]:
    base = {"steps": args.steps, "epochs": args.epochs, "train": True}
    mirrored = ["strategy=mirrored", f"strategy.logical_cpu_devices={args.devices}"]
    now = {"threads": "worker"}
    before = {"threads": "tensorflow"}
    off: dict[str, str | None] = {"TF_ENABLE_ONEDNN_OPTS": "0"}
    variants: dict[str, tuple[dict[str, Any], dict[str, str | None]]] = {
        "matmul": ({"overrides": args.overrides, "threads": "worker", "matmul": True}, {}),
        "default": ({**base, **now, "overrides": args.overrides, "count_flops": True}, {}),
        "mirrored": ({**base, **now, "overrides": [*args.overrides, *mirrored]}, {}),
    }
    if args.before:
        variants["default_before"] = ({**base, **before, "overrides": args.overrides}, off)
        variants["mirrored_before"] = ({**base, **before, "overrides": [*args.overrides, *mirrored]}, off)
    if args.jit:
        variants["default_jit"] = ({**base, **now, "overrides": args.overrides, "jit": True}, {})
    return variants


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _summary(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    matmul = median("matmul", "matmul_gflops")
    matmul_cpu = median("matmul", "matmul_gflops_per_cpu")
    flops = results["default"][0]["flops_per_image"]
    summary: dict[str, Any] = {
        "matmul_gflops": matmul,
        "matmul_gflops_per_cpu_second": matmul_cpu,
        "train_step_flops_per_image": flops,
        "flops_by_op_per_image": results["default"][0]["flops_by_op"],
        "variants": {},
    }
    for name in results:
        if name == "matmul":
            continue
        ips = median(name, "images_per_second")
        summary["variants"][name] = {
            "images_per_second": ips,
            "images_per_cpu_second": median(name, "images_per_cpu_second"),
            "gflops": ips * flops / 1e9,
            "ratio_to_matmul": ips * flops / 1e9 / matmul,
            # Work per CPU-second against the matmul's: what other load on a shared machine disturbs least.
            "cpu_ratio_to_matmul": median(name, "images_per_cpu_second") * flops / 1e9 / matmul_cpu,
            "onednn": results[name][0]["onednn"],
            "op_threads": results[name][0]["threads"],
            "replicas": results[name][0]["replicas"],
            "load": [round(r["load_before"], 2) for r in results[name]],
        }
    variants = summary["variants"]
    summary["ratio_default_to_matmul"] = variants["default"]["ratio_to_matmul"]
    summary["cpu_ratio_default_to_matmul"] = variants["default"]["cpu_ratio_to_matmul"]
    summary["cpu_ratio_mirrored_to_default"] = (
        variants["mirrored"]["images_per_cpu_second"] / variants["default"]["images_per_cpu_second"]
    )
    summary["ratio_mirrored_to_default"] = (
        variants["mirrored"]["images_per_second"] / variants["default"]["images_per_second"]
    )
    if "mirrored_before" in variants:
        summary["ratio_mirrored_to_default_before"] = (
            variants["mirrored_before"]["images_per_second"] / variants["default_before"]["images_per_second"]
        )
    return summary


def _print(summary: dict[str, Any], args: argparse.Namespace, loads: list[str]) -> None:
    print(f"model and data: {' '.join(args.overrides) or 'the config defaults'}; {os.cpu_count()} CPUs")
    print(f"uptime at start: {loads[0]}")
    print(
        f"fp32 matmul ({MATMUL_N}^2, TensorFlow, all cores): {summary['matmul_gflops']:.1f} GFLOP/s, "
        f"{summary['matmul_gflops_per_cpu_second']:.1f} per CPU-second"
    )
    print(f"train step: {summary['train_step_flops_per_image'] / 1e6:.1f} MFLOP per image (XLA HLO, counted)")
    print(
        f"{'variant':<18}{'images/s':>10}{'img/CPU-s':>11}{'GFLOP/s':>9}{'/matmul':>9}{'per CPU':>9}  oneDNN threads load"
    )
    for name, v in summary["variants"].items():
        print(
            f"{name:<18}{v['images_per_second']:>10.1f}{v['images_per_cpu_second']:>11.1f}{v['gflops']:>9.1f}"
            f"{v['ratio_to_matmul']:>9.3f}{v['cpu_ratio_to_matmul']:>9.3f}  {'on ' if v['onednn'] else 'off'}    "
            f"{str(v['op_threads']):<7} {v['load']}"
        )
    print(f"ratio default GFLOP/s / matmul GFLOP/s = {summary['ratio_default_to_matmul']:.3f}  (goal >= 0.6)")
    print(f"ratio mirrored / default images/s     = {summary['ratio_mirrored_to_default']:.3f}  (goal >= 0.8)")
    print(
        f"  per CPU-second of each process (the work per image; other load disturbs it least): default / matmul "
        f"{summary['cpu_ratio_default_to_matmul']:.3f}, mirrored / default {summary['cpu_ratio_mirrored_to_default']:.3f}"
    )
    if "ratio_mirrored_to_default_before" in summary:
        print(
            f"  before (TensorFlow's defaults): mirrored / default = {summary['ratio_mirrored_to_default_before']:.3f}"
        )
    print(f"uptime at end: {loads[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all variants")
    parser.add_argument("--devices", type=int, default=2, help="mirrored: logical CPU devices")
    parser.add_argument("--before", action="store_true", help="also TensorFlow's default settings (oneDNN off)")
    parser.add_argument("--jit", action="store_true", help="also the step compiled by XLA (jit_compile)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. image_size=128")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    loads = [_uptime()]
    results: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.rounds):
        for name, (spec, env) in _variants(args).items():
            results.setdefault(name, []).append(_run_child(spec, env))
    loads.append(_uptime())
    summary = _summary(results, args)
    summary["uptime"] = loads
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, args, loads)


if __name__ == "__main__":
    main()
