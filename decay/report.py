"""`report.md` for a sweep: what was run and how choices were made, a verdict in words per config, the table, the figures.

Built from `results.jsonl` alone (plus `config.json` for the command and the grid, when
present), so it can be regenerated at any time with `python -m experiments.report --workdir=...`.
Every configuration is shown at its learning rate chosen on the validation split
(`decay.metrics.summarize`); test numbers are reported, never used to choose.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from decay import metrics, plots, results

if TYPE_CHECKING:
    from decay.row import Row  # one results.jsonl line

SWEPT = ("depth", "activation", "norm", "learning_rate", "seed")  # per-run fields a sweep varies


def _sci(x: float) -> str:
    if x == 0:
        return "0 (it underflowed)"
    return f"{x:.1e}" if x < 0.1 or x >= 100 else f"{x:.2g}"


def _quantities(s: dict[str, Any]) -> str:
    """Which quantity vanishes or explodes: the backprop signal, the kernel gradient, the relative update."""
    parts = []
    sig, ker, upd = s["first_over_last"], s["kernel_first_over_last"], s["update_first_over_last"]
    if sig is not None:
        parts.append(f"the backprop signal ||dL/dh|| reaching the first layer is {_sci(sig)} of the last layer's")
    if ker is not None:
        parts.append(f"the kernel gradient ||dL/dW|| (what the optimizer sees) first/last is {_sci(ker)}")
    if upd is not None:
        parts.append(f"after training, the first layer's relative update ||dW||/||W|| is {_sci(upd)} of the last layer's")
    return "; ".join(parts)


def config_sentence(summaries: Sequence[dict[str, Any]]) -> str:
    """One line in words for one activation x norm config over its depths, from `metrics.summarize` entries."""
    by_depth = sorted(summaries, key=lambda s: s["depth"])
    s0, deep = by_depth[0], by_depth[-1]
    norm = "without normalization" if s0["norm"] == "none" else f"with {s0['norm']}"
    res = f" (residual, alpha {s0['residual_scale']:g})" if s0["residual"] else ""
    head = f"**{s0['activation']} {norm}{res}** ({s0['init']} init)"
    parts = []
    chi = deep["chi"]
    if chi is not None:
        factor = math.sqrt(chi)  # chi is for the squared norm; the norm itself changes by sqrt(chi)
        verdict = deep["verdict"] + (", borderline" if deep["borderline"] else "")
        if abs(factor - 1) < 0.005:
            parts.append(f"at depth {deep['depth']} the backprop signal keeps its size (x{factor:.2f} per layer; {verdict})")
        else:
            word = "shrinks" if factor < 1 else "grows"
            parts.append(
                f"at depth {deep['depth']} the backprop signal {word} x{factor:.2f} per layer toward the input ({verdict})"
            )
    quantities = _quantities(deep)
    if quantities:
        parts.append(quantities)
    if chi is not None and deep["chi_theory"] is not None:
        text = f"mean-field theory predicts chi = {deep['chi_theory']:.3g} (measured {chi:.3g})"
        if deep["theory_note"]:
            text += f", a disagreement beyond the seeds' spread: {deep['theory_note']}"
        parts.append(text)
    training = []
    for s in by_depth:
        t = f"depth {s['depth']}: {s['trainability']}"
        if s["test"].mean is not None:
            t += f", test {s['test'].fmt(100, '.1f', '%')}"
        training.append(t)
    parts.append("training (final training loss against chance; test accuracy mean ± std [95% interval]) " + "; ".join(training))
    diverged = [s for s in by_depth if s["diverged"]]
    if diverged:
        parts.append(
            "diverged at the chosen rate: " + ", ".join(f"{s['diverged']}/{s['seeds']} at depth {s['depth']}" for s in diverged)
        )
    return f"- {head}: " + "; ".join(parts) + "."


def _what_was_run(rows: Sequence[Row], config: dict[str, Any] | None) -> list[str]:
    r0 = rows[0]
    swept = {k: sorted({r[k] for r in rows}, key=str) for k in SWEPT}
    lines = [
        f"{len(rows)} runs. **Swept:** depths {', '.join(map(str, sorted(swept['depth'])))}; activations "
        f"{', '.join(swept['activation'])}; norms {', '.join(swept['norm'])}; learning rates "
        f"{', '.join(f'{v:g}' for v in sorted(swept['learning_rate']))}; {len(swept['seed'])} seeds.",
        "",
    ]
    base = (config or {}).get("base") or {}
    shared = {k: v for k, v in base.items() if k not in SWEPT and k != "data_dir"}
    if not shared:  # no config.json: what the rows share
        keys = ("model", "dataset", "width", "init", "optimizer", "batch_size", "steps", "val_fraction")
        shared = {k: r0[k] for k in keys if k in r0}
    lines += ["**Shared by every run:** " + ", ".join(f"{k}={v}" for k, v in sorted(shared.items())) + ".", ""]
    return lines


def _protocol(rows: Sequence[Row], summaries: Sequence[dict[str, Any]]) -> list[str]:
    r0 = rows[0]
    steps = r0["steps"]
    improving = [s for s in summaries if s["still_improving"]]
    edge = [s for s in summaries if s["lr_at_edge"]]
    held = f"{100 * r0['val_fraction']:.0f}%" if r0.get("val_fraction") else "A part (not recorded in these rows)"
    lines = [
        f"- **Choices on validation.** {held} of the training set is held out as a "
        "validation split (fixed by --data_seed). Each configuration (depth x activation x norm) is shown at the learning "
        "rate with the best mean validation accuracy over seeds; the test split only reports.",
        "- **Statistics.** Means over seeds come with the sample standard deviation (ddof = 1) and a 95% Student-t "
        "interval. Whether two configurations differ is decided by Welch's 95% interval of their difference "
        "(`decay.stats.welch`, as the seed claims do), not by whether their own intervals overlap.",
        f"- **Verdict.** chi^(depth - 1), the fitted per-layer factor over the depth - 1 maps from the last hidden layer "
        f"back to the first, below {metrics.VANISHING_BELOW:g} is vanishing, above {metrics.EXPLODING_ABOVE:g} exploding; "
        f"within a factor {metrics.BORDERLINE:g} of either threshold it is marked borderline. It is about the backprop "
        "signal dL/dh at initialization; the kernel gradient dL/dW = x (x) dL/dh also carries the forward signal.",
        f"- **Training.** From the final training loss over chance, ln(classes): under {metrics.TRAINS_BELOW:g} trains, "
        f"{metrics.FAILS_ABOVE:g} or more fails, between partial.",
        f"- **Budget.** {steps} steps per run. At the chosen rate, {len(improving)} of {len(summaries)} configurations "
        "had a seed whose validation accuracy was still rising at the end (beats every evaluation up to 3/4 of the "
        f"budget by more than {100 * metrics.IMPROVING_BY:g} point; at chance level that can be noise)"
        + (": " + ", ".join(f"{s['depth']} {s['activation']} {s['norm']}" for s in improving) if improving else "")
        + ".",
    ]
    if edge:
        lines.append(
            f"- **Grid edge.** {len(edge)} of {len(summaries)} configurations chose the smallest or largest learning rate "
            "of the grid: their best rate may lie outside it."
        )
    return lines


def write_report(workdir: str) -> str:
    """Writes `<workdir>/report.md` and `<workdir>/plots/*.png` from `results.jsonl`; returns the report path."""
    rows = results.read_jsonl(os.path.join(workdir, "results.jsonl"))
    config_path = os.path.join(workdir, "config.json")
    config = results.read_json(config_path) if os.path.exists(config_path) else None
    figures = plots.all_figures(metrics.tuned_rows(rows), os.path.join(workdir, "plots"))
    lines = ["# Depth sweep report", "", "## What was run", ""]
    if config and config.get("command"):
        lines += ["```", config["command"].strip(), "```", ""]
    summaries = metrics.summarize(rows) if rows else []
    if rows:
        lines += _what_was_run(rows, config)
        lines += ["## How it was judged", "", *_protocol(rows, summaries), ""]
    if config:
        # The base run's swept fields (depth, activation, ...) are placeholders each run overrides: left out.
        shown = {**config, "base": {k: v for k, v in (config.get("base") or {}).items() if k not in SWEPT}}
        lines += [
            "<details><summary>config.json (the base run's swept fields left out: each run sets its own)</summary>",
            "",
            "```json",
            json.dumps(shown, indent=2),
            "```",
            "",
            "</details>",
            "",
        ]
    lines += ["## Verdicts", ""]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in summaries:  # one sentence per configuration but depth
        groups.setdefault((s["model"], s["activation"], s["norm"], s["residual"], s["residual_scale"], s["init"]), []).append(s)
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
        "Each configuration at its learning rate chosen on validation (`(edge)`: the smallest or largest of the grid).",
        "",
        metrics.summary_table(rows),
        "",
        "## Figures",
        "",
        "Figures show each configuration's runs at its chosen learning rate. How to read them:",
        "",
        "- **Gradient flow** (one figure per activation, one column per norm): top, log10 of the backprop signal "
        "||dL/dh_l|| at initialization against the layer (0 = input side), one line per depth (median over seeds, band "
        "= their min..max), dashed the mean-field prediction. Flat: the signal reaches the first layer intact; rising "
        "to the right (higher at the output side): it vanishes toward the input; falling to the right: it explodes. "
        "Middle, the same for the kernel gradient ||dL/dW_l||, what the optimizer sees. Bottom (two depths or more), "
        "the signal as a layer x depth heatmap on one colour scale. Markers on a panel's edge are values a log axis "
        "cannot show (0, +Inf, NaN); they appear in the legend only when drawn.",
        "- **Trainability**: log10 chi (left; above 0 explodes, below 0 vanishes) and test accuracy (right) against "
        "depth; colour = activation, line style and marker = norm (hollow markers: a norm), dashed grey = chance.",
        "- **Training curves**: the training loss of every run against the step, a red cross where a run diverged.",
        "- **Instruments** (q, c, dead units, distance from initialization) per layer at the largest depth, at "
        "initialization (solid) and at the end (dashed); what a log axis cannot show is said under a panel's title.",
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
