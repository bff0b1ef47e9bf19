"""The model contract (`decay.family.Family`): every registered family builds, trains and keeps its promises.

Parametrized over the registry, so a new family in `decay/families/` is tested without a new test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decay.families import FAMILIES, build, of
from decay.program import init_state
from decay.step import batch_indices, loss_fn
from tests.conftest import tiny_config

SCALARS = ("loss", "finite", "b_simple")  # the step's statistics that are not per layer


PER_POINT = {"signal_norms", "act_rms", "q", "c", "dead_fraction", "c_tokens"}  # per probe point; the rest per kernel


def _family_config(name: str, **overrides):
    """A tiny config of family `name`: depth 3, or 1 where the family cannot be built deeper (seed_cnn); batchnorm,
    or the last norm the family supports; a sequence family on the adding problem."""
    fam = FAMILIES.get(name)
    # Recurrent: one layer (stacked recurrent layers are checked by hand and end to end in tests/test_recurrent).
    depth = 1 if fam.sequence else next(d for d in (3, 1) if fam.depths_rule((d,)) is None)
    norm = "batchnorm" if fam.norms is None or "batchnorm" in fam.norms else fam.norms[-1]
    settings = dict(model=name, depth=depth, norm=norm, activation="relu") | overrides
    if fam.sequence:
        settings["dataset"] = "adding"
    return fam, tiny_config(**settings)


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_builds_trains_and_keeps_its_contract(name, tiny_data, tiny_adding):
    # Every per-layer statistic of the train step; a recurrent family stops at standard (the full tier's extras are
    # per-sample statistics of dense layers and curvature, which is family-independent and costly to compile there).
    fam, cfg = _family_config(name, instruments="standard" if FAMILIES.get(name).sequence else "full")
    tiny_data = tiny_adding if fam.sequence else tiny_data
    assert of(cfg) is fam and fam.name == name
    prog, state = init_state(cfg, tiny_data)
    in_shape = tiny_data.x_train.shape[1:]
    points = fam.points(cfg, in_shape)
    # One per hidden layer; a recurrent net's per time step of each layer; a transformer's 3 per block.
    expected_points = (3 * cfg.depth if name == "transformer" else cfg.depth * in_shape[0]) if fam.sequence else cfg.depth
    assert points == expected_points
    assert prog.net.family is fam and prog.net.points == points
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    new_state, stats = prog.train_chunk(state, x, y, jax.random.key(0), n_steps=2)
    stats = jax.device_get(stats)
    assert int(new_state.step) == 2 and not bool(new_state.halted)
    assert bool(np.all(stats["finite"])), "non-finite loss or gradient in two tiny steps"
    per_layer = {k: v for k, v in stats.items() if k not in SCALARS}
    expected = {"grad_norms", "signal_norms", "act_rms", "weight_norms", "update_ratio", "q", "c", "dead_fraction", "distance"}
    expected |= set(fam.signal_parts[1:])  # an LSTM's cell_signal_norms
    if fam.per_sample:
        expected |= {"per_sample_grad_norm", "grad_snr", "b_simple_layers"}
    assert set(per_layer) - {"c_tokens"} == expected  # a transformer also measures c across its tokens
    for key, v in per_layer.items():
        assert v.shape == (2, points if key in PER_POINT | set(fam.signal_parts) else fam.kernels(cfg)), key
        if key != "dead_fraction":  # NaN where the activation is not ReLU-like (a gated cell's tanh candidate is)
            assert np.all(np.isfinite(v)), key
    assert np.all(stats["grad_norms"] > 0) and np.all(stats["signal_norms"] > 0)
    # layer_kernels: one kernel per layer (per probe point of a feed-forward family), layer axis first, in order.
    kernels = fam.layer_kernels(nnx.to_pure_dict(state.params))
    assert sum(k.shape[0] for k in kernels) == fam.kernels(cfg)
    norms = np.concatenate([np.sqrt(np.sum(np.square(np.asarray(k, np.float64)).reshape(k.shape[0], -1), 1)) for k in kernels])
    np.testing.assert_allclose(norms, stats["weight_norms"][0], rtol=1e-5)
    before, after = jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "parameters did not move"

    # The probes: d loss / d probes (the backprop signal) has the family's probe shape, one slice per
    # probe point, and its per-point norms are the signal norms the train step recorded at step 0.
    idx = batch_indices(jax.random.key(0), jnp.int32(0), x.shape[0], cfg.batch_size)
    xb, yb = x[idx], y[idx]
    shape = fam.probe_shape(cfg, in_shape, cfg.batch_size)
    assert shape == (points, cfg.batch_size, *fam.point_shape(cfg, in_shape))
    assert shape[2:] == prog.net.point_shape
    task = prog.net.task
    signal = jax.jit(jax.grad(lambda p: loss_fn(prog.graphdef, state.params, p, state.batch_stats, xb, yb, task=task)[0]))(
        jnp.zeros(shape)
    )
    assert signal.shape == shape
    for part, values in zip(fam.signal_parts, np.split(np.asarray(signal, np.float64), len(fam.signal_parts), -1), strict=True):
        norms = np.sqrt(np.sum(np.square(values).reshape(points, -1), axis=1))
        np.testing.assert_allclose(norms, stats[part][0], rtol=1e-4)
    # representation: what the head reads, per example (the Jacobian's output in decay.analysis).
    rep = fam.representation(build(cfg, tiny_data.x_train.shape[1:], tiny_data.num_classes), xb[:2])
    assert rep.shape[0] == 2 and np.all(np.isfinite(np.asarray(rep)))
