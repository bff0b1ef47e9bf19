"""`mlp`: `depth` dense hidden layers (`linear -> norm -> activation`) and a linear head.

Layer 0 maps the flattened input to `width`; layers 1..depth-1 are identical and scanned.
The probes sit on every hidden layer's linear output h_l. The dense mean-field theory of
`decay.theory` describes exactly this net.
"""

from __future__ import annotations

import jax
from flax import nnx

from decay import blocks, layers
from decay.config import RunConfig
from decay.family import Family, register


class MLP(nnx.Module):
    """`depth` dense hidden layers and a linear head."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array, choices=None):
        k_stem, k_blocks, k_head = jax.random.split(key, 3)
        d_in = 1
        for s in input_shape:
            d_in *= s
        self.stem = blocks.Layer(d_in, cfg, conv=False, padding="", rngs=nnx.Rngs(params=k_stem), choices=choices)
        make = lambda rngs: blocks.Layer(cfg.width, cfg, conv=False, padding="", rngs=rngs, choices=choices)  # noqa: E731
        alpha = cfg.residual_scale if cfg.residual else None
        cache = blocks.init_cache(cfg, "mlp", input_shape, choices=choices)
        choice = None if choices is None else layers.picked(choices, cfg.activation, cfg.norm)
        self.blocks = blocks.Stack(cfg.depth - 1, make, k_blocks, alpha, cache, choice) if cfg.depth > 1 else None
        self.head = nnx.Linear(cfg.width, num_classes, rngs=nnx.Rngs(params=k_head))

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        h, aux = blocks.hidden(self.stem, self.blocks, x.reshape(x.shape[0], -1), probes, train, stats)
        return self.head(h), (aux if stats else {"act_rms": aux})


def _representation(model: MLP, x: jax.Array) -> jax.Array:
    return blocks.hidden(model.stem, model.blocks, x.reshape(x.shape[0], -1), None, False)[0]


FAMILY = register(
    Family(
        name="mlp",
        build=MLP,
        point_shape=lambda cfg, input_shape: (cfg.width,),
        probe_points="the linear output h_l of every hidden layer l = 0..depth-1",
        layer_kernels=blocks.stem_and_stack_kernels,
        is_layer_kernel=blocks.is_stem_or_stack_kernel,
        representation=_representation,
        theory="mean_field",
        per_sample=True,
        shared=True,
    )
)
