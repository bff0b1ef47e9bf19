"""The doctor on every configuration of the default grid at depth 64, each from the shell and cold, with its wall time.

    python -m benchmarks.doctor_grid                       # 9 configurations, about 12 minutes on 2 cores
    python -m benchmarks.doctor_grid --out=docs/doctor --activations=tanh --norms=none

Each configuration runs `python -m experiments.doctor --activation=A --norm=N --depth=64` in a
fresh process with the compilation cache off (a user's first run), into <out>/<A>-<N>/. Then
<out>/summary.md and summary.json say, per configuration, what the doctor found, its best
proposal, whether that brings the measured chi^(L-1) within [1e-1, 1e1] and improves validation
accuracy beyond the spread, and the wall time (median and maximum over the configurations).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from decay.studies import doctor

_OUT = flags.DEFINE_string("out", "docs/doctor", "Folder of the per-configuration workdirs and the summary.")
_ACTS = flags.DEFINE_list("activations", ["sigmoid", "tanh", "relu"], "Activations.")
_NORMS = flags.DEFINE_list("norms", ["none", "batchnorm", "layernorm"], "Norms.")
_DEPTH = flags.DEFINE_integer("depth", 64, "Depth of every configuration.")
_REWRITE = flags.DEFINE_bool("rewrite", False, "Only rewrite summary.md from summary.json (no run).")


def _acc(m) -> str:
    v = m.get("val_accuracy")
    if not v or v["mean"] is None:
        return "-"
    return f"{100 * v['mean']:.1f}" + ("" if v["std"] is None else f" ± {100 * v['std']:.1f}")


def _entry(act: str, norm: str, workdir: str, wall: float) -> dict:
    """One configuration's line of the summary, from its doctor.json."""
    doc = json.load(open(os.path.join(workdir, "doctor.json")))
    best = next((e for e in doc["proposals"] if e["flags"] == doc["best"]), None)
    fixed = bool(best and best["gradient_fixed"])
    outside = not doctor.lg_in_range(doc["diagnosis"]["log10_gain"])  # the gain needed fixing
    better = bool(best and best["training"] and best["training"]["significant"] and best["training"]["difference"] > 0)
    return {
        "activation": act,
        "norm": norm,
        "wall_s": round(wall, 1),
        "verdict": doctor.lg_words(doc["diagnosis"]["log10_gain"]),
        "gain_before": doc["diagnosis"]["gain"],
        "val_before": _acc(doc["diagnosis"]),
        "nothing_to_fix": doc["nothing_to_fix"],
        "best": doc["best"],
        "best_kind": best["kind"] if best else None,
        "gain_after": best["measured"]["gain"] if best else None,
        "val_after": _acc(best["measured"]) if best else "-",
        "difference": best["training"]["words"] if best and best["training"] else "-",
        "fixed": fixed,
        "outside_before": outside,
        "better": better,
        "statuses": [e["status"] for e in doc["proposals"]],
    }


def main(argv: list[str]) -> None:
    del argv
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    entries = []
    for act in [] if _REWRITE.value else _ACTS.value:
        for norm in _NORMS.value:
            workdir = os.path.join(out, f"{act}-{norm}")
            shutil.rmtree(workdir, ignore_errors=True)  # a fresh workdir: a resumed doctor would retrain nothing
            cmd = [
                sys.executable, "-m", "experiments.doctor", f"--activation={act}", f"--norm={norm}",
                f"--depth={_DEPTH.value}", f"--workdir={workdir}", "--compilation_cache=",
            ]  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"{act}-{norm} failed:\n{proc.stderr}")
            entries.append(_entry(act, norm, workdir, wall))
            e = entries[-1]
            print(f"{act}-{norm}: {wall:.0f} s, best {e['best']}, fixed {e['fixed']}, better {e['better']}", flush=True)
    # Entries of configurations not run now stay from the summary already there (e.g. after --activations=relu).
    path = os.path.join(out, "summary.json")
    if _REWRITE.value and not os.path.exists(path):
        raise SystemExit(f"error: --rewrite needs {path}; run without --rewrite first")
    if os.path.exists(path):
        done = {(e["activation"], e["norm"]) for e in entries}
        old = [e for e in json.load(open(path))["entries"] if (e["activation"], e["norm"]) not in done]
        # Rebuilt from each configuration's doctor.json (rewritten by a resumed doctor run), its wall time kept.
        old = [_entry(e["activation"], e["norm"], os.path.join(out, f"{e['activation']}-{e['norm']}"), e["wall_s"]) for e in old]
        order = {a: i for i, a in enumerate(("linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "swish"))}
        nrm = {n: i for i, n in enumerate(("none", "batchnorm", "layernorm", "rmsnorm"))}
        entries = sorted(old + entries, key=lambda e: (order.get(e["activation"], 99), nrm.get(e["norm"], 99)))
    walls = [e["wall_s"] for e in entries]
    lines = [
        f"# The doctor on the default grid at depth {_DEPTH.value}",
        "",
        "Written by `python -m benchmarks.doctor_grid`; each configuration's own report is `<activation>-<norm>/doctor.md`.",
        "Each run: 3 seeds x learning rates 0.01, 0.03, 0.1 per side, 200 SGD steps, batch 128, width 128, on digits; the "
        "compilation cache off (a first run). Validation accuracy in %, mean ± std over seeds at each side's rate chosen on "
        "validation; difference with its 95% Welch interval.",
        "",
        "| configuration | gain | chi^(L-1) before | val acc before | best proposal | chi^(L-1) after | val acc after "
        "| difference | gain fixed | better beyond spread | wall time |",
        "|---|---|---:|---:|---|---:|---:|---|---|---|---:|",
    ]
    for e in entries:
        fix = "; nothing to fix" if e["nothing_to_fix"] else ""
        best = f"{e['best_kind']}: `{e['best']}`" if e["best"] else "none recommended"
        lines.append(
            f"| {e['activation']}, {e['norm']} | {e['verdict']}{fix} | {doctor.fmt_sci(e['gain_before'])} | {e['val_before']} "
            f"| {best} | {doctor.fmt_sci(e['gain_after'])} | {e['val_after']} | {e['difference']} "
            f"| {'yes' if e['fixed'] else 'no'} | {'yes' if e['better'] else 'no'} | {e['wall_s']:.0f} s |"
        )
    outside = [e for e in entries if e["outside_before"]]
    n_fixed = sum(e["fixed"] for e in outside)
    n_better = sum(e["better"] for e in entries)
    lines += [
        "",
        f"Of the {len(outside)} configurations whose measured chi^(L-1) lay outside [1e-1, 1e1], the best proposal brings "
        f"it inside for {n_fixed}. The best proposal improves validation accuracy beyond the spread for {n_better} of "
        f"{len(entries)} configurations.",
        f"Wall time per configuration: median {np.median(walls):.0f} s, max {max(walls):.0f} s.",
        "",
    ]
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"depth": _DEPTH.value, "entries": entries}, f, indent=2)
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
