"""From per-layer norms to numbers and words: the chi fit, the verdict, the summary table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from decay import stats

# verdict thresholds on chi^(depth - 1), the fitted per-layer factor extrapolated over the
# depth - 1 layer maps between the probes h_{L-1} and h_0: the gain of the squared backprop
# signal from the last hidden layer back to the first. Below 1e-2 the signal reaching the first
# layer is under 1/10 of the last layer's (in norm); above 1e2, over 10 times larger. A gain
# within a factor BORDERLINE of a threshold is called borderline.
VANISHING_BELOW = 1e-2
EXPLODING_ABOVE = 1e2
BORDERLINE = 2.0

# trainability from the training loss (evaluation mode, on the training split) at the end,
# as a fraction of the chance level ln(classes), the loss of a uniform prediction.
TRAINS_BELOW = 0.5  # "trains": under half of chance
FAILS_ABOVE = 0.9  # "fails": within 10% of chance or above; in between "partial"
IMPROVING_BY = 0.01  # still improving: the final validation accuracy beats all after step 0 up to 3/4 of the budget by this


def clean(x: Any) -> float | None:
    """A JSON-safe float: NaN and +-Inf become None (strict JSON has no such numbers)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def fit_window(depth: int) -> tuple[int, int]:
    """Layers [lo, hi) used by the chi fit: the middle half for depth >= 8, else all layers."""
    if depth >= 8:
        return depth // 4, depth - depth // 4
    return 0, depth


def fit_chi(signal_norms: Sequence[float | None]) -> float | None:
    """Per-layer factor of the squared backward signal, chi = ||dL/dh_l||^2 / ||dL/dh_{l+1}||^2.

    Least-squares line through log(signal_norms[l]^2) against l over `fit_window`;
    chi = exp(-slope). Layers whose norm is zero (underflow) or non-finite are left out;
    None when fewer than two layers remain.
    """
    s = np.array([np.nan if v is None else v for v in signal_norms], np.float64)
    lo, hi = fit_window(len(s))
    layers = np.arange(lo, hi)
    vals = s[lo:hi]
    ok = np.isfinite(vals) & (vals > 0)
    if ok.sum() < 2:
        return None
    slope = np.polyfit(layers[ok], np.log(vals[ok] ** 2), 1)[0]
    return float(np.exp(-slope))


def log_gain(chi: float, depth: int) -> float:
    """log10 of chi^(depth - 1), the squared-signal gain over the depth - 1 maps from h_{L-1} back to h_0."""
    return (depth - 1) * math.log10(chi)


def verdict(chi: float | None, depth: int, signal_norms: Sequence[float | None] | None = None) -> str:
    """'vanishing', 'stable' or 'exploding' by chi^(depth - 1); 'n/a' for depth 1.

    Without a fit (fewer than two usable layers), zeros in the signal mean it underflowed
    ('vanishing') and non-finite values mean it overflowed ('exploding').
    """
    if chi is None or chi <= 0:
        if depth < 2 or signal_norms is None:
            return "n/a"
        s = np.array([np.nan if v is None else v for v in signal_norms], np.float64)
        if np.any(~np.isfinite(s)):
            return "exploding"
        if np.any(s == 0):
            return "vanishing"
        return "n/a"
    gain = log_gain(chi, depth)
    if gain < math.log10(VANISHING_BELOW):
        return "vanishing"
    if gain > math.log10(EXPLODING_ABOVE):
        return "exploding"
    return "stable"


def borderline(chi: float | None, depth: int) -> bool:
    """Whether chi^(depth - 1) lies within a factor BORDERLINE of a verdict threshold (either side)."""
    if chi is None or chi <= 0 or depth < 2:
        return False
    gain = log_gain(chi, depth)
    near = math.log10(BORDERLINE)
    return any(abs(gain - math.log10(t)) < near for t in (VANISHING_BELOW, EXPLODING_ABOVE))


def trainability(
    train_loss_end: float | None, num_classes: int, diverged: bool, steps: int = 1, chance: float | None = None
) -> str:
    """'trains', 'partial', 'fails' or 'diverged', from the final training loss over chance (`chance`, by default
    ln(num_classes): a uniform prediction's); 'untrained' for a run of 0 steps (measured at initialization only)."""
    if steps == 0:
        return "untrained"
    if diverged:
        return "diverged"
    if train_loss_end is None or not math.isfinite(train_loss_end):
        return "fails"
    ratio = train_loss_end / (math.log(num_classes) if chance is None else chance)
    if ratio < TRAINS_BELOW:
        return "trains"
    return "fails" if ratio >= FAILS_ABOVE else "partial"


def still_improving(history: Sequence[dict[str, Any]], steps: int) -> bool | None:
    """Whether the validation accuracy at the end beats every evaluation after step 0 up to 3/4 of `steps` by
    more than IMPROVING_BY; None without an evaluation in both parts (e.g. a budget of one evaluation)."""
    early = [h["val_accuracy"] for h in history if h.get("val_accuracy") is not None and 0 < h["step"] <= 0.75 * steps]
    last = [h for h in history if h.get("val_accuracy") is not None and h["step"] > 0.75 * steps]
    if not early or not last:
        return None
    return bool(last[-1]["val_accuracy"] > max(early) + IMPROVING_BY)


def best_val_step(history: Sequence[dict[str, Any]]) -> int | None:
    """The step of the best validation accuracy among the evaluations (the earliest of ties)."""
    scored = [h for h in history if h.get("val_accuracy") is not None]
    return max(scored, key=lambda h: (h["val_accuracy"], -h["step"]))["step"] if scored else None


def first_over_last(row: dict[str, Any]) -> float | None:
    """Measured ||dL/dh_0|| / ||dL/dh_{L-1}|| at initialization; None when undefined."""
    s = row["signal_norms_init"]
    if s and s[0] is not None and s[-1] not in (None, 0):
        return s[0] / s[-1]
    return None


def group_verdict(rows: Sequence[dict[str, Any]]) -> str:
    """The verdict of a config over its seeds: the rule applied to the median chi (deterministic, matches
    the chi shown), or without any chi fit the most common row verdict."""
    chis = [r["chi"] for r in rows if r["chi"] is not None]
    if chis:
        return verdict(float(np.median(chis)), rows[0].get("seq_len") or rows[0]["depth"])  # along time, or depth
    verdicts = [r["verdict"] for r in rows]
    return max(sorted(set(verdicts)), key=verdicts.count)


def _fmt_sci(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.1e}"


def median_finite(values) -> float | None:
    """Median of the finite values, None without any."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def _ratio(values: Sequence[float | None] | None) -> float | None:
    if not values or values[0] is None or values[-1] in (None, 0):
        return None
    return values[0] / values[-1]


def _most_common(values: Sequence[str]) -> str:
    return max(sorted(set(values)), key=list(values).count) if values else "-"


DISAGREE = 1.1  # theory outside the seeds' [min, max] of chi widened by this factor: flagged
SEEDS_DISAGREE = 1.3  # max/min of chi over seeds above this: the seeds disagree


def theory_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """Why measured chi and theory disagree for one configuration's seeds, or None when they agree (or no theory).

    Disagree: the theory lies outside the seeds' [min, max] chi widened by DISAGREE. The reasons the
    rows can tell: the forward signal collapsed or exploded (q of the last layer against the first),
    the seeds disagree (finite width), q settles slowly (the variance map's slope at q* near 1), the
    net is shallower than 8 layers (the fit takes every layer, before q settles).
    """
    chis = [r["chi"] for r in rows if r.get("chi") is not None]
    theory = median_finite([r.get("chi_theory") for r in rows])
    if not chis or theory is None:
        return None
    lo, hi = min(chis), max(chis)
    if lo / DISAGREE <= theory <= hi * DISAGREE:
        return None
    reasons = []
    qs = [r["q_init"] for r in rows if r.get("q_init") and r["q_init"][0] and r["q_init"][-1] is not None]
    q_ratios = [q[-1] / q[0] for q in qs]
    n = len(q_ratios)
    collapsed = [x for x in q_ratios if x < 1e-2]
    exploded = [x for x in q_ratios if x > 1e2]
    if collapsed:
        reasons.append(f"the forward signal collapsed in {len(collapsed)} of {n} seeds (q last/first {min(collapsed):.1e})")
    if exploded:
        reasons.append(f"the forward signal exploded in {len(exploded)} of {n} seeds (q last/first {max(exploded):.1e})")
    if n >= 2 and min(q_ratios) > 0 and max(q_ratios) / min(q_ratios) > 1e2:
        reasons.append(
            f"the seeds' forward signals disagree (q last/first from {min(q_ratios):.1e} to {max(q_ratios):.1e}: "
            "at finite width q random-walks where the variance map is near-neutral)"
        )
    q_star = median_finite([r.get("q_star_theory") for r in rows])
    q_last = median_finite([q[-1] for q in qs])
    if q_star is not None and q_last is not None and abs(math.log10((q_last + 1e-3) / (q_star + 1e-3))) > 1:
        reasons.append(f"q has not reached theory's fixed point (last layer q {q_last:.3g} against q* = {q_star:.3g})")
    if hi / lo > SEEDS_DISAGREE:
        reasons.append(f"the seeds disagree (chi {lo:.3g} to {hi:.3g}: finite width {rows[0]['width']})")
    slope = median_finite([r.get("q_slope_theory") for r in rows])
    if slope is not None and slope >= 0.9:
        over = "never settles (neutral variance map)" if slope >= 1 - 1e-9 else f"settles over ~{-1 / math.log(slope):.0f} layers"
        reasons.append(f"q {over}, so the layers are not at the fixed point theory assumes")
    if rows[0]["depth"] < 8:
        reasons.append("depth < 8: the fit takes every layer, before q settles")
    return "; ".join(reasons) if reasons else "reason not identified"


CONFIG_KEYS = (
    "model", "dataset", "depth", "width", "activation", "norm", "init", "weight_var", "bias_var", "residual",
    "residual_scale", "optimizer", "clip_norm", "adam_eps", "weight_decay", "batch_size", "steps",
)  # fmt: skip  # what makes a configuration: everything but the learning rate (tuned) and the seed


def config_key(row: dict[str, Any]) -> tuple:
    """The configuration of a row: its CONFIG_KEYS values (rows of one configuration differ in learning rate and seed)."""
    return tuple(row.get(k) for k in CONFIG_KEYS)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration (`config_key`): its learning rate chosen on validation (`rate_choices`),
    and at that rate the seeds' numbers: chi with its spread and theory, the verdict, trainability,
    validation and test accuracy with sample std and 95% interval."""
    out = []
    for choice in rate_choices(rows):
        rs = choice.rows
        r0 = rs[0]
        model, depth, act, norm, residual = r0["model"], r0["depth"], r0["activation"], r0["norm"], r0["residual"]
        chis = [r["chi"] for r in rs if r["chi"] is not None]
        chi_med = median_finite(chis)
        chi_theory = median_finite([r.get("chi_theory") for r in rs])
        # A diverged run has no accuracy: it counts 0 in the means.
        test = stats.mean_std_ci([0.0 if r["test_accuracy"] is None else r["test_accuracy"] for r in rs], (0.0, 1.0))
        val = stats.mean_std_ci([0.0 if r.get("val_accuracy") is None else r["val_accuracy"] for r in rs], (0.0, 1.0))
        chance = [r["train_loss_end"] / math.log(r["num_classes"]) for r in rs if r.get("train_loss_end") is not None]
        out.append(
            {
                "model": model,
                "depth": depth,
                "activation": act,
                "norm": norm,
                "residual": residual,
                "residual_scale": r0.get("residual_scale"),
                "init": rs[0]["init"],
                "seeds": len(rs),
                "learning_rate": choice.value,
                "learning_rates": sorted(choice.val_means, key=lambda v: -1.0 if v is None else v),
                "lr_at_edge": choice.at_edge and r0.get("steps") != 0,  # steps 0: nothing to choose
                "chi": chi_med,
                "chi_min": min(chis) if chis else None,
                "chi_max": max(chis) if chis else None,
                "chi_theory": chi_theory,
                "chi_ratio": chi_med / chi_theory if chi_med is not None and chi_theory else None,
                "theory_note": theory_note(rs),
                "first_over_last": median_finite(map(first_over_last, rs)),
                "kernel_first_over_last": median_finite([_ratio(r["grad_norms_init"]) for r in rs]),
                "update_first_over_last": median_finite([_ratio(r.get("update_ratio_final")) for r in rs]),
                "verdict": group_verdict(rs),
                "borderline": borderline(chi_med, depth),
                "trainability": _most_common([r.get("trainability", "-") for r in rs]),
                "train_loss_vs_chance": float(np.mean(chance)) if chance else None,
                "still_improving": sum(bool(r.get("still_improving")) for r in rs),
                "val": val,
                "test": test,
                "acc_mean": test.mean,
                "acc_std": test.std,
                "diverged": sum(bool(r["diverged"]) for r in rs),
            }
        )
    return out


def rate_choices(rows: Sequence[dict[str, Any]]) -> list[stats.Choice]:
    """Each configuration's (`config_key`) learning rate chosen on validation, in order of first appearance."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(config_key(r), []).append(r)
    return [stats.best_by_validation(rs, lambda r: r.get("learning_rate")) for rs in groups.values()]


def tuned_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows at each configuration's learning rate chosen on validation (all seeds), in input order."""
    keep = {id(r) for choice in rate_choices(rows) for r in choice.rows}
    return [r for r in rows if id(r) in keep]


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per config at its learning rate chosen on validation, with notes below it."""
    lines = [
        "| depth | activation | norm | lr | chi [seeds' min, max] | chi theory | measured / theory | dL/dh first/last "
        "| dL/dW first/last | verdict | training | val acc | test acc (mean ± std [95% CI]) | diverged |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    notes = []
    for s in summarize(rows):
        norm = s["norm"] + (f" +res {s['residual_scale']:g}" if s["residual"] else "")
        chi = "-" if s["chi"] is None else f"{s['chi']:.3f}"
        if s["chi"] is not None and s["chi_max"] > s["chi_min"]:
            chi += f" [{s['chi_min']:.3f}, {s['chi_max']:.3f}]"
        chi_t = "-" if s["chi_theory"] is None else f"{s['chi_theory']:.3f}"
        ratio = "-" if s["chi_ratio"] is None else f"{s['chi_ratio']:.3f}"
        if s["theory_note"]:
            notes.append(f"{s['depth']} {s['activation']} {norm}: measured and theory disagree: {s['theory_note']}.")
            ratio += f" ({len(notes)})"
        lr = f"{s['learning_rate']:g}" + (" (edge)" if s["lr_at_edge"] else "")
        val = "-" if s["val"].mean is None else f"{100 * s['val'].mean:.1f}%"
        verdict_text = s["verdict"] + (" (borderline)" if s["borderline"] else "")
        training = s["trainability"]
        if s["train_loss_vs_chance"] is not None:
            training += f" ({s['train_loss_vs_chance']:.2f} of chance)"
        if s["still_improving"]:
            training += f", {s['still_improving']}/{s['seeds']} still improving"
        lines.append(
            f"| {s['depth']} | {s['activation']} | {norm} | {lr} | {chi} | {chi_t} | {ratio} "
            f"| {_fmt_sci(s['first_over_last'])} | {_fmt_sci(s['kernel_first_over_last'])} "
            f"| {verdict_text} | {training} | {val} "
            f"| {s['test'].fmt(100, '.1f')} | {s['diverged']}/{s['seeds']} |"
        )
    if notes:
        lines += [""] + [f"({i}) {n}" for i, n in enumerate(notes, 1)]
    return "\n".join(lines)
