"""The one error family that reaches the command line, and a clean stop on SIGINT / SIGTERM.

Every user-facing failure raises a :class:`SciencegenError` (or a subclass) whose message is one line meant for
the user; the console scripts print it and exit with its :attr:`~SciencegenError.exit_code`. Long loops
(generation chunks, training steps) poll a :class:`StopRequest` at safe points, so Ctrl-C or a scheduler's
SIGTERM stops the job after the unit of work in flight instead of in the middle of a write.
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Interrupted", "SciencegenError", "StopRequest", "TrainError", "os_error_line", "stop_requests"]


class SciencegenError(RuntimeError):
    """A failure the user can act on; ``str(exc)`` is one line."""

    exit_code = 2


class Interrupted(SciencegenError):
    """The job stopped at a safe point because of SIGINT or SIGTERM; what was complete is kept."""

    exit_code = 130


class TrainError(SciencegenError):
    """A model cannot be built or loaded, or a training job cannot start or continue; the message is one line."""


_ADVICE = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent of it is a file, not a directory",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "no such file or directory",
}


def os_error_line(exc: OSError, what: str | None = None) -> str:
    """One line naming the path and the problem of an :class:`OSError` (disk full, read-only, ...).

    Parameters
    ----------
    exc
        The error.
    what
        The path to name when the error carries none.
    """
    path = exc.filename or what or "?"
    reason = _ADVICE.get(exc.errno or -1) or exc.strerror or str(exc)
    return f"cannot write {path}: {reason}"


class StopRequest:
    """Set by SIGINT / SIGTERM inside :func:`stop_requests`; loops poll :attr:`signal` at safe points."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Turn SIGINT / SIGTERM into a polled :class:`StopRequest` for the duration of the block.

    The first signal only sets the request (the loop stops after the unit of work in flight); a second SIGINT
    raises :class:`KeyboardInterrupt` at once. Outside the main thread (where handlers cannot be installed)
    the request is never set and signals keep their default behaviour.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        if request.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
