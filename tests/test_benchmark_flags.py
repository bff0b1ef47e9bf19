"""Bad flags of the benchmarks and of the device/cache flags: one line on stderr, exit status 2."""

from __future__ import annotations

import pytest

from tests.conftest import run_module
from tests.shell import shell

_CASES = [
    (
        "benchmarks.sweep_speed",
        ["--parts=e2e,foo"],
        "error: --parts has foo; allowed: e2e, compile, steady, first_step, logging, flops",
    ),
    ("benchmarks.sweep_speed", ["--repeats=0"], "error: --repeats=0; give an integer >= 1"),
    ("benchmarks.instrument_cost", ["--depth=0"], "error: --depth=0; must be an integer >= 1"),
    (
        "benchmarks.instrument_cost",
        ["--norm=bogus"],
        "error: --norm='bogus' is unknown; allowed: none, batchnorm, layernorm, rmsnorm",
    ),
    ("benchmarks.instrument_cost", ["--instrument_every=0"], "error: --instrument_every=0; must be an integer >= 1"),
    ("benchmarks.logging_cost", ["--steps=0"], "error: --steps=0; must be an integer >= 1"),
    ("benchmarks.logging_cost", ["--activation=cube"], "error: --activation='cube' is unknown; allowed: "),
    ("benchmarks.logging_cost", ["--width=0"], "error: --width=0; must be an integer >= 1"),
]
_RUNS = {(module, tuple(args)): shell(module, *args) for module, args, _ in _CASES}


@pytest.mark.parametrize("module, args, expected", _CASES)
def test_bad_benchmark_flags_are_one_line(module, args, expected):
    out = _RUNS[(module, tuple(args))]()
    assert out.returncode == 2
    err = out.stderr.strip()
    assert "\n" not in err and err.startswith(expected), err


def test_compilation_cache_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    out = run_module("experiments.depth_sweep", f"--workdir={tmp_path / 'w'}", f"--compilation_cache={path}")
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"error: --compilation_cache={path} is not a usable folder (")
