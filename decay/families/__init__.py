"""The registered model families, one file each; importing this package registers them all.

To add a family, write `decay/families/<name>.py` that builds its module and calls
`decay.family.register(Family(...))`, and import it below (the order is the order `--model` lists).
"""

from __future__ import annotations

import jax
from flax import nnx

from decay.config import RunConfig

# isort: off
from decay.families import mlp, cnn, seed_cnn, rnn, transformer  # noqa: F401

# isort: on
from decay.family import FAMILIES, Family

__all__ = ["FAMILIES", "Family", "build", "of"]


def of(cfg: RunConfig) -> Family:
    """The family of `cfg.model`; ValueError listing the valid names when it is unknown."""
    return FAMILIES.get(cfg.model)


def build(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, shared: bool = False) -> nnx.Module:
    """Builds the model of `cfg`, parameters drawn from `cfg.seed`.

    `shared` (families with `Family.shared`): the shared model of the compiled programs, which holds every
    norm's variables and applies the activation and norm of `cfg` by a run-time choice; its variables
    restricted to `cfg`'s norm are the plain model's, value for value.
    """
    fam = of(cfg)
    if shared and fam.shared:
        return fam.build(cfg, tuple(input_shape), num_classes, jax.random.key(cfg.seed), shared=True)
    return fam.build(cfg, tuple(input_shape), num_classes, jax.random.key(cfg.seed))
