"""A private network namespace for the TensorFlow workers of one training: reachable from nowhere else.

MultiWorkerMirroredStrategy starts a gRPC server in every worker, and it listens on every interface
(``*:<port>``, IPv4 and IPv6), unauthenticated, whatever host TF_CONFIG names (tensorflow#11689); no
TensorFlow option changes that. Workers in a fresh network namespace whose only interface is ``lo``
still reach each other on 127.0.0.1, and nothing outside the namespace can reach them.

One *holder* process (``unshare --net [--map-root-user] python -m bigimage.train.netns``) makes the
namespace, brings ``lo`` up and waits on its stdin; each worker joins it with
``nsenter --net=/proc/<holder>/ns/net -- <argv>``, which execs the worker, so the worker keeps its pid,
exit code and process group. :meth:`PrivateNetwork.close` (and the launcher's death: the pipe closes)
ends the holder; the kernel frees the namespace when its last process has exited, that is with the
training's workers, which the launchers kill on the way out.

As root the namespace is a plain ``unshare --net``; otherwise an unprivileged user namespace owns it
(``--map-root-user``; workers join with ``nsenter --user --preserve-credentials``, so files they write
keep the caller's owner). Where neither works (no util-linux, not root and unprivileged user namespaces
off), :func:`private_network` warns and yields None: the workers run on the host network, as before.

Inside, a worker reaches nothing outside the namespace, the host's own 127.0.0.1 included: an MLflow
tracking server over http, a database-backed store, gs:// (or a storage emulator on host loopback).
The default sqlite store and file artifacts work (same file system). :func:`private_network` is given
the URIs the workers use and keeps them on the host network, with a warning, when one needs the network.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, cast
from urllib.parse import urlparse

log = logging.getLogger(__name__)

READY = "ready"
EXPOSED = "their TensorFlow gRPC servers listen on every network interface, unauthenticated (tensorflow#11689)"


class NetnsUnavailable(RuntimeError):
    """No private network namespace can be made here."""


def needs_network(uri: str) -> bool:
    """Whether a worker reaches ``uri`` over the network (an MLflow server, a database, gs://), not as files."""
    return uri == "databricks" or urlparse(uri).scheme not in ("", "file", "sqlite")


class PrivateNetwork:
    """A network namespace with only ``lo`` (up), held open by one process until :meth:`close`."""

    def __init__(self) -> None:
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if not unshare or not nsenter:
            raise NetnsUnavailable("`unshare`/`nsenter` (util-linux) are not installed")
        self.user_namespace = os.geteuid() != 0
        argv = [unshare, "--net", *(["--map-root-user"] if self.user_namespace else []), "--"]
        self.holder = subprocess.Popen(
            [*argv, sys.executable, "-m", "bigimage.train.netns"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._stdin = cast(IO[str], self.holder.stdin)  # held open: the holder lives until it closes
        with cast(IO[str], self.holder.stdout) as output:
            line = output.readline().strip()  # READY, or (at once) why unshare failed
            error = "" if line == READY else (line + output.read()).strip()
        if error or line != READY:
            self.close()
            raise NetnsUnavailable(f"`{' '.join(argv)}` failed: {error or f'exit code {self.holder.returncode}'}")
        self.path = f"/proc/{self.holder.pid}/ns/net"
        joins = [f"--user=/proc/{self.holder.pid}/ns/user", "--preserve-credentials"] if self.user_namespace else []
        self.prefix = [nsenter, *joins, f"--net={self.path}", "--"]

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (same pid: nsenter execs it)."""
        return [*self.prefix, *argv]

    def close(self) -> None:
        """End the holder; the namespace goes when the last worker in it has exited too."""
        self._stdin.close()
        try:
            self.holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()


@contextmanager
def private_network(
    uris: Iterable[str | None] = (), what: str = "the training workers"
) -> Iterator[PrivateNetwork | None]:
    """A :class:`PrivateNetwork` for ``what``, closed on exit; None (with a warning) where it cannot be used.

    ``uris``: what the workers read or write (tracking URI, artifact URI, checkpoint directory); one that
    needs the network keeps them on the host network, since the namespace has none.
    """
    remote = [uri for uri in uris if uri and needs_network(uri)]
    if remote:
        from bigimage.tracking import redact  # not in the holder process, which runs this module

        log.warning(
            "%s need the network for %s, so they run on the host network and %s; with a sqlite or file "
            "MLflow store and local paths they run in a private network namespace instead",
            what, ", ".join(map(redact.url, remote)), EXPOSED,
        )  # fmt: skip
        yield None
        return
    try:
        network = PrivateNetwork()
    except (NetnsUnavailable, OSError) as error:
        log.warning(
            "no private network namespace for %s (%s; it needs root, or unprivileged user namespaces "
            "and util-linux), so %s",
            what, error, EXPOSED,
        )  # fmt: skip
        yield None
        return
    try:
        yield network
    finally:
        network.close()


def _loopback_up() -> None:
    """``ip link set lo up`` without needing iproute2: SIOCGIFFLAGS, set IFF_UP, SIOCSIFFLAGS."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, struct.pack("16sH22x", b"lo", 0)))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def main() -> None:
    """The holder: bring ``lo`` up, say so, then wait until stdin closes (the launcher closed it or died)."""
    _loopback_up()
    print(READY, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
