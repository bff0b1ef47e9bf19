"""Run and sweep configuration: frozen dataclasses, validated, saved as JSON beside results."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


class ConfigError(ValueError):
    """Bad user input; the message is one line that names the flag and what is allowed."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run; a run is rebuilt from this alone."""

    model: str = "mlp"  # registered model: mlp | cnn | seed_cnn
    dataset: str = "digits"  # registered dataset: digits | synthetic | mnist | cifar10
    data_dir: str | None = None  # folder with local files, for datasets that need them
    depth: int = 8  # hidden weight layers; layer 0 maps the input to `width`
    width: int = 128  # units (mlp) or channels (cnn) of every hidden layer
    activation: str = "tanh"  # registered activation, applied after the norm
    norm: str = "none"  # registered normalization, applied between the linear map and activation
    init: str = "auto"  # registered kernel init; 'auto': he_normal for ReLU-like, else lecun_normal
    weight_var: float | None = None  # sigma_w^2: W ~ N(0, weight_var / fan_in), overrides `init`
    bias_var: float | None = None  # sigma_b^2: b ~ N(0, bias_var); None or 0 means zero biases
    residual: bool = False  # layers 1..depth-1 compute h + residual_scale * layer(h)
    residual_scale: float = 1.0  # alpha in h + alpha * f(h)
    optimizer: str = "sgd"  # registered optax optimizer: sgd | momentum | adam | adamw
    learning_rate: float = 0.02  # constant step size
    clip_norm: float | None = None  # clip updates to this global gradient norm; None: no clipping
    batch_size: int = 128  # examples per training step
    steps: int = 300  # training steps; 0 measures at initialization only
    eval_every: int = 100  # steps between test evaluations
    log_every: int = 10  # steps between TensorBoard points and loss-history points
    histograms: bool = False  # also log per-layer histograms of log10 |dL/dW_l| (computed in the jit)
    checkpoint_every: int = 1000  # steps between Orbax checkpoints (also saved at step 0 and the end); 0: only those
    keep_checkpoints: int = 2  # newest checkpoints kept, besides the one at step 0
    seed: int = 0  # seeds parameters and the order of minibatches
    data_seed: int = 0  # seeds the train/test split and synthetic data, shared by all runs
    bn_momentum: float = 0.9  # running-average decay of batchnorm statistics
    instruments: str = "basic"  # basic | standard (+ q, c, dead units, distance) | full (+ per-sample, curvature)
    instrument_every: int = 100  # steps between curvature measurements of the full tier (also at 0 and the end)

    @property
    def name(self) -> str:
        """Folder-safe name that encodes what varies across a sweep."""
        res = f"-res{self.residual_scale:g}" if self.residual else ""
        return f"{self.model}-d{self.depth:04d}-{self.activation}-{self.norm}{res}-s{self.seed}"

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: depths x activations x norms x seeds, all else shared."""

    base: RunConfig = RunConfig()  # shared settings; depth, activation, norm, seed are overridden
    depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64)  # hidden-layer counts to sweep
    activations: tuple[str, ...] = ("sigmoid", "tanh", "relu")  # activations to sweep
    norms: tuple[str, ...] = ("none", "batchnorm", "layernorm")  # normalizations to sweep
    seeds: int = 3  # seeds 0..seeds-1 for every grid point

    def runs(self) -> list[RunConfig]:
        """The grid, seeds innermost so that a compiled step is reused across seeds."""
        return [
            dataclasses.replace(self.base, depth=d, activation=a, norm=n, seed=s)
            for d in self.depths
            for a in self.activations
            for n in self.norms
            for s in range(self.seeds)
        ]

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["depths"] = list(self.depths)
        out["activations"] = list(self.activations)
        out["norms"] = list(self.norms)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SweepConfig:
        """Inverse of `to_json`."""
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        base = RunConfig(**{k: v for k, v in data["base"].items() if k in fields})
        return cls(
            base=base,
            depths=tuple(data["depths"]),
            activations=tuple(data["activations"]),
            norms=tuple(data["norms"]),
            seeds=int(data["seeds"]),
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_sweep(cfg: SweepConfig) -> None:
    """Raises ConfigError (one line, naming the flag) for any invalid setting."""
    # Imported here: the registries import jax/flax/optax, config itself stays light.
    from decay.data import DATASETS
    from decay.layers import ACTIVATIONS, INITIALIZERS, NORMS
    from decay.models import MODELS
    from decay.optim import OPTIMIZERS

    b = cfg.base
    for flag in ("learning_rate", "weight_var", "bias_var", "clip_norm", "residual_scale", "bn_momentum"):
        value = getattr(b, flag)
        _check(value is None or math.isfinite(value), f"--{flag}={value}; must be a finite number")
    for flag, values in (("depths", cfg.depths), ("activations", cfg.activations), ("norms", cfg.norms)):
        dup = sorted({str(v) for v in values if list(values).count(v) > 1})
        _check(not dup, f"--{flag} lists {', '.join(dup)} more than once; give each value once")
    _check(b.model in MODELS, f"--model={b.model!r} is unknown; allowed: {', '.join(MODELS.names())}")
    _check(b.dataset in DATASETS, f"--dataset={b.dataset!r} is unknown; allowed: {', '.join(DATASETS.names())}")
    _check(len(cfg.depths) > 0, "--depths is empty; give a comma list of integers >= 1, e.g. 2,4,8")
    for d in cfg.depths:
        _check(d >= 1, f"--depths contains {d}; every depth must be an integer >= 1")
    if b.model == "seed_cnn":
        _check(tuple(cfg.depths) == (1,), "--depths must be 1 for --model=seed_cnn (the seed's net has one conv layer)")
    _check(len(cfg.activations) > 0, f"--activations is empty; allowed: {', '.join(ACTIVATIONS.names())}")
    for a in cfg.activations:
        _check(a in ACTIVATIONS, f"--activations contains unknown {a!r}; allowed: {', '.join(ACTIVATIONS.names())}")
    _check(len(cfg.norms) > 0, f"--norms is empty; allowed: {', '.join(NORMS.names())}")
    for n in cfg.norms:
        _check(n in NORMS, f"--norms contains unknown {n!r}; allowed: {', '.join(NORMS.names())}")
    _check(
        b.init == "auto" or b.init in INITIALIZERS,
        f"--init={b.init!r} is unknown; allowed: auto, {', '.join(INITIALIZERS.names())}",
    )
    _check(b.optimizer in OPTIMIZERS, f"--optimizer={b.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS.names())}")
    _check(b.width >= 1, f"--width={b.width}; must be an integer >= 1")
    _check(b.learning_rate > 0, f"--learning_rate={b.learning_rate:g}; must be > 0")
    _check(b.batch_size >= 1, f"--batch_size={b.batch_size}; must be an integer >= 1")
    _check(b.steps >= 0, f"--steps={b.steps}; must be an integer >= 0 (0: measure at initialization only)")
    _check(b.eval_every >= 1, f"--eval_every={b.eval_every}; must be an integer >= 1")
    _check(b.log_every >= 1, f"--log_every={b.log_every}; must be an integer >= 1")
    tiers = ("basic", "standard", "full")  # decay.instruments.TIERS, kept here so that config stays light
    _check(b.instruments in tiers, f"--instruments={b.instruments!r} is unknown; allowed: {', '.join(tiers)}")
    _check(b.instrument_every >= 1, f"--instrument_every={b.instrument_every}; must be an integer >= 1")
    _check(b.checkpoint_every >= 0, f"--checkpoint_every={b.checkpoint_every}; must be an integer >= 0")
    _check(b.keep_checkpoints >= 1, f"--keep_checkpoints={b.keep_checkpoints}; must be an integer >= 1")
    _check(cfg.seeds >= 1, f"--seeds={cfg.seeds}; must be an integer >= 1")
    _check(b.weight_var is None or b.weight_var > 0, f"--weight_var={b.weight_var}; must be > 0")
    _check(b.bias_var is None or b.bias_var >= 0, f"--bias_var={b.bias_var}; must be >= 0")
    _check(b.clip_norm is None or b.clip_norm > 0, f"--clip_norm={b.clip_norm}; must be > 0")
    _check(0.0 <= b.bn_momentum < 1.0, f"--bn_momentum={b.bn_momentum}; must be in [0, 1)")


def dumps(data: dict[str, Any]) -> str:
    """Stable, readable JSON for config files."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
