"""SIGTERM and SIGHUP as an exception, so a stopped job unwinds (``finally`` blocks, MLflow run ended
KILLED) the way Ctrl-C makes it unwind.

:class:`Terminated` is a ``KeyboardInterrupt`` (what cleans up after Ctrl-C does the same) and a
``SystemExit`` (uncaught, exit ``128 + signal``); only the first signal raises.
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
    # First what Ctrl-C would do: PySpark's SIGINT handler cancels the running Spark jobs, without which
    # every later call to Spark (the clean-up's included) fails.
    on_interrupt = signal.getsignal(signal.SIGINT)
    if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
        with contextlib.suppress(BaseException):
            on_interrupt(signal.SIGINT, frame)
    raise Terminated(signum)


def install() -> bool:
    """Make SIGTERM/SIGHUP raise :class:`Terminated` until the matching :func:`uninstall` (nestable);
    False, counting nothing, outside the main thread, where Python cannot install handlers."""
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
    held = install()
    try:
        yield
    finally:
        if held:
            uninstall()
