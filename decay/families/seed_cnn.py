"""`seed_cnn`: the seed's example `Net`, Conv 3x3 (VALID) -> norm -> activation -> flatten -> Dense.

The seed hard-codes the flattened size 1350 (= 6 x 15 x 15, a 17x17 input); here it is
computed from the input: 6 x 6 x 6 = 216 on 8x8 digits, 6 x 26 x 26 = 4056 on MNIST.
The seed's values are width=6, activation=relu, norm=batchnorm, depth=1.
"""

from __future__ import annotations

import jax
from flax import nnx

from decay import blocks
from decay.config import RunConfig
from decay.family import Family, register


class SeedCNN(nnx.Module):
    """One VALID 3x3 conv layer and a dense head on the flattened feature map."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array):
        k_stem, k_head = jax.random.split(key)
        h, w, c = input_shape
        self.stem = blocks.Layer(c, cfg, conv=True, padding="VALID", rngs=nnx.Rngs(params=k_stem))
        self.blocks = None
        self.head = nnx.Linear((h - 2) * (w - 2) * cfg.width, num_classes, rngs=nnx.Rngs(params=k_head))

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        h, aux = blocks.hidden(self.stem, None, x, probes, train, stats)
        return self.head(h.reshape(h.shape[0], -1)), (aux if stats else {"act_rms": aux})


FAMILY = register(
    Family(
        name="seed_cnn",
        build=SeedCNN,
        point_shape=lambda cfg, input_shape: (input_shape[0] - 2, input_shape[1] - 2, cfg.width),
        probe_points="the conv output h_0 of its one hidden layer",
        layer_kernels=blocks.stem_and_stack_kernels,
        is_layer_kernel=blocks.is_stem_or_stack_kernel,
        representation=lambda model, x: blocks.hidden(model.stem, None, x, None, False)[0],
        no_theory="no theory: mean-field predictions here cover the mlp only",
        depths_rule=lambda depths: (
            None if tuple(depths) == (1,) else "--depths must be 1 for --model=seed_cnn (the seed's net has one conv layer)"
        ),
    )
)
