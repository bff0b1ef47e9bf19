"""`cnn`: a 3x3 stem conv, depth-1 identical 3x3 conv layers (SAME padding), global average pooling, a linear head.

`depth` counts the stem, as in `mlp`, so per-layer arrays have `depth` entries. The probes
sit on every conv layer's output h_l (all positions and channels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from decay import blocks, layers
from decay.config import RunConfig
from decay.family import Family, register


class CNN(nnx.Module):
    """Stem 3x3 conv, depth-1 identical 3x3 conv layers (SAME padding), global average pool, head."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array, choices=None):
        k_stem, k_blocks, k_head = jax.random.split(key, 3)
        self.stem = blocks.Layer(input_shape[-1], cfg, conv=True, padding="SAME", rngs=nnx.Rngs(params=k_stem), choices=choices)
        make = lambda rngs: blocks.Layer(cfg.width, cfg, conv=True, padding="SAME", rngs=rngs, choices=choices)  # noqa: E731
        alpha = cfg.residual_scale if cfg.residual else None
        cache = blocks.init_cache(cfg, "cnn", input_shape, choices=choices)
        choice = None if choices is None else layers.picked(choices, cfg.activation, cfg.norm)
        self.blocks = blocks.Stack(cfg.depth - 1, make, k_blocks, alpha, cache, choice) if cfg.depth > 1 else None
        self.head = nnx.Linear(cfg.width, num_classes, rngs=nnx.Rngs(params=k_head))

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        h, aux = blocks.hidden(self.stem, self.blocks, x, probes, train, stats)
        h = jnp.mean(h, axis=(1, 2))
        return self.head(h.reshape(h.shape[0], -1)), (aux if stats else {"act_rms": aux})


FAMILY = register(
    Family(
        name="cnn",
        build=CNN,
        point_shape=lambda cfg, input_shape: (input_shape[0], input_shape[1], cfg.width),
        probe_points="the conv output h_l of every hidden layer l = 0..depth-1 (all positions and channels)",
        layer_kernels=blocks.stem_and_stack_kernels,
        is_layer_kernel=blocks.is_stem_or_stack_kernel,
        representation=lambda model, x: blocks.hidden(model.stem, model.blocks, x, None, False)[0],
        no_theory="no theory: mean-field predictions here cover the mlp only",
        shared=True,
    )
)
