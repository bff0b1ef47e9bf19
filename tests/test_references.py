"""decay against second implementations: formulas, hand-computed updates, a hand-written forward pass.

Every reference here is independent of decay's code path (tests/reference.py imports nothing of
decay), so that a wrong activation, norm, optimizer, probe point or evaluation split fails here
even where theory and measurement would move together.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from decay import analysis, layers, metrics, optim, program, row, step
from decay.loop import train_run
from tests import reference
from tests.conftest import tiny_config

RELU_LIKE = ("relu", "leaky_relu", "elu", "gelu", "swish")  # dead units are counted for these (NaN otherwise)
POINTS = (-3.0, -1.2, -0.4, 0.3, 0.9, 2.5)


def test_every_registered_activation_has_a_reference():
    assert set(layers.ACTIVATIONS.names()) == set(reference.SCALAR) == set(reference.ARRAY)


@pytest.mark.parametrize("name", sorted(reference.SCALAR))
def test_activation_values_and_derivatives_match_their_formulas(name):
    f = layers.ACTIVATIONS.get(name)
    value, derivative = reference.SCALAR[name]
    x = jnp.asarray(POINTS, jnp.float32)
    np.testing.assert_allclose(np.asarray(f(x)), [value(p) for p in POINTS], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(jax.grad(f))(x)), [derivative(p) for p in POINTS], rtol=1e-5, atol=1e-6)


def _norm_module(name, features, axes, momentum=0.9):
    return layers.NORMS.get(name)(features, axes, momentum, rngs=nnx.Rngs(params=0))


def _set_affine(module, rng):
    """Random scale and bias, so that a norm which ignores them is caught."""
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Param):
            var[...] = jnp.asarray(rng.uniform(0.5, 1.5, var[...].shape), jnp.float32)
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


@pytest.mark.parametrize("shape, axes", [((6, 5), (-1,)), ((3, 4, 4, 2), (-3, -2, -1))])
def test_layer_and_rms_norms_match_their_formulas(shape, axes):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32)
    ln = _norm_module("layernorm", shape[-1], axes)
    p = _set_affine(ln, rng)["ln"]
    np.testing.assert_allclose(ln(x, True), reference.layernorm(x, p["scale"], p["bias"], axes), rtol=1e-4, atol=1e-5)
    rms = _norm_module("rmsnorm", shape[-1], axes)
    p = _set_affine(rms, rng)["rms"]
    np.testing.assert_allclose(rms(x, True), reference.rmsnorm(x, p["scale"], axes), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(_norm_module("none", shape[-1], axes)(x, True), x)


def test_batchnorm_training_running_averages_and_evaluation_match_their_formulas():
    rng = np.random.default_rng(1)
    bn = _norm_module("batchnorm", 4, (-1,), momentum=0.8)
    p = _set_affine(bn, rng)["bn"]
    mean, var = jnp.zeros(4), jnp.ones(4)
    for _ in range(2):  # two training calls: the running averages compound
        x = jnp.asarray(rng.normal(3.0, 2.0, (16, 4)), jnp.float32)
        want, mean, var = reference.batchnorm_train(x, p["scale"], p["bias"], mean, var, 0.8)
        np.testing.assert_allclose(bn(x, True), want, rtol=1e-4, atol=1e-5)
    stats = nnx.to_pure_dict(nnx.state(bn, nnx.BatchStat))["bn"]
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(stats["var"], var, rtol=1e-5)
    x = jnp.asarray(rng.normal(0.0, 1.0, (5, 4)), jnp.float32)
    np.testing.assert_allclose(bn(x, False), reference.batchnorm_eval(x, p["scale"], p["bias"], mean, var), rtol=1e-4, atol=1e-5)
    # Evaluation leaves the running averages alone.
    np.testing.assert_array_equal(nnx.to_pure_dict(nnx.state(bn, nnx.BatchStat))["bn"]["mean"], stats["mean"])


# Weight variance of each named init for a fan_in x fan_out kernel (He et al. 2015; Glorot and Bengio 2010).
INIT_VARIANCE = {
    "lecun_normal": lambda fi, fo: 1 / fi,
    "glorot_normal": lambda fi, fo: 2 / (fi + fo),
    "glorot_uniform": lambda fi, fo: 2 / (fi + fo),
    "he_normal": lambda fi, fo: 2 / fi,
    "he_uniform": lambda fi, fo: 2 / fi,
    "orthogonal": lambda fi, fo: 1 / fi,  # fi >= fo: fo orthonormal columns, squared norms summing to fo
}


def test_every_registered_init_has_its_variance():
    assert set(layers.INITIALIZERS.names()) == set(INIT_VARIANCE)


@pytest.mark.parametrize("name", sorted(INIT_VARIANCE))
def test_initializer_variance_matches_its_definition(name):
    fan_in, fan_out = 600, 200  # 120000 entries: the sample variance is within 0.4% (one standard error)
    w = np.asarray(layers.INITIALIZERS.get(name)(jax.random.key(0), (fan_in, fan_out), jnp.float32), np.float64)
    assert abs(w.mean()) < 4 * math.sqrt(INIT_VARIANCE[name](fan_in, fan_out) / w.size)
    np.testing.assert_allclose(w.var(), INIT_VARIANCE[name](fan_in, fan_out), rtol=0.02)
    if name == "orthogonal":
        np.testing.assert_allclose(w.T @ w, np.eye(fan_out), atol=1e-5)
    if name.endswith("uniform"):  # U[-a, a] with a^2 / 3 the variance
        assert np.abs(w).max() <= math.sqrt(3 * INIT_VARIANCE[name](fan_in, fan_out)) * (1 + 1e-6)


def test_mean_field_init_draws_the_asked_variances():
    w = np.asarray(layers.kernel_init("lecun_normal", 1.7)(jax.random.key(1), (500, 300), jnp.float32), np.float64)
    np.testing.assert_allclose(w.var(), 1.7 / 500, rtol=0.02)
    b = np.asarray(layers.bias_init(0.09)(jax.random.key(2), (50000,), jnp.float32), np.float64)
    np.testing.assert_allclose(b.var(), 0.09, rtol=0.03)
    assert not np.any(np.asarray(layers.bias_init(0.0)(jax.random.key(2), (10,), jnp.float32)))


# ---- optimizers: two steps each against updates computed by hand ----

P0 = np.array([1.0, -2.0, 0.5])
G1 = np.array([0.3, -0.1, 2.0])
G2 = np.array([-0.2, 0.4, 1.0])
LR = 0.1


def _adam_steps(p, grads, lr, eps=1e-8, decoupled=0.0):
    m = v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        mhat, vhat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        p = p - lr * (mhat / (np.sqrt(vhat) + eps) + decoupled * p)
    return p


def _momentum_steps(p, grads, lr):
    trace = np.zeros_like(p)
    for g in grads:
        trace = g + 0.9 * trace  # heavy ball: the trace of past gradients, no dampening
        p = p - lr * trace
    return p


HAND = {
    "sgd": lambda p, gs: p - LR * gs[0] - LR * gs[1],
    "momentum": lambda p, gs: _momentum_steps(p, gs, LR),
    "adam": lambda p, gs: _adam_steps(p, gs, LR),
    "adamw": lambda p, gs: _adam_steps(p, gs, LR, decoupled=1e-4),
}


def _apply(tx, grads, p=P0):
    params = {"w": jnp.asarray(p, jnp.float32)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])


def test_every_registered_optimizer_has_a_hand_computed_update():
    assert set(optim.OPTIMIZERS.names()) == set(HAND)


@pytest.mark.parametrize("name", sorted(HAND))
def test_optimizer_matches_two_hand_computed_steps(name):
    np.testing.assert_allclose(_apply(optim.build(name, LR), [G1, G2]), HAND[name](P0, [G1, G2]), rtol=1e-5)


def test_weight_decay_is_added_to_the_gradient_and_clipping_scales_to_the_global_norm():
    wd = 0.5
    got = _apply(optim.build("sgd", LR, weight_decay=wd), [G1])
    np.testing.assert_allclose(got, P0 - LR * (G1 + wd * P0), rtol=1e-6)
    # ||G1|| = 2.02: clipped to norm 1, direction kept; clipping comes first, then the decay term.
    got = _apply(optim.build("sgd", LR, clip_norm=1.0, weight_decay=wd), [G1])
    np.testing.assert_allclose(got, P0 - LR * (G1 / np.linalg.norm(G1) + wd * P0), rtol=1e-6)
    # A gradient under the clip norm passes unchanged.
    small = G1 / 10
    np.testing.assert_allclose(_apply(optim.build("sgd", LR, clip_norm=1.0), [small]), P0 - LR * small, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(row.EDGE_OF_STABILITY))
def test_edge_of_stability_separates_convergence_from_divergence_on_a_quadratic(name):
    # On L = lam w^2 / 2 the optimizer is stable exactly for lam < threshold / lr (2 for SGD;
    # 2 (1 + beta) for heavy-ball momentum beta): the recorded edge must sit at that boundary.
    lr = 0.1
    edge = row.EDGE_OF_STABILITY[name] / lr
    tx = optim.build(name, lr)

    def final(lam):
        w = {"w": jnp.ones(())}
        state = tx.init(w)
        for _ in range(400):
            updates, state = tx.update({"w": lam * w["w"]}, state, w)
            w = optax.apply_updates(w, updates)
        return abs(float(w["w"]))

    assert final(0.97 * edge) < 1.0
    assert not final(1.03 * edge) < 1e3  # grown past 1e3, or overflowed to Inf/NaN


# ---- the train step against a hand-written forward pass ----

FORWARD_CASES = [
    dict(norm="none", activation="tanh"),
    dict(norm="layernorm", activation="relu"),
    dict(norm="rmsnorm", activation="gelu"),
    dict(norm="batchnorm", activation="swish", residual=True, residual_scale=0.5),
    dict(norm="none", activation="leaky_relu", residual=True),
]


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_train_step_statistics_match_a_hand_written_forward_pass(case, tiny_data):
    cfg = tiny_config(depth=4, width=8, instruments="standard", learning_rate=0.05, bias_var=0.05, **case)
    prog, state = program.init_state(cfg, tiny_data)
    x = jnp.asarray(tiny_data.x_train[:16])
    y = jnp.asarray(tiny_data.y_train[:16])
    p, bs = nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.batch_stats)
    alpha = cfg.residual_scale if cfg.residual else None

    def loss(p, probes):
        logits, _, _ = reference.mlp_forward(p, bs, x, cfg.activation, cfg.norm, alpha, probes, True, cfg.bn_momentum)
        return reference.cross_entropy(logits, y)[0]

    probes = jnp.zeros((cfg.depth, 16, cfg.width))
    want_loss, (g, probe_g) = jax.value_and_grad(loss, argnums=(0, 1))(p, probes)
    _, rec, new_bs = reference.mlp_forward(p, bs, x, cfg.activation, cfg.norm, alpha, None, True, cfg.bn_momentum)
    new_state, s = jax.jit(lambda st: step.train_step(prog.net, prog.tx, st, x, y, tier="standard"))(state)

    tol = dict(rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(s["loss"], want_loss, **tol)
    kernels = [lay["linear"]["kernel"] for lay in reference.mlp_layers(g)]
    np.testing.assert_allclose(s["grad_norms"], [np.linalg.norm(k) for k in kernels], **tol)
    # The signal is dL/dh_l, h_l the linear output before the norm.
    np.testing.assert_allclose(s["signal_norms"], [np.linalg.norm(probe_g[l]) for l in range(cfg.depth)], **tol)
    np.testing.assert_allclose(s["act_rms"], [np.sqrt(np.mean(np.square(r["y"]))) for r in rec], **tol)
    weights = [lay["linear"]["kernel"] for lay in reference.mlp_layers(p)]
    np.testing.assert_allclose(s["weight_norms"], [np.linalg.norm(w) for w in weights], **tol)
    for l, r in enumerate(rec):
        h = np.asarray(r["h"], np.float64)
        np.testing.assert_allclose(s["q"][l], np.mean(h**2), **tol)
        u = h / np.linalg.norm(h, axis=1, keepdims=True)
        cos = u @ u.T
        np.testing.assert_allclose(s["c"][l], (cos.sum() - np.trace(cos)) / (16 * 15), rtol=1e-3, atol=1e-5)
        dead = np.mean(np.all(np.asarray(r["z"]) <= 0, axis=0)) if cfg.activation in RELU_LIKE else np.nan
        np.testing.assert_allclose(s["dead_fraction"][l], dead, atol=1e-7)
    # One SGD step: params - lr * grad, and the update ratio ||lr g_l|| / ||W_l||.
    want_p = jax.tree.map(lambda a, b: a - cfg.learning_rate * b, p, g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), nnx.to_pure_dict(new_state.params), want_p)
    ratios = [cfg.learning_rate * np.linalg.norm(k) / np.linalg.norm(w) for k, w in zip(kernels, weights, strict=True)]
    np.testing.assert_allclose(s["update_ratio"], ratios, **tol)
    if cfg.norm == "batchnorm":
        got = reference.mlp_layers(nnx.to_pure_dict(new_state.batch_stats))
        for (m, v), lay in zip(new_bs, got, strict=True):
            np.testing.assert_allclose(lay["norm"]["bn"]["mean"], m, **tol)
            np.testing.assert_allclose(lay["norm"]["bn"]["var"], v, **tol)


def test_evaluation_with_padded_batches_matches_a_hand_computation(tiny_data, tmp_path, monkeypatch):
    # 16 validation + 32 test + 64 training examples, concatenated in batches of 9: the last batch is padded.
    monkeypatch.setattr(program, "EVAL_BATCH", 9)
    cfg = tiny_config(depth=3, norm="batchnorm", activation="relu", steps=4, eval_every=2, checkpoint_every=2)
    r = train_run(cfg, tiny_data, run_dir=str(tmp_path))
    run = analysis.load_run(str(tmp_path))
    assert run.step == 4
    p, bs = nnx.to_pure_dict(run.params), nnx.to_pure_dict(run.batch_stats)
    for split, x, y in (("val", tiny_data.x_val, tiny_data.y_val), ("test", tiny_data.x_test, tiny_data.y_test)):
        logits, _, _ = reference.mlp_forward(p, bs, jnp.asarray(x), "relu", "batchnorm", train=False)
        loss = float(reference.cross_entropy(logits, jnp.asarray(y))[0])
        acc = float(np.mean(np.argmax(np.asarray(logits), axis=1) == y))
        assert r[f"{split}_loss"] == pytest.approx(loss, rel=1e-5) and r[f"{split}_accuracy"] == pytest.approx(acc)
    logits, _, _ = reference.mlp_forward(p, bs, jnp.asarray(tiny_data.x_train), "relu", "batchnorm", train=False)
    assert r["train_loss_end"] == pytest.approx(
        float(reference.cross_entropy(logits, jnp.asarray(tiny_data.y_train))[0]), rel=1e-5
    )
    assert r["train_accuracy_end"] == pytest.approx(float(np.mean(np.argmax(np.asarray(logits), 1) == tiny_data.y_train)))


def test_batch_indices_walk_a_fresh_permutation_each_epoch():
    n, b = 50, 8  # 6 batches per epoch, 2 examples left out
    key = jax.random.key(3)
    idx = np.stack([np.asarray(step.batch_indices(key, jnp.int32(s), n, b)) for s in range(12)])
    for epoch in (idx[:6], idx[6:]):
        flat = epoch.reshape(-1)
        assert len(set(flat.tolist())) == 48 and flat.min() >= 0 and flat.max() < n
    assert not np.array_equal(np.sort(idx[:6].reshape(-1)), np.arange(48))  # shuffled, not the first 48 in order
    assert not np.array_equal(idx[:6], idx[6:])  # a new permutation in the second epoch
    again = np.asarray(step.batch_indices(key, jnp.int32(7), n, b))
    np.testing.assert_array_equal(again, idx[7])  # a function of (key, step) alone: resumable


def test_group_verdict_takes_the_median_chi_or_the_most_common_verdict():
    def r(chi, v="stable", depth=33):
        return {"chi": chi, "verdict": v, "depth": depth}

    # chi^32: 0.8 -> 8e-4 (vanishing), 0.9 -> 3.4e-2 (stable), 1.2 -> 340 (exploding). Median 0.9; mean 0.97.
    assert metrics.group_verdict([r(0.8), r(1.2), r(0.9)]) == "stable"
    assert metrics.group_verdict([r(0.8), r(0.85), r(1.2)]) == "vanishing"  # the mean (0.95) would say stable
    assert metrics.group_verdict([r(1.2), r(1.2), r(0.8)]) == "exploding"
    assert metrics.group_verdict([r(None, "vanishing"), r(None, "exploding"), r(None, "exploding")]) == "exploding"


def test_fit_window_switches_to_the_middle_half_at_depth_eight():
    for depth in range(2, 8):
        assert metrics.fit_window(depth) == (0, depth)
    assert metrics.fit_window(8) == (2, 6) and metrics.fit_window(11) == (2, 9)
    # The switch changes the fit: a profile bent at the ends is fitted only in its middle from depth 8 on.
    s = [math.sqrt(0.5 ** (7 - l)) for l in range(8)]
    s[0] = 1e3
    assert metrics.fit_chi(s) == pytest.approx(0.5, rel=1e-9)
    s7 = s[1:]
    s7[0] = 1e3
    assert metrics.fit_chi(s7) != pytest.approx(0.5, rel=1e-2)  # depth 7: every layer, the outlier included


def test_row_fields_come_from_the_hand_computed_init(tiny_data):
    # The row's init profile is the hand forward's at the step-0 parameters (deterministic init from the seed).
    cfg = tiny_config(depth=3, steps=0, activation="relu", norm="layernorm")
    r = train_run(cfg, tiny_data)
    prog, state = program.init_state(cfg, tiny_data)
    p, bs = nnx.to_pure_dict(state.params), nnx.to_pure_dict(state.batch_stats)
    idx = step.batch_indices(jax.random.fold_in(jax.random.key(cfg.seed), 1), jnp.int32(0), 64, cfg.batch_size)
    x, y = jnp.asarray(tiny_data.x_train)[idx], jnp.asarray(tiny_data.y_train)[idx]

    def loss(probes):
        logits, _, _ = reference.mlp_forward(p, bs, x, "relu", "layernorm", probes=probes)
        return reference.cross_entropy(logits, y)[0]

    g = jax.grad(loss)(jnp.zeros((3, cfg.batch_size, cfg.width)))
    np.testing.assert_allclose(r["signal_norms_init"], [float(np.linalg.norm(g[l])) for l in range(3)], rtol=2e-4)
    assert r["chi"] == pytest.approx(metrics.fit_chi([float(np.linalg.norm(g[l])) for l in range(3)]), rel=1e-3)
    logits, _, _ = reference.mlp_forward(p, bs, jnp.asarray(tiny_data.x_train), "relu", "layernorm", train=False)
    assert r["train_loss_init"] == pytest.approx(
        float(reference.cross_entropy(logits, jnp.asarray(tiny_data.y_train))[0]), rel=1e-5
    )
    assert r["trainability"] == "untrained"
