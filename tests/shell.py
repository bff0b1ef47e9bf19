"""Command lines run as from the shell, and heavy test work, in the background while the suite runs.

Every `python -m experiments.X ...` pays about a second to import JAX and decay before it can
reject a bad flag, and the pytest process alone leaves about a third of a 2-core machine idle.
So test modules register what they will run with `shell(module, *args)` (a command line) or
`call("tests.test_x:function", *args)` (a function that trains and writes files for a test to
check) when they are imported, at collection. When collection ends (`tests/conftest.py`), what
the selected tests need starts in one background driver process that imports the heavy libraries
once and then forks one child per command line: quick ones (bad flags) two at a time, then the
heavy ones (trainings) one at a time, in the order the tests will ask for them, all at the lowest
CPU priority (nice 19), so that they take only what the pytest process leaves idle. A test that
asks for a result waits for that one only; the tests that wait for heavy work carry the mark
`background` and run last.

A child is a fresh interpreter in all that matters here: it runs the module as `__main__`
(`runpy`, as `python -m` does) with its own argv, flags, environment variables and exit status,
and its stdout and stderr (file descriptors 1 and 2, so output from C code is caught too) go to
files of its own. Nothing has started a JAX backend before the fork, so a child's XLA_FLAGS take
effect. XLA_FLAGS is unset unless a registration sets it, as in a plain shell.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Scratch folders for registered work (their --workdir), shared with the background processes
# (which import test modules) through the environment; removed when the session ends.
if os.environ.get("DECAY_TEST_SCRATCH"):
    SCRATCH = pathlib.Path(os.environ["DECAY_TEST_SCRATCH"])
else:
    SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="decay-shell-"))
    os.environ["DECAY_TEST_SCRATCH"] = str(SCRATCH)
    atexit.register(shutil.rmtree, SCRATCH, True)

_DRIVER = r"""
import importlib, json, os, runpy, sys, tempfile, traceback

cases = json.loads(sys.stdin.read())  # [target, args, env, heavy]
os.nice(19)  # background work takes the CPU that the pytest process leaves idle, and yields it back
# Libraries, not entry points: no absl flag is defined by these imports, and none starts a backend.
import numpy, jax, flax.nnx, optax  # noqa: F401
import decay.theory, decay.validation, decay.data, decay.runner, decay.loop, decay.analysis  # noqa: F401

try:  # JAX internals, checked where this JAX has them: a backend started here would not survive the fork
    from jax._src import xla_bridge

    assert not xla_bridge._backends, "a JAX backend started before the fork"
except (ImportError, AttributeError):
    pass


def child(target, args, env, out, err):
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    os.environ.update(env)
    code = 0
    try:
        if ":" in target:  # a function of a test module
            module, function = target.split(":")
            sys.argv = [target]
            getattr(importlib.import_module(module), function)(*args)
        else:
            sys.argv = [target, *args]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # as the interpreter reports it
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


running, files = {}, {}
todo = list(enumerate(cases))
while todo or running:
    # Quick command lines two at a time; a heavy one alone (the pytest process needs the other core).
    while todo and len(running) < 2 and not any(cases[i][3] for i in running.values()):
        if todo[0][1][3] and running:
            break
        i, (target, args, env, heavy) = todo.pop(0)
        files[i] = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(target, args, env, *files[i])
        running[pid] = i
    pid, status, usage = os.wait4(-1, 0)
    i = running.pop(pid)
    if os.environ.get("DECAY_TEST_SHELL_TIMES"):  # a file: CPU seconds and command of each finished child, for profiling
        with open(os.environ["DECAY_TEST_SHELL_TIMES"], "a") as log:
            log.write(f"{usage.ru_utime + usage.ru_stime:8.2f} {cases[i][0]} {' '.join(cases[i][1])[:150]}\n")
    out, err = files.pop(i)
    out.seek(0)
    err.seek(0)
    result = [i, os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"), err.read().decode(errors="replace")]
    out.close()
    err.close()
    print(json.dumps(result), flush=True)  # one line per command line, as it finishes
"""


class _Work(NamedTuple):
    target: str  # a module run as `python -m`, or "tests.test_x:function"
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # environment variables set for it
    heavy: bool
    needed_by: str  # the test module, or the fixture, that asks for its result


_PENDING: list[_Work] = []  # registered, not started
_STARTED: list[_Process] = []
_RESULTS: dict[_Work, subprocess.CompletedProcess] = {}


def _env(extra: Iterable[tuple[str, str]] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # a plain shell: JAX picks its devices
    return {**env, **dict(extra)}


def _argv(w: _Work) -> list[str]:
    """The command line of `w` in a process of its own."""
    if ":" in w.target:
        module, function = w.target.split(":")
        code = f"import importlib, sys; getattr(importlib.import_module({module!r}), {function!r})(*sys.argv[1:])"
        return [sys.executable, "-c", code, *w.args]
    return [sys.executable, "-m", w.target, *w.args]


class _Process:
    """The background driver of some registered work; its results arrive one stdout line at a time."""

    def __init__(self, work: list[_Work]):
        self.work = work
        self.err = tempfile.TemporaryFile()
        cases = [[w.target, list(w.args), dict(w.env), w.heavy] for w in work]
        cmd = [sys.executable, "-c", _DRIVER]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True
        )
        self.proc.stdin.write(json.dumps(cases).encode())
        self.proc.stdin.close()
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        _STARTED.append(self)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(b"["):  # a result line
                i, code, out, err = json.loads(line)
                with self.changed:
                    _RESULTS[self.work[i]] = subprocess.CompletedProcess(_argv(self.work[i]), code, out, err)
                    self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, w: _Work, timeout: float = 900) -> None:
        with self.changed:
            self.changed.wait_for(lambda: w in _RESULTS or not self.reader.is_alive(), timeout)
        if w not in _RESULTS:
            self.proc.wait(timeout=60)
            self.err.seek(0)
            raise AssertionError(
                f"the background driver ended (status {self.proc.returncode}) without {_argv(w)}:\n{self.err.read().decode()}"
            )


def _run_now(work: list[_Work]) -> None:
    """Runs `work` here and now: in the background driver where there is fork, else one process each."""
    if hasattr(os, "fork"):
        p = _Process(work)
        for w in work:
            p.wait_for(w)
        return
    for w in work:
        out = subprocess.run(_argv(w), cwd=ROOT, env=_env(w.env), capture_output=True, text=True, timeout=900)
        _RESULTS[w] = out


def _register(w: _Work) -> Callable[[], subprocess.CompletedProcess]:
    if w not in _PENDING and not any(w in p.work for p in _STARTED):
        _PENDING.append(w)

    def result() -> subprocess.CompletedProcess:
        if w not in _RESULTS:
            started = [p for p in _STARTED if w in p.work]
            if started:
                started[0].wait_for(w)
            else:  # not started at collection (e.g. the module was imported later): run it now
                _PENDING.remove(w)
                _run_now([w])
        return _RESULTS[w]

    return result


def shell(
    module: str,
    *args: Any,
    heavy: bool = False,
    env: dict[str, str] | None = None,
    needed_by: str | None = None,
) -> Callable[[], subprocess.CompletedProcess]:
    """Registers `python -m module args`; returns a function that gives its result (waiting for it if need be).

    `heavy`: it trains. `env`: environment variables for it. `needed_by`: the fixture that asks for
    it (default: the registering test module), which decides whether and when it starts.
    """
    owner = needed_by or sys._getframe(1).f_globals.get("__name__", "")
    return _register(_Work(module, tuple(str(a) for a in args), tuple(sorted((env or {}).items())), heavy, owner))


def call(target: str, *args: Any) -> Callable[[], subprocess.CompletedProcess]:
    """Registers `target(*args)`, a function "tests.test_x:name" of the registering test module, as heavy work.

    The function reports through files (under `scratch`); the result gives its exit status and output.
    """
    owner = sys._getframe(1).f_globals.get("__name__", "")
    return _register(_Work(target, tuple(str(a) for a in args), (), True, owner))


def start(items: Sequence[Any]) -> None:
    """Starts the registered work that the selected test `items` need, in the order they will need it."""
    first: dict[str, int] = {}
    for pos, item in enumerate(items):
        module = getattr(getattr(item, "module", None), "__name__", "")
        for name in (module, *getattr(item, "fixturenames", ())):
            first.setdefault(name, pos)
    needed = [w for w in _PENDING if w.needed_by in first]
    if not needed or not hasattr(os, "fork"):
        return
    needed.sort(key=lambda w: (w.heavy, first[w.needed_by]))
    for w in needed:
        _PENDING.remove(w)
    _Process(needed)


def stop_all() -> None:
    """Kills the background drivers still running and their children (the session ends, e.g. after a failure with -x)."""
    for p in _STARTED:
        if p.proc.poll() is None:
            try:
                os.killpg(p.proc.pid, signal.SIGKILL)  # the driver leads its own process group, children included
            except ProcessLookupError:
                pass
            p.proc.wait()


def scratch(name: str, make: bool = False) -> pathlib.Path:
    """A path under the session's scratch folder for registered work (made, empty, with `make`)."""
    path = SCRATCH / name
    if make:
        path.mkdir(parents=True, exist_ok=True)
    return path
