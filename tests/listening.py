"""What the processes of a run listen on, and whether anything off this machine could reach it.

``watch_listeners()`` polls this process and all its descendants (Spark JVMs, executors, their Python
workers, TensorFlow workers, emulators) while a run goes on and keeps every TCP socket in LISTEN state
it saw. A listener is *exposed* unless it is on 127.0.0.0/8 or ::1 (IPv4-mapped forms included) or it
lives in another network namespace whose only interface is ``lo`` (nothing outside can reach into it).

psutil reads sockets through ``/proc/net/*`` of *this* process's namespace, so it does not see the
sockets of a process in another namespace; those are read from ``/proc/<pid>/net/tcp{,6}``, which show
that process's namespace.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


@dataclass(frozen=True)
class Listener:
    pid: int
    command: str
    address: str
    port: int
    netns: str  # e.g. "net:[4026531833]"
    private_netns: bool  # another namespace, with only "lo" in it

    @property
    def exposed(self) -> bool:
        if self.private_netns:
            return False
        address = ipaddress.ip_address(self.address.split("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return not address.is_loopback

    def __str__(self) -> str:
        where = f" in private {self.netns}" if self.private_netns else ""
        return f"{self.address}:{self.port}{where} (pid {self.pid}: {self.command})"


def netns(pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def interfaces_in(net_dev: str) -> list[str]:
    """The interface names in a ``/proc/net/dev`` listing."""
    return sorted(line.split(":", 1)[0].strip() for line in net_dev.splitlines() if ":" in line)


def interfaces(pid: int | str = "self") -> list[str]:
    """The network interfaces in ``pid``'s namespace (``/proc/<pid>/net/dev`` lists that namespace's)."""
    with open(f"/proc/{pid}/net/dev", encoding="ascii") as handle:
        return interfaces_in(handle.read())


def _address(hex_address: str) -> str:
    """``/proc/net/tcp*`` prints addresses as 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    return str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))))


def _namespace_listeners(pid: int) -> list[tuple[str, int]]:
    found = []
    for name in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{name}", encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == _LISTEN:
                    address, port = fields[1].rsplit(":", 1)
                    found.append((_address(address), int(port, 16)))
    return found


def listeners_of(pid: int) -> list[Listener]:
    """The listening TCP sockets of ``pid`` (for a process in another namespace: all of that namespace's)."""
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline()[:4])[:160]
        namespace = netns(pid)
        if namespace == netns():
            return [
                Listener(pid, command, conn.laddr.ip, conn.laddr.port, namespace, False)
                for conn in process.net_connections(kind="tcp")
                if conn.status == psutil.CONN_LISTEN
            ]
        private = interfaces(pid) == ["lo"]
        return [
            Listener(pid, command, address, port, namespace, private) for address, port in _namespace_listeners(pid)
        ]
    except (psutil.NoSuchProcess, psutil.ZombieProcess, FileNotFoundError, ProcessLookupError):
        return []


@dataclass
class ListenerWatch:
    """Every listener seen on this process and its descendants; filled by :func:`watch_listeners`."""

    seen: dict[tuple[str, str, int], Listener] = field(default_factory=dict)
    netns_of: dict[int, str] = field(default_factory=dict)  # every process seen, by pid
    commands: set[str] = field(default_factory=set)  # their command lines

    def poll(self) -> None:
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                self.netns_of.setdefault(process.pid, netns(process.pid))
                self.commands.add(" ".join(process.cmdline()))
            except (psutil.Error, OSError):
                continue
            for listener in listeners_of(process.pid):
                self.seen.setdefault((listener.netns, listener.address, listener.port), listener)

    @property
    def listeners(self) -> list[Listener]:
        return list(self.seen.values())

    @property
    def exposed(self) -> list[Listener]:
        return [listener for listener in self.seen.values() if listener.exposed]

    def report(self) -> str:
        return "\n".join(sorted(f"{'EXPOSED ' if seen.exposed else ''}{seen}" for seen in self.seen.values()))


@contextmanager
def watch_listeners(interval: float = 0.2) -> Iterator[ListenerWatch]:
    """Poll the listeners of this process tree every ``interval`` s until the block ends (and once more)."""
    watch = ListenerWatch()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            watch.poll()
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="listener-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join()
        watch.poll()


def children() -> dict[int, str]:
    """The live descendants of this process, by pid, with their command lines (zombies left out)."""
    found = {}
    for process in psutil.Process().children(recursive=True):
        try:
            found[process.pid] = " ".join(process.cmdline())
        except psutil.Error:
            continue
    return found


def processes_in(namespace: str) -> list[int]:
    """Every live process on this machine in network namespace ``namespace`` (empty: it is gone)."""
    found = []
    for pid in psutil.pids():
        try:
            if netns(pid) == namespace and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (psutil.Error, OSError):
            continue
    return found
