"""Models, registries and the train step: behaviour that theory or definitions pin down exactly."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decay.families import build
from decay.layers import ACTIVATIONS, NORMS
from decay.optim import OPTIMIZERS
from decay.program import init_state
from decay.step import batch_indices, frobenius, gradients, train_step
from tests.conftest import tiny_config


def _one_chunk(cfg, data, n=2):
    prog, state = init_state(cfg, data)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    new_state, stats = prog.train_chunk(state, x, y, key, n_steps=n)
    return prog, state, new_state, jax.device_get(stats)


def _assert_trains(cfg, data):
    _, state, new_state, stats = _one_chunk(cfg, data)
    assert int(new_state.step) == 2
    assert bool(np.all(stats["finite"])), "non-finite loss or gradient in two tiny steps"
    assert stats["grad_norms"].shape == (2, cfg.depth)
    assert stats["signal_norms"].shape == (2, cfg.depth)
    assert np.all(stats["grad_norms"] > 0)
    before = jax.tree.leaves(state.params)
    after = jax.tree.leaves(new_state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)), "parameters did not move"


# Every activation, norm, init and optimizer is checked against its formula or a hand-computed update, and the mlp's
# train step against a hand-written forward pass with each norm (tests/test_references.py). Here: the conv family
# with every norm, each paired with one optimizer (with clipping) inside the compiled training chunk, so that every
# norm and every optimizer trains with one compiled program per pair.
_N, _O = NORMS.names(), OPTIMIZERS.names()
_PAIRS = [(_N[i % len(_N)], _O[i % len(_O)]) for i in range(max(len(_N), len(_O)))]


@pytest.mark.parametrize(("norm", "optimizer"), _PAIRS)
def test_every_norm_and_optimizer_builds_and_trains_in_the_conv_family(norm, optimizer, tiny_data):
    _assert_trains(tiny_config(norm=norm, model="cnn", optimizer=optimizer, clip_norm=1.0), tiny_data)


def test_residual_builds_and_trains(tiny_data):
    _assert_trains(tiny_config(residual=True, residual_scale=0.5), tiny_data)
    _assert_trains(tiny_config(model="cnn", residual=True), tiny_data)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid: linear, sigmoid, tanh"):
        ACTIVATIONS.get("softsign")


def test_seed_cnn_flatten_size_is_computed_from_input():
    cfg = tiny_config(model="seed_cnn", depth=1, width=6, norm="batchnorm", activation="relu")
    digits = build(cfg, (8, 8, 1), 10)
    mnist = build(cfg, (28, 28, 1), 10)
    assert digits.head.kernel.shape == (6 * 6 * 6, 10)  # 216, not the seed's 1350
    assert mnist.head.kernel.shape == (6 * 26 * 26, 10)  # 4056
    logits, aux = digits(jnp.ones((2, 8, 8, 1)))
    assert logits.shape == (2, 10) and aux["act_rms"].shape == (1,)


def test_mean_field_init_sets_weight_and_bias_variance():
    cfg = tiny_config(width=256, depth=3, weight_var=2.5, bias_var=0.3)
    model = build(cfg, (16, 16, 1), 10)  # fan_in 256 everywhere
    for kernel, bias in [
        (model.stem.linear.kernel[...], model.stem.linear.bias[...]),
        (model.blocks.layer.linear.kernel[...], model.blocks.layer.linear.bias[...]),
    ]:
        fan_in = kernel.shape[-2]
        assert np.var(np.asarray(kernel)) * fan_in == pytest.approx(2.5, rel=0.02)
        assert np.var(np.asarray(bias)) == pytest.approx(0.3, rel=0.15)


def test_deep_linear_orthogonal_net_keeps_signal_norms_equal(tiny_data):
    # dL/dh_l = W_{l+1}^T dL/dh_{l+1}: an orthogonal square W preserves the Frobenius norm exactly.
    cfg = tiny_config(activation="linear", init="orthogonal", norm="none", depth=12, width=16)
    prog, state = init_state(cfg, tiny_data)
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    s = np.asarray(prog.measure(state, x, y, jax.random.key(0))["signal_norms"])
    np.testing.assert_allclose(s, s[-1], rtol=1e-4)
    # The same net with Gaussian weights does not: the property is the init's, not the code's.
    prog, state = init_state(tiny_config(activation="linear", init="lecun_normal", depth=12, width=16), tiny_data)
    g = np.asarray(prog.measure(state, x, y, jax.random.key(0))["signal_norms"])
    assert np.max(np.abs(g / g[-1] - 1)) > 1e-2


def test_batchnorm_statistics_move_in_training_not_in_evaluation(tiny_data):
    cfg = tiny_config(norm="batchnorm")
    model = build(cfg, (8, 8, 1), 10)
    x = jnp.asarray(tiny_data.x_train[:16]) * 3.0 + 1.0
    before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    model(x, train=False)
    same = nnx.state(model, nnx.BatchStat)
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, same))
    model(x, train=True)
    moved = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), before, moved))
    assert len(diffs) == 4 and min(diffs) > 0  # stem and stacked blocks, mean and var each
    # And through the jit-compiled train step: the state's statistics move.
    _, state, new_state, _ = _one_chunk(cfg, tiny_data)
    d = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.batch_stats, new_state.batch_stats))
    assert min(d) > 0


def test_train_step_grad_norms_equal_norms_of_gradient_pytree(tiny_data):
    for norm in ("none", "batchnorm"):
        cfg = tiny_config(norm=norm, depth=4)
        prog, state = init_state(cfg, tiny_data)
        x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
        key = jax.random.key(3)
        _, stats = prog.train_chunk(state, x, y, key, n_steps=1)  # the real train step, update included
        idx = batch_indices(key, jnp.int32(0), x.shape[0], cfg.batch_size)
        model = nnx.merge(prog.graphdef, state.params, state.batch_stats)
        grads = gradients(model, x[idx], y[idx])
        assert jax.tree.structure(grads) == jax.tree.structure(state.params)
        expected = [np.linalg.norm(np.asarray(grads["stem"]["linear"]["kernel"][...]))]
        stacked = np.asarray(grads["blocks"]["layer"]["linear"]["kernel"][...])
        expected += [np.linalg.norm(k) for k in stacked]
        np.testing.assert_allclose(np.asarray(stats["grad_norms"][0]), expected, rtol=1e-5)


def test_sgd_update_ratio_and_weight_norms_follow_their_definitions(tiny_data):
    # SGD: delta W = -lr * dL/dW, so ||delta W|| / ||W|| = lr * grad_norm / weight_norm exactly.
    cfg = tiny_config(depth=4, optimizer="sgd", learning_rate=0.3)
    prog, state = init_state(cfg, tiny_data)
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    new_state, stats = prog.train_chunk(state, x, y, jax.random.key(0), n_steps=1)
    stats = jax.device_get(stats)
    np.testing.assert_allclose(stats["update_ratio"][0], 0.3 * stats["grad_norms"][0] / stats["weight_norms"][0], rtol=1e-5)
    kernels = [state.params["stem"]["linear"]["kernel"][...]] + list(state.params["blocks"]["layer"]["linear"]["kernel"][...])
    np.testing.assert_allclose(stats["weight_norms"][0], [np.linalg.norm(np.asarray(k)) for k in kernels], rtol=1e-6)
    moved = [new_state.params["stem"]["linear"]["kernel"][...]] + list(
        new_state.params["blocks"]["layer"]["linear"]["kernel"][...]
    )
    ratio = [
        np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)) for a, b in zip(moved, kernels, strict=True)
    ]
    np.testing.assert_allclose(stats["update_ratio"][0], ratio, rtol=1e-3)
    # act_rms: RMS of each layer's post-activation output on the step's batch.
    model = nnx.merge(prog.graphdef, state.params, state.batch_stats)
    idx = batch_indices(jax.random.key(0), jnp.int32(0), x.shape[0], cfg.batch_size)
    h = model.stem(x[idx].reshape(cfg.batch_size, -1), None, True)
    np.testing.assert_allclose(stats["act_rms"][0][0], np.sqrt(np.mean(np.square(np.asarray(h)))), rtol=1e-5)


def _sub_jaxprs(value):
    if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
        yield value.jaxpr
    elif hasattr(value, "eqns"):  # Jaxpr
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, counting those inside scan/cond/pjit bodies too."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                n += _count_eqns(sub)
    return n


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_traced_program_does_not_grow_with_depth(model, tiny_data):
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    sizes = []
    for depth in (4, 64):
        prog, state = init_state(tiny_config(model=model, depth=depth, norm="batchnorm"), tiny_data)
        step = functools.partial(prog.train_chunk, n_steps=1)  # the full train step, update included
        sizes.append(_count_eqns(jax.make_jaxpr(step)(state, x, y, jax.random.key(0)).jaxpr))
    assert sizes[0] == sizes[1], f"equations at depth 4 vs 64: {sizes}"


def test_halted_run_keeps_last_finite_parameters(tiny_data):
    cfg = tiny_config(activation="relu", learning_rate=1e30, depth=4)
    prog, state, new_state, stats = _one_chunk(cfg, tiny_data, n=4)
    bad = int(np.flatnonzero(~stats["finite"])[0])
    assert bool(new_state.halted)
    # The state after the chunk is the state before the first non-finite step, and stays there.
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    at_halt, _ = prog.train_chunk(state, x, y, jax.random.key(0), n_steps=bad) if bad else (state, None)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(at_halt.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    later, _ = prog.train_chunk(new_state, x, y, jax.random.key(0), n_steps=2)
    for a, b in zip(jax.tree.leaves(later.params), jax.tree.leaves(new_state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_halted_run_stays_halted_after_a_finite_batch(tiny_data):
    # A batch with an Inf input halts the run; a later finite batch must not move it again.
    cfg = tiny_config(depth=3)
    prog, state = init_state(cfg, tiny_data)
    x, y = jnp.asarray(tiny_data.x_train[:16]), jnp.asarray(tiny_data.y_train[:16])
    step_fn = jax.jit(lambda st, xb: train_step(prog.net, prog.tx, st, xb, y))
    halted, stats = step_fn(state, x.at[0, 0, 0, 0].set(jnp.inf))
    assert not bool(stats["finite"]) and bool(halted.halted) and int(halted.step) == 1
    after, stats = step_fn(halted, x)
    assert bool(stats["finite"]) and bool(after.halted)
    for a, b in zip(
        jax.tree.leaves((after.params, after.opt_state)), jax.tree.leaves((state.params, state.opt_state)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_frobenius_norm_survives_huge_finite_entries():
    x = jnp.array([[3e20, 4e20], [0.0, 0.0], [jnp.inf, 1.0], [jnp.nan, 1.0], [3.0, 4.0]], jnp.float32)
    assert np.isposinf(np.asarray(frobenius(x, (1,)))[0])  # the one-pass norm overflows
    n = np.asarray(frobenius(x, (1,), scaled=True))
    np.testing.assert_allclose(n[[0, 1, 4]], [5e20, 0.0, 5.0], rtol=1e-6)
    assert np.isposinf(n[2]) and np.isnan(n[3])


def test_huge_but_finite_gradient_is_not_called_divergence(tiny_data):
    # Scaling every weight by 1e7 makes logits (~1e28) and gradients (~1e21) huge but finite.
    cfg = tiny_config(activation="linear", depth=3)
    prog, state = init_state(cfg, tiny_data)
    big = state._replace(params=jax.tree.map(lambda p: p * 1e7, state.params))
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    stats = jax.device_get(prog.measure(big, x, y, jax.random.key(0)))
    assert np.isfinite(stats["loss"])
    assert np.all(np.isfinite(stats["grad_norms"])) and np.max(stats["grad_norms"]) > 1e20
