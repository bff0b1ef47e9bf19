"""Run and sweep configuration: frozen dataclasses, saved as JSON beside every result.

Each `RunConfig` field carries its meaning as `metadata["help"]`: the one source of the
entry points' flags (`experiments._cli.define_run_flags`), so a default or a description
cannot drift between the library and the command line. Validation of names against the
registries lives in `decay.validation`, which may import everything; this module imports
only `decay.errors`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from decay.errors import ConfigError

__all__ = ["ConfigError", "RunConfig", "SweepConfig", "dumps", "help_of"]


def _field(default: Any, help_text: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that determines one training run; a run is rebuilt from this alone."""

    model: str = _field(
        "mlp", "Model family (decay.families): mlp, cnn (deep conv net), seed_cnn (the seed's example net), rnn, lstm or gru."
    )
    dataset: str = _field(
        "digits",
        "digits (embedded), synthetic, mnist or cifar10 (local files); for rnn/lstm/gru: adding, copy, seq_digits or"
        " perm_digits (sequence tasks, generated or embedded).",
    )
    seq_len: int = _field(100, "Sequence tasks: T, the adding problem's steps or the copy task's blanks (digits: 64 fixed).")
    data_dir: str | None = _field(None, "Folder with the local files of --dataset=mnist|cifar10.")
    depth: int = _field(8, "Hidden weight layers; layer 0 maps the input to --width.")
    width: int = _field(128, "Units (mlp) or channels (cnn) per hidden layer.")
    activation: str = _field("tanh", "Activation, applied after the norm.")
    norm: str = _field("none", "Normalization between the linear map and the activation.")
    init: str = _field("auto", "Kernel init; auto = he_normal for ReLU-like activations, lecun_normal otherwise.")
    weight_var: float | None = _field(
        None,
        "sigma_w^2: W ~ N(0, weight_var/fan_in); overrides --init (rnn/lstm/gru: the recurrent kernel's, over --recurrent_init).",
    )
    bias_var: float | None = _field(None, "sigma_b^2: b ~ N(0, bias_var); default zero biases.")
    recurrent_init: str = _field(
        "auto", "rnn/lstm/gru: recurrent kernel init, per gate: orthogonal, identity (IRNN) or a named init; auto = orthogonal."
    )
    input_var: float | None = _field(
        None, "rnn/lstm/gru: sigma_u^2 of the input kernel, U ~ N(0, input_var/fan_in); overrides --init."
    )
    forget_bias: float = _field(1.0, "lstm: initial forget-gate bias (1.0 as Gers et al. and Jozefowicz et al. recommend).")
    block: str = _field("pre_ln", "transformer: post_ln, pre_ln, deepnorm (need --norm=layernorm|rmsnorm), rezero or no_norm.")
    heads: int = _field(4, "transformer: attention heads (must divide --width).")
    mlp_ratio: int = _field(4, "transformer: MLP hidden units per unit of --width.")
    causal: bool = _field(False, "transformer: causal attention (position i reads positions <= i).")
    positions: str = _field("learned", "transformer: learned or sinusoidal position embeddings.")
    max_len: int = _field(0, "transformer: positions the model has; 0: the data's sequence length.")
    residual: bool = _field(False, "Layers 1..depth-1 compute h + residual_scale * layer(h).")
    residual_scale: float = _field(1.0, "alpha of the residual branch: h + alpha * layer(h).")
    optimizer: str = _field("sgd", "sgd, momentum (0.9), adam or adamw (weight decay 1e-4).")
    learning_rate: float = _field(0.02, "Learning rate (constant after the warm-up).")
    warmup_steps: int = _field(0, "Linear learning-rate warm-up over this many steps, from lr/warmup_steps to lr (0: none).")
    clip_norm: float | None = _field(None, "Clip gradients to this global norm; default no clipping.")
    adam_eps: float = _field(1e-8, "epsilon of adam/adamw: the update is lr * m / (sqrt(v) + eps).")
    weight_decay: float = _field(0.0, "L2 weight decay: weight_decay * params added to the gradient (every optimizer).")
    batch_size: int = _field(128, "Examples per training step.")
    steps: int = _field(300, "Training steps per run; 0 measures at initialization only.")
    eval_every: int = _field(100, "Steps between test evaluations.")
    log_every: int = _field(10, "Steps between TensorBoard points and loss-history points.")
    histograms: bool = _field(False, "Also log per-layer histograms of log10|dL/dW_l| to TensorBoard (computed in the jit).")
    checkpoint_every: int = _field(1000, "Steps between Orbax checkpoints (also at step 0 and the end); 0: only those.")
    keep_checkpoints: int = _field(2, "Newest checkpoints kept per run, besides step 0.")
    checkpoints: str = _field(
        "every",
        "Checkpoint policy: every (step 0, every --checkpoint_every steps and the end), ends (step 0 and the end only:"
        " less disk) or none (no run checkpoints: an interrupted run restarts, runs cannot be reopened for analysis).",
    )
    seed: int = _field(0, "Seeds the parameters and the order of minibatches.")
    data_seed: int = _field(0, "Seeds the train/validation/test split and synthetic data, shared by all runs.")
    val_fraction: float = _field(
        0.2, "Fraction of the training set held out for validation (every choice is made on it; test only reports)."
    )
    bn_momentum: float = _field(0.9, "Running-average decay of batchnorm statistics.")
    instruments: str = _field(
        "standard", "basic | standard (+ q_l, c_l, dead units, distance from init) | full (+ per-sample, curvature)."
    )
    instrument_every: int = _field(100, "Steps between the full tier's curvature measurements (also at 0 and the end).")

    @property
    def name(self) -> str:
        """Folder-safe name that encodes what varies across a sweep."""
        from decay.families import FAMILIES  # the family adds what else varies across its studies (Family.name_suffix)

        res = f"-res{self.residual_scale:g}" if self.residual else ""
        if self.model in FAMILIES.names() and FAMILIES.get(self.model).name_suffix is not None:
            res += FAMILIES.get(self.model).name_suffix(self)
        return f"{self.model}-d{self.depth:04d}-{self.activation}-{self.norm}{res}-lr{self.learning_rate:g}-s{self.seed}"

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dataclasses.asdict(self)


def help_of(name: str) -> str:
    """The help text of RunConfig field `name`."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(RunConfig)}[name]


CHECKPOINT_POLICIES = ("every", "ends", "none")  # RunConfig.checkpoints

DEFAULT_LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)  # the depth sweep's default grid (experiments.depth_sweep)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A grid of runs: depths x activations x norms x learning rates x seeds, all else shared.

    Each (depth, activation, norm) is a configuration; its learning rate is tuned over
    `learning_rates` on the validation split (`decay.stats.best_by_validation`).
    """

    base: RunConfig = RunConfig()  # shared settings; depth, activation, norm, learning rate, seed are overridden
    depths: tuple[int, ...] = (2, 8, 32)  # hidden-layer counts to sweep
    activations: tuple[str, ...] = ("sigmoid", "tanh", "relu")  # activations to sweep
    norms: tuple[str, ...] = ("none", "batchnorm", "layernorm")  # normalizations to sweep
    seeds: int = 3  # seeds 0..seeds-1 for every grid point
    learning_rates: tuple[float, ...] | None = None  # the grid each configuration is tuned over; None: base's rate alone

    @property
    def rates(self) -> tuple[float, ...]:
        """The learning rates run: `learning_rates`, or the base's rate alone."""
        return (self.base.learning_rate,) if self.learning_rates is None else tuple(self.learning_rates)

    def runs(self) -> list[RunConfig]:
        """The grid, learning rates and seeds innermost so that one compiled program serves them all."""
        return [
            dataclasses.replace(self.base, depth=d, activation=a, norm=n, learning_rate=lr, seed=s)
            for d in self.depths
            for a in self.activations
            for n in self.norms
            for lr in self.rates
            for s in range(self.seeds)
        ]

    def to_json(self) -> dict[str, Any]:
        """Plain dict for JSON (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key in ("depths", "activations", "norms"):
            out[key] = list(getattr(self, key))
        out["learning_rates"] = list(self.rates)
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
            learning_rates=tuple(data["learning_rates"]) if data.get("learning_rates") else None,
        )


@dataclasses.dataclass(frozen=True)
class DoctorConfig:
    """The doctor's (decay.studies.doctor) one configuration, and the budget of its verification."""

    base: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(depth=64, steps=200))
    seeds: int = 3  # per side; intervals need >= 2
    learning_rates: tuple[float, ...] = (0.01, 0.03, 0.1)  # each side tuned over them on validation

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base.to_json(), "seeds": self.seeds, "learning_rates": list(self.learning_rates)}


def dumps(data: dict[str, Any]) -> str:
    """Stable, readable JSON for config files."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
