"""TensorFlow imported once per process, without its C++ start-up lines on the console.

The pip wheel writes CUDA, CPU-instruction and oneDNN notes straight to file descriptor 2 while it loads
and looks for devices, before ``TF_CPP_MIN_LOG_LEVEL`` applies (on a CPU machine, in every Spark task of
the speed test); so both run with descriptor 2 captured, and every other captured line is written back.
"""

from __future__ import annotations

import os
import sys
import tempfile
from types import ModuleType

#: Start-up lines that say nothing on a CPU-only machine (matched as substrings).
START_UP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "cuda_executor.cc",
    "cuda_diagnostics.cc",
    "cpu_feature_guard.cc",
    "oneDNN custom operations are on",  # on CPUs where oneDNN is TensorFlow's default (AVX-512 VNNI and newer)
    "To enable the following instructions",
    "Unable to register cu",
    "TF-TRT Warning",
)


def load_tensorflow() -> ModuleType:
    """The ``tensorflow`` module, imported quietly the first time in this process."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO off, warnings and errors on
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # the device search is what prints cuInit
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True) if not _noise(line)]
    sys.stderr.write("".join(kept))
    return tf


def _noise(line: str) -> bool:
    return not line.strip() or any(marker in line for marker in START_UP_NOISE)
