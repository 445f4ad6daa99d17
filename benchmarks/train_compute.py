"""Training at the compute limit: the train step's achieved GFLOP/s against TensorFlow's fp32 matmul, in one run.

    python benchmarks/train_compute.py [--steps 30] [--epochs 3] [--rounds 2] [--before] [--jit] [--kernels] [--precision]
        [--json]
        [override ...]

Each measurement runs in a fresh process started with the training workers' environment
(:func:`bigimage.train.launch.worker_env`: oneDNN on) and set up as a worker sets itself up
(:func:`bigimage.train.worker.configure_process`: op thread pools sized to its share of the cores, the
logical CPU devices of ``mirrored``), then:

- ``default`` and ``mirrored`` (``strategy.logical_cpu_devices``, 2 by default): the configured model
  (``small_cnn`` at ``image_size``, global ``batch_size``) trained by ``model.fit`` on in-memory uint8
  batches (no input cost), ``--steps`` steps per epoch, in one ``fit`` as a training runs: a warm-up
  epoch (tracing, not timed), then ``--epochs`` timed epochs; images/s is the median epoch's.
- the machine's fp32 matrix-multiply rate, measured by TensorFlow in ``default``'s process (all the
  cores: its pools): a 2048 x 2048 ``tf.linalg.matmul`` in a ``tf.function``, 2 n^3 FLOPs per product,
  one timing of 10 products before every epoch and after the last, outside the epochs' timings. This
  VM's speed drifts by 10 to 40% within a minute: a matmul timed in a process of its own put the same
  step at 0.49 of it in one run and 0.65 in the next. So each timed epoch of ``default`` is held
  against the mean of the samples just before and just after it (the headline: the median of those
  ratios), and the variants in other processes against the median sample of the same round's
  ``default``.

The model's FLOPs are counted, not estimated: the train step (forward, loss, gradients, Adam update) is
lowered by XLA (``experimental_get_compiler_ir``, optimised HLO: what XLA keeps after removing dead code
such as the first layer's unused input gradient), and every ``convolution`` and ``dot`` in it counts
2 x output elements x window elements x input features (padding included). Achieved GFLOP/s = images/s x
FLOPs per image. The fp32 goal is stated against what the step's own convolution kernels allow
(``--kernels``, below): ``default`` >= 0.9 of that ceiling; the ratio to the matmul is printed for
reference, as TensorFlow's convolution kernels alone stay well under it. ``mirrored`` >= 0.8 of
``default``'s images/s. The variants alternate over ``--rounds`` rounds (medians reported) so a load change hits all.
``--before`` adds the settings before issue 13 (TensorFlow's defaults here: oneDNN off, pools of all the
cores in every process) for what the change bought, ``--jit`` the step compiled by XLA, and ``--precision``
``default`` under ``train.precision=mixed_bfloat16`` (its images/s over ``default``'s: the goal is 2x
where the CPU has bf16 units). ``--kernels --precision`` also times the convolution passes (below) in
bfloat16: their speed-up over float32, all together and each alone, which is about what bf16 can give a
step that is almost all convolutions (what limits the 2x goal with TensorFlow's bf16 kernels on a CPU).

``--kernels`` times each convolution of the model alone, in a process set up as ``default``'s: its
forward pass (with the bias and ReLU the layer fuses), its filter gradient and its input gradient (not
for the first layer, whose input gradient the step never computes) on a batch of the layer's input
shape, each the median of 5 timings of 10 calls, between two matmul samples. The sum of those times is
what the step would take if it did nothing but its convolutions, each as fast as it runs alone: the
step's FLOPs over that time, against the matmul, is the ratio those kernels allow: the ceiling.
``default``'s ratio over that one (the fp32 goal's ratio) is the share of its step time the convolutions
would take at that speed; the rest is what everything else costs (pooling, the ReLU and bias gradients, the rescaling, Adam, the step's own
overhead, and the convolutions running slower inside the step than alone). The load
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
def _timed(call: Any, repeats: int = 5, calls: int = 10) -> float:
    """Seconds per call of a traced ``tf.function`` returning a scalar, median of ``repeats`` timings of
    ``calls`` separate calls (one call each, so none is merged with another)."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            call().numpy()
        timings.append((time.perf_counter() - started) / calls)
    return statistics.median(timings)


class MatmulProbe:
    """TensorFlow's fp32 matmul rate in this process, sampled between the timings it is compared with."""

    def __init__(self, tf: Any) -> None:
        self._a = tf.random.stateless_normal((MATMUL_N, MATMUL_N), seed=(1, 2))
        self._b = tf.random.stateless_normal((MATMUL_N, MATMUL_N), seed=(3, 4))
        self._product = tf.function(lambda a, b: tf.linalg.matmul(a, b)[0, 0], autograph=False)
        self._product(self._a, self._b).numpy()  # tracing
        self.samples: list[tuple[float, float]] = []

    def sample(self, products: int = 10) -> None:
        """GFLOP/s of ``products`` separate products (one call each, so none is merged with another), per
        wall-clock second and per CPU-second of this process; kept in :attr:`samples`."""
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(products):
            self._product(self._a, self._b).numpy()
        flops = 2 * MATMUL_N**3 * products / 1e9
        self.samples.append((flops / (time.perf_counter() - started), flops / (time.process_time() - cpu_started)))

    def between(self, first: int) -> tuple[float, float]:
        """The mean of samples ``first`` and ``first + 1``: the rate around what was timed between them."""
        (wall, cpu), (wall_after, cpu_after) = self.samples[first], self.samples[first + 1]
        return (wall + wall_after) / 2, (cpu + cpu_after) / 2


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    cfg = _compose(spec["overrides"])
    from bigimage.train.strategies import configure_devices
    from bigimage.train.worker import configure_process

    if spec["threads"] == "worker":
        op = configure_process(cfg)
        pools = (op.intra_op, op.inter_op)
        from bigimage.train import precision

        precision.configure(cfg)  # train.precision, as a worker sets it
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
    probe = MatmulProbe(tf) if spec.get("matmul") else None
    if spec.get("train"):
        result.update(_train(cfg, spec, tf, probe))
    if spec.get("kernels"):
        result["batch"], result["kernels"] = int(cfg.batch_size), _kernels(cfg, tf, probe, spec.get("dtype", "float32"))
    if probe is not None:
        result["matmul_samples"] = probe.samples
    result["load_after"] = os.getloadavg()[0]
    return result


def _epoch_timer(keras: Any, probe: MatmulProbe | None = None) -> Any:
    """A Keras callback recording each epoch's wall-clock and CPU seconds (of this process), with a
    matmul sample before every epoch and after the last, outside the epochs' timings, if given a probe."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if probe is not None:
                probe.sample()
            self._started, self._cpu_started = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.seconds.append(time.perf_counter() - self._started)
            self.cpu_seconds.append(time.process_time() - self._cpu_started)

        def on_train_end(self, logs: Any = None) -> None:
            if probe is not None:
                probe.sample()

    return EpochTimer()


def _train(cfg: Any, spec: dict[str, Any], tf: Any, probe: MatmulProbe | None) -> dict[str, Any]:
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
    timer = _epoch_timer(keras, probe)
    model.fit(data, epochs=1 + int(spec["epochs"]), steps_per_epoch=int(spec["steps"]), verbose=0, callbacks=[timer])
    seconds, cpu = timer.seconds[1:], timer.cpu_seconds[1:]
    images_per_epoch = int(spec["steps"]) * batch
    out: dict[str, Any] = {
        "images_per_second": statistics.median(images_per_epoch / s for s in seconds),
        "images_per_cpu_second": statistics.median(images_per_epoch / c for c in cpu),
        "replicas": int(strategy.num_replicas_in_sync),
    }
    if probe is not None:  # each timed epoch against the matmul samples just before and just after it
        out["epochs_against_matmul"] = [
            (images_per_epoch / s, images_per_epoch / c, *probe.between(epoch))
            for epoch, (s, c) in enumerate(zip(seconds, cpu, strict=True), start=1)
        ]
    if spec.get("count_flops"):
        total, counted = train_step_flops(model, images[:batch], classes[:batch])
        out["flops_per_image"] = total / batch
        out["flops_by_op"] = {name: flops / batch for name, flops in counted}
    return out


def _convolution_passes(
    tf: Any, layer: Any, seed: int, batch: int, input_gradient: bool, dtype: str = "float32"
) -> dict[str, Any]:
    """A ``Conv2D`` layer's passes as scalar-returning ``tf.function`` calls on random ``dtype`` data of its
    shapes: forward (with the bias and ReLU its op fuses), filter gradient and, if asked, input gradient."""
    (_, height, width, features), (_, out_height, out_width, filters) = layer.input.shape, layer.output.shape
    strides, padding, kernel = [1, *layer.strides, 1], layer.padding.upper(), list(layer.kernel.shape)
    x = tf.cast(tf.random.stateless_normal((batch, height, width, features), seed=(seed, 1)), dtype)
    weights = tf.cast(tf.random.stateless_normal(kernel, seed=(seed, 2)), dtype)
    bias = tf.zeros((filters,), dtype)
    dy = tf.cast(tf.random.stateless_normal((batch, out_height, out_width, filters), seed=(seed, 3)), dtype)

    @tf.function
    def forward() -> Any:
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, weights, strides, padding), bias))[0, 0, 0, 0]

    @tf.function
    def filter_gradient() -> Any:
        return tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=kernel, out_backprop=dy, strides=strides, padding=padding
        )[0, 0, 0, 0]

    @tf.function
    def input_gradient_() -> Any:
        return tf.raw_ops.Conv2DBackpropInput(
            input_sizes=x.shape, filter=weights, out_backprop=dy, strides=strides, padding=padding
        )[0, 0, 0, 0]

    passes = {"forward": forward, "filter_gradient": filter_gradient}
    if input_gradient:
        passes["input_gradient"] = input_gradient_
    return passes


def _kernels(cfg: Any, tf: Any, probe: MatmulProbe | None, dtype: str = "float32") -> list[dict[str, Any]]:
    """Each ``Conv2D`` pass of the configured model timed alone at the global batch in ``dtype`` (the first
    layer's input gradient left out: the step never computes it), between two matmul samples if given a probe."""
    import tf_keras as keras

    from bigimage.train.model import build_model

    batch = int(cfg.batch_size)
    convolutions = [layer for layer in build_model(cfg, 5).layers if isinstance(layer, keras.layers.Conv2D)]
    measured = []
    for index, layer in enumerate(convolutions):
        (_, out_height, out_width, filters), kernel = layer.output.shape, layer.kernel.shape
        flops = 2 * batch * out_height * out_width * filters * kernel[0] * kernel[1] * kernel[2]
        for name, call in _convolution_passes(tf, layer, index, batch, index > 0, dtype).items():
            call().numpy()  # tracing, before the matmul's bracket
            if probe is not None and not probe.samples:
                probe.sample()
            measured.append({"layer": layer.name, "pass": name, "flops": flops, "seconds": _timed(call)})
            if probe is not None:
                probe.sample()
                measured[-1]["matmul_gflops"] = probe.between(len(probe.samples) - 2)[0]
    return measured


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
        "default": ({**base, **now, "overrides": args.overrides, "count_flops": True, "matmul": True}, {}),
        "mirrored": ({**base, **now, "overrides": [*args.overrides, *mirrored]}, {}),
    }
    if args.before:
        variants["default_before"] = ({**base, **before, "overrides": args.overrides}, off)
        variants["mirrored_before"] = ({**base, **before, "overrides": [*args.overrides, *mirrored]}, off)
    if args.kernels:
        variants["kernels"] = ({"overrides": args.overrides, "threads": "worker", "kernels": True, "matmul": True}, {})
    if args.jit:
        variants["default_jit"] = ({**base, **now, "overrides": args.overrides, "jit": True}, {})
    if args.precision:
        bf16 = [*args.overrides, "train.precision=mixed_bfloat16"]
        variants["default_bf16"] = ({**base, **now, "overrides": bf16}, {})
        if args.kernels:
            variants["kernels_bf16"] = ({**variants["kernels"][0], "dtype": "bfloat16"}, {})
    return variants


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def _summary(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    flops = results["default"][0]["flops_per_image"]
    # default: each timed epoch against the matmul samples around it; the other variants, timed in other
    # processes, against the median sample of the same round's default
    epochs = [epoch for r in results["default"] for epoch in r["epochs_against_matmul"]]
    # the samples around the timed epochs (the first, before the warm-up epoch, is around none)
    around = [r["matmul_samples"][1:] for r in results["default"]]
    samples = [sample for each in around for sample in each]
    round_matmul = [[statistics.median(column) for column in zip(*each, strict=True)] for each in around]
    summary: dict[str, Any] = {
        "matmul_gflops": statistics.median(wall for wall, _ in samples),
        "matmul_gflops_per_cpu_second": statistics.median(cpu for _, cpu in samples),
        "matmul_gflops_range": [min(wall for wall, _ in samples), max(wall for wall, _ in samples)],
        "train_step_flops_per_image": flops,
        "flops_by_op_per_image": results["default"][0]["flops_by_op"],
        "variants": {},
    }
    for name in results:
        if name.startswith("kernels"):
            continue
        ips = median(name, "images_per_second")
        if name == "default":
            ratio = statistics.median(rate * flops / 1e9 / m for rate, _, m, _ in epochs)
            cpu_ratio = statistics.median(rate * flops / 1e9 / m for _, rate, _, m in epochs)
        else:
            rounds = list(zip(results[name], round_matmul, strict=True))
            ratio = statistics.median(r["images_per_second"] * flops / 1e9 / m for r, (m, _) in rounds)
            cpu_ratio = statistics.median(r["images_per_cpu_second"] * flops / 1e9 / m for r, (_, m) in rounds)
        summary["variants"][name] = {
            "images_per_second": ips,
            "images_per_cpu_second": median(name, "images_per_cpu_second"),
            "gflops": ips * flops / 1e9,
            "ratio_to_matmul": ratio,
            # Work per CPU-second against the matmul's: what other load on a shared machine disturbs least.
            "cpu_ratio_to_matmul": cpu_ratio,
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
    if "kernels" in results:
        summary["kernels"] = _kernel_summary(results["kernels"], flops, variants["default"])
    if "default_bf16" in variants:
        summary["ratio_bf16_to_default"] = (
            variants["default_bf16"]["images_per_second"] / variants["default"]["images_per_second"]
        )
    if "kernels_bf16" in results:
        summary["kernels_bf16"] = _bf16_kernels(results["kernels"], results["kernels_bf16"])
    if "mirrored_before" in variants:
        summary["ratio_mirrored_to_default_before"] = (
            variants["mirrored_before"]["images_per_second"] / variants["default_before"]["images_per_second"]
        )
    return summary


def _kernel_summary(rounds: list[dict[str, Any]], flops_per_image: float, default: dict[str, Any]) -> dict[str, Any]:
    """Each convolution pass's median time and GFLOP/s alone, against the matmul samples around it, and
    what the passes allow the whole step: its FLOPs over their summed time, each pass's time weighted by
    the matmul rate around it (median over rounds), and the share of ``default``'s step time they are."""
    batch = rounds[0]["batch"]
    step_flops = flops_per_image * batch
    passes = []
    for i, entry in enumerate(rounds[0]["kernels"]):
        seconds = statistics.median(r["kernels"][i]["seconds"] for r in rounds)
        passes.append(
            {
                "layer": entry["layer"],
                "pass": entry["pass"],
                "ms": 1e3 * seconds,
                "gflops": entry["flops"] / seconds / 1e9,
                "ratio_to_matmul": statistics.median(
                    k["flops"] / k["seconds"] / 1e9 / k["matmul_gflops"] for k in (r["kernels"][i] for r in rounds)
                ),
            }
        )
    # matmul-equivalent GFLOP: the work the matmul would have done in each pass's time
    ceiling = statistics.median(
        step_flops / 1e9 / sum(k["seconds"] * k["matmul_gflops"] for k in r["kernels"]) for r in rounds
    )
    return {
        "batch": batch,
        "passes": passes,
        "ceiling_ratio_to_matmul": ceiling,
        # Both ratios are against the matmul around their own timings, so their quotient is the share of
        # default's step time its convolutions would take at their speed alone, whatever the drift
        # between the two processes; raw milliseconds from the two would compare two speeds of the VM.
        "ratio_default_to_ceiling": default["ratio_to_matmul"] / ceiling,
        "matmul_gflops_range": [
            min(wall for r in rounds for wall, _ in r["matmul_samples"]),
            max(wall for r in rounds for wall, _ in r["matmul_samples"]),
        ],
    }


def _bf16_kernels(fp32: list[dict[str, Any]], bf16: list[dict[str, Any]]) -> dict[str, Any]:
    """How much faster the convolutions run in bfloat16 than in float32, all passes together and each alone
    (the passes' times weighted by the matmul rate around them, as the two are timed in different
    processes: median over rounds). The float32 step is almost all convolutions, so this is what bf16
    kernels can give the step."""

    def work(kernels: list[dict[str, Any]]) -> float:
        return sum(k["seconds"] * k["matmul_gflops"] for k in kernels)

    pairs = list(zip(fp32, bf16, strict=True))
    speedup = statistics.median(work(a["kernels"]) / work(b["kernels"]) for a, b in pairs)
    passes = [
        statistics.median(work([a["kernels"][i]]) / work([b["kernels"][i]]) for a, b in pairs)
        for i in range(len(fp32[0]["kernels"]))
    ]
    return {"convolutions_speedup": speedup, "passes": passes}


def _print(summary: dict[str, Any], args: argparse.Namespace, loads: list[str]) -> None:
    print(f"model and data: {' '.join(args.overrides) or 'the config defaults'}; {os.cpu_count()} CPUs")
    print(f"uptime at start: {loads[0]}")
    print(
        f"fp32 matmul ({MATMUL_N}^2, TensorFlow, all cores): {summary['matmul_gflops']:.1f} GFLOP/s, "
        f"{summary['matmul_gflops_per_cpu_second']:.1f} per CPU-second (median of the samples around default's epochs; "
        "range {:.1f} to {:.1f})".format(*summary["matmul_gflops_range"])
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
    print(f"ratio default GFLOP/s / matmul GFLOP/s = {summary['ratio_default_to_matmul']:.3f}  (reference)")
    print(f"ratio mirrored / default images/s     = {summary['ratio_mirrored_to_default']:.3f}  (goal >= 0.8)")
    print(
        f"  per CPU-second of each process (the work per image; other load disturbs it least): default / matmul "
        f"{summary['cpu_ratio_default_to_matmul']:.3f}, mirrored / default {summary['cpu_ratio_mirrored_to_default']:.3f}"
    )
    if "ratio_bf16_to_default" in summary:
        print(
            f"ratio default_bf16 / default images/s  = {summary['ratio_bf16_to_default']:.3f}  "
            "(goal >= 2 where the CPU has bf16 units; both with the workers' thread settings)"
        )
    if "kernels" in summary:
        kernels = summary["kernels"]
        print(
            "convolutions alone (batch {}; each against the matmul samples around it, {:.1f} to {:.1f} GFLOP/s):".format(
                kernels["batch"], *kernels["matmul_gflops_range"]
            )
        )
        for entry in kernels["passes"]:
            print(
                f"  {entry['layer']:<10}{entry['pass']:<17}{entry['ms']:>7.2f} ms{entry['gflops']:>8.1f} GFLOP/s"
                f"{entry['ratio_to_matmul']:>7.3f} of matmul"
            )
        share = kernels["ratio_default_to_ceiling"]
        print(
            f"  a step of nothing but these, each at its speed alone (the ceiling): "
            f"{kernels['ceiling_ratio_to_matmul']:.3f} of matmul; the other ops and overhead take {1 - share:.2f} of the step"
        )
        print(f"ratio default / the ceiling its convolutions allow = {share:.3f}  (goal >= 0.9)")
    if "kernels_bf16" in summary:
        bf16 = summary["kernels_bf16"]
        print(
            f"convolutions alone, bfloat16 / float32 (the same passes): {bf16['convolutions_speedup']:.2f}x "
            "(the float32 step is almost all convolutions: the bf16 step gains about what they gain)"
        )
        named = zip(summary["kernels"]["passes"], bf16["passes"], strict=True)
        print("  per pass: " + ", ".join(f"{e['layer']} {e['pass']} {x:.2f}x" for e, x in named))
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
    parser.add_argument("--kernels", action="store_true", help="also each convolution pass timed alone")
    parser.add_argument(
        "--precision", action="store_true", help="also default under train.precision=mixed_bfloat16 (bf16 compute)"
    )
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
    summary = _summary(results)
    summary["uptime"] = loads
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, args, loads)


if __name__ == "__main__":
    main()
