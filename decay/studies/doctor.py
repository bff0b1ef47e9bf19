"""The doctor: what goes wrong with one configuration's gradients, the fixes theory proposes, each checked by measuring.

    report = decay.doctor(RunConfig(depth=64, activation="tanh", weight_var=0.8), "runs/doctor")
    print(report["diagnosis"]["words"])

1. Diagnosis: mean-field theory and a measurement at initialization of the configuration as
   given (chi, the gain chi^(depth-1), ||dL/dh_0|| / ||dL/dh_{L-1}||, c and q at the last layer,
   dead units), in words.
2. Proposals, ranked by how close theory puts their gain to 1 (then by how little they change):
   the critical (weight_var, bias_var) of the activation at the user's bias variance (He's
   2 / (1 + slope^2) for the ReLU family), a residual branch scale chosen for the depth, a norm
   change (layernorm) for batchnorm without skips or a saturating activation, and the change to
   ReLU with He init for a saturating activation.
3. Verification: the original and each proposal train side by side (seeds x learning rates, one
   compiled program per configuration); each side at its learning rate chosen on validation; the
   measured gain and the validation accuracy with intervals, before and after. A proposal whose
   measured gain misses [1e-1, 1e1] is shown as not verified.

Writes doctor.md, doctor.json, doctor.png and runs.jsonl (resumable) in the workdir.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from decay import families, metrics, results, stats, theory
from decay.config import DoctorConfig, RunConfig, SweepConfig, dumps
from decay.errors import ConfigError
from decay.layers import ACTIVATIONS, NORMS
from decay.runner import Event, Runner
from decay.validation import validate_sweep

GAIN_OK = (1e-1, 1e1)  # a fixed gradient: the squared signal from the last hidden layer to the first within x10
C_ALIKE = 0.95  # c at the last layer above this: the inputs look alike there
RESIDUAL_GAIN = 2.0  # the residual scale is chosen so that theory's gain over the depth is this
MAX_PROPOSALS = 3  # proposals verified (the best ranked)
SATURATING = ("sigmoid", "tanh")
RELU_SLOPES = {"relu": 0.0, "leaky_relu": 0.01}  # chi_1 = weight_var (1 + slope^2) / 2 at bias 0 (He et al. 2015)
KIND_ORDER = {"critical init": 0, "residual": 1, "norm": 2, "activation": 3}


@dataclasses.dataclass(frozen=True)
class Proposal:
    """One proposed change of the configuration, with theory's prediction for it."""

    kind: str  # a KIND_ORDER key
    changes: tuple[tuple[str, Any], ...]  # (RunConfig field, value)
    reason: str
    config: RunConfig
    chi_theory: float | None
    theory_note: str = ""  # how theory's number was obtained, when approximately

    @property
    def flags(self) -> str:
        """The flags to set (`--k=v`), then those to remove (back to their default None) in words."""
        text = " ".join(f"--{k}={_flag_value(v)}" for k, v in self.changes if v is not None)
        drop = [f"--{k}" for k, v in self.changes if v is None]
        return text + (f" (and remove {', '.join(drop)})" if drop else "")

    def gain_theory(self) -> float | None:
        return _gain(self.chi_theory, self.config.depth)

    def lg_theory(self) -> float | None:
        return _lg(self.chi_theory, self.config.depth)


def _flag_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _lg(chi: float | None, depth: int) -> float | None:
    """log10 of the gain chi^(depth - 1); None without a positive chi."""
    if chi is None or not chi > 0 or depth < 2:
        return None
    return metrics.log_gain(chi, depth)


def _gain(chi: float | None, depth: int) -> float | None:
    """chi^(depth - 1), None without a chi or beyond float range (|log10| > 300: see `_lg`)."""
    lg = _lg(chi, depth)
    return None if lg is None or abs(lg) > 300 else metrics.clean(10**lg)


def lg_in_range(lg: float | None) -> bool:
    """Whether a gain's log10 lies within GAIN_OK (the doctor's "fixed")."""
    return lg is not None and math.log10(GAIN_OK[0]) <= lg <= math.log10(GAIN_OK[1])


def _fmt_gain(chi: float | None, depth: int) -> str:
    lg = _lg(chi, depth)
    if lg is None:
        return "-"
    return fmt_sci(10**lg) if abs(lg) <= 300 else f"1e{lg:+.0f}"


def lg_words(lg: float | None) -> str:
    """'vanishing' / 'exploding' / 'within [1e-1, 1e1]' for a gain's log10 by the doctor's own range GAIN_OK; 'no fit'
    without one."""
    if lg is None:
        return "no fit"
    if lg_in_range(lg):
        return "within [1e-1, 1e1]"
    return "vanishing" if lg < 0 else "exploding"


def validate(cfg: DoctorConfig) -> None:
    """One-line ConfigError for a bad setting, naming the flag (the sweep's checks for the run flags)."""
    b = cfg.base
    if b.depth < 2:
        raise ConfigError(f"--depth={b.depth}; the doctor needs depth >= 2 (a per-layer factor needs two layers)")
    for flag, value, registry in (("activation", b.activation, ACTIVATIONS), ("norm", b.norm, NORMS)):
        if value not in registry:
            raise ConfigError(f"--{flag}={value!r} is unknown; allowed: {', '.join(registry.names())}")
    validate_sweep(
        SweepConfig(
            base=b,
            depths=(b.depth,),
            activations=(b.activation,),
            norms=(b.norm,),
            seeds=cfg.seeds,
            learning_rates=tuple(cfg.learning_rates),
        )
    )


# ---- theory: the proposals ----


def _theory_chi(cfg: RunConfig, q_in: np.ndarray, fan_in: int) -> tuple[float | None, str]:
    """theory's chi for `cfg`, and a note when it comes from an approximation (batchnorm with skips: layernorm's)."""
    chi = theory.predict(cfg, q_in, fan_in)["chi_theory"]
    if chi is None and cfg.norm == "batchnorm" and cfg.residual:
        chi = theory.predict(dataclasses.replace(cfg, norm="layernorm"), q_in, fan_in)["chi_theory"]
        return chi, "layernorm's residual theory; batchnorm's batch coupling is not modeled"
    return chi, ""


def residual_scale_for(cfg: RunConfig, q_in: np.ndarray, fan_in: int) -> float | None:
    """The residual branch scale alpha in [1e-3, 1] whose theory gain chi^(depth-1) (chi fitted to the predicted profile,
    as the measurement is) is RESIDUAL_GAIN: 1 when alpha = 1 stays below it; 1/sqrt(depth) where no theory applies;
    None when no alpha in the range brings theory's gain into [1e-1, 1e1] (e.g. at small depth, where the fit includes
    the stem and the gain need not grow with alpha)."""

    def lg(alpha: float) -> float | None:
        new = dataclasses.replace(cfg, residual=True, residual_scale=alpha)
        return _lg(_theory_chi(new, q_in, fan_in)[0], cfg.depth)

    target = math.log10(RESIDUAL_GAIN)
    top, bottom = lg(1.0), lg(1e-3)
    if top is None:
        return float(f"{1 / math.sqrt(cfg.depth):.3g}")
    if top <= target and lg_in_range(top):
        return 1.0
    if bottom is not None and bottom <= target < top:  # the gain grows with alpha here: bisection on log alpha
        lo, hi = math.log(1e-3), 0.0
        for _ in range(14):
            mid = 0.5 * (lo + hi)
            g = lg(math.exp(mid))
            lo, hi = (mid, hi) if g is not None and g <= target else (lo, mid)
        alpha = float(f"{math.exp(lo):.3g}")
    else:  # otherwise the point of a log grid nearest the target
        grid = {float(f"{a:.3g}"): lg(a) for a in np.geomspace(1e-3, 1.0, 25)}
        alpha = min(grid, key=lambda a: abs((grid[a] if grid[a] is not None else math.inf) - target))
    return alpha if lg_in_range(lg(alpha)) else None


CRITICAL_BIAS_VARS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)  # points of the critical line the doctor compares


def critical_init(activation: str, bias_var: float) -> tuple[float, float] | None:
    """(weight_var, bias_var) on the critical line chi_1 = 1 at the given bias variance (He's for the ReLU family, bias 0)."""
    if activation in RELU_SLOPES:
        return 2.0 / (1.0 + RELU_SLOPES[activation] ** 2), 0.0
    w = theory.critical_weight_var(activation, bias_var, 0.1, 1000.0)
    return None if w is None else (float(f"{w:.6g}"), bias_var)


def best_critical_init(cfg: RunConfig, q_in: np.ndarray, fan_in: int) -> tuple[float, float] | None:
    """The point of the critical line whose predicted gain at this depth is nearest 1 (at the user's bias variance and at
    CRITICAL_BIAS_VARS; ties: the nearest to the user's): where q* = 0, chi_1 = 1 holds only in the limit and a finite net's
    signal still decays while q drifts to 0."""
    if cfg.activation in RELU_SLOPES:
        return critical_init(cfg.activation, 0.0)
    user = cfg.bias_var or 0.0
    best = None
    for b in sorted({user, *CRITICAL_BIAS_VARS}, key=lambda b: abs(b - user)):
        point = critical_init(cfg.activation, b)
        if point is None:
            continue
        g = _lg(_theory_chi(dataclasses.replace(cfg, weight_var=point[0], bias_var=point[1]), q_in, fan_in)[0], cfg.depth)
        if not lg_in_range(g):  # a point of the critical line whose finite-depth gain theory puts outside [1e-1, 1e1]
            continue
        score = abs(g)
        if best is None or score < best[0] - 1e-3:
            best = (score, point)
    return None if best is None else best[1]


def propose(cfg: RunConfig, q_in: np.ndarray, fan_in: int) -> list[Proposal]:
    """Every proposal that applies to `cfg`, ranked: theory's |log10 gain| (unknown last), then KIND_ORDER."""
    out: list[Proposal] = []
    own = _lg(_theory_chi(cfg, q_in, fan_in)[0], cfg.depth)  # theory's gain of the configuration as given

    def add(kind: str, reason: str, **changes: Any) -> None:
        new = dataclasses.replace(cfg, **changes)
        if new == cfg or any(p.config == new for p in out):
            return
        changes = {k: v for k, v in changes.items() if getattr(cfg, k) != v}
        chi, note = _theory_chi(new, q_in, fan_in)
        out.append(Proposal(kind, tuple(changes.items()), reason, new, chi, note))

    plain = cfg.norm == "none" and not cfg.residual
    if plain and families.of(cfg).theory == "mean_field":
        crit = best_critical_init(cfg, q_in, fan_in)
        _, own_wv, own_bv = theory.config_variances(cfg, cfg.width)
        if crit is not None and (abs(crit[0] - own_wv) > 1e-6 or abs(crit[1] - own_bv) > 1e-9):  # not already there
            wv, bv = crit
            if cfg.activation in RELU_SLOPES:
                why = f"He et al. 2015: for {cfg.activation}, chi_1 = sigma_w^2 (1 + slope^2) / 2 = 1 at sigma_w^2 = {wv:.4g}"
            else:
                why = (
                    f"the critical line of {cfg.activation} (chi_1 = 1: the backprop signal neither shrinks nor grows per "
                    f"layer; Poole et al. 2016, Schoenholz et al. 2017), at the sigma_b^2 = {bv:g} whose predicted gain over "
                    f"{cfg.depth} layers is nearest 1"
                )
            add("critical init", why, weight_var=wv, bias_var=bv)
    alpha = None
    if not cfg.residual or not lg_in_range(own):
        alpha = residual_scale_for(cfg, q_in, fan_in)
    if alpha is not None:
        chi_a = _theory_chi(dataclasses.replace(cfg, residual=True, residual_scale=alpha), q_in, fan_in)[0]
        why = (
            f"skip connections h + alpha f(h): each block multiplies the squared gradient by 1 + alpha^2 x (its branch's "
            f"factor) instead of the factor alone; at alpha = {alpha:g} theory's gain over {cfg.depth} layers is "
            f"{_fmt_gain(chi_a, cfg.depth)}"
        )
        if cfg.norm == "batchnorm":
            why += "; without skips batchnorm's gradient explodes with depth (Yang et al. 2019)"
        add("residual", why, residual=True, residual_scale=alpha)
    if cfg.norm == "batchnorm" and not cfg.residual:
        add(
            "norm",
            "layernorm normalizes each example on its own: no batch coupling, whose backward factor makes a deep "
            "batchnorm net's gradient explode (Yang et al. 2019)",
            norm="layernorm",
        )
    if cfg.activation in SATURATING:
        if cfg.norm == "none":
            add(
                "norm",
                f"layernorm keeps every layer's pre-activations at unit scale, so {cfg.activation} stays out of saturation "
                "and its derivative's mean square stays fixed from layer to layer",
                norm="layernorm",
            )
        add(
            "activation",
            f"ReLU with He init has chi_1 = 1 exactly and does not saturate: {cfg.activation}'s derivative is at most "
            f"{'1/4' if cfg.activation == 'sigmoid' else '1'} and smaller wherever it saturates",
            activation="relu",
            init="he_normal",
            weight_var=None,
            bias_var=None,
        )

    # A change that theory predicts to leave [1e-1, 1e1] and to be worse than the configuration as given is not proposed.
    if own is not None:
        out = [p for p in out if p.lg_theory() is None or lg_in_range(p.lg_theory()) or abs(p.lg_theory()) <= abs(own)]

    def rank(p: Proposal) -> tuple:
        g = p.lg_theory()
        return (round(abs(g), 1) if g is not None else math.inf, KIND_ORDER[p.kind])

    return sorted(out, key=rank)


# ---- measurement: the rows of one configuration ----


def _key(c: RunConfig) -> str:
    return dumps(c.to_json())


def _spread(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return (min(v), max(v)) if v else (None, None)


def measured(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's numbers at initialization (per seed, from each seed's first run; the init does not depend on
    the learning rate) and after training at its learning rate chosen on validation."""
    by_seed: dict[int, dict[str, Any]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], r)
    init = list(by_seed.values())
    depth = init[0]["depth"]
    chis = [r["chi"] for r in init]
    profiles = [np.asarray([np.nan if v is None else v for v in r["signal_norms_init"]], np.float64) for r in init]
    ratios = [p / p[-1] if p[-1] > 0 else np.full_like(p, np.nan) for p in profiles]
    chi = metrics.median_finite(chis)
    out = {
        "chi": chi,
        "chi_seeds": _spread(chis),
        "gain": _gain(chi, depth),
        "log10_gain": _lg(chi, depth),
        "first_over_last": metrics.median_finite([metrics.first_over_last(r) for r in init]),
        "c_last": metrics.median_finite([(r.get("c_init") or [None])[-1] for r in init]),
        "q_drift": metrics.median_finite([_q_drift(r) for r in init]),
        "dead_last": metrics.median_finite([(r.get("dead_fraction_init") or [None])[-1] for r in init]),
        "chi_theory": init[0].get("chi_theory"),
        "theory": init[0].get("theory"),
        "profile": [metrics.clean(v) for v in np.nanmedian(np.stack(ratios), axis=0)],
        "profile_theory": init[0].get("signal_profile_theory"),
        "verdict": metrics.group_verdict(init),
    }
    if rows[0]["steps"] > 0:
        choice = stats.best_by_validation(rows, lambda r: r["learning_rate"])
        vals = [r["val_accuracy"] if not r["diverged"] else 0.0 for r in choice.rows]  # a diverged run counts 0
        out.update(
            learning_rate=choice.value,
            rate_at_edge=choice.at_edge,
            val_accuracies=vals,
            val=stats.mean_std_ci(vals, (0.0, 1.0)),
            test=stats.mean_std_ci([r["test_accuracy"] if not r["diverged"] else 0.0 for r in choice.rows], (0.0, 1.0)),
            trainability=[r["trainability"] for r in choice.rows],
            diverged=sum(bool(r["diverged"]) for r in choice.rows),
        )
    return out


def _q_drift(r: dict[str, Any]) -> float | None:
    q = r.get("q_init")
    if not q or q[0] in (None, 0) or q[-1] is None:
        return None
    return q[-1] / q[0]


# ---- words ----


def fmt_sci(x: float | None) -> str:
    """A number in 2 significant digits (scientific outside [1e-2, 1e3)); '-' for None, '0 (underflow)' for 0."""
    if x is None:
        return "-"
    if x == 0:
        return "0 (underflow)"
    return f"{x:.2g}" if 1e-2 <= abs(x) < 1e3 else f"{x:.1e}"


def diagnosis_words(cfg: RunConfig, m: dict[str, Any], fan_in: int) -> list[str]:
    """What goes wrong and where, in plain sentences, from the measured numbers and theory (`fan_in`: the stem's inputs)."""
    d = cfg.depth
    lines = []
    chi = m["chi"]
    lo, hi = m["chi_seeds"]
    seeds = f" [seeds {lo:.3f} to {hi:.3f}]" if lo is not None and hi > lo else ""
    if chi is None:
        lines.append(f"No per-layer factor could be fitted: the backprop signal is {m['verdict']} (zeros or non-finite values).")
    else:
        what = {"vanishing": "Gradients vanish", "exploding": "Gradients explode"}.get(
            lg_words(_lg(chi, d)), "The gradient reaches the first layer within a factor 10 (squared)"
        )
        lines.append(
            f"{what}: measured chi = {chi:.3f} per layer{seeds}; over the {d - 1} layer maps from the last hidden layer back "
            f"to the first the squared backprop signal is multiplied by chi^{d - 1} = {_fmt_gain(chi, d)} "
            f"(||dL/dh_0|| / ||dL/dh_{d - 1}|| = {fmt_sci(m['first_over_last'])})."
        )
    where = _where(m["profile"])
    if where:
        lines.append(where)
    fp = theory.plain_fixed_point(cfg, fan_in)
    if m["chi_theory"] is not None:
        text = f"Theory ({m['theory']}): chi = {m['chi_theory']:.3f}, chi^{d - 1} = {_fmt_gain(m['chi_theory'], d)}"
        if fp is not None and math.isfinite(fp.xi_grad) and fp.xi_grad != 0:
            scale = abs(fp.xi_grad)
            text += f"; {fp.phase} phase, gradients {'shrink' if fp.xi_grad > 0 else 'grow'} by e every {scale:.3g} layers"
        lines.append(text + ".")
    qd = m["q_drift"]
    if qd is not None and qd < 1e-2:
        lines.append(f"The forward signal collapses too: q at the last layer is {fmt_sci(qd)} of the first layer's.")
    elif qd is not None and qd > 1e2:
        lines.append(f"The forward signal explodes too: q at the last layer is {fmt_sci(qd)} times the first layer's.")
    if m["c_last"] is not None and m["c_last"] > C_ALIKE:
        lines.append(
            f"At the last layer different inputs look alike (c = {m['c_last']:.3f}, the mean cosine between examples): "
            "the net maps them to nearly one direction."
        )
    if m["dead_last"] is not None and m["dead_last"] > 0.1:
        lines.append(f"{100 * m['dead_last']:.0f}% of the last layer's units are inactive on every example.")
    if "val" in m:
        fails = sum(t in ("fails", "diverged") for t in m["trainability"])
        edge = " (the grid's edge)" if m["rate_at_edge"] else ""
        text = (
            f"Trained {cfg.steps} steps at its best learning rate {m['learning_rate']:g}{edge}: validation accuracy "
            f"{m['val'].fmt(100, '.1f', '%')}"
        )
        if fails:
            text += f"; training fails (loss within 10% of chance, or diverged) in {fails} of {len(m['trainability'])} seeds"
            if lg_in_range(m["log10_gain"]):
                text += ", so here the gradient's decay is not what stops it"
        lines.append(text + ".")
    return lines


def _where(profile: Sequence[float | None]) -> str | None:
    """Where the signal, relative to the last hidden layer's, leaves [0.1, 10] (counted from the output)."""
    p = np.asarray([np.nan if v is None else v for v in profile], np.float64)
    last = len(p) - 1
    for l in range(last, -1, -1):
        if np.isfinite(p[l]) and (p[l] < 0.1 or p[l] > 10):
            kind = "less than a tenth of" if p[l] < 0.1 else "more than ten times"
            at0 = f"; at layer 0 it is {fmt_sci(p[0])} times it" if l > 0 and np.isfinite(p[0]) else ""
            return (
                f"Going down from the top, the backprop signal first becomes {kind} the last hidden layer's at layer {l} "
                f"({last - l} layers below the top){at0}."
            )
    return None


# ---- the doctor ----


def doctor(
    cfg: DoctorConfig | RunConfig, workdir: str, on_event: Callable[[Event], None] | None = None, command: str | None = None
) -> dict[str, Any]:
    """Diagnoses `cfg`, proposes fixes, verifies them; writes doctor.md, .json and .png in `workdir`; returns the JSON."""
    if isinstance(cfg, RunConfig):
        cfg = DoctorConfig(base=cfg)
    validate(cfg)
    base = cfg.base
    runner = Runner(
        workdir,
        cfg.to_json(),
        base,
        rows_file="runs.jsonl",
        key=_key,
        row_key=lambda r: r.get("_key"),
        command=command,
        ignore=("base.learning_rate", "base.seed"),  # set per run from learning_rates and seeds
    )
    q_in, fan_in = theory.input_q(runner.dataset.x_train)  # the dataset the runner loaded for training
    plan = propose(base, q_in, fan_in)
    chosen = plan[:MAX_PROPOSALS]
    sides = [base] + [p.config for p in chosen]
    runs = [
        dataclasses.replace(c, learning_rate=lr, seed=s) for c in sides for lr in cfg.learning_rates for s in range(cfg.seeds)
    ]
    rows = runner.run(runs, on_event, transform=lambda c, r: {**r, "_key": _key(c)})
    runner.close()  # the workdir's lock: the study's results are in (its report follows from them)
    n = len(cfg.learning_rates) * cfg.seeds
    before = measured(rows[:n])
    entries = []
    for i, p in enumerate(chosen, 1):
        after = measured(rows[i * n : (i + 1) * n])
        entries.append(_verify(p, before, after))
    nothing = lg_in_range(before["log10_gain"]) and (before["q_drift"] is None or 1e-2 <= before["q_drift"] <= 1e2)
    doc = {
        "config": base.to_json(),
        "settings": cfg.to_json(),
        "diagnosis": {**_jsonable(before), "words": diagnosis_words(base, before, fan_in)},
        "nothing_to_fix": nothing,
        "proposals": entries,
        "not_verified_here": [_proposal_json(p) for p in plan[MAX_PROPOSALS:]],
        "best": _best(entries, before),
    }
    _write(workdir, doc)
    return doc


def _proposal_json(p: Proposal) -> dict[str, Any]:
    return {
        "kind": p.kind,
        "changes": dict(p.changes),
        "flags": p.flags,
        "reason": p.reason,
        "chi_theory": metrics.clean(p.chi_theory),
        "gain_theory": p.gain_theory(),
        "log10_gain_theory": p.lg_theory(),
        "theory_note": p.theory_note,
    }


def _jsonable(m: dict[str, Any]) -> dict[str, Any]:
    out = dict(m)
    for key, name in (("val", "val_accuracy"), ("test", "test_accuracy")):
        if key in out:
            s = out.pop(key)
            out[name] = {"mean": s.mean, "std": s.std, "ci95": [s.lo, s.hi], "n": s.n}
    out["chi_seeds"] = list(out["chi_seeds"])
    return out


def _verify(p: Proposal, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    fixed = lg_in_range(after["log10_gain"])
    entry = {**_proposal_json(p), "measured": _jsonable(after), "gradient_fixed": fixed}
    if "val" not in after:
        entry["training"] = None
        entry["status"] = "gradient fixed" if fixed else "not verified: the measured gain is outside [1e-1, 1e1]"
        return entry
    a, b = after["val_accuracies"], before["val_accuracies"]
    d = stats.welch(a, b) if len(a) >= 2 and len(b) >= 2 else None
    if d is not None and d.df is not None:  # a spread on at least one side: an interval
        entry["training"] = {"difference": d.diff, "ci95": [d.lo, d.hi], "significant": d.significant, "words": d.words()}
        better, worse = d.significant and d.diff > 0, d.significant and d.diff < 0
    else:  # one seed, or no spread on either side: no interval, so no claim either way
        diff = float(np.mean(a) - np.mean(b))
        why = "one seed" if d is None else "no spread over seeds"
        entry["training"] = {
            "difference": diff,
            "ci95": None,
            "significant": None,
            "words": f"{100 * diff:+.1f} points ({why}: not compared)",
        }
        better = worse = False
    if not fixed:
        entry["status"] = "not verified: the measured gain is outside [1e-1, 1e1]"
    elif better:
        entry["status"] = "verified"
    elif worse:
        entry["status"] = "gradient fixed; validation accuracy worse"
    else:
        entry["status"] = "gradient fixed; validation accuracy no different"
    return entry


def _best(entries: Sequence[dict[str, Any]], before: dict[str, Any]) -> str | None:
    """The flags of the best proposal: the verified one (gradient fixed, validation accuracy better beyond the spread) best
    on validation; else, among those that fix the gradient with a validation accuracy not below the original's mean, the
    best on validation; None when there is none. Ties: the earlier in ranked order."""

    def val(m: dict[str, Any]) -> float:
        v = m.get("val_accuracy") or {}
        return -1.0 if v.get("mean") is None else v["mean"]

    verified = [e for e in entries if e["status"] == "verified"]
    if verified:
        return max(verified, key=lambda e: val(e["measured"]))["flags"]

    original = before["val"].mean if "val" in before else None
    ok = [e for e in entries if e["gradient_fixed"] and (original is None or val(e["measured"]) >= original)]
    return max(ok, key=lambda e: val(e["measured"]))["flags"] if ok else None


# ---- outputs ----


def table(doc: dict[str, Any]) -> str:
    """The before/after table (markdown)."""
    lines = [
        "| | change | chi^(L-1) theory | chi^(L-1) measured [seeds] | first/last | c last | lr | val acc (mean ± std [95% CI]) "
        "| vs original | status | test acc (reported, not used) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    d = doc["config"]["depth"]

    def row(label, flags, chi_t, m, vs, status):
        lo, hi = m["chi_seeds"]
        spread = f" [{_fmt_gain(lo, d)}, {_fmt_gain(hi, d)}]" if lo is not None and hi is not None and hi > lo else ""
        val = m.get("val_accuracy")
        acc = "-" if not val else stats.Summary(val["n"], val["mean"], val["std"], *val["ci95"]).fmt(100, ".1f", "%")
        lr = "-" if m.get("learning_rate") is None else f"{m['learning_rate']:g}" + (" (edge)" if m.get("rate_at_edge") else "")
        c_last = "-" if m["c_last"] is None else f"{m['c_last']:.3f}"
        tv = m.get("test_accuracy")
        test = "-" if not tv else stats.Summary(tv["n"], tv["mean"], tv["std"], *tv["ci95"]).fmt(100, ".1f", "%")
        lines.append(
            f"| {label} | {flags} | {_fmt_gain(chi_t, d)} | {_fmt_gain(m['chi'], d)}{spread} | {fmt_sci(m['first_over_last'])} "
            f"| {c_last} | {lr} | {acc} | {vs} | {status} | {test} |"
        )

    diag = doc["diagnosis"]
    row("original", "(as given)", diag["chi_theory"], diag, "", "nothing to fix" if doc["nothing_to_fix"] else "")
    for i, e in enumerate(doc["proposals"], 1):
        vs = "-" if not e["training"] else e["training"]["words"]
        row(f"{i}. {e['kind']}", f"`{e['flags']}`", e["chi_theory"], e["measured"], vs, e["status"])
    return "\n".join(lines)


def markdown(doc: dict[str, Any]) -> str:
    c = doc["config"]
    s = doc["settings"]
    what = f"{c['model']} depth {c['depth']}, width {c['width']}, {c['activation']}, norm {c['norm']}"
    if c["residual"]:
        what += f", residual alpha {c['residual_scale']:g}"
    init = c["init"] if c["weight_var"] is None else f"sigma_w^2 = {c['weight_var']:g}, sigma_b^2 = {c['bias_var'] or 0:g}"
    out = [
        f"# Doctor: {what}",
        "",
        f"Init {init}; {c['optimizer']}, batch {c['batch_size']}, {c['steps']} steps on {c['dataset']}; "
        f"{s['seeds']} seeds x learning rates {', '.join(f'{v:g}' for v in s['learning_rates'])} per side, each side at its "
        "rate chosen on the validation split.",
        "",
        "## Diagnosis",
        "",
        *[f"- {w}" for w in doc["diagnosis"]["words"]],
        "",
    ]
    if doc["nothing_to_fix"]:
        out += [
            "**Nothing to fix in the gradient**: the measured gain chi^(L-1) lies within [1e-1, 1e1] and the forward "
            "signal neither collapses nor explodes; the proposals below are for comparison.",
            "",
        ]
    out += ["## Proposals, ranked by theory", ""]
    if not doc["proposals"]:
        out.append("None applies to this configuration.")
    for i, e in enumerate(doc["proposals"], 1):
        note = f" ({e['theory_note']})" if e["theory_note"] else ""
        gain = _fmt_gain(e["chi_theory"], c["depth"])
        out.append(f"{i}. **{e['kind']}** `{e['flags']}`: {e['reason']}. Theory: chi^(L-1) = {gain}{note}.")
    for e in doc["not_verified_here"]:
        out.append(f"- (not run) {e['kind']} `{e['flags']}`: {e['reason']}.")
    out += [
        "",
        "## Before and after",
        "",
        table(doc),
        "",
        "chi^(L-1): the squared backprop signal's gain from the last hidden layer to the first (median over seeds, the seeds' "
        "range in brackets); fixed when within [1e-1, 1e1]. first/last: ||dL/dh_0|| / ||dL/dh_{L-1}|| at initialization. "
        "The gain comes from chi fitted to the middle half of the layers (depth >= 8), so a first layer that differs (the "
        "stem) shows in first/last, not in the gain. c last: mean cosine between examples at the last layer. vs original: "
        "difference in validation accuracy with its 95% Welch interval; inside the interval is no difference. The same "
        "validation numbers chose each side's rate (both sides alike), so the test accuracy at that rate is reported beside "
        "them; it takes no part in any choice. (edge): the chosen rate is the grid's smallest or largest.",
        "",
        f"**Best**: `{doc['best']}`"
        if doc["best"]
        else "**No proposal to recommend**: none fixes the gradient with a validation accuracy at least the original's.",
        "",
        "![gradient profile before and after](doctor.png)",
        "",
    ]
    return "\n".join(out)


def _write(workdir: str, doc: dict[str, Any]) -> None:
    from decay import plots

    results.write_atomic(os.path.join(workdir, "doctor.json"), dumps(doc))
    results.write_atomic(os.path.join(workdir, "doctor.md"), markdown(doc))
    plots.save(plots.doctor_profiles(doc), os.path.join(workdir, "doctor.png"))
