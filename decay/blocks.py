"""Building blocks that model families share: a hidden layer, a scanned stack of identical layers.

A hidden layer is `linear map -> norm -> activation`. A zero "probe" added to the linear
output h gives d loss / d probe = d loss / d h, the backprop signal at that layer. A stack of
identical layers keeps its parameters with a leading layer axis and runs under `jax.lax.scan`,
so the traced program, and compile time, do not grow with depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from decay import instruments, layers
from decay.config import RunConfig
from decay.layers import ACTIVATIONS, NORMS, bias_init, kernel_init, resolve_init

_STACKED: dict = {}  # cache key -> the compiled initializer of a stack


def stacked(make: Callable[[jax.Array], Any], keys: jax.Array, cache: Any = None) -> Any:
    """One module of `make(key)`'s structure whose variables hold the modules of every key on a leading axis.

    The values are drawn in one compiled program, the values of `make(key)` for each key (bitwise, except
    that a scale folded into an initializer, DeepNorm's beta, may round 1 ulp differently than op by op);
    built op by op, every new depth or width would compile each initializer's operations anew.
    `cache`, a hashable that determines `make` but for its key (`init_cache`), reuses that program
    across calls (seeds, learning rates): without it every call compiles anew.
    """
    template = nnx.eval_shape(lambda: make(keys[0]))
    draw = _STACKED.get(cache) if cache is not None else None
    if draw is None:
        draw = jax.jit(jax.vmap(lambda k: nnx.state(make(k))))
        if cache is not None:
            _STACKED[cache] = draw
    nnx.update(template, draw(keys))
    return template


def init_cache(cfg: RunConfig, *extra: Any, choices: layers.Choices | None = None) -> tuple:
    """A `stacked` cache key: what of `cfg` draws the initial values (not its seed, learning rate, budget), and `extra`.

    With `choices` (a shared stack, whose `Stack` sets each run's choice after drawing): not the activation and
    norm either, only the initializer the activation resolves to.
    """
    key = dataclasses.replace(cfg, seed=0, learning_rate=1.0, steps=0, eval_every=1, checkpoint_every=0)
    if choices is not None:
        key = dataclasses.replace(key, activation="", norm="", init=resolve_init(cfg.init, cfg.activation))
    return (key, *extra, choices)


def rms(y: jax.Array) -> jax.Array:
    """Root mean square over every entry."""
    return jnp.sqrt(jnp.mean(jnp.square(y)))


class Layer(nnx.Module):
    """One hidden layer: dense or 3x3 conv -> norm -> activation, with an optional probe on h.

    `choices` (a shared program's, `layers.Choices`): the layer holds each of those norms
    (`layers.AnyNorm`) and applies the norm and activation its `layers.Choice` names, so that
    one compiled program serves every activation and norm of a study.
    """

    def __init__(
        self,
        in_features: int,
        cfg: RunConfig,
        conv: bool,
        padding: str,
        *,
        rngs: nnx.Rngs,
        choices: layers.Choices | None = None,
    ):
        init = resolve_init(cfg.init, cfg.activation)
        inits = dict(kernel_init=kernel_init(init, cfg.weight_var), bias_init=bias_init(cfg.bias_var))
        if conv:
            self.linear = nnx.Conv(in_features, cfg.width, (3, 3), padding=padding, rngs=rngs, **inits)
            reduce_axes = (-3, -2, -1)  # per-example norms see all positions and channels
        else:
            self.linear = nnx.Linear(in_features, cfg.width, rngs=rngs, **inits)
            reduce_axes = (-1,)
        self.choices = choices
        if choices is not None:
            self.norm = layers.AnyNorm(choices.norms, cfg.width, reduce_axes, cfg.bn_momentum, rngs=rngs)
            self.choice = layers.Choice(layers.picked(choices, cfg.activation, cfg.norm))
            self.act, self.relu_like = None, None
        else:
            self.norm = NORMS.get(cfg.norm)(cfg.width, reduce_axes, cfg.bn_momentum, rngs=rngs)
            self.choice = None
            self.act = ACTIVATIONS.get(cfg.activation)
            self.relu_like = cfg.activation in instruments.RELU_LIKE

    def __call__(self, x: jax.Array, probe: jax.Array | None, train: bool, stats: bool = False):
        """The layer's output; with `stats`, (output, instruments.layer_stats of this layer)."""
        h = self.linear(x)
        if probe is not None:
            h = h + probe
        if self.choice is None:
            z = self.norm(h, train)
            y, relu_like = self.act(z), self.relu_like
        else:
            choice, names = self.choice[...], self.choices.activations
            z = self.norm(h, train, choice[1])
            y, relu_like = layers.switch_activation(names, choice[0], z), layers.relu_like(names, choice[0])
        if not stats:
            return y
        return y, {"act_rms": rms(y), **instruments.layer_stats(x, h, z, relu_like)}


class Stack(nnx.Module):
    """`n` identical layers with stacked parameters, applied in sequence by `jax.lax.scan`."""

    def __init__(
        self,
        n: int,
        make_layer: Callable[[nnx.Rngs], Layer],
        key: jax.Array,
        residual_scale: float | None,
        cache: Any = None,
        choice: jax.Array | None = None,
    ):
        """`cache`: `init_cache` of the layers' config; `choice`: a shared stack's run-time choice (`layers.picked`),
        set after drawing, since the cached initializer serves every activation and norm."""
        self.layer = stacked(lambda k: make_layer(nnx.Rngs(params=k)), jax.random.split(key, n), cache)
        if choice is not None:
            self.layer.choice[...] = jnp.broadcast_to(choice, self.layer.choice.shape)
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
            return out, (aux if stats else rms(y), nnx.state(layer, nnx.BatchStat))

        h, (aux, batch_stats) = jax.lax.scan(body, h, (state, probes))
        if train:
            nnx.update(self.layer, batch_stats)
        return h, aux


def hidden(stem: Layer, blocks: Stack | None, x: jax.Array, probes: jax.Array | None, train: bool, stats: bool = False):
    """Stem, then the scanned blocks: (last hidden output, per-layer act RMS, or with `stats` a dict of per-layer arrays)."""
    probe0 = None if probes is None else probes[0]
    if stats:
        h, aux = stem(x, probe0, train, True)
        aux = jax.tree.map(lambda a: a[None], aux)
    else:
        h = stem(x, probe0, train)
        aux = rms(h)[None]
    if blocks is not None:
        h, rest = blocks(h, None if probes is None else probes[1:], train, stats)
        aux = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), aux, rest)
    return h, aux


def stem_and_stack_kernels(tree: Any) -> list[jax.Array]:
    """Kernels in layer order from a pure-dict pytree of a stem + `Stack` net: [stem[None], stacked blocks]."""
    out = [tree["stem"]["linear"]["kernel"][None]]
    if tree.get("blocks"):
        out.append(tree["blocks"]["layer"]["linear"]["kernel"])
    return out


def is_stem_or_stack_kernel(path: tuple[str, ...]) -> bool:
    """Whether a parameter path names a hidden layer's kernel of a stem + `Stack` net."""
    return path[-2:] == ("linear", "kernel") and path[0] in ("stem", "blocks")
