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


def _family_config(name: str, **overrides):
    """A tiny config of family `name`: depth 3, or 1 where the family cannot be built deeper (seed_cnn)."""
    fam = FAMILIES.get(name)
    depth = next(d for d in (3, 1) if fam.depths_rule((d,)) is None)
    settings = dict(model=name, depth=depth, norm="batchnorm", activation="relu") | overrides
    return fam, tiny_config(**settings)


@pytest.mark.parametrize("name", FAMILIES.names())
def test_every_family_builds_trains_and_keeps_its_contract(name, tiny_data):
    fam, cfg = _family_config(name, instruments="full")  # every per-layer statistic of the train step
    assert of(cfg) is fam and fam.name == name
    prog, state = init_state(cfg, tiny_data)
    points = fam.points(cfg)
    assert prog.net.family is fam and prog.net.points == points
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    new_state, stats = prog.train_chunk(state, x, y, jax.random.key(0), n_steps=2)
    stats = jax.device_get(stats)
    assert int(new_state.step) == 2 and not bool(new_state.halted)
    assert bool(np.all(stats["finite"])), "non-finite loss or gradient in two tiny steps"
    per_layer = {k: v for k, v in stats.items() if k not in SCALARS}
    expected = {"grad_norms", "signal_norms", "act_rms", "weight_norms", "update_ratio", "q", "c", "dead_fraction", "distance"}
    if fam.per_sample:
        expected |= {"per_sample_grad_norm", "grad_snr", "b_simple_layers"}
    assert set(per_layer) == expected
    for key, v in per_layer.items():
        assert v.shape == (2, points), key
        assert np.all(np.isfinite(v)), key
    assert np.all(stats["grad_norms"] > 0) and np.all(stats["signal_norms"] > 0)
    # layer_kernels: one kernel per probe point, layer axis first, in the order of the probes.
    kernels = fam.layer_kernels(nnx.to_pure_dict(state.params))
    assert sum(k.shape[0] for k in kernels) == points
    norms = np.concatenate([np.sqrt(np.sum(np.square(np.asarray(k, np.float64)).reshape(k.shape[0], -1), 1)) for k in kernels])
    np.testing.assert_allclose(norms, stats["weight_norms"][0], rtol=1e-5)
    before, after = jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "parameters did not move"

    # The probes: d loss / d probes (the backprop signal) has the family's probe shape, one slice per
    # probe point, and its per-point norms are the signal norms the train step recorded at step 0.
    idx = batch_indices(jax.random.key(0), jnp.int32(0), x.shape[0], cfg.batch_size)
    xb, yb = x[idx], y[idx]
    shape = fam.probe_shape(cfg, tiny_data.x_train.shape[1:], cfg.batch_size)
    assert shape == (points, cfg.batch_size, *fam.point_shape(cfg, tiny_data.x_train.shape[1:]))
    assert shape[2:] == prog.net.point_shape
    signal = jax.jit(jax.grad(lambda p: loss_fn(prog.graphdef, state.params, p, state.batch_stats, xb, yb)[0]))(jnp.zeros(shape))
    assert signal.shape == shape
    norms = np.sqrt(np.sum(np.square(np.asarray(signal, np.float64)).reshape(points, -1), axis=1))
    np.testing.assert_allclose(norms, stats["signal_norms"][0], rtol=1e-4)
    # representation: what the head reads, per example (the Jacobian's output in decay.analysis).
    rep = fam.representation(build(cfg, tiny_data.x_train.shape[1:], tiny_data.num_classes), xb[:2])
    assert rep.shape[0] == 2 and np.all(np.isfinite(np.asarray(rep)))
