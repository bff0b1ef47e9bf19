"""Command lines run as from the shell, and heavy test work, in the background while the suite runs.

Every `python -m experiments.X ...` pays about a second to import JAX and decay before it can
reject a bad flag. Test modules register their command lines with `shell(module, *args)` when
they are imported (at collection). When collection ends (`tests/conftest.py`), the command lines
of the modules whose tests will run start in the background, in one driver process that imports
the heavy libraries once and then forks one child per command line; a test that asks for a result
waits for that one. A child is a fresh interpreter in all that matters here: it runs the module as
`__main__` (`runpy`, as `python -m` does) with its own argv, flags and exit status, and its stdout
and stderr (file descriptors 1 and 2, so output from C code is caught too) go to files of its own.
Nothing has started a JAX backend before the fork. XLA_FLAGS is unset, as in a plain shell.

`call("tests.test_x:function", *args)` registers a function of a test module to run the same way
(a long training whose files a test then checks), so that it overlaps with the tests that run in
the pytest process; on a 2-core machine that process alone leaves about a third of the CPU idle.
`Command(module, *args, env=...)` is one command line that needs its own process (its own
environment variables); it too starts in the background when collection ends, if a test needs it.
"""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Scratch folders for registered command lines (their --workdir), shared with the background
# processes (which import test modules) through the environment; removed when the session ends.
if os.environ.get("DECAY_TEST_SCRATCH"):
    SCRATCH = pathlib.Path(os.environ["DECAY_TEST_SCRATCH"])
else:
    SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="decay-shell-"))
    os.environ["DECAY_TEST_SCRATCH"] = str(SCRATCH)
    atexit.register(shutil.rmtree, SCRATCH, True)

_DRIVER = r"""
import importlib, json, os, runpy, sys, tempfile, traceback

cases = json.loads(sys.stdin.read())
# Libraries, not entry points: no absl flag is defined by these imports, and none starts a backend.
import numpy, jax, flax.nnx, optax  # noqa: F401
import decay.theory, decay.validation, decay.data, decay.runner, decay.loop, decay.analysis  # noqa: F401
from jax._src import xla_bridge

assert not xla_bridge._backends, "a JAX backend started before the fork"


def child(module, args, out, err):
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    code = 0
    try:
        if ":" in module:  # a function of a test module
            name, function = module.split(":")
            sys.argv = [module]
            getattr(importlib.import_module(name), function)(*args)
        else:
            sys.argv = [module, *args]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
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
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
parallel = max(1, min(cores, 4))
while todo or running:
    while todo and len(running) < parallel:
        i, (module, args) = todo.pop(0)
        files[i] = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            child(module, args, *files[i])
        running[pid] = i
    pid, status = os.wait()
    i = running.pop(pid)
    out, err = files.pop(i)
    out.seek(0)
    err.seek(0)
    result = [i, os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"), err.read().decode(errors="replace")]
    out.close()
    err.close()
    print(json.dumps(result), flush=True)  # one line per command line, as it finishes
"""

Key = tuple[str, tuple[str, ...]]


def _plain_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, **(extra or {})}


class _Process:
    """A started process whose stdout and stderr are collected (stdout line by line, as it comes)."""

    def __init__(self, cmd: list[str], env: dict[str, str], stdin: str | None = None):
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.err,
        )
        if stdin is not None:
            self.proc.stdin.write(stdin.encode())
            self.proc.stdin.close()
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        _STARTED.append(self)

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.decode(errors="replace"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, ready: Callable[[list[str]], bool], timeout: float = 600) -> None:
        """Waits until `ready(lines so far)` or the process has ended."""
        with self.changed:
            self.changed.wait_for(lambda: ready(self.lines) or not self.reader.is_alive(), timeout)

    def wait(self, timeout: float = 600) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout)
        self.err.seek(0)
        return code, "".join(self.lines), self.err.read().decode(errors="replace")


_STARTED: list[_Process] = []


def stop_all() -> None:
    """Kills the background processes still running (the session ends, e.g. after a failure with -x)."""
    for p in _STARTED:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


_PENDING: dict[Key, tuple[str, bool]] = {}  # registered, not started: command line -> (registering test module, heavy)
_BATCHES: list[tuple[list[Key], _Process | None]] = []  # started batches (None: run without fork, one process each)
_DONE: dict[Key, subprocess.CompletedProcess] = {}


def _argv(key: Key) -> list[str]:
    """The command line of `key` in a process of its own."""
    target, args = key
    if ":" in target:
        module, function = target.split(":")
        code = f"import importlib, sys; getattr(importlib.import_module({module!r}), {function!r})(*sys.argv[1:])"
        return [sys.executable, "-c", code, *args]
    return [sys.executable, "-m", target, *args]


def _completed(key: Key, code: int, out: str, err: str) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(_argv(key), code, out, err)


def _start_batch(keys: list[Key]) -> None:
    if not keys:
        return
    for k in keys:
        _PENDING.pop(k, None)
    if not hasattr(os, "fork"):  # no fork (not POSIX): one process each, when asked
        _BATCHES.append((keys, None))
        return
    _BATCHES.append((keys, _Process([sys.executable, "-c", _DRIVER], _plain_env(), stdin=json.dumps(keys))))


def _finish(key: Key) -> None:
    found = [b for b in _BATCHES if key in b[0]]
    if not found:
        return
    keys, proc = found[0]
    if proc is None:
        _BATCHES.remove(found[0])
        for k in keys:
            out = subprocess.run(_argv(k), cwd=ROOT, env=_plain_env(), capture_output=True, text=True, timeout=600)
            _DONE[k] = _completed(k, out.returncode, out.stdout, out.stderr)
        return
    index = keys.index(key)

    def take(lines: list[str]) -> bool:
        for line in lines:
            if not line.startswith("["):  # not a result line
                continue
            i, code, out, err = json.loads(line)
            _DONE.setdefault(keys[i], _completed(keys[i], code, out, err))
        return key in _DONE

    proc.wait_for(take)
    if key not in _DONE:  # the driver ended without this result
        code, _, err = proc.wait()
        raise AssertionError(f"the shell batch ended (status {code}) before command line {index}:\n{err}")


def _register(key: Key, owner: str, heavy: bool) -> Callable[[], subprocess.CompletedProcess]:
    if key not in _DONE and not any(key in keys for keys, _ in _BATCHES):
        _PENDING.setdefault(key, (owner, heavy))

    def result() -> subprocess.CompletedProcess:
        if key not in _DONE:
            if key in _PENDING:  # not started in the background: start now, with whatever else waits
                _start_batch(_ordered(_PENDING))
            _finish(key)
        return _DONE[key]

    return result


def _ordered(keys: Iterable[Key]) -> list[Key]:
    """Quick command lines first, heavy ones last, each in the order registered (the order the tests run)."""
    return sorted(keys, key=lambda k: _PENDING[k][1])


def shell(module: str, *args: str, heavy: bool = False) -> Callable[[], subprocess.CompletedProcess]:
    """Registers `python -m module args`; returns a function that gives its result (waiting for it, or running it).

    `heavy`: it trains, so it starts after the quick ones (bad flags), which tests ask for early.
    """
    owner = sys._getframe(1).f_globals.get("__name__", "")
    return _register((module, tuple(str(a) for a in args)), owner, heavy)


def call(target: str, *args: str) -> Callable[[], subprocess.CompletedProcess]:
    """Registers `target(*args)`, a function `"tests.test_x:name"` of a test module, to run in the background (heavy).

    The function reports through files (under `scratch`); its result gives the exit status and output.
    """
    owner = sys._getframe(1).f_globals.get("__name__", "")
    return _register((target, tuple(str(a) for a in args)), owner, True)


def start(modules: Iterable[str]) -> None:
    """Starts, in the background, what the test modules `modules` registered (those whose tests will run)."""
    modules = set(modules)
    _start_batch(_ordered([k for k, (owner, _) in _PENDING.items() if owner in modules]))


class Command:
    """One command line in a process of its own (own environment), started in the background or when asked."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None):
        self.key = (module, tuple(str(a) for a in args))
        self.env = _plain_env(env)
        self.proc: _Process | None = None
        self.done: subprocess.CompletedProcess | None = None

    def start(self) -> None:
        if self.proc is None and self.done is None:
            self.proc = _Process([sys.executable, "-m", self.key[0], *self.key[1]], self.env)

    def __call__(self) -> subprocess.CompletedProcess:
        if self.done is None:
            self.start()
            self.done = _completed(self.key, *self.proc.wait())
        return self.done


def scratch(name: str, make: bool = False) -> pathlib.Path:
    """A path under the session's scratch folder for a registered command line (made, empty, with `make`)."""
    path = SCRATCH / name
    if make:
        path.mkdir(parents=True, exist_ok=True)
    return path
