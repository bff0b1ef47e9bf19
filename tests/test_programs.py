"""Shared programs and batches: one compiled program per depth for every activation and norm, every device busy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decay import devices, program
from decay.config import SweepConfig
from decay.layers import ACTIVATIONS, NORMS, Choices
from decay.loop import train_runs
from decay.step import apply
from tests import reference
from tests.conftest import tiny_config


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


def test_every_branch_of_a_shared_model_computes_its_formula(tiny_data):
    # One compiled forward of the shared model, the activation and norm picked by the state's choice, against the
    # hand-written forward of tests/reference.py for every activation x norm (train mode: batch statistics).
    cfg = tiny_config(depth=3, width=4)
    prog, state = program.init_state(cfg, tiny_data, choices=ALL)
    forward = jax.jit(lambda p, bs, x: apply(prog.graphdef, p, bs, x, None, True)[0])
    x = jnp.asarray(tiny_data.x_train[:16])
    params, stats = nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.batch_stats)
    for a, act in enumerate(ALL.activations):
        for n, norm in enumerate(ALL.norms):
            pick = lambda c, a=a, n=n: jnp.broadcast_to(jnp.array([a, n], jnp.int32), c.shape)  # noqa: E731
            chosen = {**stats, "stem": {**stats["stem"], "choice": pick(stats["stem"]["choice"])}}
            chosen["blocks"] = {"layer": {**stats["blocks"]["layer"], "choice": pick(stats["blocks"]["layer"]["choice"])}}
            bs = jax.tree.map(lambda v: v, state.batch_stats)
            nnx.replace_by_pure_dict(bs, chosen)
            want = reference.mlp_forward(params, chosen, x, act, norm)[0]
            np.testing.assert_allclose(forward(state.params, bs, x), want, rtol=1e-5, atol=1e-6, err_msg=f"{act} {norm}")


# The shared program against the plain one in both families with a shared program (one shared program per
# family and shape, cached across the cases): three training steps, or the step's measurement at init.
_PAIRS = [("mlp", "tanh", "layernorm", 3), ("cnn", "gelu", "batchnorm", 0)]


@pytest.mark.parametrize("model,activation,norm,steps", _PAIRS)
def test_the_shared_program_computes_what_the_plain_program_computes(tiny_data, model, activation, norm, steps):
    cfg = tiny_config(model=model, activation=activation, norm=norm, instruments="standard", learning_rate=0.1, width=4)
    x, y, key = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train), jax.random.key(0)
    plain_prog, plain = program.init_state(cfg, tiny_data)
    shared_prog, shared = program.init_state(cfg, tiny_data, choices=ALL)
    # The same initial variables, bit for bit (the shared model's, restricted to the run's norm).
    jax.tree.map(np.testing.assert_array_equal, _plain(cfg, tiny_data, shared), plain)
    # The same numbers to float32 rounding: the same formulas, compiled as another program (an op inside a
    # switch branch is not fused with its neighbours, so it may round differently).
    if steps:
        plain, plain_stats = plain_prog.train_chunk(plain, x, y, key, n_steps=steps)
        shared, shared_stats = shared_prog.train_chunk(shared, x, y, key, n_steps=steps)
        close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)  # noqa: E731
        jax.tree.map(close, jax.device_get(_plain(cfg, tiny_data, shared)), jax.device_get(plain))
    else:
        plain_stats, shared_stats = (p.measure(s, x, y, key) for p, s in ((plain_prog, plain), (shared_prog, shared)))
    assert set(shared_stats) == set(plain_stats)
    for k in plain_stats:
        np.testing.assert_allclose(shared_stats[k], plain_stats[k], rtol=2e-5, atol=1e-7, err_msg=k)
    # Dead units are counted for ReLU-like activations only, in the shared program too.
    assert np.all(np.isfinite(shared_stats["dead_fraction"])) == (activation == "gelu")


def test_a_program_is_shared_where_the_compilations_it_saves_outweigh_its_slower_steps():
    default = SweepConfig(learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0)).runs()  # the default sweep (experiments.depth_sweep)
    shared = {k.depth: v for k, v in program.study_choices(default).items()}
    # Depth 2: 8 compilations saved (20 s) against 2 x 300 x 135 layer-steps of the switch (6.5 s); deeper, not.
    assert shared[2] == Choices(("sigmoid", "tanh", "relu"), ("none", "batchnorm", "layernorm"))
    assert shared[8] is None and shared[32] is None
    one = [c for c in default if c.depth == 32]
    saved, cost = 8 * program.COMPILE_S, program.SWITCH_S * 32 * 300 * len(one)
    assert program.sharing_pays(one) == (saved > cost) is False
    # A study with fewer steps shares at every depth: the benchmark's grid (2 seeds, one rate, 300 steps).
    grid = SweepConfig(depths=(4, 16, 32), activations=("tanh", "relu"), norms=("none", "batchnorm"), seeds=2).runs()
    assert all(v is not None for v in program.study_choices(grid).values())


@pytest.mark.parametrize("n_devices", [1, 2, 4, 16])
def test_the_default_sweep_keeps_every_device_busy(n_devices):
    runs = SweepConfig(learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0)).runs()  # the default sweep's grid
    choices = program.study_choices(runs)
    groups: dict = {}
    for c in runs:
        groups.setdefault(program.program_key(c, choices[program.base_key(c)]), []).append(c)
    assert sorted(len(g) for g in groups.values()) == [15] * 18 + [135]  # depth 2 shared; 8 and 32 plain
    for runs in groups.values():
        slots, sizes = devices.plan(len(runs), n_devices)
        assert sum(sizes) == len(runs) and slots <= devices.PER_DEVICE
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
