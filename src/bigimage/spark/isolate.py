"""Share-nothing hosts on one machine: run a command in its own mount namespace with empty tmpfs mounts
over the directories a second host would not have (``/tmp``, data, outputs, home), then exec it.

Used as ``unshare --mount -- python -m bigimage.spark.isolate --mask DIR ... -- CMD``; needs root.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence


def unavailable() -> str | None:
    """Why mount namespaces cannot be made here (None: they can)."""
    unshare = shutil.which("unshare")
    if not unshare or not shutil.which("mount"):
        return "util-linux `unshare`/`mount` are not installed"
    if os.geteuid() != 0:
        return "a private mount namespace with tmpfs mounts needs root"
    probe = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "--", "mount", "-t", "tmpfs", "probe", "/mnt"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"`unshare --mount` failed here: {(probe.stderr or probe.stdout).strip() or probe.returncode}"
    return None


def _inside(path: str, directories: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == os.path.realpath(d) or real.startswith(os.path.realpath(d) + os.sep) for d in directories)


def command(
    argv: Sequence[str], masks: Sequence[str], keep: Sequence[str] = (), mkdirs: Sequence[str] = (), cwd: str = "/"
) -> list[str]:
    """``argv`` run with ``masks`` hidden behind empty tmpfs mounts, ``keep`` files and ``mkdirs`` recreated;
    the installed software stays visible, as a second host would have it too."""
    unshare = shutil.which("unshare") or "unshare"
    line = [unshare, "--mount", "--propagation", "private", "--", sys.executable, "-m", "bigimage.spark.isolate"]
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # src/ or site-packages
    installed = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, package_root)})
    exposed = [path for path in installed if _inside(path, masks)]
    for flag, paths in (("--mask", masks), ("--expose", exposed), ("--keep", keep), ("--mkdir", mkdirs)):
        line += [part for path in paths for part in (flag, str(path))]
    return [*line, "--cwd", str(cwd), "--", *argv]


def _mask(path: str) -> None:
    """An empty tmpfs over ``path`` (missing directories are created first, then hidden too)."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777", "bigimage-isolated", path], check=True)


def _bind(source: str, target: str) -> None:
    """``mount --bind`` through the system call: the mount tool would resolve ``/proc/self/fd/N`` to the
    path name, which by now names the mask, not the hidden directory the handle holds."""
    libc = ctypes.CDLL(None, use_errno=True)
    ms_bind = 4096
    if libc.mount(source.encode(), target.encode(), None, ms_bind, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"bind mount onto {target}: {os.strerror(code)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bigimage.spark.isolate", description=__doc__.split("\n")[0])
    parser.add_argument("--mask", action="append", default=[], help="directory to hide behind an empty tmpfs")
    parser.add_argument("--keep", action="append", default=[], help="file to carry over (same path and mode)")
    parser.add_argument("--mkdir", action="append", default=[], help="directory to recreate after masking")
    parser.add_argument("--expose", action="append", default=[], help="directory to keep visible in a mask")
    parser.add_argument("--cwd", default="/")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    kept = {}
    for path in args.keep:
        with open(path, "rb") as handle:
            kept[path] = (handle.read(), os.stat(path).st_mode & 0o7777)
    exposed = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in args.expose}
    for path in args.mask:
        _mask(path)
    for path, descriptor in exposed.items():  # bound back from the handle opened before the mask hid it
        os.makedirs(path, exist_ok=True)
        _bind(f"/proc/self/fd/{descriptor}", path)
        os.close(descriptor)
    for path in args.mkdir:
        os.makedirs(path, exist_ok=True)
    for path, (content, mode) in kept.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
    os.makedirs(args.cwd, exist_ok=True)
    os.chdir(args.cwd)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
