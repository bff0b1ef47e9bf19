"""Offline analysis of a saved run: reopen any checkpoint, recompute per-layer quantities, Jacobian spectra.

run = decay.load_run("runs/depth_sweep-.../runs/mlp-d0032-tanh-none-s0")        # latest step
run0 = decay.load_run(run.run_dir, step=0)                                        # initialization
stats = decay.analysis.layer_stats(run, x, y)          # same definitions as the train step
sv = decay.analysis.jacobian_singular_values(run, x[:4])
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decay import checkpoints, instruments, program, step, tasks, theory
from decay.config import RunConfig


@dataclasses.dataclass
class LoadedRun:
    """A run reopened from its folder at one checkpoint step."""

    run_dir: str
    config: RunConfig
    input_shape: tuple[int, ...]
    num_classes: int
    step: int  # the checkpoint's step: updates applied so far
    model: nnx.Module  # ready to call: model(x) -> (logits, aux); model(x, train=True) uses batch statistics
    params: nnx.State
    batch_stats: nnx.State
    opt_state: Any
    state: step.TrainState
    program: program.Program
    available_steps: list[int]


def load_run(run_dir: str, step: int | None = None, model: nnx.Module | None = None):
    """Reopens `run_dir` (a folder with config.json and checkpoints/) at `step` (default: the latest).

    A watched model's run (`decay.watchlog`) needs `model`, an instance of the user's class (e.g. from
    `nnx.eval_shape`), to restore into and returns a `decay.watchlog.WatchedRun`; a sweep run returns a LoadedRun.
    Reads only JSON and Orbax files. Raises ConfigError with one line naming the path when
    the folder, its config or the checkpoint is missing, partial, corrupt or mismatched.
    """
    from decay import watchlog

    if watchlog.is_watched(run_dir):
        return watchlog.load(run_dir, model, step)
    cfg, input_shape, num_classes = checkpoints.read_config(run_dir)
    prog, template = program.init_state(cfg, input_shape=input_shape, num_classes=num_classes)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    state, _, _, step = checkpoints.restore(ckpt_dir, template, step)
    state = jax.tree.map(jnp.asarray, state)
    model = nnx.merge(prog.graphdef, state.params, state.batch_stats)
    return LoadedRun(
        run_dir,
        cfg,
        input_shape,
        num_classes,
        step,
        model,
        state.params,
        state.batch_stats,
        state.opt_state,
        state,
        prog,
        checkpoints.steps(ckpt_dir),
    )


def gradients(run: LoadedRun, x: jax.Array, y: jax.Array, train_mode: bool = True) -> nnx.State:
    """dL/dparams for the batch: a pytree shaped like `run.params` (batchnorm in training mode by default)."""
    model = nnx.merge(run.program.graphdef, run.params, run.batch_stats)
    return step.gradients(model, x, y, train=train_mode, task=run.program.net.task)


def layer_stats(run: LoadedRun, x: jax.Array, y: jax.Array) -> dict[str, np.ndarray]:
    """Per-layer grad_norms, signal_norms, act_rms, weight_norms and the loss on (x, y), as the train step computes them."""
    fn = jax.jit(lambda p, bs, x, y: step.grads_and_stats(run.program.net, p, bs, x, y)[2])
    return {k: np.asarray(v) for k, v in fn(run.params, run.batch_stats, x, y).items()}


def _representation(run: LoadedRun):
    """x (one example, input shape) -> the last hidden layer's output, flattened; batchnorm in evaluation mode."""
    net, params, batch_stats = run.program.net, run.params, run.batch_stats

    def rep(x_single):
        model = nnx.merge(net.graphdef, params, batch_stats, copy=True)
        return net.family.representation(model, x_single[None]).reshape(-1)

    return rep


def jacobian_singular_values(run: LoadedRun, x: jax.Array, k: int | None = None, exact_limit: int = 2048) -> dict[str, Any]:
    """Singular values of the input-output Jacobian J = d h_{L-1} / d x of each example in `x`.

    h_{L-1} is the last hidden layer's output (the representation the head reads), batchnorm in
    evaluation mode, so that J is a function of one example. Exact (full SVD of J) when J has
    at most `exact_limit` rows and columns; otherwise the top and bottom `k` (default 10) from
    a matrix-free Lanczos method (scipy's svds on J v and J^T u products, no J stored).
    Returns {"method", "singular_values": [examples x values], "shape": J's shape}.
    """
    rep = _representation(run)
    x = jnp.asarray(x)
    out_dim = int(np.prod(jax.eval_shape(rep, x[0]).shape))
    in_dim = int(np.prod(x.shape[1:]))
    if max(out_dim, in_dim) <= exact_limit:
        jac = jax.jit(jax.vmap(lambda xi: jax.jacrev(rep)(xi).reshape(out_dim, in_dim)))(x)
        sv = np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)
        return {"method": "exact", "singular_values": sv.tolist(), "shape": [out_dim, in_dim]}
    k = k or 10
    values = [_extreme_singular_values(rep, xi, out_dim, in_dim, k) for xi in x]
    return {"method": f"lanczos top/bottom {k}", "singular_values": values, "shape": [out_dim, in_dim]}


def _extreme_singular_values(rep, xi: jax.Array, out_dim: int, in_dim: int, k: int) -> list[float]:
    """Top and bottom k singular values of J = d rep / d x at xi, from J v and J^T u products only."""
    from scipy.sparse.linalg import LinearOperator, svds

    _, jvp_fn = jax.linearize(rep, xi)
    vjp_fn = jax.linear_transpose(jvp_fn, xi)
    mv = jax.jit(lambda v: jvp_fn(v.reshape(xi.shape)))
    rmv = jax.jit(lambda u: vjp_fn(u)[0].reshape(-1))
    op = LinearOperator(
        (out_dim, in_dim),
        matvec=lambda v: np.asarray(mv(jnp.asarray(v.ravel(), jnp.float32)), np.float64),
        rmatvec=lambda u: np.asarray(rmv(jnp.asarray(u.ravel(), jnp.float32)), np.float64),
        dtype=np.float64,
    )
    kk = min(k, min(out_dim, in_dim) - 1)
    top = svds(op, k=kk, which="LM", return_singular_vectors=False, random_state=0)
    bottom = svds(op, k=kk, which="SM", return_singular_vectors=False, random_state=0)
    return sorted(np.concatenate([top, bottom]).tolist(), reverse=True)


# ---- instruments (decay.instruments), one function each, on a reopened run ----


def _instrument_stats(run: LoadedRun, x: jax.Array, y: jax.Array, tier: str) -> dict[str, np.ndarray]:
    """The train step's statistics of `tier` on (x, y), batchnorm in training mode (its distance is a placeholder)."""
    net = run.program.net
    anchor = tuple(jnp.zeros_like(k) + 1.0 for k in net.family.layer_kernels(nnx.to_pure_dict(run.params)))

    def fn(p, bs, x, y):
        return step.grads_and_stats(net, p, bs, x, y, tier, anchor)[2]

    return {k: np.asarray(v) for k, v in jax.jit(fn)(run.params, run.batch_stats, jnp.asarray(x), jnp.asarray(y)).items()}


def activation_stats(run: LoadedRun, x: jax.Array, y: jax.Array) -> dict[str, Any]:
    """Per layer: q_l and c_l of the linear output h_l (before any norm), with the theory's q*, c* (plain mlp).

    q_l is the mean of h_l^2, c_l the mean pairwise cosine of h_l across the batch (decay.instruments).
    """
    s = _instrument_stats(run, x, y, "standard")
    q_star, c_star = theory.fixed_point_of(run.config, int(np.prod(run.input_shape)))
    return {"q": s["q"], "c": s["c"], "q_star": q_star, "c_star": c_star}


def dead_units(run: LoadedRun, x: jax.Array, y: jax.Array) -> np.ndarray:
    """Per layer, the fraction of units inactive (activation input <= 0) on every example of x.

    NaN for activations that are not ReLU-like.
    """
    return _instrument_stats(run, x, y, "standard")["dead_fraction"]


def distance_from_init(run: LoadedRun) -> np.ndarray:
    """Per layer, ||W_l - W_l(0)|| / ||W_l(0)||, against the run's step-0 checkpoint."""
    start = load_run(run.run_dir, 0)
    layer_kernels = run.program.net.family.layer_kernels
    now = layer_kernels(nnx.to_pure_dict(run.params))
    init = layer_kernels(nnx.to_pure_dict(start.params))
    return np.concatenate([np.asarray(instruments.distance(a, b)) for a, b in zip(now, init, strict=True)])


def gradient_noise(run: LoadedRun, x: jax.Array, y: jax.Array) -> dict[str, np.ndarray]:
    """Per-sample gradient statistics of a dense net on (x, y): mean norm, SNR, B_simple per layer; B_simple overall.

    Per-sample gradients as defined in `decay.instruments` (batchnorm nets included).
    """
    if not run.program.net.family.per_sample:
        raise ValueError(f"per-sample gradient statistics cover dense layers only; model {run.config.model!r} has none")
    s = _instrument_stats(run, x, y, "full")
    return {k: s[k] for k in instruments.PER_SAMPLE_KEYS}


def per_sample_gradients(run: LoadedRun, x: jax.Array, y: jax.Array) -> nnx.State:
    """Every example's own loss gradient, a pytree like `run.params` with a leading example axis (vmap over the batch).

    Defined for nets without batchnorm, where an example's loss depends on that example only;
    with batchnorm in training mode use `gradient_noise`, whose per-sample terms are each example's
    contribution to the batch gradient.
    """
    if run.config.norm == "batchnorm":
        raise ValueError("with batchnorm an example's loss depends on the batch; use gradient_noise (per-example contributions)")
    graphdef = run.program.graphdef

    def one(params, xi, yi):
        out, _, _ = step.apply(graphdef, params, run.batch_stats, xi[None], None, False)
        return tasks.mean_loss(run.program.net.task, out, yi[None])

    fn = jax.jit(jax.vmap(jax.grad(one), in_axes=(None, 0, 0)))
    return fn(run.params, jnp.asarray(x), jnp.asarray(y))


def _curvature_loss(run: LoadedRun, x: jax.Array, y: jax.Array):
    return step.batch_loss(run.program.graphdef, run.batch_stats, jnp.asarray(x), jnp.asarray(y))


def hessian_top_eigenvalue(
    run: LoadedRun, x: jax.Array, y: jax.Array, iters: int = instruments.POWER_ITERS, seed: int = 0
) -> float:
    """The largest Hessian eigenvalue of the loss on (x, y) (batchnorm in training mode) by power iteration.

    For SGD compare with 2 / learning_rate, the edge of stability.
    """
    loss = _curvature_loss(run, x, y)
    fn = jax.jit(lambda p, k: instruments.top_eigenvalue(loss, p, k, iters))
    return float(fn(run.params, jax.random.key(seed)))


def hessian_trace(
    run: LoadedRun, x: jax.Array, y: jax.Array, probes: int = instruments.HUTCHINSON_PROBES, seed: int = 0
) -> dict[str, Any]:
    """Hutchinson's estimate of the loss Hessian's trace on (x, y), and of each hidden kernel block's trace."""
    loss = _curvature_loss(run, x, y)
    fn = jax.jit(lambda p, k: step.curvature_trace(run.program.net.family, loss, p, k, probes))
    total, layers = fn(run.params, jax.random.key(seed))
    return {"trace": float(total), "layers": np.asarray(layers)}
