"""`report.md` for a sweep: what was run, the summary table, the figures, a verdict in words per config.

Built from `results.jsonl` alone (plus `config.json` for the command, when present), so it can
be regenerated at any time with `python -m experiments.report --workdir=...`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from decay import metrics, plots, results

if TYPE_CHECKING:
    from decay.row import Row  # one results.jsonl line


def _median(values: Sequence[Any]) -> float | None:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return float(np.median(v)) if v else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def config_sentence(rows: Sequence[Row]) -> str:
    """One line in words for one activation x norm config over its depths (all seeds)."""
    r0 = rows[0]
    norm = "without normalization" if r0["norm"] == "none" else f"with {r0['norm']}"
    res = f", residual (alpha={r0['residual_scale']:g})" if r0.get("residual") else ""
    head = f"**{r0['activation']} {norm}{res}** ({r0['init']} init)"
    depths = sorted({r["depth"] for r in rows})
    deep = depths[-1]
    deep_rows = [r for r in rows if r["depth"] == deep]
    chi = _median([r["chi"] for r in deep_rows])
    parts = []
    if chi is not None:
        factor = math.sqrt(chi)  # chi is for the squared norm; the norm itself changes by sqrt(chi)
        if abs(factor - 1) < 0.005:
            parts.append(f"the gradient keeps its size from layer to layer (x{factor:.2f} per layer, chi = {chi:.3g})")
        else:
            word = "shrinks" if factor < 1 else "grows"
            parts.append(f"the gradient {word} x{factor:.2f} per layer toward the input (chi = {chi:.3g})")
    chi_theory = _median([r.get("chi_theory") for r in deep_rows])
    if chi is not None and chi_theory is not None:
        parts.append(f"mean-field theory predicts chi = {chi_theory:.3g} (measured / theory = {chi / chi_theory:.2f})")
    elif deep_rows[0].get("theory", "").startswith("no theory"):
        parts.append(deep_rows[0]["theory"])
    ratios = [x for x in map(metrics.first_over_last, deep_rows) if x is not None]
    if ratios:
        ratio = float(np.median(ratios))
        if ratio == 0:
            what = "0 (it underflowed) of"
        elif ratio < 1:
            what = f"{ratio:.1e} of"
        else:
            what = f"{ratio:.3g} times"
        parts.append(f"at depth {deep} the first layer gets {what} the last layer's gradient")
    classes = r0.get("num_classes") or 10
    chance = 1.0 / classes
    accs = {d: _median([r["test_accuracy"] for r in rows if r["depth"] == d]) for d in depths}
    shallow = depths[0]
    acc_deep = accs[deep]
    best = max((a for a in accs.values() if a is not None), default=None)
    if acc_deep is not None:
        if acc_deep < 1.5 * chance:
            state = "chance level"
        elif acc_deep < 0.8 * best:
            state = "degraded"
        else:
            state = "trains"
        if len(depths) > 1:
            parts.append(f"test accuracy {_pct(accs[shallow])} at depth {shallow} and {_pct(acc_deep)} at depth {deep} ({state})")
        else:
            parts.append(f"test accuracy {_pct(acc_deep)} ({state})")
        trained = [d for d in depths if accs[d] is not None and accs[d] >= 1.5 * chance]
        if trained and trained[-1] != deep:
            parts.append(f"deepest net above chance: depth {trained[-1]}")
    diverged = [r for r in rows if r.get("diverged")]
    if diverged:
        where = sorted({r["depth"] for r in diverged})
        parts.append(f"{len(diverged)} of {len(rows)} runs diverged (depths {', '.join(map(str, where))})")
    return f"- {head}: " + "; ".join(parts) + "."


def write_report(workdir: str) -> str:
    """Writes `<workdir>/report.md` and `<workdir>/plots/*.png` from `results.jsonl`; returns the report path."""
    rows = results.read_jsonl(os.path.join(workdir, "results.jsonl"))
    config_path = os.path.join(workdir, "config.json")
    config = None
    if os.path.exists(config_path):
        with open(config_path) as f:
            config = json.load(f)
    figures = plots.all_figures(rows, os.path.join(workdir, "plots"))
    lines = ["# Depth sweep report", ""]
    lines += ["## What was run", ""]
    if config and config.get("command"):
        lines += ["```", config["command"].strip(), "```", ""]
    if rows:
        r0 = rows[0]
        lines.append(
            f"{len(rows)} runs: model `{r0['model']}` on `{r0['dataset']}`, width {r0['width']}, "
            f"{r0['optimizer']} at learning rate {r0['learning_rate']:g}, batch {r0['batch_size']}, {r0['steps']} steps; "
            f"depths {', '.join(map(str, sorted({r['depth'] for r in rows})))}; "
            f"{len({r['seed'] for r in rows})} seeds."
        )
        lines.append("")
    if config:
        lines += [
            "<details><summary>config.json</summary>",
            "",
            "```json",
            json.dumps(config, indent=2),
            "```",
            "",
            "</details>",
            "",
        ]
    lines += ["## Verdicts", ""]
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r["activation"], r["norm"], bool(r.get("residual"))), []).append(r)
    lines += [config_sentence(g) for g in groups.values()]
    lines += [
        "",
        "chi is the per-layer factor of the squared backprop signal ||dL/dh_l||^2 at initialization, "
        "fitted over the middle layers; the gradient norm itself changes by sqrt(chi) per layer. "
        "chi theory is the same fit applied to the mean-field prediction of the same network (infinite width; "
        "see decay/theory.py); dashed lines in the gradient-flow figures draw that prediction.",
        "",
        "## Summary table",
        "",
        metrics.summary_table(rows),
        "",
        "## Figures",
        "",
    ]
    captions = {
        "gradient_flow": "Gradient flow at initialization, per layer",
        "trainability": "chi and test accuracy against depth",
        "training_curves": "Training loss against step",
        "instruments": "Instrument",
    }
    for kind, paths in figures.items():
        for p in paths:
            rel = os.path.relpath(p, workdir)
            caption = captions[kind]
            if kind == "gradient_flow":  # gradient_flow_<activation>.png
                caption += ": " + os.path.basename(p)[len("gradient_flow_") : -len(".png")]
            if kind == "instruments":  # instrument_<key>.png
                caption += ": " + os.path.basename(p)[len("instrument_") : -len(".png")]
            lines += [f"### {caption}", "", f"![{kind}]({rel})", ""]
    path = os.path.join(workdir, "report.md")
    results.write_atomic(path, "\n".join(lines) + "\n")
    return path
