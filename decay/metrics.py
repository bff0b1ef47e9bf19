"""From per-layer norms to numbers and words: the chi fit, the verdict, the summary table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

# verdict thresholds on chi^depth, the fitted per-layer factor extrapolated over the whole
# depth: the gain of the squared gradient signal from the output back to the input. Below
# 1e-2 the gradient norm reaching the input side is roughly under 1/10 of the output side's;
# above 1e2, over 10 times larger.
VANISHING_BELOW = 1e-2
EXPLODING_ABOVE = 1e2


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


def verdict(chi: float | None, depth: int, signal_norms: Sequence[float | None] | None = None) -> str:
    """'vanishing', 'stable' or 'exploding' by chi^depth; 'n/a' for depth 1.

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
    log_gain = depth * math.log10(chi)
    if log_gain < math.log10(VANISHING_BELOW):
        return "vanishing"
    if log_gain > math.log10(EXPLODING_ABOVE):
        return "exploding"
    return "stable"


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
        return verdict(float(np.median(chis)), rows[0]["depth"])
    verdicts = [r["verdict"] for r in rows]
    return max(sorted(set(verdicts)), key=verdicts.count)


def _fmt_sci(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.1e}"


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, depth, activation, norm, residual) config, aggregated over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["model"], r["depth"], r["activation"], r["norm"], r["residual"])
        groups.setdefault(key, []).append(r)
    out = []
    for (model, depth, act, norm, residual), rs in groups.items():
        chis = [r["chi"] for r in rs if r["chi"] is not None]
        accs = [r["test_accuracy"] for r in rs if r["test_accuracy"] is not None]
        ratios = [x for x in map(first_over_last, rs) if x is not None]
        chi_med = float(np.median(chis)) if chis else None
        theory = [r["chi_theory"] for r in rs if r.get("chi_theory") is not None]
        chi_theory = float(np.median(theory)) if theory else None
        out.append(
            {
                "model": model,
                "depth": depth,
                "activation": act,
                "norm": norm,
                "residual": residual,
                "init": rs[0]["init"],
                "seeds": len(rs),
                "chi": chi_med,
                "chi_theory": chi_theory,
                "chi_ratio": chi_med / chi_theory if chi_med is not None and chi_theory else None,
                "first_over_last": float(np.median(ratios)) if ratios else None,
                "verdict": group_verdict(rs),
                "acc_mean": float(np.mean(accs)) if accs else None,
                "acc_std": float(np.std(accs)) if accs else None,
                "diverged": sum(bool(r["diverged"]) for r in rs),
            }
        )
    return out


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per config: chi, its theory and their ratio, gradient ratio, verdict, accuracy, divergences."""
    lines = [
        "| depth | activation | norm | init | chi | chi theory | measured / theory | grad first/last "
        "| verdict | test acc | diverged |",
        "|---:|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for s in summarize(rows):
        norm = s["norm"] + (" +res" if s["residual"] else "")
        chi = "-" if s["chi"] is None else f"{s['chi']:.3f}"
        chi_t = "-" if s["chi_theory"] is None else f"{s['chi_theory']:.3f}"
        ratio = "-" if s["chi_ratio"] is None else f"{s['chi_ratio']:.3f}"
        acc = "-" if s["acc_mean"] is None else f"{100 * s['acc_mean']:.1f} ± {100 * s['acc_std']:.1f}%"
        lines.append(
            f"| {s['depth']} | {s['activation']} | {norm} | {s['init']} | {chi} | {chi_t} | {ratio} "
            f"| {_fmt_sci(s['first_over_last'])} "
            f"| {s['verdict']} | {acc} | {s['diverged']}/{s['seeds']} |"
        )
    return "\n".join(lines)
