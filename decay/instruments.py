"""Instruments beyond gradient norms, per hidden layer, computed inside jit-compiled functions.

Tiers (`RunConfig.instruments`):
  basic     what the core records: gradient, signal, weight norms, act RMS, update ratio
  standard  + activation statistics from mean-field theory, distance from init, dead units (every step)
  full      + per-sample gradient statistics (every step: they cost O(batch x width) per layer)
            + curvature: top Hessian eigenvalue and Hessian trace, every `instrument_every` steps

Definitions (layer l, batch of B examples, h_l = x_l W_l + b_l the linear output, z_l the
activation's input, i.e. h_l after the norm):
  q_l               mean over batch and units of h_l^2 (the mean-field q)
  c_l               mean over pairs i != j of cos(h_l[i], h_l[j]) = (||sum_i u_i||^2 - B) / (B (B - 1)),
                    u_i = h_l[i] / ||h_l[i]|| (the mean-field c; O(B x width), no B x B matrix)
  dead_fraction_l   fraction of units with z_l <= 0 for every example of the batch (ReLU-like
                    activations only: relu, leaky_relu, elu, gelu, swish; NaN for others). For
                    relu this is a unit with zero output and zero gradient; leaky_relu, elu, gelu
                    and swish still pass some gradient there: "dead" means "in the negative regime"
  distance_l        ||W_l(t) - W_l(0)||_F / ||W_l(0)||_F
  per-sample        g_i = B x_l[i] (outer) dL/dh_l[i], the example's term of the chain rule
                    dL/dW_l = sum_i x_l[i] (outer) dL/dh_l[i]; their mean is the batch gradient
                    exactly. Without batchnorm g_i is the gradient of example i's own loss. With
                    batchnorm in training mode an example's loss depends on the whole batch through
                    the batch statistics; dL/dh_l[i] carries that coupling, so g_i is example i's
                    contribution to the batch gradient (it is what a per-example gradient means here,
                    and BackPACK-style per-sample gradients are undefined there). Dense (mlp) layers only.
  grad_snr_l        ||mean g||^2 / tr Sigma_l, Sigma_l the per-sample covariance (population, 1/B)
  b_simple          tr Sigma / ||G||^2 (McCandlish et al. 2018), G estimated by the batch gradient
                    (biased upward by tr Sigma / B); per layer and over all hidden kernels
  hessian_top       the top eigenvalue of the loss Hessian over all parameters (power iteration on
                    Hessian-vector products, `POWER_ITERS` steps, Rayleigh quotient), batchnorm in
                    training mode, on the next training batch; for SGD compare with 2 / learning_rate
                    (the edge of stability, Cohen et al. 2021)
  hessian_trace     Hutchinson's estimate E[v^T H v], Rademacher v, `HUTCHINSON_PROBES` probes; per
                    layer, the trace of the layer's kernel block from the same products
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

TIERS = ("basic", "standard", "full")
RELU_LIKE = frozenset({"relu", "leaky_relu", "elu", "gelu", "swish"})
POWER_ITERS = 20
HUTCHINSON_PROBES = 10
STANDARD_KEYS = ("q", "c", "dead_fraction", "distance")
PER_SAMPLE_KEYS = ("per_sample_grad_norm", "grad_snr", "b_simple_layers", "b_simple")
CURVATURE_KEYS = ("hessian_top", "hessian_trace", "hessian_trace_layers")


def tier_at_least(tier: str, level: str) -> bool:
    """Whether `tier` includes the instruments of `level`."""
    return TIERS.index(tier) >= TIERS.index(level)


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


def layer_stats(x: jax.Array, h: jax.Array, z: jax.Array, relu_like: bool | jax.Array) -> dict[str, jax.Array]:
    """q, c, dead fraction of one layer, and the squared norms of its inputs per example ([B])."""
    hf = _flat(h).astype(jnp.float32)
    b = hf.shape[0]
    q = jnp.mean(jnp.square(hf))
    norms = jnp.sqrt(jnp.sum(jnp.square(hf), axis=1, keepdims=True))
    u = hf / jnp.where(norms > 0, norms, 1.0)
    c = (jnp.sum(jnp.square(jnp.sum(u, axis=0))) - jnp.sum(jnp.square(u))) / (b * (b - 1))
    if relu_like is False:
        dead = jnp.array(jnp.nan, jnp.float32)
    else:  # True, or a traced bool (a shared program's activation)
        units = z.reshape(-1, z.shape[-1])  # units = the last axis (features / channels)
        dead = jnp.mean(jnp.all(units <= 0, axis=0).astype(jnp.float32))
        if relu_like is not True:
            dead = jnp.where(relu_like, dead, jnp.nan)
    in_norm2 = jnp.sum(jnp.square(_flat(x)), axis=1)
    return {"q": q, "c": c, "dead_fraction": dead, "in_norm2": in_norm2}


def distance(kernels: jax.Array, anchor: jax.Array) -> jax.Array:
    """||W_l - W_l(0)|| / ||W_l(0)|| per layer, for kernels stacked on a leading layer axis."""
    axes = tuple(range(1, kernels.ndim))
    return jnp.sqrt(jnp.sum(jnp.square(kernels - anchor), axis=axes) / jnp.sum(jnp.square(anchor), axis=axes))


def per_sample(in_norm2: jax.Array, probe_grads: jax.Array, grad_norms: jax.Array) -> dict[str, jax.Array]:
    """Per-sample gradient statistics of dense layers from layer inputs and probe gradients.

    in_norm2 [depth, B] = ||x_l[i]||^2; probe_grads [depth, B, width] = dL/dh_l[i]; grad_norms
    [depth] = ||dL/dW_l||. ||g_i|| = B ||x_l[i]|| ||dL/dh_l[i]|| (an outer product's norm).
    """
    b = probe_grads.shape[1]
    p2 = jnp.sum(jnp.square(probe_grads.reshape(probe_grads.shape[0], b, -1)), axis=2)
    g2 = b * b * in_norm2 * p2  # [depth, B]
    mean2 = jnp.square(grad_norms)
    trace = jnp.maximum(jnp.mean(g2, axis=1) - mean2, 0.0)
    return {
        "per_sample_grad_norm": jnp.mean(jnp.sqrt(g2), axis=1),
        "grad_snr": mean2 / trace,
        "b_simple_layers": trace / mean2,
        "b_simple": jnp.sum(trace) / jnp.sum(mean2),
    }


def per_sample_kernel_grads(x: jax.Array, probe_grads: jax.Array) -> jax.Array:
    """The per-sample kernel gradients g_i = B x[i] (outer) dL/dh[i] of one dense layer: [B, in, out]."""
    return x.shape[0] * x[:, :, None] * probe_grads[:, None, :]


def _tree_dot(a: Any, b: Any) -> jax.Array:
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def hvp(loss: Callable[[Any], jax.Array], params: Any, v: Any) -> Any:
    """Hessian-vector product H v of `loss` at `params` (forward-over-reverse)."""
    return jax.jvp(jax.grad(loss), (params,), (v,))[1]


def _power(matvec: Callable[[Any], Any], v: Any, iters) -> jax.Array:
    def normalize(v):
        n = jnp.sqrt(_tree_dot(v, v))
        return jax.tree.map(lambda a: a / jnp.where(n > 0, n, 1.0), v)

    v = jax.lax.fori_loop(0, iters, lambda _, v: normalize(matvec(v)), normalize(v))
    return _tree_dot(v, matvec(v))


def top_eigenvalue(loss: Callable[[Any], jax.Array], params: Any, key: jax.Array, iters: int = POWER_ITERS) -> jax.Array:
    """The largest (most positive) Hessian eigenvalue by power iteration on Hessian-vector products.

    Power iteration finds the eigenvalue of largest magnitude; when that one is negative, a
    second run on H - lambda I (whose largest-magnitude eigenvalue is lambda_max - lambda) gives
    lambda_max. That run converges at the rate (lambda_2 - lambda) / (lambda_max - lambda), slowly
    when |lambda| >> lambda_max, so it gets 3 x `iters` iterations; even so its result can be low then.
    """
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves, strict=True)])
    matvec = lambda u: hvp(loss, params, u)  # noqa: E731

    def run(shift, n):
        return shift + _power(lambda u: jax.tree.map(lambda a, b: a - shift * b, matvec(u), u), v, n)

    def body(i, lam):
        # Pass 0 plain; pass 1 shifted, only when pass 0 found a negative eigenvalue (one compiled copy of the loop).
        first = i == 0
        return jax.lax.cond(
            first | (lam < 0), lambda: run(jnp.where(first, 0.0, lam), jnp.where(first, iters, 3 * iters)), lambda: lam
        )

    return jax.lax.fori_loop(0, 2, body, jnp.zeros((), jnp.float32))


def hutchinson(
    loss: Callable[[Any], jax.Array], params: Any, key: jax.Array, probes: int = HUTCHINSON_PROBES, layer_dot=None
) -> tuple[jax.Array, jax.Array]:
    """Hutchinson's estimate of tr H, and of each block's trace: (trace, per-block [k] or [0]).

    `layer_dot(v, hv) -> [k]` gives the blocks' dot products v_b . (H v)_b (e.g. per hidden
    kernel); their mean over the probes estimates each block's trace.
    """
    leaves, treedef = jax.tree.flatten(params)

    def one(k):
        ks = jax.random.split(k, len(leaves))
        v = jax.tree.unflatten(treedef, [jax.random.rademacher(kk, p.shape, p.dtype) for kk, p in zip(ks, leaves, strict=True)])
        hv = hvp(loss, params, v)
        total = _tree_dot(v, hv)
        if layer_dot is None:
            return total, jnp.zeros((0,), total.dtype)
        return total, layer_dot(v, hv)

    totals, per_block = jax.lax.map(one, jax.random.split(key, probes))
    return jnp.mean(totals), jnp.mean(per_block, axis=0)
