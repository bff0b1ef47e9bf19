"""Shared fixtures: tiny configs and datasets so that the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from decay.config import RunConfig
from decay.data import Dataset


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    """64 train / 32 test Gaussian 8x8x1 images, 10 classes."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 96).astype(np.int32)
    return Dataset("tiny", x[:64], y[:64], x[64:], y[64:], 10)


def tiny_config(**overrides) -> RunConfig:
    """Depth 3, width 8, batch 16, 4 steps."""
    base = RunConfig(depth=3, width=8, batch_size=16, steps=4, eval_every=2, activation="tanh", norm="none")
    return dataclasses.replace(base, **overrides)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python -m module args` from the repository root, as a user would."""
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def without_wall_time(rows: list[dict]) -> list[dict]:
    """Results rows minus `wall_time_s`, the one field that differs between identical runs."""
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]
