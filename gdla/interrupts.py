"""Ctrl-C within about a second, even in the middle of one long torch call.

Python runs its SIGINT handler (``KeyboardInterrupt``) in the main thread between bytecodes, so a
single long native call (factorising a ``--size 6000`` matrix, one large product) holds it off until
the call returns. :func:`prompt_interrupts` arms a watchdog for the ``gdla`` command: the C-level
signal handler writes the signal's number to a pipe (:func:`signal.set_wakeup_fd`), which a daemon
thread reads while the main thread is inside torch (torch's kernels release the GIL). If the main
thread has not left the guarded block within :data:`GRACE_SECONDS` of the signal (the normal path:
``KeyboardInterrupt``, the one-line message, exit 130), the watchdog says so itself and ends the
process with exit status 130. Nothing is lost by that: ``--save`` replaces its file atomically, so
the old file stays whole.

Only the main thread of a POSIX process can arm it; elsewhere the block runs unguarded (as a library
call does: :func:`gdla.solve` installs nothing).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["GRACE_SECONDS", "INTERRUPTED_EXIT", "prompt_interrupts"]

#: How long the main thread has after Ctrl-C to stop by itself before the watchdog ends the process.
GRACE_SECONDS = 1.0
#: The exit status of an interrupted command (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 130


@contextmanager
def prompt_interrupts(say: Callable[[], None]) -> Iterator[None]:
    """Run the block with the watchdog armed; ``say()`` reports the interruption if the watchdog ends the process."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # set_wakeup_fd requires it: a signal handler must never block
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter, or signals are not ours to watch
        os.close(read_end)
        os.close(write_end)
        yield
        return
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read_end, done, say), name="gdla-interrupt-watchdog", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        os.close(write_end)  # the watcher's read sees end of file and returns
        watcher.join(timeout=GRACE_SECONDS)
        if not watcher.is_alive():
            os.close(read_end)


def _watch(read_end: int, done: threading.Event, say: Callable[[], None]) -> None:
    """Wait for SIGINT's byte on ``read_end``; if the main thread is still busy after the grace period, exit 130."""
    while True:
        try:
            received = os.read(read_end, 64)
        except OSError:
            return
        if not received:  # the block ended: the write end was closed
            return
        if signal.SIGINT in received and not done.wait(GRACE_SECONDS):
            try:
                say()
            finally:
                os._exit(INTERRUPTED_EXIT)  # the main thread is inside a native call that ignores the signal
