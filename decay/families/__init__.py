"""The registered model families, one file each; importing this package registers them all.

To add a family, write `decay/families/<name>.py` that builds its module and calls
`decay.family.register(Family(...))`, and import it below (the order is the order `--model` lists).
"""

from __future__ import annotations

import jax
from flax import nnx

from decay.config import RunConfig
from decay.layers import Choices

# isort: off
from decay.families import mlp, cnn, seed_cnn, rnn, transformer  # noqa: F401

# isort: on
from decay.family import FAMILIES, Family

__all__ = ["FAMILIES", "Family", "build", "of"]


def of(cfg: RunConfig) -> Family:
    """The family of `cfg.model`; ValueError listing the valid names when it is unknown."""
    return FAMILIES.get(cfg.model)


def build(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, choices: Choices | None = None) -> nnx.Module:
    """Builds the model of `cfg`, parameters drawn from `cfg.seed`.

    `choices` (families with `Family.shared`): the shared model of a program that serves these activations
    and norms, which holds each norm's variables and applies `cfg`'s by a run-time choice; its variables
    restricted to `cfg`'s norm are the plain model's, value for value.
    """
    fam = of(cfg)
    if choices is not None and fam.shared:
        return fam.build(cfg, tuple(input_shape), num_classes, jax.random.key(cfg.seed), choices=choices)
    return fam.build(cfg, tuple(input_shape), num_classes, jax.random.key(cfg.seed))
