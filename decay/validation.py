"""Validation of configs against the registries: one-line ConfigErrors that name the flag.

Kept apart from `decay.config` so that the config stays importable by every module (the
registries import it) while this module may import every registry.
"""

from __future__ import annotations

import dataclasses
import math

from decay.config import CHECKPOINT_POLICIES, RunConfig, SweepConfig
from decay.data import DATASETS, SEQUENCE, TASK_OF
from decay.errors import ConfigError
from decay.families import FAMILIES
from decay.families.rnn import RECURRENT_INITS
from decay.instruments import TIERS
from decay.layers import ACTIVATIONS, INITIALIZERS, NORMS
from decay.optim import OPTIMIZERS

INT32_MAX = 2**31 - 1  # the largest step count a run's int32 step counter (and the jitted step's arguments) holds
MAX_RUNS = 100_000  # the most runs one sweep lists: its grid is materialized as a list of configs before anything runs


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate_sweep(cfg: SweepConfig) -> None:
    """Raises ConfigError (one line, naming the flag) for any invalid setting."""
    b = cfg.base
    if cfg.learning_rates is not None:  # a grid (the sweep's --learning_rates), checked before the base's rate
        _check(len(cfg.rates) > 0, "--learning_rates is empty; give a comma list of rates > 0, e.g. 0.01,0.05,0.25")
        for lr in cfg.rates:
            _check(math.isfinite(lr) and lr > 0, f"--learning_rates contains {lr:g}; every rate must be a finite number > 0")
        names = [f"{lr:g}" for lr in cfg.rates]  # run names carry the rate as %g
        same = sorted({n for n in names if names.count(n) > 1})
        _check(not same, f"--learning_rates lists {', '.join(same)} more than once (rates equal to 6 digits); give each once")
    for flag in (
        "learning_rate", "weight_var", "bias_var", "clip_norm", "residual_scale", "bn_momentum", "adam_eps", "weight_decay",
        "val_fraction", "input_var", "forget_bias",
    ):  # fmt: skip
        value = getattr(b, flag)
        _check(value is None or math.isfinite(value), f"--{flag}={value}; must be a finite number")
    grid = (
        ("depths", cfg.depths),
        ("activations", cfg.activations),
        ("norms", cfg.norms),
        ("learning_rates", cfg.rates),
    )
    for flag, values in grid:
        dup = sorted({str(v) for v in values if list(values).count(v) > 1})
        _check(not dup, f"--{flag} lists {', '.join(dup)} more than once; give each value once")
    _check(b.model in FAMILIES, f"--model={b.model!r} is unknown; allowed: {', '.join(FAMILIES.names())}")
    _check(b.dataset in DATASETS, f"--dataset={b.dataset!r} is unknown; allowed: {', '.join(DATASETS.names())}")
    _check(len(cfg.depths) > 0, "--depths is empty; give a comma list of integers >= 1, e.g. 2,4,8")
    for d in cfg.depths:
        _check(d >= 1, f"--depths contains {d}; every depth must be an integer >= 1")
    FAMILIES.get(b.model).check_depths(tuple(cfg.depths))
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
    _check(0.0 < b.val_fraction < 1.0, f"--val_fraction={b.val_fraction}; must be in (0, 1)")
    _check(b.adam_eps > 0, f"--adam_eps={b.adam_eps}; must be > 0")
    _check(b.weight_decay >= 0, f"--weight_decay={b.weight_decay}; must be >= 0")
    _check(b.batch_size >= 1, f"--batch_size={b.batch_size}; must be an integer >= 1")
    _check(b.steps >= 0, f"--steps={b.steps}; must be an integer >= 0 (0: measure at initialization only)")
    _check(b.eval_every >= 1, f"--eval_every={b.eval_every}; must be an integer >= 1")
    _check(b.log_every >= 1, f"--log_every={b.log_every}; must be an integer >= 1")
    _check(b.instruments in TIERS, f"--instruments={b.instruments!r} is unknown; allowed: {', '.join(TIERS)}")
    _check(b.instrument_every >= 1, f"--instrument_every={b.instrument_every}; must be an integer >= 1")
    _check(b.checkpoint_every >= 0, f"--checkpoint_every={b.checkpoint_every}; must be an integer >= 0")
    _check(b.keep_checkpoints >= 1, f"--keep_checkpoints={b.keep_checkpoints}; must be an integer >= 1")
    _check(
        b.checkpoints in CHECKPOINT_POLICIES,
        f"--checkpoints={b.checkpoints!r} is unknown; allowed: {', '.join(CHECKPOINT_POLICIES)}",
    )
    _check(cfg.seeds >= 1, f"--seeds={cfg.seeds}; must be an integer >= 1")
    runs = len(cfg.depths) * len(cfg.activations) * len(cfg.norms) * len(cfg.rates) * cfg.seeds
    _check(
        runs <= MAX_RUNS,
        f"--seeds={cfg.seeds}: the sweep would be {runs:,} runs ({len(cfg.depths)} depths x {len(cfg.activations)}"
        f" activations x {len(cfg.norms)} norms x {len(cfg.rates)} learning rates x {cfg.seeds} seeds); at most {MAX_RUNS:,}",
    )
    _check(b.data_seed >= 0, f"--data_seed={b.data_seed}; must be an integer >= 0")
    _check(b.weight_var is None or b.weight_var > 0, f"--weight_var={b.weight_var}; must be > 0")
    _check(b.bias_var is None or b.bias_var >= 0, f"--bias_var={b.bias_var}; must be >= 0")
    _check(b.clip_norm is None or b.clip_norm > 0, f"--clip_norm={b.clip_norm}; must be > 0")
    _check(0.0 <= b.bn_momentum < 1.0, f"--bn_momentum={b.bn_momentum}; must be in [0, 1)")
    _check(b.input_var is None or b.input_var > 0, f"--input_var={b.input_var}; must be > 0")
    _check(
        b.recurrent_init in RECURRENT_INITS,
        f"--recurrent_init={b.recurrent_init!r} is unknown; allowed: {', '.join(RECURRENT_INITS)}",
    )
    if b.dataset in SEQUENCE:
        _check(b.seq_len >= 1, f"--seq_len={b.seq_len}; --dataset={b.dataset} needs a sequence length >= 1")
    _check(b.warmup_steps >= 0, f"--warmup_steps={b.warmup_steps}; must be an integer >= 0")
    for flag in ("steps", "warmup_steps", "instrument_every"):  # step counts the jitted step compares with its int32 step
        value = getattr(b, flag)
        _check(value <= INT32_MAX, f"--{flag}={value}; must be at most {INT32_MAX} (steps are counted in 32-bit integers)")
    _check(b.max_len >= 0, f"--max_len={b.max_len}; must be an integer >= 0 (0: the data's length)")
    family = FAMILIES.get(b.model)
    for n in cfg.norms:
        family.check(dataclasses.replace(b, norm=n), b.dataset, b.dataset in SEQUENCE, TASK_OF[b.dataset])


def validate_run(cfg: RunConfig) -> None:
    """`validate_sweep` for one run."""
    one = SweepConfig(
        base=cfg,
        depths=(cfg.depth,),
        activations=(cfg.activation,),
        norms=(cfg.norm,),
        seeds=1,
    )
    validate_sweep(one)
