"""A private network namespace (only ``lo``) for a training's workers, relaying the loopback servers they use:
a holder made by ``unshare`` keeps it, workers join with ``nsenter``, the launcher dials for the relays
(why and how: docs/training.md#network; ``strategy.isolation``: docs/security.md).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, cast
from urllib.parse import urlparse

from bigimage.errors import UserError

log = logging.getLogger(__name__)

READY = "ready"
EXPOSED = "their TensorFlow gRPC servers listen on every network interface, unauthenticated (tensorflow#11689)"
REQUIRED, PREFERRED, OFF = "required", "preferred", "off"  # strategy.isolation (bigimage.config.Isolation)
# The port a URI without one reaches, by scheme (a database URL's driver, postgresql+psycopg2, dropped).
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
_REQUEST = struct.Struct("!H")  # holder -> launcher: the index of the endpoint to dial
_DIALED, _REFUSED = b"\x00", b"\x01"  # launcher -> holder: a socket follows (SCM_RIGHTS), or why not
_CHUNK = 1 << 16


class NetnsUnavailable(RuntimeError):
    """No private network namespace can be made here."""


class Unreachable(NetnsUnavailable):
    """The workers use an endpoint on another host, which no relay of the namespace reaches."""


class IsolationError(UserError):
    """``strategy.isolation=required`` and no private network namespace can serve the workers."""


FIX_HOST = "install util-linux (`unshare`, `nsenter`) and run as root or with unprivileged user namespaces allowed"
FIX_ENDPOINTS = "give them paths, sqlite: stores or servers on this machine's loopback (127.0.0.1, localhost)"


@dataclass(frozen=True)
class Endpoint:
    """A TCP endpoint on this machine's loopback, as a URI names it (``localhost`` kept as such)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def addresses(self) -> tuple[str, ...]:
        """Where the relay listens inside the namespace: the address itself, both loopbacks for localhost."""
        return ("127.0.0.1", "::1") if self.host == "localhost" else (self.host,)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """The inverse of ``str()``: ``127.0.0.1:5000``, ``[::1]:5000``, ``localhost:5000``."""
        host, port = text.rsplit(":", 1)
        return cls(host.strip("[]"), int(port))


def needs_network(uri: str) -> bool:
    """Whether a worker reaches ``uri`` over the network (an MLflow server, a database, gs://), not as files."""
    return uri == "databricks" or urlparse(uri).scheme not in ("", "file", "sqlite")


def _on_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint(uri: str) -> Endpoint | None:
    """The loopback endpoint through which a worker reaches ``uri`` (None: somewhere else; gs:// the emulator's)."""
    if uri.startswith("gs://"):
        from bigimage.data.storage import EMULATOR_ENV

        emulator = os.environ.get(EMULATOR_ENV, "")
        return endpoint(emulator if "://" in emulator else f"http://{emulator}") if emulator else None
    parsed = urlparse(uri)
    try:
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme.split("+", 1)[0].lower())
    except ValueError:  # a port out of range
        return None
    host = parsed.hostname or ""
    return Endpoint(host, port) if port and _on_loopback(host) else None


def routes(uris: Iterable[str | None]) -> tuple[list[Endpoint], list[str]]:
    """Of the URIs the workers use: the loopback endpoints to relay, and those no relay reaches."""
    relayed: list[Endpoint] = []
    beyond: list[str] = []
    for uri in filter(None, uris):
        # A mlflow-artifacts: URI without a host goes through the (relayed) tracking server.
        if not needs_network(uri) or (uri.startswith("mlflow-artifacts:") and not urlparse(uri).netloc):
            continue
        found = endpoint(uri)
        if found is None:
            beyond.append(uri)
        elif found not in relayed:
            relayed.append(found)
    return relayed, beyond


class PrivateNetwork:
    """A network namespace with only ``lo``, held open until :meth:`close`, relaying ``endpoints``."""

    def __init__(self, endpoints: Sequence[Endpoint] = ()) -> None:
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if not unshare or not nsenter:
            raise NetnsUnavailable("`unshare`/`nsenter` (util-linux) are not installed")
        self.user_namespace = os.geteuid() != 0
        self.endpoints = list(endpoints)
        argv = [unshare, "--net", *(["--map-root-user"] if self.user_namespace else []), "--"]
        control, holder_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        relays = [f"--relay={each}" for each in self.endpoints]
        with holder_end:  # the holder's copy is inherited; this one goes
            self.holder = subprocess.Popen(
                [*argv, sys.executable, "-m", "bigimage.train.netns", f"--control-fd={holder_end.fileno()}", *relays],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                pass_fds=(holder_end.fileno(),),
            )
        self._stdin = cast(IO[str], self.holder.stdin)  # held open: the holder lives until it closes
        self._dialer = Dialer(control, self.endpoints)
        with cast(IO[str], self.holder.stdout) as output:
            line = output.readline().strip()  # READY, or (at once) why unshare or a relay failed
            error = "" if line == READY else (line + output.read()).strip()
        if error or line != READY:
            self.close()
            raise NetnsUnavailable(f"`{' '.join(argv)}` failed: {error or f'exit code {self.holder.returncode}'}")
        self._dialer.start()
        self.path = f"/proc/{self.holder.pid}/ns/net"
        joins = [f"--user=/proc/{self.holder.pid}/ns/user", "--preserve-credentials"] if self.user_namespace else []
        self.prefix = [nsenter, *joins, f"--net={self.path}", "--"]

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace (same pid: nsenter execs it)."""
        return [*self.prefix, *argv]

    def close(self) -> None:
        """End the holder and its relays; the namespace goes with the last worker in it."""
        self._stdin.close()
        try:
            self.holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        self._dialer.stop()


class Dialer(threading.Thread):
    """The launcher's side of the relay: dials each endpoint the holder asks for and hands it over."""

    def __init__(self, control: socket.socket, endpoints: Sequence[Endpoint]) -> None:
        super().__init__(name="netns-dialer", daemon=True)
        self.control = control
        self.endpoints = list(endpoints)

    def run(self) -> None:
        try:
            while request := self.control.recv(_REQUEST.size):
                self._answer(_REQUEST.unpack(request)[0])
        except OSError:
            pass  # the holder is gone: nobody left to answer

    def _answer(self, index: int) -> None:
        target = self.endpoints[index]
        try:
            upstream = socket.create_connection((target.host, target.port), timeout=10)
        except OSError as error:
            self.control.send(_REFUSED + f"{target}: {error}".encode())
            return
        with upstream:
            upstream.settimeout(None)  # blocking again: the flag travels with the socket
            socket.send_fds(self.control, [_DIALED], [upstream.fileno()])

    def stop(self) -> None:
        """Close the control socket; the thread ends at its next read (the holder has exited by now)."""
        with contextlib.suppress(OSError):
            self.control.shutdown(socket.SHUT_RDWR)
        if self.is_alive():
            self.join(timeout=10)
        self.control.close()


class Relay:
    """Inside the namespace: joins each connection to one the :class:`Dialer` made on the host (listening
    from the start)."""

    def __init__(self, control: socket.socket, endpoints: Sequence[Endpoint]) -> None:
        self.control = control
        self.lock = threading.Lock()  # one request on the control socket at a time, answered in order
        self.listeners: list[tuple[int, socket.socket]] = []
        bound: set[tuple[str, int]] = set()  # 127.0.0.1:5000 and localhost:5000 share a listener
        for index, each in enumerate(endpoints):
            for address in each.addresses():
                if (address, each.port) in bound or (address != each.host and not _has_address(address)):
                    continue  # localhost: ::1 only where IPv6 is on
                self.listeners.append((index, _listen(address, each.port)))
                bound.add((address, each.port))
        for index, listener in self.listeners:
            threading.Thread(target=self._accept, args=(index, listener), daemon=True).start()

    def _accept(self, index: int, listener: socket.socket) -> None:
        while True:
            client, _ = listener.accept()
            threading.Thread(target=self._serve, args=(index, client), daemon=True).start()

    def _dial(self, index: int) -> socket.socket | None:
        """A connection to endpoint ``index`` on the host, from the launcher (None: it could not connect)."""
        with self.lock:
            self.control.send(_REQUEST.pack(index))
            status, fds, _, _ = socket.recv_fds(self.control, 1024, 1)
        if status[:1] != _DIALED or not fds:
            return None
        upstream = socket.socket(fileno=fds[0])
        upstream.setblocking(True)
        return upstream

    def _serve(self, index: int, client: socket.socket) -> None:
        with client:
            upstream = self._dial(index)
            if upstream is None:
                return  # the worker sees the connection closed, as it would see a refusal
            with upstream:
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()


def _listen(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(64)
    return listener


def _has_address(address: str) -> bool:
    """Whether ``address`` can be bound here (``::1`` is missing where IPv6 is off)."""
    try:
        _listen(address, 0).close()
    except OSError:
        return False
    return True


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until end of stream, then pass the end on; on an error, end both ways."""
    try:
        while data := source.recv(_CHUNK):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for each in (source, sink):
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)


@contextmanager
def private_network(
    uris: Iterable[str | None] = (), what: str = "the training workers", isolation: str = PREFERRED
) -> Iterator[PrivateNetwork | None]:
    """A :class:`PrivateNetwork` relaying the loopback endpoints of ``uris``; where none serves them,
    ``isolation`` decides: IsolationError (one line), or None (the host network) with a warning."""
    uris = list(uris)
    if str(isolation) == OFF:
        log.info("strategy.isolation=off: %s run on the host network and %s", what, EXPOSED)
        yield None
        return
    relayed, beyond = routes(uris)
    try:
        if beyond:
            from bigimage.tracking import redact  # not in the holder process, which runs this module

            remote = ", ".join(redact.url(uri) for uri in uris if uri and needs_network(uri))
            raise Unreachable(
                f"they need the network for {remote}; a private network namespace reaches only this machine's "
                f"loopback (relayed), not {', '.join(map(redact.url, beyond))}"
            )
        network = PrivateNetwork(relayed)
    except (NetnsUnavailable, OSError) as error:
        reason = " ".join(str(error).split())  # unshare's error may span lines
        fix = FIX_ENDPOINTS if isinstance(error, Unreachable) else FIX_HOST
        if str(isolation) == REQUIRED:
            raise IsolationError(
                f"strategy.isolation=required, but no private network namespace can serve {what} ({reason}): "
                f"{fix}, or set strategy.isolation=preferred (the host network, with a warning) or strategy.isolation=off"
            ) from error
        log.warning(
            "no private network namespace for %s (%s), so they run on the host network and %s; %s",
            what, reason, EXPOSED, f"to keep them private, {fix}",
        )  # fmt: skip
        yield None
        return
    if relayed:
        log.info("%s run in a private network namespace, relayed to %s", what, ", ".join(map(str, relayed)))
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


def main(argv: list[str] | None = None) -> None:
    """The holder: bring ``lo`` up, start the relays, say so, then wait until the launcher closes stdin."""
    parser = argparse.ArgumentParser(prog="python -m bigimage.train.netns")
    parser.add_argument("--control-fd", type=int, required=True, help="the Unix socket to the launcher")
    parser.add_argument("--relay", type=Endpoint.parse, action="append", default=[], help="HOST:PORT to relay")
    arguments = parser.parse_args(argv)
    _loopback_up()
    control = socket.socket(fileno=arguments.control_fd)
    try:
        Relay(control, arguments.relay)
    except OSError as error:
        sys.exit(f"cannot relay {', '.join(map(str, arguments.relay))} inside the namespace: {error}")
    print(READY, flush=True)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, sys.stdout.fileno())
    os.dup2(quiet, sys.stderr.fileno())
    sys.stdin.read()


if __name__ == "__main__":
    main()
