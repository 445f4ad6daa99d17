"""SIGTERM and SIGHUP as an exception, so a stopped job unwinds the way Ctrl-C makes it unwind.

A scheduler, ``timeout`` or a closing terminal stops a process with SIGTERM or SIGHUP, whose default
action ends it on the spot: no ``finally`` runs, so the MLflow run stays RUNNING, the Spark job is not
cancelled, a standalone cluster's JVMs and the training workers are left behind. While at least one
holder has called :func:`install` (the tracked run of every task, a sweep's parent, a standalone
cluster), these signals raise :class:`Terminated` in the main thread instead, where Python delivers
them; every ``finally`` and context manager then runs, and ``tracked_run`` ends the run KILLED.

``Terminated`` is both a ``KeyboardInterrupt`` and a ``SystemExit``. The first so that whatever
already cleans up after Ctrl-C does the same here: py4j drops the connection a call was waiting on
(any other exception leaves its answer pending and every later Spark call reads the wrong one, so the
job could not even be cancelled), the Dataproc submitter cancels its job. The second so that, left
uncaught, the interpreter exits with ``128 + signal`` (143 for SIGTERM, the shell's convention) and no
traceback. Only the first signal raises; more SIGTERM/SIGHUP while the job unwinds are ignored, so a
second one cannot cut the clean-up short (SIGKILL still stops everything at once). A handler someone
else installed, or ``SIG_IGN`` (``nohup``), is left alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_lock = threading.Lock()
_holders = 0
_previous: dict[int, signal.Handlers | int | Callable[[int, FrameType | None], object] | None] = {}
_unwinding = False
_last_signal: int | None = None


class Terminated(KeyboardInterrupt, SystemExit):
    """The process got SIGTERM or SIGHUP; raised in the main thread, exits with ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        SystemExit.__init__(self, 128 + signum)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name

    def __str__(self) -> str:
        return f"terminated by {self.signal_name}"


def _handler(signum: int, frame: FrameType | None) -> None:
    global _unwinding, _last_signal
    _last_signal = signum
    if _unwinding:
        return  # already unwinding from the first signal: let the clean-up finish
    _unwinding = True
    # First what Ctrl-C would do. PySpark's SIGINT handler cancels the running Spark jobs (on a fresh
    # py4j connection); without that, the JVM side of the interrupted call stays busy and every later
    # call to Spark, the cancel and the stop in the ``finally`` blocks included, fails.
    on_interrupt = signal.getsignal(signal.SIGINT)
    if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
        with contextlib.suppress(BaseException):
            on_interrupt(signal.SIGINT, frame)
    raise Terminated(signum)


def install() -> bool:
    """Make SIGTERM/SIGHUP raise :class:`Terminated` until the matching :func:`uninstall`.

    Nestable (a count of holders). Returns False, and counts nothing, outside the main thread, where
    Python cannot install handlers; only a True return is to be matched by :func:`uninstall`.
    """
    global _holders, _unwinding, _last_signal
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _holders == 0:
            _unwinding, _last_signal = False, None
            for signum in SIGNALS:
                current = signal.getsignal(signum)
                if current in (signal.SIG_DFL, None):
                    _previous[signum] = current
                    signal.signal(signum, _handler)
        _holders += 1
    return True


def uninstall() -> None:
    """Drop one holder; the last one puts the default actions back (where the handler is still ours)."""
    global _holders
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        _holders = max(_holders - 1, 0)
        if _holders:
            return
        for signum, previous in list(_previous.items()):
            if signal.getsignal(signum) is _handler:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            del _previous[signum]


def last_signal() -> int | None:
    """The SIGTERM/SIGHUP received since the first current holder installed the handler (None: none)."""
    return _last_signal


@contextmanager
def signals_raise() -> Iterator[None]:
    """:func:`install` for the duration of a ``with`` block."""
    held = install()
    try:
        yield
    finally:
        if held:
            uninstall()
