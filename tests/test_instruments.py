"""Instruments beyond gradient norms, each against an exact answer on a tiny net."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from decay import analysis, instruments, theory
from decay.config import RunConfig, SweepConfig
from decay.loop import train_run
from decay.program import init_state
from decay.step import apply, curvature_trace, gradients, grads_and_stats, loss_fn
from decay.studies.depth_sweep import run_sweep
from tests import reference
from tests.conftest import make_tiny_data, tiny_config
from tests.shell import call, scratch, shell


def _batch(data, n=16):
    return jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n])


def _stats(cfg, data, params=None, n=16):
    prog, state = init_state(cfg, data)
    params = state.params if params is None else params
    x, y = _batch(data, n)
    fn = jax.jit(lambda p, bs: grads_and_stats(prog.net, p, bs, x, y, cfg.instruments, state.anchor)[2])
    return prog, state, {k: np.asarray(v) for k, v in fn(params, state.batch_stats).items()}


def _per_example_kernel_grads(prog, state, x, y):
    """Each example's own loss gradient by vmap over the batch (no batchnorm): hidden kernels per layer, [B, ...]."""

    def one(params, xi, yi):
        logits, _, _ = apply(prog.graphdef, params, state.batch_stats, xi[None], None, True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yi[None]).mean()

    g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(state.params, x, y)
    g = nnx.to_pure_dict(g)
    stem, blocks = g["stem"]["linear"]["kernel"], g["blocks"]["layer"]["linear"]["kernel"]  # [B, in, out], [B, depth-1, w, w]
    return [np.asarray(stem)] + [np.asarray(blocks[:, l]) for l in range(blocks.shape[1])]


def test_per_sample_gradients_average_to_the_batch_gradient_and_match_vmap(tiny_data):
    cfg = tiny_config(depth=3, width=8, instruments="full")
    prog, state, s = _stats(cfg, tiny_data)
    x, y = _batch(tiny_data)
    per_example = _per_example_kernel_grads(prog, state, x, y)
    batch = prog.net.family.layer_kernels(
        nnx.to_pure_dict(gradients(nnx.merge(prog.graphdef, state.params, state.batch_stats), x, y))
    )
    batch = [np.asarray(batch[0][0])] + [np.asarray(batch[1][l]) for l in range(batch[1].shape[0])]
    for l, (g_i, g) in enumerate(zip(per_example, batch, strict=True)):
        np.testing.assert_allclose(g_i.mean(axis=0), g, rtol=1e-4, atol=1e-7, err_msg=f"layer {l}")
        norms = np.sqrt(np.sum(g_i.reshape(len(g_i), -1) ** 2, axis=1))
        np.testing.assert_allclose(s["per_sample_grad_norm"][l], norms.mean(), rtol=1e-4)
        trace = np.mean(np.sum((g_i - g_i.mean(axis=0)).reshape(len(g_i), -1) ** 2, axis=1))
        np.testing.assert_allclose(s["b_simple_layers"][l], trace / np.sum(g**2), rtol=1e-3)
        np.testing.assert_allclose(s["grad_snr"][l], np.sum(g**2) / trace, rtol=1e-3)


def test_batchnorm_per_sample_contributions_sum_to_the_batch_gradient(tiny_data):
    # The stem's input is the data, so its per-example terms g_i = B x_i (outer) dL/dh_0[i] are explicit.
    cfg = tiny_config(depth=3, width=8, norm="batchnorm", instruments="full")
    prog, state, s = _stats(cfg, tiny_data)
    x, y = _batch(tiny_data)
    probes = jnp.zeros((cfg.depth, x.shape[0], cfg.width))
    grads, probe_grads = jax.grad(lambda p, pr: loss_fn(prog.graphdef, p, pr, state.batch_stats, x, y)[0], argnums=(0, 1))(
        state.params, probes
    )
    xf = np.asarray(x.reshape(x.shape[0], -1))
    g_i = np.asarray(instruments.per_sample_kernel_grads(jnp.asarray(xf), probe_grads[0]))
    stem = np.asarray(nnx.to_pure_dict(grads)["stem"]["linear"]["kernel"])
    np.testing.assert_allclose(g_i.mean(axis=0), stem, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        s["per_sample_grad_norm"][0], np.sqrt(np.sum(g_i.reshape(len(g_i), -1) ** 2, axis=1)).mean(), rtol=1e-4
    )


@pytest.fixture(scope="module", params=["none", "batchnorm"])
def tiny_hessian(request, tiny_data):
    """(loss, params, family, exact Hessian in float64, norm) of a depth-2 width-4 net on 16 examples."""
    import jax.flatten_util

    cfg = tiny_config(depth=2, width=4, norm=request.param)
    prog, state = init_state(cfg, tiny_data)
    x, y = _batch(tiny_data)
    loss = lambda p: loss_fn(prog.graphdef, p, None, state.batch_stats, x, y)[0]  # noqa: E731
    flat, unravel = jax.flatten_util.ravel_pytree(state.params)
    h = np.asarray(jax.jit(jax.hessian(lambda v: loss(unravel(v))))(flat), np.float64)  # jit: one compile, not op by op
    return loss, state.params, prog.net.family, h, request.param


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # With Rademacher probes v_i^2 = 1, so v^T D v = tr D for any diagonal D: one probe is exact, per block too.
    # (Gaussian or uniform probes would scatter, or, uniform on [-1, 1], be biased by a factor 1/3.)
    d = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([[0.5, -4.0], [7.0, 0.25]])}
    loss = lambda p: 0.5 * sum(jnp.sum(d[k] * p[k] ** 2) for k in d)  # noqa: E731
    params = jax.tree.map(jnp.ones_like, d)
    blocks = lambda v, hv: jnp.stack([jnp.vdot(v[k], hv[k]) for k in ("a", "b")])  # noqa: E731
    total, per_block = instruments.hutchinson(loss, params, jax.random.key(5), probes=3, layer_dot=blocks)
    np.testing.assert_allclose(float(total), 6.0 + 3.75, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(per_block), [6.0, 3.75], rtol=1e-6)


def test_hutchinson_trace_matches_the_exact_trace_within_its_error(tiny_hessian):
    import jax.flatten_util

    loss, params, family, h, norm = tiny_hessian
    probes = 2000
    est, layers = jax.jit(lambda p, k: curvature_trace(family, loss, p, k, probes))(params, jax.random.key(3))
    # Var(v^T H v) for Rademacher v is 2 * sum_{i != j} H_ij^2.
    off = h - np.diag(np.diag(h))
    se = np.sqrt(2 * np.sum(off**2) / probes)
    assert abs(float(est) - np.trace(h)) < 4 * se, (float(est), np.trace(h), se)
    # Uniform probes on [-1, 1] would give a third of the trace: a miss by 2/3 of it, outside the bound.
    assert 4 * se < 2 / 3 * abs(np.trace(h))
    # Each hidden kernel's block: v_b^T (H v)_b has variance 2 sum_{i != j in b} H_ij^2 + sum_{i in b, j not in b} H_ij^2.
    # Its indices in the flattened parameters (the Hessian's order): mark the kernel's entries with ones and flatten.
    assert layers.shape == (2,)
    for l, path in enumerate((("stem", "linear", "kernel"), ("blocks", "layer", "linear", "kernel"))):
        tree = nnx.to_pure_dict(jax.tree.map(jnp.zeros_like, params))
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = jnp.ones_like(parent[path[-1]])
        marks = jax.tree.map(jnp.zeros_like, params)
        nnx.replace_by_pure_dict(marks, tree)
        idx = np.flatnonzero(np.asarray(jax.flatten_util.ravel_pytree(marks)[0]))
        block = h[np.ix_(idx, idx)]
        rest = np.delete(h[idx], idx, axis=1)
        se_b = np.sqrt((2 * np.sum((block - np.diag(np.diag(block))) ** 2) + np.sum(rest**2)) / probes)
        exact = np.trace(block)
        assert abs(float(layers[l]) - exact) < 4 * se_b, (l, float(layers[l]), exact, se_b)
        if norm == "none":  # there the bound is tight enough to matter for every block (batchnorm's blocks are noisier)
            assert 4 * se_b < 2 / 3 * abs(exact), (l, exact, se_b)


def test_power_iteration_finds_the_top_eigenvalue_of_the_exact_hessian(tiny_hessian):
    loss, params, _, h, _ = tiny_hessian
    top = np.linalg.eigvalsh(h)[-1]
    est = jax.jit(lambda p, k: instruments.top_eigenvalue(loss, p, k, iters=300))(params, jax.random.key(0))
    np.testing.assert_allclose(float(est), top, rtol=1e-2)


def test_power_iteration_returns_the_largest_eigenvalue_when_a_negative_one_dominates():
    h = jnp.diag(jnp.array([-5.0, 1.0, 2.0]))
    loss = lambda v: 0.5 * v["w"] @ h @ v["w"]  # noqa: E731
    est = instruments.top_eigenvalue(loss, {"w": jnp.ones(3)}, jax.random.key(0), iters=200)
    np.testing.assert_allclose(float(est), 2.0, rtol=1e-3)


def test_c_tends_to_one_with_depth_for_tanh_in_the_ordered_phase(tiny_data):
    from decay.data import load

    data = load("synthetic", None, 0)
    cfg = RunConfig(
        depth=24, width=256, activation="tanh", weight_var=0.8, bias_var=0.1, dataset="synthetic", instruments="standard"
    )
    _, _, s = _stats(cfg, data, n=64)
    c = s["c"]
    assert c[0] < 0.5 < c[-1]
    assert c[-1] > 0.99
    assert np.all(np.diff(c[4:]) > -1e-3)  # non-decreasing after the first layers
    # The row's c_star_theory (decay.row asks theory.fixed_point_of with the data's fan-in).
    _, c_star = theory.fixed_point_of(cfg, int(np.prod(data.x_train.shape[1:])))
    assert c_star == pytest.approx(1.0)


def test_dead_fraction_is_one_for_a_relu_layer_with_negative_bias_and_zero_weights(tiny_data):
    cfg = tiny_config(activation="relu", instruments="standard")
    prog, state = init_state(cfg, tiny_data)
    p = nnx.to_pure_dict(state.params)
    p["stem"]["linear"]["kernel"] = jnp.zeros_like(p["stem"]["linear"]["kernel"])
    p["stem"]["linear"]["bias"] = -jnp.ones_like(p["stem"]["linear"]["bias"])
    params = state.params
    nnx.replace_by_pure_dict(params, p)
    _, _, s = _stats(cfg, tiny_data, params)
    assert s["dead_fraction"][0] == 1.0
    assert s["q"][0] == pytest.approx(1.0)  # h = -1 everywhere
    _, _, healthy = _stats(cfg, tiny_data)
    assert healthy["dead_fraction"][0] < 1.0
    _, _, tanh = _stats(tiny_config(activation="tanh", instruments="standard"), tiny_data)
    assert np.all(np.isnan(tanh["dead_fraction"]))


def test_distance_from_init_is_zero_at_init_and_matches_the_checkpoints(tiny_data, tmp_path):
    cfg = tiny_config(instruments="standard", steps=6, checkpoint_every=1, keep_checkpoints=10)
    row = train_run(cfg, tiny_data, run_dir=str(tmp_path))
    assert row["distance_init"] == [0.0] * cfg.depth

    def kernels(step):  # the hidden kernels saved at `step`, read straight from the checkpoint
        params = nnx.to_pure_dict(analysis.load_run(str(tmp_path), step).params)
        return [np.asarray(lay["linear"]["kernel"], np.float64) for lay in reference.mlp_layers(params)]

    def by_hand(step):  # ||W(step) - W(0)||_F / ||W(0)||_F per layer
        return [np.linalg.norm(w - w0) / np.linalg.norm(w0) for w, w0 in zip(kernels(step), kernels(0), strict=True)]

    # The row's final distance is measured with the last step's statistics, before its update (at step 5).
    np.testing.assert_allclose(row["distance_final"], by_hand(5), rtol=1e-5)
    np.testing.assert_allclose(analysis.distance_from_init(analysis.load_run(str(tmp_path))), by_hand(6), rtol=1e-5)
    assert analysis.distance_from_init(analysis.load_run(str(tmp_path), 0)).tolist() == [0.0] * cfg.depth


_FULL_BASE = RunConfig(width=8, batch_size=16, steps=4, eval_every=2, instruments="full", instrument_every=2, dataset="synthetic")


def _full_tier_sweep(workdir: str) -> None:
    """The full-tier sweep on the tiny data; it trains, so it runs in the background (tests/shell.py)."""
    import decay.data

    tiny = make_tiny_data()
    decay.data.load = lambda *a: tiny  # the background process is this sweep's own
    cfg = SweepConfig(base=_FULL_BASE, depths=(3,), activations=("relu",), norms=("none", "batchnorm"), seeds=1)
    rows = run_sweep(cfg, workdir)
    with open(os.path.join(workdir, "rows.json"), "w") as f:
        json.dump(rows, f)


_FULL_TIER_SWEEP = call("tests.test_instruments:_full_tier_sweep", scratch("full_tier_sweep"))


@pytest.mark.background  # waits for work started at collection (tests/shell.py)
def test_full_tier_sweep_writes_rows_tensorboard_and_figures():
    out = _FULL_TIER_SWEEP()
    assert out.returncode == 0, out.stderr
    tmp_path, base = scratch("full_tier_sweep"), _FULL_BASE
    rows = json.loads((tmp_path / "rows.json").read_text())  # as run_sweep returned them
    for r in rows:
        for key in ("q", "c", "dead_fraction", "distance", "per_sample_grad_norm", "grad_snr", "b_simple_layers"):
            assert len(r[f"{key}_init"]) == 3 and len(r[f"{key}_final"]) == 3, key
        assert [c["step"] for c in r["curvature"]] == [0, 2, 4]
        assert r["hessian_top_final"] == r["curvature"][-1]["hessian_top"][0]
        assert r["edge_of_stability"] == pytest.approx(2 / base.learning_rate)
    plots = os.listdir(tmp_path / "plots")
    for name in ("instrument_q.png", "instrument_c.png", "instrument_dead_fraction.png", "instrument_hessian_top.png"):
        assert name in plots
    report = (tmp_path / "report.md").read_text()
    assert "Instrument: hessian_top" in report
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / rows[0]["name"]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("q/layer_00", "c/layer_02", "dead_fraction/layer_01", "distance_from_init/layer_00", "grad_snr/layer_00"):
        assert tag in tags
    assert {"hessian/top_eigenvalue", "hessian/trace", "b_simple/all_layers", "hessian_trace/layer_00"} <= tags
    assert [e.step for e in acc.Scalars("hessian/top_eigenvalue")] == [0, 2, 4]


def _analysis_in_background(out_dir: str) -> None:
    """Background work (tests/shell.py): every analysis function on a reopened relu run; shapes and values to JSON."""
    data = make_tiny_data()
    cfg = tiny_config(activation="relu", instruments="basic", steps=4)
    train_run(cfg, data, run_dir=os.path.join(out_dir, "run"))
    run = analysis.load_run(os.path.join(out_dir, "run"))
    x, y = _batch(data)
    stats = analysis.activation_stats(run, x, y)
    got = {
        "depth": cfg.depth,
        "q_shape": list(stats["q"].shape),
        "c_star": stats["c_star"],
        "dead_shape": list(analysis.dead_units(run, x, y).shape),
        "b_simple": float(analysis.gradient_noise(run, x, y)["b_simple"]),
        "psg_leading": int(jax.tree.leaves(analysis.per_sample_gradients(run, x, y))[0].shape[0]),
        "batch": int(x.shape[0]),
        "top": float(analysis.hessian_top_eigenvalue(run, x, y)),
        "trace_layers_shape": list(analysis.hessian_trace(run, x, y)["layers"].shape),
    }
    with open(os.path.join(out_dir, "analysis.json"), "w") as f:
        json.dump(got, f)


_ANALYSIS = call("tests.test_instruments:_analysis_in_background", scratch("reopened_analysis", make=True))


@pytest.mark.background
def test_analysis_functions_on_a_reopened_checkpoint():
    assert _ANALYSIS().returncode == 0, _ANALYSIS().stderr
    got = json.loads((scratch("reopened_analysis") / "analysis.json").read_text())
    assert got["q_shape"] == [got["depth"]] and got["c_star"] == pytest.approx(1.0)
    assert got["dead_shape"] == [got["depth"]] and got["b_simple"] > 0
    assert got["psg_leading"] == got["batch"]
    assert got["top"] > 0 and got["trace_layers_shape"] == [got["depth"]]


def test_per_sample_gradients_of_a_batchnorm_run_are_refused(tiny_data, bn_run):
    x, y = _batch(tiny_data)
    with pytest.raises(ValueError, match="gradient_noise"):  # batchnorm couples the examples
        analysis.per_sample_gradients(analysis.load_run(str(bn_run.run_dir)), x, y)


_BAD = [
    (["--instruments=most"], "error: --instruments='most' is unknown; allowed: basic, standard, full"),
    (["--instrument_every=0"], "error: --instrument_every=0; must be an integer >= 1"),
]
_BAD_RUNS = {
    tuple(args): shell("experiments.depth_sweep", f"--workdir={scratch(f'instruments_bad{i}')}", *args)
    for i, (args, _) in enumerate(_BAD)
}


@pytest.mark.parametrize("args, expected", _BAD)
def test_bad_instrument_flags_are_one_line(args, expected):
    out = _BAD_RUNS[tuple(args)]()
    assert out.returncode == 2
    assert out.stderr.strip() == expected


def test_results_rows_are_strict_json(full_row):
    assert full_row["activation"] == "tanh" and full_row["instruments"] == "full"
    json.loads(json.dumps(full_row, allow_nan=False))  # NaN dead fractions of tanh become null
