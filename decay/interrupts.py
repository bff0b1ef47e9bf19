"""SIGINT and SIGTERM during a study: stop at the next chunk boundary, files intact; a second signal stops at once.

While `graceful()` is active (a `Runner` is training), the first SIGINT (Ctrl-C) or SIGTERM (a batch
scheduler) only notes the request and prints one line; the run loop (`decay.loop`) asks before every
chunk of steps (`requested`): each unfinished run of the batch saves a checkpoint at that step, and
`decay.errors.Interrupted` is raised, which the entry points turn into one line and exit status 130 / 143. A chunk lasts at
most --eval_every (or --checkpoint_every) steps, about a second in the default sweep. The handler
restores the default action, so a second signal stops the process at once, even inside a long
compiled call: every file decay writes is written to a temporary name and renamed (results, configs,
reports) or completed by Orbax's own rename (checkpoints), so nothing is left half-written.

With several processes (`jax.distributed`), the request of any process stops all of them at the
same chunk boundary (`requested` agrees over the processes), so none waits for the others forever.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_requested: int | None = None  # the signal received, until `graceful` ends
_depth = 0  # nested `graceful` blocks (a study's runner inside another)


def _handler(signum: int, frame) -> None:
    global _requested
    _requested = signum
    for s in SIGNALS:  # a second signal: the default action, at once
        signal.signal(s, signal.SIG_DFL)
    again = "Ctrl-C again" if signum == signal.SIGINT else "the signal again"
    print(
        f"\n{_NAMES.get(signum, signum)}: stopping after this chunk of steps, checkpoints and rows kept; {again} stops at once",
        file=sys.stderr,
        flush=True,
    )


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are noted for `check` instead of stopping the process (main thread only)."""
    global _requested, _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in SIGNALS} if _depth == 0 else None
    if _depth == 0:
        _requested = None
        for s in SIGNALS:
            signal.signal(s, _handler)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if old is not None:
            for s, h in old.items():
                signal.signal(s, h)
            _requested = None


def requested() -> int | None:
    """The signal received (SIGINT or SIGTERM) within `graceful`, agreed over every process, or None."""
    from decay import distributed

    return distributed.agree_max(_requested or 0) or None


def request(signum: int = signal.SIGINT) -> None:
    """As if `signum` had been received within `graceful` (for tests and callers that stop a study themselves)."""
    global _requested
    _requested = signum
