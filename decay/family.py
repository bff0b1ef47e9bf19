"""The model contract: what a model family declares so that the engine can measure it.

A family is one file in `decay/families/` that builds its Flax NNX module and registers a
`Family`. The engine (step, program, loop, row), theory dispatch, analysis and plots ask the
family; none of them tests a model's name.

A family's module is called as `module(x, probes, train, stats)` and returns `(logits, aux)`:
  probes  None, or an array [points, batch, *point shape] added at the family's probe points
          (in order from input to output), so that d loss / d probes[l] is the backprop signal there;
  aux     {"act_rms": [points]} and, with `stats`, the per-point instruments of
          `decay.instruments.layer_stats` (q, c, dead units, input norms).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from decay.config import RunConfig
from decay.errors import ConfigError
from decay.registry import Registry

TASKS = ("classification",)  # regression and per-position targets come with recurrent nets and transformers


@dataclasses.dataclass(frozen=True)
class Family:
    """What the engine needs to know of one model family."""

    name: str  # the --model value
    build: Callable[[RunConfig, tuple[int, ...], int, jax.Array], nnx.Module]  # (cfg, input shape, classes, key) -> module
    point_shape: Callable[[RunConfig, tuple[int, ...]], tuple[int, ...]]  # per-example shape at each probe point
    probe_points: str  # in words: where the probes sit, in order from input to output
    layer_kernels: Callable[[Any], list[jax.Array]]  # pure-dict params -> kernels, one per probe point, layer axis first
    is_layer_kernel: Callable[[tuple[str, ...]], bool]  # whether a parameter path is one of those kernels
    representation: Callable[[nnx.Module, jax.Array], jax.Array]  # (module, batch) -> what the head reads (Jacobian's output)
    theory: str | None = None  # "mean_field": the dense mean-field theory of decay.theory applies; None: no theory
    no_theory: str = ""  # why no theory applies, when `theory` is None
    per_sample: bool = False  # the full tier's per-sample gradient statistics (dense layers only)
    task: str = "classification"  # one of TASKS
    depths_rule: Callable[[tuple[int, ...]], str | None] = lambda depths: None  # a one-line error for depths it cannot build

    def points(self, cfg: RunConfig) -> int:
        """Probe points (measured layers) of a net of `cfg`: one per hidden layer."""
        return cfg.depth

    def probe_shape(self, cfg: RunConfig, input_shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
        """Shape of the probes array of a batch."""
        return (self.points(cfg), batch, *self.point_shape(cfg, tuple(input_shape)))

    def check_depths(self, depths: tuple[int, ...]) -> None:
        """Raises ConfigError when the family cannot be built at one of `depths`."""
        problem = self.depths_rule(depths)
        if problem:
            raise ConfigError(problem)


FAMILIES: Registry[Family] = Registry("model")


def register(family: Family) -> Family:
    """Adds `family` under its name."""
    if family.task not in TASKS:
        raise ValueError(f"family {family.name!r}: task {family.task!r} is not one of {TASKS}")
    FAMILIES.add(family.name, family)
    return family
