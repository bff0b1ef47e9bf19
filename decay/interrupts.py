"""SIGINT and SIGTERM during a study: stop at the next chunk boundary, files intact; a second signal stops at once.

While `graceful()` is active (a `Runner` is training), the first SIGINT (Ctrl-C) or SIGTERM (a batch
scheduler) only notes the request and prints one line; the run loop (`decay.loop`) asks before every
chunk of steps (`requested`): each unfinished run of the batch saves a checkpoint at that step, and
`decay.errors.Interrupted` is raised, which the entry points turn into one line and exit status 130 / 143. A chunk lasts at
most --eval_every (or --checkpoint_every) steps, about a second in the default sweep. The handler
restores the default action, and a watcher thread counts signals as they arrive (the interpreter's
wakeup fd), so a second signal stops the process at once (exit 130 / 143), even inside a long
compiled call: every file decay writes is written to a temporary name and renamed (results, configs,
reports) or completed by Orbax's own rename (checkpoints), so nothing is left half-written.

With several processes (`jax.distributed`), the request of any process stops all of them at the
same chunk boundary (`requested` agrees over the processes), so none waits for the others forever.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_requested: int | None = None  # the signal received, until `graceful` ends
_depth = 0  # nested `graceful` blocks (a study's runner inside another)


_pipe: tuple[int, int] | None = None  # the interpreter's wakeup fd while `graceful` is active: one byte per signal
_count = 0  # SIGINT and SIGTERM received within `graceful`, counted from the wakeup bytes


def _take(data: bytes) -> None:
    """Counts the signals in wakeup bytes; the second stops the process at once."""
    global _count
    for signum in data:
        if signum in SIGNALS:
            _count += 1
            if _count >= 2:
                os.write(2, f"\n{_NAMES[signum]} again: stopped at once\n".encode())
                os._exit(128 + signum)  # files are written whole or not at all (temporary names, renames)


def _drain() -> None:
    try:
        _take(os.read(_pipe[0], 64))
    except (BlockingIOError, OSError, TypeError):
        pass


def _handler(signum: int, frame) -> None:
    global _requested
    # Python runs this handler once for signals that arrived together (while the main thread was in a compiled
    # call, say): the wakeup bytes say how many there were.
    _drain()
    _requested = signum
    for s in SIGNALS:  # a second signal: the default action, at once
        signal.signal(s, signal.SIG_DFL)
    again = "Ctrl-C again" if signum == signal.SIGINT else "the signal again"
    line = (
        f"\n{_NAMES.get(signum, signum)}: stopping after this chunk of steps, checkpoints and rows kept; {again} stops at once\n"
    )
    os.write(2, line.encode())  # not print: the main thread may be inside a write to stderr (a progress bar)


def _watch(read_fd: int) -> None:
    """Counts signals as they arrive while the main thread is in a call that lets other threads run (Python runs a
    signal's handler only when the main thread returns to the interpreter)."""
    while True:
        try:
            select.select([read_fd], [], [])
        except (OSError, ValueError):
            return
        if _pipe is None or _pipe[0] != read_fd:
            return
        _drain()


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are noted for `requested` instead of stopping the process, and a second
    one stops it at once (main thread only)."""
    global _requested, _depth, _pipe, _count
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS} if _depth == 0 else None
    pipe, old_fd = None, -1
    if _depth == 0:
        _requested = None
        for s in SIGNALS:
            signal.signal(s, _handler)
        pipe = os.pipe()
        os.set_blocking(pipe[0], False)
        os.set_blocking(pipe[1], False)
        _pipe, _count = pipe, 0
        old_fd = signal.set_wakeup_fd(pipe[1], warn_on_full_buffer=False)
        threading.Thread(target=_watch, args=(pipe[0],), daemon=True, name="decay-signals").start()
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if old is not None:
            for s, h in old.items():
                signal.signal(s, h)
            _requested = None
        if pipe is not None:
            signal.set_wakeup_fd(old_fd)
            _pipe = None
            os.close(pipe[1])  # the watcher sees the pipe's end and returns
            os.close(pipe[0])


def requested() -> int | None:
    """The signal received (SIGINT or SIGTERM) within `graceful`, agreed over every process, or None."""
    from decay import distributed

    return distributed.agree_max(_requested or 0) or None
