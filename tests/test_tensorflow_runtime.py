"""TensorFlow's C++ start-up lines stay off the console; anything else written while it loads still shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bigimage.tensorflow_runtime import START_UP_NOISE

# A line of TensorFlow's C++ logging ("I0000 00:00:... 123 port.cc:153] ...") or absl's pre-init banner.
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} .*\.cc:\d+\]|absl::InitializeLog", re.MULTILINE)

# A stand-in package named tensorflow that writes a start-up note and a real warning straight to fd 2.
FAKE_TENSORFLOW = """
import os
os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n")
os.write(2, b"W0000 something.cc:1] a warning that matters\\n")
class config:
    @staticmethod
    def list_physical_devices():
        os.write(2, b"E0000 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\\n")
        return []
"""


def test_real_tensorflow_loads_without_start_up_noise() -> None:
    code = "from bigimage import tensorflow_runtime; print(tensorflow_runtime.load_tensorflow().constant(2).numpy())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "2"
    assert not [marker for marker in START_UP_NOISE if marker in result.stderr], result.stderr
    # Not only the notes listed: no C++ start-up line at all reaches the console on this machine.
    assert not CPP_LOG_LINE.search(result.stderr), result.stderr


def test_start_up_notes_are_dropped_and_other_lines_kept(tmp_path: Path) -> None:
    (tmp_path / "tensorflow.py").write_text(FAKE_TENSORFLOW)
    loader = "from bigimage import tensorflow_runtime; tensorflow_runtime.load_tensorflow()"
    result = subprocess.run(
        [sys.executable, "-c", loader], capture_output=True, text=True, check=True, env=_env_with(tmp_path)
    )
    assert "a warning that matters" in result.stderr
    assert "cudart_stub" not in result.stderr and "cuInit" not in result.stderr


def _env_with(path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
