"""The model contract: what a model family declares so that the engine can measure it.

A family is one file in `decay/families/` that builds its Flax NNX module and registers a
`Family`. The engine (step, program, loop, row), theory dispatch, analysis and plots ask the
family; none of them tests a model's name.

A family's module is called as `module(x, probes, train, stats)` and returns `(outputs, aux)`:
  probes  None, or an array [points, batch, *point shape] added at the family's probe points
          (in order from input to output), so that d loss / d probes[l] is the backprop signal there;
          a recurrent family's points are its time steps (layer-major: layer 0's t = 0..T-1 first),
          and an LSTM's point shape holds the hidden and the cell state side by side (`signal_parts`);
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
from decay.tasks import TASKS


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
    tasks: tuple[str, ...] = ("classification",)  # decay.tasks its head serves
    sequence: bool = False  # reads [N, T, features] sequences (decay.data.SEQUENCE) instead of images
    norms: tuple[str, ...] | None = None  # the norms it supports; None: every registered one
    depths_rule: Callable[[tuple[int, ...]], str | None] = lambda depths: None  # a one-line error for depths it cannot build
    # Recurrent families: points per (cfg, input shape) (default: cfg.depth), the probe's last axis split into
    # equal parts named by `signal_parts` (the first is the row's signal_norms), the points the chi fit reads,
    # and the family's own theory ((cfg, dataset) -> theory fields).
    count_points: Callable[[RunConfig, tuple[int, ...]], int] | None = None
    signal_parts: tuple[str, ...] = ("signal_norms",)
    chi_points: Callable[[RunConfig, tuple[int, ...]], tuple[int, int]] | None = None
    predict: Callable[..., dict[str, Any]] | None = None
    row_fields: Callable[[RunConfig], dict[str, Any]] | None = None  # the family's own settings in the row
    name_suffix: Callable[[RunConfig], str] | None = None  # what else a run's name carries (RunConfig.name)
    # Families with more than one kernel per layer (a transformer block's q, k, v, out, mlp_in, mlp_out): how many
    # kernels `layer_kernels` gives (default cfg.depth), and the TensorBoard tag suffixes of kernels and points
    # (default layer_XX).
    count_kernels: Callable[[RunConfig], int] | None = None
    check_config: Callable[[RunConfig], None] | None = None  # the family's own one-line ConfigErrors (its flags)
    point_names: Callable[[RunConfig, tuple[int, ...]], list[str]] | None = None
    kernel_names: Callable[[RunConfig], list[str]] | None = None
    # Whether `build(..., choices=layers.Choices(...))` gives the shared model: the variables of each norm of the
    # choices, the activation and norm chosen at run time (`decay.layers.Choice`), so that one compiled program
    # serves a study's activations and norms.
    shared: bool = False

    def kernels(self, cfg: RunConfig) -> int:
        """Entries of the per-kernel arrays (grad_norms, weight_norms, ...): one per layer, or the family's count."""
        return cfg.depth if self.count_kernels is None else self.count_kernels(cfg)

    def points(self, cfg: RunConfig, input_shape: tuple[int, ...] = ()) -> int:
        """Probe points of a net of `cfg`: one per hidden layer, or the family's count (time steps x layers)."""
        return cfg.depth if self.count_points is None else self.count_points(cfg, tuple(input_shape))

    def chi_window(self, cfg: RunConfig, input_shape: tuple[int, ...] = ()) -> tuple[int, int]:
        """The points [lo, hi) whose signal norms the chi fit reads: all, or the family's (a recurrent net's last layer)."""
        if self.chi_points is None:
            return 0, self.points(cfg, input_shape)
        return self.chi_points(cfg, tuple(input_shape))

    def probe_shape(self, cfg: RunConfig, input_shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
        """Shape of the probes array of a batch."""
        return (self.points(cfg, input_shape), batch, *self.point_shape(cfg, tuple(input_shape)))

    def check(self, cfg: RunConfig, dataset: str, sequence: bool, task: str) -> None:
        """Raises ConfigError when `cfg`'s norm or `dataset` (its input kind and task) does not fit the family."""
        if self.norms is not None and cfg.norm not in self.norms:
            raise ConfigError(
                f"--norms contains {cfg.norm}, which --model={self.name} does not support; allowed: {', '.join(self.norms)}"
            )
        if self.check_config is not None:
            self.check_config(cfg)
        kind = "sequence" if self.sequence else "image"
        if sequence != self.sequence or task not in self.tasks:
            raise ConfigError(
                f"--dataset={dataset} ({'sequence' if sequence else 'image'} {task}) does not fit --model={self.name}, "
                f"which reads {kind} data for {' or '.join(self.tasks)}"
            )

    def check_depths(self, depths: tuple[int, ...]) -> None:
        """Raises ConfigError when the family cannot be built at one of `depths`."""
        problem = self.depths_rule(depths)
        if problem:
            raise ConfigError(problem)


FAMILIES: Registry[Family] = Registry("model")


def register(family: Family) -> Family:
    """Adds `family` under its name."""
    for task in family.tasks:
        TASKS.get(task)  # ValueError naming the tasks
    FAMILIES.add(family.name, family)
    return family
