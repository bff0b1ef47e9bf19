"""The results row: the project's contract, built here and only here.

A finished run becomes one JSON object, a line of `results.jsonl`. `FIELDS` lists every key
in order with its JSON type, the instrument tier that adds it, and its meaning; `build` makes
a row from a run's config, dataset and host record; `docs/reference.md` shows the same list
(a test checks that they agree). Per-layer lists have one entry per probe point (a hidden
layer, 0 nearest the input). Files are strict JSON: NaN and Inf are written as null.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import numpy as np

from decay import families, instruments, metrics, theory
from decay.config import RunConfig
from decay.data import Dataset
from decay.layers import resolve_init
from decay.watcher import main_stack

Row = dict[str, Any]  # one results.jsonl line; keys and meanings in FIELDS
SCHEMA = 1  # the layout of rows and study configs this decay writes; rows without "schema" are from before it (0)


class Field(NamedTuple):
    """One key of the row."""

    name: str
    kind: str  # JSON type: str, int, float, bool, list[float], list[dict], dict, ... ("| null" where it may be null)
    tier: str  # instrument tier that adds it: basic (always), standard or full
    meaning: str


_F = Field
FIELDS: tuple[Field, ...] = (
    _F("name", "str", "basic", "run name: model-d<depth>-activation-norm[-res<scale>]-lr<rate>-s<seed>"),
    _F("schema", "int", "basic", "layout version of the row (decay.row.SCHEMA); a study resumes only rows of its own"),
    _F("model", "str", "basic", "model family"),
    _F("dataset", "str", "basic", "dataset"),
    _F("task", "str", "basic", "classification, regression or per_position (decay.tasks): what the loss and accuracy mean"),
    _F("seq_len", "int | null", "basic", "time steps of a sequence task (the points of each recurrent layer); null for images"),
    _F("depth", "int", "basic", "hidden weight layers"),
    _F("width", "int", "basic", "units or channels per hidden layer"),
    _F("activation", "str", "basic", "activation"),
    _F("norm", "str", "basic", "normalization"),
    _F("init", "str", "basic", "the resolved kernel init ('mean_field' when weight_var is set)"),
    _F("weight_var", "float | null", "basic", "sigma_w^2 of a mean-field init"),
    _F("bias_var", "float | null", "basic", "sigma_b^2 of a mean-field init"),
    _F("recurrent_init", "str | null", "basic", "rnn/lstm/gru: the recurrent kernel's init ('mean_field' with weight_var)"),
    _F("input_var", "float | null", "basic", "rnn/lstm/gru: sigma_u^2 of the input kernel, when set"),
    _F("forget_bias", "float | null", "basic", "lstm: the forget gate's initial bias"),
    _F("block", "str | null", "basic", "transformer: where the norm sits (post_ln, pre_ln, deepnorm, rezero, no_norm)"),
    _F("heads", "int | null", "basic", "transformer: attention heads"),
    _F("causal", "bool | null", "basic", "transformer: causal attention (position i reads positions <= i)"),
    _F("residual", "bool", "basic", "residual connections in layers 1..depth-1"),
    _F("residual_scale", "float", "basic", "alpha in h + alpha * layer(h)"),
    _F("optimizer", "str", "basic", "optimizer"),
    _F("learning_rate", "float", "basic", "learning rate (after the warm-up, constant)"),
    _F("warmup_steps", "int", "basic", "steps of linear learning-rate warm-up from lr/warmup_steps to lr (0: none)"),
    _F("clip_norm", "float | null", "basic", "global-norm gradient clipping threshold"),
    _F("adam_eps", "float", "basic", "epsilon of adam/adamw"),
    _F("weight_decay", "float", "basic", "L2 weight decay added to the gradient"),
    _F("val_fraction", "float", "basic", "fraction of the training set held out for validation"),
    _F("batch_size", "int", "basic", "examples per step"),
    _F("steps", "int", "basic", "training steps asked for"),
    _F("seed", "int", "basic", "parameter and minibatch seed"),
    _F("final_loss", "float | null", "basic", "mean training loss of the last 10 finite steps"),
    _F("test_loss", "float | null", "basic", "test loss at the end; null for a diverged run"),
    _F(
        "test_accuracy",
        "float | null",
        "basic",
        "test accuracy at the end (regression: fraction within 0.1 of the target; per_position: of positions); null if diverged",
    ),
    _F("val_loss", "float | null", "basic", "validation loss at the end; null for a diverged run"),
    _F("val_accuracy", "float | null", "basic", "validation accuracy at the end (every choice is made on it); null if diverged"),
    _F("train_loss_init", "float | null", "basic", "training-split loss at step 0 (evaluation mode, first 2048 examples)"),
    _F("train_loss_end", "float | null", "basic", "training-split loss at the end, the same way; null for a diverged run"),
    _F("train_accuracy_end", "float | null", "basic", "training-split accuracy at the end; null for a diverged run"),
    _F(
        "trainability",
        "str",
        "basic",
        "trains | partial | fails | diverged | untrained (steps 0): train_loss_end against chance_loss",
    ),
    _F("chance_loss", "float", "basic", "loss of the best input-blind prediction: ln(classes), adding 1/6, copy 10 ln 8/(T+20)"),
    _F("best_val_step", "int | null", "basic", "the evaluation step of the best validation accuracy"),
    _F("still_improving", "bool | null", "basic", "validation accuracy at the end beats every one up to 3/4 of the budget"),
    _F("diverged", "bool", "basic", "the loss or a gradient entry became NaN or Inf"),
    _F("diverged_at_step", "int | null", "basic", "the step whose loss or gradient was not finite"),
    _F(
        "chi",
        "float | null",
        "basic",
        "per-layer (recurrent: per-time-step, first layer) factor of the squared backprop signal at step 0 (metrics.fit_chi)",
    ),
    _F("verdict", "str", "basic", "vanishing, exploding or stable, from chi^(n-1), n = depth or T (decay.metrics.verdict)"),
    _F("verdict_borderline", "bool", "basic", "chi^(n-1) within a factor 2 of a verdict threshold"),
    _F("grad_norms_init", "list[float]", "basic", "per layer ||dL/dW_l|| at step 0"),
    _F(
        "signal_norms_init",
        "list[float]",
        "basic",
        "per layer ||dL/dh_l|| at step 0 (through the probes); recurrent: per time step ||dL/dh_t||, layer-major",
    ),
    _F("cell_signal_norms_init", "list[float] | null", "basic", "lstm: per time step ||dL/dc_t|| of the cell state at step 0"),
    _F("act_rms_init", "list[float]", "basic", "per layer RMS of the post-activation output at step 0"),
    _F("weight_norms_init", "list[float]", "basic", "per layer ||W_l|| at step 0"),
    _F("grad_norms_final", "list[float]", "basic", "per layer ||dL/dW_l|| at the last finite step"),
    _F("signal_norms_final", "list[float]", "basic", "per layer ||dL/dh_l|| at the last finite step"),
    _F("cell_signal_norms_final", "list[float] | null", "basic", "lstm: per time step ||dL/dc_t|| at the last finite step"),
    _F("act_rms_final", "list[float]", "basic", "per layer act RMS at the last finite step"),
    _F("weight_norms_final", "list[float]", "basic", "per layer ||W_l|| at the last finite step"),
    _F("update_ratio_final", "list[float]", "basic", "per layer ||delta W_l|| / ||W_l|| of the last finite step"),
    _F("chi_theory", "float | null", "basic", "mean-field prediction of chi; null where no theory applies"),
    _F(
        "signal_profile_theory",
        "list[float] | null",
        "basic",
        "predicted ||dL/dh_l|| / ||dL/dh_{L-1}|| per layer (recurrent: per time step)",
    ),
    _F("theory", "str", "basic", "which theory gave the prediction, or 'no theory: <why>'"),
    _F(
        "q_theory_low",
        "list[float] | null",
        "basic",
        "transformer (pre_ln, rezero): per point lower edge of the predicted q at init (tokens uncorrelated); else null",
    ),
    _F("q_theory_high", "list[float] | null", "basic", "per point upper edge of the predicted q at init (tokens alike)"),
    _F("instruments", "str", "basic", "the instrument tier of the run"),
    _F("q_init", "list[float]", "standard", "per layer mean of h_l^2 at step 0 (the mean-field q)"),
    _F("q_final", "list[float]", "standard", "per layer q at the last finite step"),
    _F("c_init", "list[float]", "standard", "per layer mean pairwise cosine of h_l across the batch at step 0"),
    _F("c_final", "list[float]", "standard", "per layer c at the last finite step"),
    _F(
        "c_tokens_init",
        "list[float] | null",
        "standard",
        "transformer: per point mean cosine between the tokens of one example at step 0 (rank collapse: 1)",
    ),
    _F("c_tokens_final", "list[float] | null", "standard", "transformer: per point c_tokens at the last finite step"),
    _F("dead_fraction_init", "list[float | null]", "standard", "per layer fraction of units inactive on every example, step 0"),
    _F("dead_fraction_final", "list[float | null]", "standard", "per layer dead fraction at the last finite step"),
    _F("distance_init", "list[float]", "standard", "per layer ||W_l - W_l(0)|| / ||W_l(0)|| at step 0 (zeros)"),
    _F("distance_final", "list[float]", "standard", "per layer distance from init at the last finite step"),
    _F("per_sample_grad_norm_init", "list[float]", "full", "per layer mean per-sample gradient norm at step 0"),
    _F("per_sample_grad_norm_final", "list[float]", "full", "the same at the last finite step"),
    _F("grad_snr_init", "list[float]", "full", "per layer ||mean g||^2 / tr Sigma at step 0"),
    _F("grad_snr_final", "list[float]", "full", "the same at the last finite step"),
    _F("b_simple_layers_init", "list[float]", "full", "per layer tr Sigma / ||G||^2 (McCandlish et al. 2018) at step 0"),
    _F("b_simple_layers_final", "list[float]", "full", "the same at the last finite step"),
    _F("b_simple_init", "float | null", "full", "B_simple over all layer kernels at step 0"),
    _F("b_simple_final", "float | null", "full", "the same at the last finite step"),
    _F("q_star_theory", "float | null", "standard", "mean-field fixed point q* (plain nets with theory only)"),
    _F("c_star_theory", "float | null", "standard", "mean-field fixed point c* (plain nets with theory only)"),
    _F(
        "q_slope_theory",
        "float | null",
        "standard",
        "slope of the variance map at q*: q settles over -1/ln(slope) layers (1: neutral, never settles)",
    ),
    _F(
        "curvature", "list[dict]", "full", "every curvature measurement: {step, hessian_top, hessian_trace, hessian_trace_layers}"
    ),
    _F("hessian_top_init", "float | null", "full", "top Hessian eigenvalue at step 0"),
    _F("hessian_top_final", "float | null", "full", "top Hessian eigenvalue at the last measurement"),
    _F("hessian_trace_init", "float | null", "full", "Hutchinson Hessian trace at step 0"),
    _F("hessian_trace_final", "float | null", "full", "Hessian trace at the last measurement"),
    _F("hessian_trace_layers_init", "list[float] | null", "full", "per layer kernel-block Hessian trace at step 0"),
    _F("hessian_trace_layers_final", "list[float] | null", "full", "per layer kernel-block trace at the last measurement"),
    _F("edge_of_stability", "float | null", "full", "2 / lr (sgd) or 3.8 / lr (momentum 0.9); null for adaptive optimizers"),
    _F(
        "history",
        "list[dict]",
        "basic",
        "{step, train_loss (minibatch mean since the last), train_eval_loss, val_loss, val_accuracy, test_loss,"
        " test_accuracy} at step 0, every eval_every steps and at the end",
    ),
    _F(
        "loss_history",
        "list[[int, float]]",
        "basic",
        "[step, training loss] every log_every steps, the last step and a diverging one",
    ),
    _F("num_classes", "int", "basic", "classes of the dataset"),
    _F("wall_time_s", "float", "basic", "wall time of the group of runs it trained with"),
)
NAMES = tuple(f.name for f in FIELDS)


def keys_for(tier: str, with_per_sample: bool = True) -> tuple[str, ...]:
    """The keys a row of instrument tier `tier` holds (`with_per_sample`: the family measures per-sample statistics)."""
    per_sample = {f"{k}_{s}" for k in instruments.PER_SAMPLE_KEYS for s in ("init", "final")}
    return tuple(
        f.name for f in FIELDS if instruments.tier_at_least(tier, f.tier) and (with_per_sample or f.name not in per_sample)
    )


# The row of a watched user model (`decay.watcher`, `decay.watchlog`): the sweep row's keys where they apply,
# per probe point or per parameter entry instead of per hidden layer, and the names of both.
WATCH_FIELDS: tuple[Field, ...] = (
    _F("name", "str", "basic", "the watched run's name"),
    _F("schema", "int", "basic", "layout version of the row (decay.row.SCHEMA)"),
    _F("kind", "str", "basic", "'watch': a user's model measured by decay.watch"),
    _F("model", "str", "basic", "the model's class, module.qualname"),
    _F("points", "list[str]", "basic", "probe point names in forward order ('[i]': layer i of a scanned stack)"),
    _F("params", "list[str]", "basic", "parameter entries in forward order ('[i]': layer i of a stacked parameter)"),
    _F("depth", "int", "basic", "probe points"),
    _F("steps", "int", "basic", "steps recorded"),
    _F("instruments", "str", "basic", "the instrument tier of the watch"),
    _F("final_loss", "float | null", "basic", "mean training loss of the last 10 finite recorded steps"),
    _F("diverged", "bool", "basic", "the loss or a gradient entry became NaN or Inf"),
    _F("diverged_at_step", "int | null", "basic", "the first recorded step whose loss or gradient was not finite"),
    _F(
        "chi_along", "str", "basic", "the kind of point chi is fitted along (decay.watcher.main_stack), e.g. 'blocks.residual[*]'"
    ),
    _F("chi", "float | null", "basic", "per-point factor of the squared backprop signal along chi_along, first recorded step"),
    _F("verdict", "str", "basic", "vanishing, exploding or stable, from chi^(n-1), n the points chi is fitted along"),
    _F("verdict_borderline", "bool", "basic", "chi^(n-1) within a factor 2 of a verdict threshold"),
    _F("signal_norms_init", "list[float]", "basic", "per point ||dL/dh_p|| at the first recorded step"),
    _F("signal_norms_final", "list[float]", "basic", "per point ||dL/dh_p|| at the last finite recorded step"),
    _F("act_rms_init", "list[float]", "basic", "per point RMS of the value there, first recorded step"),
    _F("act_rms_final", "list[float]", "basic", "per point RMS at the last finite recorded step"),
    _F("grad_norms_init", "list[float]", "basic", "per parameter entry ||dL/dW||, first recorded step"),
    _F("grad_norms_final", "list[float]", "basic", "per parameter entry ||dL/dW||, last finite recorded step"),
    _F("weight_norms_init", "list[float]", "basic", "per parameter entry ||W||, first recorded step"),
    _F("weight_norms_final", "list[float]", "basic", "per parameter entry ||W||, last finite recorded step"),
    _F("update_ratio_final", "list[float | null]", "basic", "per parameter entry ||delta W|| / ||W||, last finite step"),
    _F("q_init", "list[float]", "standard", "per point mean of h^2, first recorded step"),
    _F("q_final", "list[float]", "standard", "per point q, last finite recorded step"),
    _F("c_init", "list[float | null]", "standard", "per point mean pairwise cosine across the batch, first recorded step"),
    _F("c_final", "list[float | null]", "standard", "per point c, last finite recorded step"),
    _F("dead_fraction_init", "list[float | null]", "standard", "per point fraction of units <= 0 on every example, first step"),
    _F("dead_fraction_final", "list[float | null]", "standard", "per point dead fraction, last finite recorded step"),
    _F(
        "curvature", "list[dict]", "full", "every curvature measurement: {step, hessian_top, hessian_trace, hessian_trace_layers}"
    ),
    _F("loss_history", "list[[int, float]]", "basic", "[step, training loss] of every recorded step"),
    _F("wall_time_s", "float", "basic", "wall time from the first to the last recorded step"),
)
WATCH_NAMES = tuple(f.name for f in WATCH_FIELDS)


def build_watch(meta: dict[str, Any], record: RunRecord, steps: int, wall_time_s: float) -> Row:
    """The results row of a watched model from its metadata (name, model, points, params, instruments) and host record."""
    init_stats = _stats_from_json(record.init_stats) or {}
    last_stats = _stats_from_json(record.last_stats) or init_stats
    along, indices = main_stack(list(meta["points"]))
    signal = np.asarray(init_stats.get("signal_norms", np.zeros(len(meta["points"]))))[indices]
    chi = metrics.fit_chi(signal)
    points = len(meta["points"])
    row: Row = {
        "name": meta["name"],
        "schema": SCHEMA,
        "kind": "watch",
        "model": meta["model"],
        "points": list(meta["points"]),
        "params": list(meta["params"]),
        "depth": points,
        "steps": steps,
        "instruments": meta["instruments"],
        "final_loss": metrics.clean(np.mean(record.recent_losses)) if record.recent_losses else None,
        "diverged": record.diverged_at is not None,
        "diverged_at_step": record.diverged_at,
        "chi_along": along,
        "chi": metrics.clean(chi),
        "verdict": metrics.verdict(chi, len(indices), signal),
        "verdict_borderline": metrics.borderline(chi, len(indices)),
    }
    for key in ("signal_norms", "act_rms", "grad_norms", "weight_norms"):
        row[f"{key}_init"] = _to_list(init_stats.get(key, []))
        row[f"{key}_final"] = _to_list(last_stats.get(key, []))
    row["update_ratio_final"] = _to_list(last_stats.get("update_ratio", []))
    if instruments.tier_at_least(meta["instruments"], "standard"):
        for key in ("q", "c", "dead_fraction"):
            row[f"{key}_init"] = _to_list(init_stats.get(key, []))
            row[f"{key}_final"] = _to_list(last_stats.get(key, []))
    if record.curvature:
        row["curvature"] = record.curvature
    row["loss_history"] = record.loss_history
    row["wall_time_s"] = round(wall_time_s, 3)
    unknown = set(row) - set(WATCH_NAMES)
    if unknown:
        raise AssertionError(f"watched row keys missing from decay.row.WATCH_FIELDS: {sorted(unknown)}")
    return {k: row[k] for k in WATCH_NAMES if k in row}


# SGD is stable on a quadratic while lr * lambda_max < 2; heavy-ball momentum beta = 0.9: < 2 + 2 beta.
EDGE_OF_STABILITY = {"sgd": 2.0, "momentum": 3.8}


@dataclasses.dataclass
class RunRecord:
    """What the host accumulates over a run; saved with every checkpoint so that a resumed run ends identically."""

    done: int = 0  # steps taken
    history: list = dataclasses.field(default_factory=list)  # the row's `history`
    loss_history: list = dataclasses.field(default_factory=list)  # the row's `loss_history`
    recent_losses: list = dataclasses.field(default_factory=list)  # the last 10 finite training losses
    interval_losses: list = dataclasses.field(default_factory=list)  # finite training losses since the last evaluation
    init_stats: dict | None = None  # per-layer statistics at step 0, as JSON lists
    last_stats: dict | None = None  # per-layer statistics at the last finite step, as JSON lists
    diverged_at: int | None = None  # the step that was not finite
    test_loss: float | None = None  # at the latest evaluation
    test_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    train_eval_loss: float | None = None  # the training subset's loss, evaluation mode
    train_eval_accuracy: float | None = None
    train_loss_init: float | None = None  # the training subset's loss at step 0
    curvature: list = dataclasses.field(default_factory=list)  # full tier: {step, hessian_*} entries

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the checkpoint's `progress` item)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of `to_json`; unknown keys are ignored, missing ones take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def stats_to_json(stats: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
    """Per-layer statistics as JSON lists (non-finite values as null)."""
    if stats is None:
        return None
    return {k: [metrics.clean(v) for v in np.asarray(a, np.float64).ravel()] for k, a in stats.items()}


def _stats_from_json(data: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    if data is None:
        return None
    return {k: np.array([np.nan if v is None else v for v in a], np.float64) for k, a in data.items()}


def _to_list(a) -> list[float | None]:
    return [metrics.clean(v) for v in np.asarray(a, np.float64).ravel()]


@functools.lru_cache(maxsize=64)
def _theory_cached(cfg: RunConfig, q_in: tuple[float, ...], fan_in: int) -> dict[str, Any]:
    return theory.predict(cfg, np.asarray(q_in), fan_in)


def theory_fields(cfg: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """Mean-field prediction for `cfg` (`chi_theory`, `signal_profile_theory`, `theory`); seeds share it."""
    fam = families.of(cfg)
    if fam.predict is not None:  # the family's own theory (recurrent nets: along time)
        return fam.predict(cfg, dataset)
    q_in, fan_in = theory.input_q(dataset.x_train)
    return dict(_theory_cached(dataclasses.replace(cfg, seed=0), tuple(q_in.tolist()), fan_in))


def _instrument_fields(cfg: RunConfig, dataset: Dataset, init_stats, last_stats, curvature) -> dict[str, Any]:
    """The instruments of `cfg.instruments` at initialization and at the end (see `decay.instruments`)."""
    out: dict[str, Any] = {"instruments": cfg.instruments}
    if not instruments.tier_at_least(cfg.instruments, "standard"):
        return out
    for key in (*instruments.STANDARD_KEYS, *instruments.PER_SAMPLE_KEYS):
        for suffix, stats in (("init", init_stats), ("final", last_stats)):
            if key in stats:  # per-layer lists; b_simple, over all layers, a number
                out[f"{key}_{suffix}"] = metrics.clean(stats[key].item()) if key == "b_simple" else _to_list(stats[key])
    for suffix, stats in (("init", init_stats), ("final", last_stats)):  # the transformer's rank-collapse measure
        out[f"c_tokens_{suffix}"] = _to_list(stats["c_tokens"]) if "c_tokens" in stats else None
    fan_in = int(np.prod(dataset.x_train.shape[1:]))
    fp = theory.plain_fixed_point(cfg, fan_in)
    out["q_star_theory"] = None if fp is None else metrics.clean(fp.q_star)
    out["c_star_theory"] = None if fp is None else metrics.clean(fp.c_star)
    out["q_slope_theory"] = None if fp is None or math.isnan(fp.xi_q) else metrics.clean(math.exp(-1.0 / fp.xi_q))
    if instruments.tier_at_least(cfg.instruments, "full"):
        out["curvature"] = curvature
        at_init = curvature[0] if curvature and curvature[0]["step"] == 0 else None
        at_end = curvature[-1] if curvature else None
        for key in instruments.CURVATURE_KEYS:  # entries are lists: one value, or one per layer
            layers = key == "hessian_trace_layers"
            out[f"{key}_init"] = None if at_init is None else at_init[key] if layers else at_init[key][0]
            out[f"{key}_final"] = None if at_end is None else at_end[key] if layers else at_end[key][0]
        threshold = EDGE_OF_STABILITY.get(cfg.optimizer)
        out["edge_of_stability"] = None if threshold is None else threshold / cfg.learning_rate
    return out


def build(cfg: RunConfig, dataset: Dataset, record: RunRecord, wall_time_s: float) -> Row:
    """The results.jsonl row of a finished run from its host record; keys in the order of FIELDS."""
    init_stats = _stats_from_json(record.init_stats)
    last_stats = _stats_from_json(record.last_stats)
    fam = families.of(cfg)
    shape = tuple(dataset.x_train.shape[1:])
    lo, hi = fam.chi_window(cfg, shape)  # along depth, or along time in a recurrent net's first layer
    chi = metrics.fit_chi(init_stats["signal_norms"][lo:hi])
    final_loss = float(np.mean(record.recent_losses)) if record.recent_losses else math.nan
    diverged = record.diverged_at is not None
    train_end = None if diverged else record.train_eval_loss
    recurrent = fam.sequence
    row = {
        "name": cfg.name,
        "schema": SCHEMA,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "task": dataset.task,
        "seq_len": int(shape[0]) if recurrent else None,
        "depth": cfg.depth,
        "width": cfg.width,
        "activation": cfg.activation,
        "norm": cfg.norm,
        "init": "mean_field" if cfg.weight_var is not None else resolve_init(cfg.init, cfg.activation),
        "weight_var": cfg.weight_var,
        "bias_var": cfg.bias_var,
        "block": None,  # the transformer's and the recurrent families' own settings (Family.row_fields), else null
        "heads": None,
        "causal": None,
        "recurrent_init": None,
        "input_var": None,
        "forget_bias": None,
        **(fam.row_fields(cfg) if fam.row_fields else {}),
        "residual": cfg.residual,
        "residual_scale": cfg.residual_scale,
        "optimizer": cfg.optimizer,
        "learning_rate": cfg.learning_rate,
        "warmup_steps": cfg.warmup_steps,
        "clip_norm": cfg.clip_norm,
        "adam_eps": cfg.adam_eps,
        "weight_decay": cfg.weight_decay,
        "val_fraction": cfg.val_fraction,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "final_loss": metrics.clean(final_loss),
        # A diverged run has no test score: its parameters are where training blew up.
        "test_loss": None if diverged else record.test_loss,
        "test_accuracy": None if diverged else metrics.clean(record.test_accuracy),
        "val_loss": None if diverged else record.val_loss,
        "val_accuracy": None if diverged else metrics.clean(record.val_accuracy),
        "train_loss_init": record.train_loss_init,
        "train_loss_end": train_end,
        "train_accuracy_end": None if diverged else metrics.clean(record.train_eval_accuracy),
        "trainability": metrics.trainability(train_end, dataset.num_classes, diverged, cfg.steps, dataset.chance),
        "chance_loss": dataset.chance,
        "best_val_step": metrics.best_val_step(record.history),
        "still_improving": None if diverged else metrics.still_improving(record.history, cfg.steps),
        "diverged": diverged,
        "diverged_at_step": record.diverged_at,
        "chi": metrics.clean(chi),
        "verdict": metrics.verdict(chi, hi - lo, init_stats["signal_norms"][lo:hi]),
        "verdict_borderline": metrics.borderline(chi, hi - lo),
        "grad_norms_init": _to_list(init_stats["grad_norms"]),
        "signal_norms_init": _to_list(init_stats["signal_norms"]),
        "act_rms_init": _to_list(init_stats["act_rms"]),
        "weight_norms_init": _to_list(init_stats["weight_norms"]),
        "grad_norms_final": _to_list(last_stats["grad_norms"]),
        "signal_norms_final": _to_list(last_stats["signal_norms"]),
        "act_rms_final": _to_list(last_stats["act_rms"]),
        "weight_norms_final": _to_list(last_stats["weight_norms"]),
        "update_ratio_final": _to_list(last_stats.get("update_ratio", np.full(fam.kernels(cfg), np.nan))),
        "q_theory_low": None,  # a family's predicted q where it has one (the transformer's residual stream)
        "q_theory_high": None,
        **theory_fields(cfg, dataset),
        **_instrument_fields(cfg, dataset, init_stats, last_stats, record.curvature),
        "history": record.history,
        "loss_history": record.loss_history,
        # The cell path of an LSTM (Family.signal_parts); null where a family has none.
        "cell_signal_norms_init": None,
        "cell_signal_norms_final": None,
        **{
            f"{part}_{when}": _to_list(stats[part])
            for part in fam.signal_parts[1:]
            for when, stats in (("init", init_stats), ("final", last_stats))
        },
        "num_classes": dataset.num_classes,
        "wall_time_s": round(wall_time_s, 3),
    }
    unknown = set(row) - set(NAMES)
    if unknown:  # a key added above but not documented in FIELDS
        raise AssertionError(f"results row keys missing from decay.row.FIELDS: {sorted(unknown)}")
    return {k: row[k] for k in NAMES if k in row}
