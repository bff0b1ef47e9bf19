"""Deep Flax NNX networks with pluggable activation, normalization and init.

Every model has hidden layers 0..depth-1, each `linear map -> norm -> activation`.
Layer 0 (`stem`) maps the input to `width`; layers 1..depth-1 are identical and are
stored stacked (leading layer axis) in `blocks`, run under `jax.lax.scan` so that the
traced program, and compile time, do not grow with depth.

A model is called as `model(x, probes, train)` and returns `(logits, aux)`:
`probes` (layer x batch x hidden shape, or None) are added to every layer's linear
output h_l, so that d loss / d probes[l] = d loss / d h_l; `aux["act_rms"]` holds the
RMS of every layer's post-activation output. With `stats=True`, aux also holds the per-layer
activation statistics of `decay.instruments.layer_stats` (q_l, c_l, dead units, input norms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from decay import instruments
from decay.config import RunConfig
from decay.layers import ACTIVATIONS, NORMS, bias_init, kernel_init, resolve_init
from decay.registry import Registry


def _rms(y: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(y)))


class Layer(nnx.Module):
    """One hidden layer: dense or 3x3 conv -> norm -> activation, with an optional probe on h."""

    def __init__(self, in_features: int, cfg: RunConfig, conv: bool, padding: str, *, rngs: nnx.Rngs):
        init = resolve_init(cfg.init, cfg.activation)
        inits = dict(kernel_init=kernel_init(init, cfg.weight_var), bias_init=bias_init(cfg.bias_var))
        if conv:
            self.linear = nnx.Conv(in_features, cfg.width, (3, 3), padding=padding, rngs=rngs, **inits)
            reduce_axes = (-3, -2, -1)  # per-example norms see all positions and channels
        else:
            self.linear = nnx.Linear(in_features, cfg.width, rngs=rngs, **inits)
            reduce_axes = (-1,)
        self.norm = NORMS.get(cfg.norm)(cfg.width, reduce_axes, cfg.bn_momentum, rngs=rngs)
        self.act = ACTIVATIONS.get(cfg.activation)
        self.relu_like = cfg.activation in instruments.RELU_LIKE

    def __call__(self, x: jax.Array, probe: jax.Array | None, train: bool, stats: bool = False):
        """The layer's output; with `stats`, (output, instruments.layer_stats of this layer)."""
        h = self.linear(x)
        if probe is not None:
            h = h + probe
        z = self.norm(h, train)
        y = self.act(z)
        if not stats:
            return y
        return y, {"act_rms": _rms(y), **instruments.layer_stats(x, h, z, self.relu_like)}


class Stack(nnx.Module):
    """`n` identical layers with stacked parameters, applied in sequence by `jax.lax.scan`."""

    def __init__(self, n: int, make_layer: Callable[[nnx.Rngs], Layer], key: jax.Array, residual_scale: float | None):
        keys = jax.random.split(key, n)
        self.layer = make_layer(nnx.Rngs(params=keys[0]))  # template; its values are replaced below
        nnx.update(self.layer, jax.vmap(lambda k: nnx.state(make_layer(nnx.Rngs(params=k))))(keys))
        self.residual_scale = residual_scale  # None: plain net

    def __call__(self, h: jax.Array, probes: jax.Array | None, train: bool, stats: bool = False) -> tuple[jax.Array, Any]:
        """(last output, per-layer aux): act RMS [n], or with `stats` a dict of [n, ...] arrays."""
        graphdef, state = nnx.split(self.layer)
        alpha = self.residual_scale

        def body(h, xs):
            layer_state, probe = xs
            layer = nnx.merge(graphdef, layer_state, copy=True)
            y, aux = layer(h, probe, train, True) if stats else (layer(h, probe, train), None)
            out = y if alpha is None else h + alpha * y
            return out, (aux if stats else _rms(y), nnx.state(layer, nnx.BatchStat))

        h, (aux, batch_stats) = jax.lax.scan(body, h, (state, probes))
        if train:
            nnx.update(self.layer, batch_stats)
        return h, aux


class MLP(nnx.Module):
    """`depth` dense hidden layers and a linear head."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array):
        k_stem, k_blocks, k_head = jax.random.split(key, 3)
        d_in = 1
        for s in input_shape:
            d_in *= s
        self.stem = Layer(d_in, cfg, conv=False, padding="", rngs=nnx.Rngs(params=k_stem))
        make = lambda rngs: Layer(cfg.width, cfg, conv=False, padding="", rngs=rngs)  # noqa: E731
        alpha = cfg.residual_scale if cfg.residual else None
        self.blocks = Stack(cfg.depth - 1, make, k_blocks, alpha) if cfg.depth > 1 else None
        self.head = nnx.Linear(cfg.width, num_classes, rngs=nnx.Rngs(params=k_head))

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        x_BxD = x.reshape(x.shape[0], -1)
        return _forward(self, x_BxD, probes, train, pool=False, stats=stats)


class CNN(nnx.Module):
    """Stem 3x3 conv, depth-1 identical 3x3 conv layers (SAME padding), global average pool, head."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array):
        k_stem, k_blocks, k_head = jax.random.split(key, 3)
        self.stem = Layer(input_shape[-1], cfg, conv=True, padding="SAME", rngs=nnx.Rngs(params=k_stem))
        make = lambda rngs: Layer(cfg.width, cfg, conv=True, padding="SAME", rngs=rngs)  # noqa: E731
        alpha = cfg.residual_scale if cfg.residual else None
        self.blocks = Stack(cfg.depth - 1, make, k_blocks, alpha) if cfg.depth > 1 else None
        self.head = nnx.Linear(cfg.width, num_classes, rngs=nnx.Rngs(params=k_head))

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        return _forward(self, x, probes, train, pool=True, stats=stats)


class SeedCNN(nnx.Module):
    """The seed's example `Net`: Conv 3x3 (VALID) -> norm -> activation -> flatten -> Dense.

    The seed hard-codes the flattened size 1350 (= 6 x 15 x 15, a 17x17 input); here it is
    computed from the input: 6 x 6 x 6 = 216 on 8x8 digits, 6 x 26 x 26 = 4056 on MNIST.
    The seed's values are width=6, activation=relu, norm=batchnorm.
    """

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array):
        k_stem, k_head = jax.random.split(key)
        h, w, c = input_shape
        self.stem = Layer(c, cfg, conv=True, padding="VALID", rngs=nnx.Rngs(params=k_stem))
        self.blocks = None
        self.head = nnx.Linear((h - 2) * (w - 2) * cfg.width, num_classes, rngs=nnx.Rngs(params=k_head))

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        return _forward(self, x, probes, train, pool=False, stats=stats)


def _hidden(model: Any, x: jax.Array, probes: jax.Array | None, train: bool, stats: bool = False) -> tuple[jax.Array, Any]:
    """Stem and scanned blocks: (last hidden layer's output, per-layer act RMS, or with `stats` a dict of per-layer arrays)."""
    probe0 = None if probes is None else probes[0]
    if stats:
        h, aux = model.stem(x, probe0, train, True)
        aux = jax.tree.map(lambda a: a[None], aux)
    else:
        h = model.stem(x, probe0, train)
        aux = _rms(h)[None]
    if model.blocks is not None:
        h, rest = model.blocks(h, None if probes is None else probes[1:], train, stats)
        aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), aux, rest)
    return h, aux


def last_hidden(model: nnx.Module, x: jax.Array, train: bool = False) -> jax.Array:
    """The last hidden layer's output h_{L-1} for a batch x: what the head (after pooling, for cnn) reads."""
    if isinstance(model, MLP):
        x = x.reshape(x.shape[0], -1)
    return _hidden(model, x, None, train)[0]


def _forward(model: Any, x: jax.Array, probes: jax.Array | None, train: bool, pool: bool, stats: bool = False):
    h, aux = _hidden(model, x, probes, train, stats)
    if pool:
        h = jnp.mean(h, axis=(1, 2))
    return model.head(h.reshape(h.shape[0], -1)), (aux if stats else {"act_rms": aux})


MODELS: Registry[type[nnx.Module]] = Registry("model")
MODELS.add("mlp", MLP)
MODELS.add("cnn", CNN)
MODELS.add("seed_cnn", SeedCNN)


def build(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> nnx.Module:
    """Builds the model of `cfg`, parameters drawn from `cfg.seed`."""
    key = jax.random.key(cfg.seed)
    return MODELS.get(cfg.model)(cfg, tuple(input_shape), num_classes, key)


def hidden_shape(cfg: RunConfig, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-example shape of every hidden layer's h_l (the probe shape without batch)."""
    if cfg.model == "mlp":
        return (cfg.width,)
    h, w, _ = input_shape
    if cfg.model == "seed_cnn":
        return (h - 2, w - 2, cfg.width)
    return (h, w, cfg.width)


def layer_kernels(tree: Any) -> list[jax.Array]:
    """Kernels in layer order from a pure-dict pytree shaped like the params: [stem, stacked blocks]."""
    out = [tree["stem"]["linear"]["kernel"][None]]
    if tree.get("blocks"):
        out.append(tree["blocks"]["layer"]["linear"]["kernel"])
    return out


def frobenius(x: jax.Array, axes: tuple[int, ...], scaled: bool = False) -> jax.Array:
    """Frobenius norm over `axes`.

    `scaled=True` computes max|x| * ||x / max|x||| (two passes), which does not overflow
    float32 for entries beyond 1e19; Inf or NaN entries still give Inf or NaN.
    """
    if not scaled:
        return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes))
    m = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    scale = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
    return jnp.squeeze(scale, axes) * jnp.sqrt(jnp.sum(jnp.square(x / scale), axis=axes))


def kernel_norms(tree: Any, scaled: bool = False) -> jax.Array:
    """Frobenius norm of every hidden layer's kernel, layer 0 first: shape [depth]."""
    return jnp.concatenate([frobenius(k, tuple(range(1, k.ndim)), scaled) for k in layer_kernels(tree)])
