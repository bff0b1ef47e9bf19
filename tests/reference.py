"""Second implementations, written from the formulas, that the tests hold decay against.

Nothing here imports decay: the activations, norms and the dense net's forward pass below are
written out from their definitions (papers, PyTorch and Flax documentation), so that a bug in
decay's registries or modules cannot move the reference with it. Theory uses decay's activation
registry too, so these formulas are the only outside check of both.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SELU_LAMBDA = 1.0507009873554804934193349852946  # Klambauer et al. 2017
SELU_ALPHA = 1.6732632423543772848170429916717
LEAKY_SLOPE = 0.01
NORM_EPS = 1e-5


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _phi(x: float) -> float:  # standard normal density
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:  # standard normal distribution function
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2)))


# name -> (value, derivative) at a scalar x != 0, in float64, from the definitions.
SCALAR = {
    "linear": (lambda x: x, lambda x: 1.0),
    "sigmoid": (_sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "tanh": (math.tanh, lambda x: 1 - math.tanh(x) ** 2),
    "relu": (lambda x: max(x, 0.0), lambda x: float(x > 0)),
    "leaky_relu": (lambda x: x if x > 0 else LEAKY_SLOPE * x, lambda x: 1.0 if x > 0 else LEAKY_SLOPE),
    "elu": (lambda x: x if x > 0 else math.expm1(x), lambda x: 1.0 if x > 0 else math.exp(x)),
    "selu": (
        lambda x: SELU_LAMBDA * (x if x > 0 else SELU_ALPHA * math.expm1(x)),
        lambda x: SELU_LAMBDA * (1.0 if x > 0 else SELU_ALPHA * math.exp(x)),
    ),
    "gelu": (lambda x: x * _cdf(x), lambda x: _cdf(x) + x * _phi(x)),  # the exact (erf) form
    "swish": (lambda x: x * _sigmoid(x), lambda x: _sigmoid(x) + x * _sigmoid(x) * (1 - _sigmoid(x))),
}

# The same definitions on arrays, for the reference forward pass (differentiated by jax.grad).
ARRAY = {
    "linear": lambda x: x,
    "sigmoid": lambda x: 1 / (1 + jnp.exp(-x)),
    "tanh": jnp.tanh,
    "relu": lambda x: jnp.where(x > 0, x, 0.0),
    "leaky_relu": lambda x: jnp.where(x > 0, x, LEAKY_SLOPE * x),
    "elu": lambda x: jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0.0))),
    "selu": lambda x: SELU_LAMBDA * jnp.where(x > 0, x, SELU_ALPHA * jnp.expm1(jnp.minimum(x, 0.0))),
    "gelu": lambda x: x * 0.5 * (1 + jax.scipy.special.erf(x / math.sqrt(2))),
    "swish": lambda x: x / (1 + jnp.exp(-x)),
}


def layernorm(x, scale, bias, axes):
    """(x - mean) / sqrt(var + eps) * scale + bias, mean and (biased) variance over `axes` of each example."""
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + NORM_EPS) * scale + bias


def rmsnorm(x, scale, axes):
    """x / sqrt(mean(x^2) + eps) * scale, the mean over `axes` of each example (no centering)."""
    return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + NORM_EPS) * scale


def batchnorm_train(x, scale, bias, mean, var, momentum):
    """Batch statistics over every axis but the last: (output, new running mean, new running var).

    Running averages follow Flax's convention: new = momentum * old + (1 - momentum) * batch value,
    with the biased batch variance.
    """
    axes = tuple(range(x.ndim - 1))
    m = jnp.mean(x, axis=axes)
    v = jnp.mean(jnp.square(x - m), axis=axes)
    out = (x - m) / jnp.sqrt(v + NORM_EPS) * scale + bias
    return out, momentum * mean + (1 - momentum) * m, momentum * var + (1 - momentum) * v


def batchnorm_eval(x, scale, bias, mean, var):
    """Running averages in place of the batch statistics."""
    return (x - mean) / jnp.sqrt(var + NORM_EPS) * scale + bias


def cross_entropy(logits, y):
    """Mean over the batch of logsumexp(logits) - logits[y], and the per-example losses."""
    per = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(per), per


def mlp_layers(params: dict) -> list[dict]:
    """The hidden layers' parameters (or batch statistics) of a decay mlp (pure dict), layer 0 first, each unstacked."""
    out = [params["stem"]]
    if params.get("blocks"):
        stacked = params["blocks"]["layer"]
        n = jax.tree.leaves(stacked)[0].shape[0]
        out += [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)]
    return out


def mlp_forward(params, batch_stats, x, activation, norm, residual_scale=None, probes=None, train=True, momentum=0.9):
    """A dense net's forward pass written out: h_l = x_l W_l + b_l (+ probe_l), z_l = norm(h_l), y_l = act(z_l),
    x_{l+1} = y_l, or x_l + alpha y_l for the residual blocks (every layer after the first).

    Returns (logits, per-layer {"x", "h", "z", "y"}, new batch stats as per-layer (mean, var)).
    """
    act = ARRAY[activation]
    layers = mlp_layers(params)
    stats = mlp_layers(batch_stats) if norm == "batchnorm" else [None] * len(layers)
    a = x.reshape(x.shape[0], -1)
    record, new_stats = [], []
    for l, (p, s) in enumerate(zip(layers, stats, strict=True)):
        h = a @ p["linear"]["kernel"] + p["linear"]["bias"]
        if probes is not None:
            h = h + probes[l]
        if norm == "none":
            z = h
        elif norm == "layernorm":
            z = layernorm(h, p["norm"]["ln"]["scale"], p["norm"]["ln"]["bias"], (-1,))
        elif norm == "rmsnorm":
            z = rmsnorm(h, p["norm"]["rms"]["scale"], (-1,))
        elif train:
            bn = p["norm"]["bn"]
            z, m, v = batchnorm_train(h, bn["scale"], bn["bias"], s["norm"]["bn"]["mean"], s["norm"]["bn"]["var"], momentum)
            new_stats.append((m, v))
        else:
            bn = p["norm"]["bn"]
            z = batchnorm_eval(h, bn["scale"], bn["bias"], s["norm"]["bn"]["mean"], s["norm"]["bn"]["var"])
        y = act(z)
        record.append({"x": a, "h": h, "z": z, "y": y})
        a = y if residual_scale is None or l == 0 else a + residual_scale * y
    logits = a @ params["head"]["kernel"] + params["head"]["bias"]
    return logits, record, new_stats
