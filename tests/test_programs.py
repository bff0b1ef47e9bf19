"""Shared programs and batches: one compiled program per depth for every activation and norm, every device busy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from decay import devices, program
from decay.config import SweepConfig
from decay.layers import ACTIVATIONS, NORMS, Choices
from decay.loop import train_runs
from tests.conftest import tiny_config, without_wall_time


def test_a_grid_over_activations_and_norms_compiles_one_chunk_program(tiny_data):
    grid = [
        tiny_config(activation=a, norm=n, learning_rate=lr)
        for a in ("tanh", "relu")
        for n, lr in (("none", 0.05), ("batchnorm", 0.2), ("layernorm", 0.1))
    ]
    choices = program.study_choices(grid)
    assert len(choices) == 1 and next(iter(choices.values())) == Choices(("tanh", "relu"), ("none", "batchnorm", "layernorm"))
    with program.CompileLog() as log:
        rows = train_runs(grid, tiny_data)
    # One training chunk program (steps=4, eval_every=2: every chunk is 2 steps), traced and compiled once.
    assert log.count("trace", "batch_chunk") == 1 and log.programs() == 1
    assert log.summary().startswith("compiled: 1 training program;")
    # And the runs really differ: the activation and the norm are chosen per run.
    assert len({r["grad_norms_init"][0] for r in rows}) == len({r["name"] for r in rows}) == len(grid)


ALL = Choices(tuple(ACTIVATIONS.names()), tuple(NORMS.names()))  # a shared program of every activation and norm


def _plain(cfg, data, tree):
    return program.to_plain(tree, cfg, data.x_train.shape[1:], data.num_classes)


# Every activation and every norm at least once, in both families with a shared program: one shared program
# per family (cached across the cases) against a plain program per case, at initialization (the step's
# gradients and per-layer statistics) and, for two of them, three training steps later.
_PAIRS = [("mlp", a, NORMS.names()[i % len(NORMS.names())]) for i, a in enumerate(ACTIVATIONS.names())]
_PAIRS += [("cnn", "relu", "batchnorm"), ("cnn", "gelu", "layernorm")]
_TRAINED = {("mlp", "tanh", "layernorm"), ("cnn", "relu", "batchnorm")}


@pytest.mark.parametrize("model,activation,norm", _PAIRS)
def test_the_shared_program_computes_what_the_plain_program_computes(tiny_data, model, activation, norm):
    cfg = tiny_config(model=model, activation=activation, norm=norm, instruments="standard", learning_rate=0.1, width=4)
    x, y, key = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train), jax.random.key(0)
    plain_prog, plain = program.init_state(cfg, tiny_data)
    shared_prog, shared = program.init_state(cfg, tiny_data, choices=ALL)
    # The same initial variables, bit for bit (the shared model's, restricted to the run's norm).
    jax.tree.map(np.testing.assert_array_equal, _plain(cfg, tiny_data, shared), plain)
    # The same numbers to float32 rounding: the same formulas, compiled as another program (an op inside a
    # switch branch is not fused with its neighbours, so it may round differently).
    if (model, activation, norm) in _TRAINED:
        plain, plain_stats = plain_prog.train_chunk(plain, x, y, key, n_steps=3)
        shared, shared_stats = shared_prog.train_chunk(shared, x, y, key, n_steps=3)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)  # noqa: E731
        jax.tree.map(close, jax.device_get(_plain(cfg, tiny_data, shared)), jax.device_get(plain))
    else:
        plain_stats, shared_stats = (p.measure(s, x, y, key) for p, s in ((plain_prog, plain), (shared_prog, shared)))
    assert set(shared_stats) == set(plain_stats)
    for k in plain_stats:
        np.testing.assert_allclose(shared_stats[k], plain_stats[k], rtol=2e-5, atol=1e-7, err_msg=k)


def test_dead_units_are_counted_only_for_relu_like_activations_in_the_shared_program(tiny_data):
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    for activation, counted in (("relu", True), ("tanh", False)):
        prog, state = program.init_state(tiny_config(activation=activation, instruments="standard"), tiny_data, choices=ALL)
        assert np.all(np.isfinite(prog.measure(state, x, y, jax.random.key(0))["dead_fraction"])) == counted


def test_runs_of_other_activations_and_norms_in_one_batch_equal_runs_alone_in_their_program(tiny_data):
    cfgs = [
        tiny_config(activation="relu", norm="layernorm", seed=0),
        tiny_config(activation="tanh", norm="batchnorm", seed=1),
        tiny_config(activation="sigmoid", norm="rmsnorm", seed=2, learning_rate=0.3),
    ]
    choices = next(iter(program.study_choices(cfgs).values()))
    # Two slots: a full batch, then one run and an empty slot (never stepped); against each run alone in the program.
    together = train_runs(cfgs, tiny_data, slots=2)
    assert without_wall_time(together) == without_wall_time([train_runs([c], tiny_data, choices=choices)[0] for c in cfgs])


@pytest.mark.parametrize("n_devices", [1, 2, 4, 16])
def test_the_default_sweep_keeps_every_device_busy(n_devices):
    cfg = SweepConfig(learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0))  # the default sweep's grid (experiments.depth_sweep)
    runs = cfg.runs()
    choices = program.study_choices(runs)
    groups: dict = {}
    for c in runs:
        groups.setdefault(program.program_key(c, choices[program.base_key(c)]), []).append(c)
    assert len(groups) == len(cfg.depths)  # one program per depth
    for runs in groups.values():
        slots, sizes = devices.plan(len(runs), n_devices)
        assert sum(sizes) == len(runs) == 135 and slots <= devices.PER_DEVICE
        for size in sizes:
            per_device = devices.counts(size, n_devices)
            assert per_device.sum() == size and per_device.max() <= slots
            assert per_device.max() - per_device.min() <= 1  # the runs spread evenly
            # Slots in order, each device's runs first: every run in its own slot.
            at = devices.positions(size, n_devices, slots)
            assert len(set(at)) == size and all(p // slots == i % n_devices for i, p in enumerate(at))
        # All batches but the last are full; a device is idle only in the last one, and for less than one run.
        assert all(size == slots * n_devices for size in sizes[:-1])
        device_runs = sum(devices.counts(size, n_devices).max() for size in sizes)
        assert device_runs == -(-len(runs) // n_devices)  # the least any plan can do: ceil(runs / devices)
