"""Pluggable pieces of a hidden layer: activations, initializers, normalizations.

Each kind lives in a `Registry`; the names are the values the `--activations`,
`--init` and `--norms` flags accept.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from decay.registry import Registry

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: Registry[Activation] = Registry("activation")
ACTIVATIONS.add("linear", lambda x: x)
ACTIVATIONS.add("sigmoid", jax.nn.sigmoid)
ACTIVATIONS.add("tanh", jnp.tanh)
ACTIVATIONS.add("relu", jax.nn.relu)
# Negative slope 0.01, the common default (PyTorch, JAX).
ACTIVATIONS.add("leaky_relu", functools.partial(jax.nn.leaky_relu, negative_slope=0.01))
ACTIVATIONS.add("elu", jax.nn.elu)
ACTIVATIONS.add("selu", jax.nn.selu)
# The exact erf form, not the tanh approximation, so that theory and measurement agree.
ACTIVATIONS.add("gelu", functools.partial(jax.nn.gelu, approximate=False))
ACTIVATIONS.add("swish", jax.nn.swish)

Initializer = Callable[..., jax.Array]
_vs = jax.nn.initializers.variance_scaling

INITIALIZERS: Registry[Initializer] = Registry("init")
# Weight variance 1/fan_in (truncated normal rescaled to that variance).
INITIALIZERS.add("lecun_normal", _vs(1.0, "fan_in", "truncated_normal"))
# Weight variance 2/(fan_in + fan_out).
INITIALIZERS.add("glorot_normal", _vs(1.0, "fan_avg", "truncated_normal"))
INITIALIZERS.add("glorot_uniform", _vs(1.0, "fan_avg", "uniform"))
# Weight variance 2/fan_in: the critical init for ReLU (He et al. 2015).
INITIALIZERS.add("he_normal", _vs(2.0, "fan_in", "truncated_normal"))
INITIALIZERS.add("he_uniform", _vs(2.0, "fan_in", "uniform"))
# Gain 1: a square kernel is exactly orthogonal (all singular values 1).
INITIALIZERS.add("orthogonal", jax.nn.initializers.orthogonal(1.0))

# `--init=auto` picks the init a practitioner would: He for the ReLU family
# (their derivative is 0 on half the inputs, so weight_var 2 keeps chi near 1),
# LeCun otherwise (weight_var 1: critical for tanh at bias 0, required by SELU).
_HE_FAMILY = ("relu", "leaky_relu", "elu", "gelu", "swish")


def resolve_init(init: str, activation: str) -> str:
    """Returns the concrete init name; 'auto' maps to he_normal or lecun_normal."""
    if init != "auto":
        return init
    return "he_normal" if activation in _HE_FAMILY else "lecun_normal"


def kernel_init(init: str, weight_var: float | None) -> Initializer:
    """Kernel initializer: N(0, weight_var / fan_in) when weight_var is set, else the named init."""
    if weight_var is not None:
        return _vs(weight_var, "fan_in", "normal")
    return INITIALIZERS.get(init)


def bias_init(bias_var: float | None) -> Initializer:
    """Bias initializer: N(0, bias_var) when bias_var > 0, else zeros."""
    if not bias_var:
        return jax.nn.initializers.zeros
    return jax.nn.initializers.normal(stddev=math.sqrt(bias_var))


class Identity(nnx.Module):
    """The 'none' normalization."""

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return x


class BatchNorm(nnx.Module):
    """Batch statistics in training, running averages in evaluation."""

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del reduce_axes  # BatchNorm always reduces over every axis but the features.
        self.bn = nnx.BatchNorm(features, momentum=momentum, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(x, use_running_average=not train)


class LayerNorm(nnx.Module):
    """Per-example normalization over the units (and positions, for conv layers)."""

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del momentum
        self.ln = nnx.LayerNorm(features, epsilon=1e-5, reduction_axes=reduce_axes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return self.ln(x)


class RMSNorm(nnx.Module):
    """Per-example division by the root mean square, no centering."""

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del momentum
        self.rms = nnx.RMSNorm(features, epsilon=1e-5, reduction_axes=reduce_axes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        return self.rms(x)


def _identity(features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs) -> Identity:
    del features, reduce_axes, momentum, rngs
    return Identity()


# Each factory: (features, reduce_axes, bn_momentum, *, rngs) -> module called as norm(x, train).
NORMS: Registry[Callable[..., nnx.Module]] = Registry("norm")
NORMS.add("none", _identity)
NORMS.add("batchnorm", BatchNorm)
NORMS.add("layernorm", LayerNorm)
NORMS.add("rmsnorm", RMSNorm)
