"""Pluggable pieces of a hidden layer: activations, initializers, normalizations.

Each kind lives in a `Registry`; the names are the values the `--activations`,
`--init` and `--norms` flags accept.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

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

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del features, reduce_axes, momentum, rngs

    @staticmethod
    def forward(holder: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
        del holder, train
        return x

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.forward(self, x, train)


class BatchNorm(nnx.Module):
    """Batch statistics in training, running averages in evaluation."""

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del reduce_axes  # BatchNorm always reduces over every axis but the features.
        self.bn = nnx.BatchNorm(features, momentum=momentum, epsilon=1e-5, rngs=rngs)

    @staticmethod
    def forward(holder: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
        return holder.bn(x, use_running_average=not train)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.forward(self, x, train)


class LayerNorm(nnx.Module):
    """Per-example normalization over the units (and positions, for conv layers)."""

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del momentum
        self.ln = nnx.LayerNorm(features, epsilon=1e-5, reduction_axes=reduce_axes, rngs=rngs)

    @staticmethod
    def forward(holder: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
        del train
        return holder.ln(x)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.forward(self, x, train)


class RMSNorm(nnx.Module):
    """Per-example division by the root mean square, no centering."""

    def __init__(self, features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs: nnx.Rngs):
        del momentum
        self.rms = nnx.RMSNorm(features, epsilon=1e-5, reduction_axes=reduce_axes, rngs=rngs)

    @staticmethod
    def forward(holder: nnx.Module, x: jax.Array, train: bool) -> jax.Array:
        del train
        return holder.rms(x)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.forward(self, x, train)


# Each: a module class built as (features, reduce_axes, bn_momentum, *, rngs) and called as norm(x, train); its
# static `forward(holder, x, train)` applies it to any module holding the same sub-modules (`AnyNorm`).
NORMS: Registry[type[nnx.Module]] = Registry("norm")
NORMS.add("none", Identity)
NORMS.add("batchnorm", BatchNorm)
NORMS.add("layernorm", LayerNorm)
NORMS.add("rmsnorm", RMSNorm)


# One compiled program for a study's activations and norms (`decay.program`, shared programs): a layer then holds
# the variables of each of its norms and applies the norm and the activation its `Choice` names, by
# `jax.lax.switch`. A choice is a value in the model's state, not in its code; it travels with the batch
# statistics (the variables that are not trained).
class Choices(NamedTuple):
    """The activations and norms one shared program serves, each in registry order."""

    activations: tuple[str, ...]
    norms: tuple[str, ...]


def choices_of(activations: Iterable[str], norms: Iterable[str]) -> Choices | None:
    """The `Choices` of these activations and norms, or None when there is one of each (a plain program serves it)."""
    acts, ns = set(activations), set(norms)
    if len(acts) <= 1 and len(ns) <= 1:
        return None
    return Choices(tuple(n for n in ACTIVATIONS.names() if n in acts), tuple(n for n in NORMS.names() if n in ns))


def picked(choices: Choices, activation: str, norm: str) -> jax.Array:
    """The `Choice` value of `activation` and `norm` among `choices`: their indices, int32 [2]."""
    return jnp.array([choices.activations.index(activation), choices.norms.index(norm)], jnp.int32)


class Choice(nnx.BatchStat):
    """Run-time indices of a shared layer's activation and norm among its `Choices`: int32 [2]."""


# A switch whose backward reads its branches' intermediates stores the union of every branch's (zeros but for the
# chosen one's), per layer and step: ~20% of a step at depth 32 with 9 activations. Under `jax.checkpoint` only
# the inputs are stored and the backward recomputes the chosen branch: as fast as a fixed activation.
def switch_activation(names: tuple[str, ...], index: jax.Array, x: jax.Array) -> jax.Array:
    """Activation `names[index]` (a traced int) applied to x."""
    branches = [ACTIVATIONS.get(n) for n in names]
    return jax.checkpoint(lambda i, x: jax.lax.switch(i, branches, x))(index, x)


def relu_like(names: tuple[str, ...], index: jax.Array) -> jax.Array:
    """Whether activation `names[index]` is ReLU-like (`instruments.RELU_LIKE`): a traced bool."""
    from decay.instruments import RELU_LIKE

    return jnp.asarray([n in RELU_LIKE for n in names])[index]


class AnyNorm(nnx.Module):
    """Every norm of `names` in one module, the one applied chosen at run time (`jax.lax.switch` on an index).

    It holds each norm's sub-modules under the attribute names that norm's own module uses
    (`bn`, `ln`, `rms`), so that its variables are the union of theirs, path for path: a run's
    variables are the shared layer's restricted to the norm it uses.
    """

    def __init__(self, names: tuple[str, ...], features: int, reduce_axes: tuple[int, ...], momentum: float, *, rngs):
        self.names = tuple(names)
        for name in self.names:
            part = NORMS.get(name)(features, reduce_axes, momentum, rngs=rngs)
            for attr, child in vars(part).items():
                if isinstance(child, nnx.Module):
                    setattr(self, attr, child)

    def __call__(self, x: jax.Array, train: bool, index: jax.Array) -> jax.Array:
        graphdef, params, rest = nnx.split(self, nnx.Param, ...)

        def branch(name):
            def apply(params, rest, x):
                holder = nnx.merge(graphdef, params, rest, copy=True)
                y = NORMS.get(name).forward(holder, x, train)
                return y, nnx.state(holder, nnx.BatchStat)

            return apply

        switch = jax.checkpoint(lambda *args: jax.lax.switch(index, [branch(n) for n in self.names], *args))
        y, stats = switch(params, rest, x)
        if train:
            nnx.update(self, stats)
        return y
