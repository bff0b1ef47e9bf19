"""Shared fixtures: tiny configs and datasets so that the suite stays fast on 2 CPU cores.

Command lines run from the shell, and the heaviest trainings, start in the background when
collection ends (`tests/shell.py`), so that they overlap with the tests that run in this process;
the tests that wait for them carry the mark `background` and run last.
"""

from __future__ import annotations

import os

# The suite's programs are tiny: XLA's optimization passes cost more than they save, and compile
# time dominates the suite (about 370 s with them, 260 s without, on 2 cores). Set before JAX is
# imported, so that this process and every child it starts (their environment inherits it) compile
# alike. DECAY_TEST_OPTIMIZED=1 runs the suite with XLA's default optimizations instead.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "0" if os.environ.get("DECAY_TEST_OPTIMIZED") else "1")

import dataclasses
import json
import pathlib
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

from decay.config import RunConfig
from decay.data import Dataset
from tests import shell


def make_tiny_data() -> Dataset:
    """64 train / 32 test / 16 validation Gaussian 8x8x1 images, 10 classes (the same every call)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((112, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 112).astype(np.int32)
    return Dataset("tiny", x[:64], y[:64], x[64:96], y[64:96], 10, x[96:], y[96:])


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    """64 train / 32 test / 16 validation Gaussian 8x8x1 images, 10 classes."""
    return make_tiny_data()


@pytest.fixture(scope="session")
def tiny_adding() -> Dataset:
    """112 adding-problem sequences of 5 steps: 64 train, 32 test, 16 validation (the recurrent families' tiny data)."""
    from decay import data

    x, y = data.adding_problem(112, 5, np.random.default_rng(0))
    ds = Dataset("adding", x[:64], y[:64], x[64:96], y[64:96], 1, x[96:], y[96:])
    return ds._replace(task="regression", chance_loss=data.ADDING_CHANCE)


@pytest.fixture(scope="session")
def full_row(tiny_data) -> dict:
    """The row of one tiny mlp run at the full instrument tier, curvature at every step (tanh: NaN dead fractions)."""
    from decay.loop import train_run

    return train_run(tiny_config(activation="tanh", instruments="full", steps=2, instrument_every=1), tiny_data)


class TrainedRun(NamedTuple):
    """A run folder (config.json, checkpoints) and the config it was trained from."""

    cfg: RunConfig
    run_dir: pathlib.Path


@pytest.fixture(scope="session")
def bn_run(tiny_data, tmp_path_factory) -> TrainedRun:
    """A batchnorm mlp of depth 4 trained 6 steps, checkpoints at steps 0, 3 and 6. Read only: copy it to change it."""
    from decay.loop import train_run

    cfg = tiny_config(depth=4, steps=6, eval_every=3, checkpoint_every=3, norm="batchnorm")
    run_dir = tmp_path_factory.mktemp("bn_run") / "run"
    train_run(cfg, tiny_data, run_dir=str(run_dir))
    return TrainedRun(cfg, run_dir)


def tiny_config(**overrides) -> RunConfig:
    """Depth 3, width 8, batch 16, 4 steps, basic instruments (RunConfig's default tier is standard)."""
    base = RunConfig(depth=3, width=8, batch_size=16, steps=4, eval_every=2, activation="tanh", norm="none", instruments="basic")
    return dataclasses.replace(base, **overrides)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repository root, as a user would."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# The depth sweep of `cli_sweep`: 2 depths x 2 activations x 2 norms x 2 learning rates x 1 seed = 16 runs of 8 programs.
CLI_SWEEP = [
    "--depths=2,3",
    "--activations=tanh,relu",
    "--norms=none,batchnorm",
    "--learning_rates=0.05,0.2",  # two rates share a program: 2 runs of it on 4 devices, the run axis padded
    "--seeds=1",
    "--width=8",
    "--steps=6",
    "--eval_every=3",
    "--batch_size=32",
    "--compilation_cache=",
]


class CliSweep(NamedTuple):
    """A finished depth sweep run from the shell."""

    workdir: pathlib.Path
    args: list[str]  # every flag but --cpu_devices
    out: subprocess.CompletedProcess
    rows: list[dict]  # results.jsonl


_CLI_SWEEP_ARGS = [f"--workdir={shell.scratch('cli_sweep')}", *CLI_SWEEP]
# XLA_FLAGS forces four CPU devices, and --cpu_devices=1 must not override it.
_CLI_SWEEP = shell.shell(
    "experiments.depth_sweep",
    *_CLI_SWEEP_ARGS,
    "--cpu_devices=1",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    heavy=True,
    needed_by="cli_sweep",
)


@pytest.fixture(scope="session")
def cli_sweep() -> CliSweep:
    """One small depth sweep by `python -m experiments.depth_sweep` on four CPU devices (started when collection ends).

    Shared: test_sweep checks the sweep end to end (and reruns it); test_devices compares its rows
    with runs on this process's one device.
    """
    out = _CLI_SWEEP()
    assert out.returncode == 0, out.stderr
    workdir = shell.scratch("cli_sweep")
    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    return CliSweep(workdir, list(_CLI_SWEEP_ARGS), out, rows)


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "background: the test waits for heavy work started in the background (tests/shell.py); it runs last"
    )


def pytest_collection_modifyitems(session, config, items) -> None:
    """Tests that wait for background work run last, so that the work overlaps with all the others (order kept)."""
    items.sort(key=lambda item: item.get_closest_marker("background") is not None)


def pytest_collection_finish(session) -> None:
    """Starts what the tests about to run need from the shell, in the background (tests/shell.py)."""
    shell.start(session.items)


def pytest_sessionfinish(session) -> None:
    shell.stop_all()


def without_wall_time(rows: list[dict]) -> list[dict]:
    """Results rows minus `wall_time_s`, the one field that differs between identical runs."""
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]
