"""The transformer sweep: where the norm sits decides the gradient at initialization, and whether training needs warm-up.

Two parts, one `results.jsonl` row per run (the study runner: finished runs are skipped):
  init   every block type (post_ln, pre_ln, deepnorm, rezero, no_norm, no_skip) at several depths
         and seeds, measured at initialization (steps 0): the per-block backprop signal along the
         residual stream, each block's kernel gradient norms (Xiong et al. 2020's per-layer figure),
         and c_tokens, the mean cosine between an example's tokens (rank collapse);
  train  post_ln, pre_ln, deepnorm and rezero at a shallow and a deep depth, Adam with and without
         linear warm-up, over a grid of learning rates and seeds; per (block, depth, warm-up) the rate
         is chosen on the validation split and test accuracy at it is reported with its spread; per
         (block, depth) the tuned best over warm-up and rate is compared with Post-LN's.
`write_report` writes `report.md`, `transformer.json` and the figures under `plots/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from decay import loop, metrics, plots, results, stats
from decay.config import RunConfig, dumps
from decay.errors import ConfigError
from decay.families.transformer import BLOCKS, KERNELS, NORMED
from decay.runner import Event, Runner
from decay.validation import validate_run

__all__ = ["Event", "TransformerSweepConfig", "run_transformer_sweep", "write_report"]

TRAINED = ("post_ln", "pre_ln", "deepnorm", "rezero")


@dataclasses.dataclass(frozen=True)
class TransformerSweepConfig:
    """The two parts' grids; everything else shared by `base`."""

    base: RunConfig = RunConfig(
        model="transformer",
        dataset="patch_digits",
        width=32,
        heads=4,
        activation="gelu",
        norm="layernorm",
        batch_size=32,
        steps=200,
        eval_every=100,
        log_every=20,
        checkpoint_every=0,
        optimizer="adam",
        learning_rate=1e-3,
        instruments="standard",
    )
    blocks: tuple[str, ...] = BLOCKS  # measured at initialization
    depths: tuple[int, ...] = (4, 16, 48)
    init_seeds: int = 2
    train_blocks: tuple[str, ...] = TRAINED
    train_depths: tuple[int, ...] = (6, 16)
    warmups: tuple[int, ...] = (0, 50)
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    seeds: int = 2

    def init_runs(self) -> list[RunConfig]:
        return [
            dataclasses.replace(self.base, block=b, norm=self.base.norm if b in NORMED else "none", depth=d, steps=0, seed=s)
            for b in self.blocks
            for d in self.depths
            for s in range(self.init_seeds)
        ]

    def train_runs(self) -> list[RunConfig]:
        return [
            dataclasses.replace(
                self.base,
                block=b,
                norm=self.base.norm if b in NORMED else "none",
                depth=d,
                warmup_steps=w,
                learning_rate=lr,
                seed=s,
                instruments="basic",
            )
            for b in self.train_blocks
            for d in self.train_depths
            for w in self.warmups
            for lr in self.learning_rates
            for s in range(self.seeds)
        ]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["base"] = self.base.to_json()
        return json.loads(json.dumps(out))


def validate(cfg: TransformerSweepConfig) -> None:
    """One-line ConfigErrors for the study's flags, then a run of each block and part."""
    for flag, values in (("blocks", cfg.blocks), ("train_blocks", cfg.train_blocks)):
        for b in values:
            if b not in BLOCKS:
                raise ConfigError(f"--{flag} contains unknown {b!r}; allowed: {', '.join(BLOCKS)}")
    if not cfg.depths or any(d < 1 for d in cfg.depths):
        raise ConfigError("--depths must be integers >= 1, e.g. 4,16")
    if not cfg.train_depths or any(d < 1 for d in cfg.train_depths):
        raise ConfigError("--train_depths must be integers >= 1, e.g. 6,16")
    if cfg.seeds < 1 or cfg.init_seeds < 1 or cfg.base.steps < 1:
        raise ConfigError("--seeds, --init_seeds and --steps must be integers >= 1")
    if any(w < 0 for w in cfg.warmups) or not cfg.learning_rates or any(not lr > 0 for lr in cfg.learning_rates):
        raise ConfigError("--warmups must be integers >= 0 and --learning_rates numbers > 0")
    for run in [*cfg.init_runs()[:: len(cfg.depths) * cfg.init_seeds], *cfg.train_runs()[:: cfg.seeds]]:
        validate_run(run)


def run_transformer_sweep(
    cfg: TransformerSweepConfig,
    workdir: str,
    on_event: Callable[[Event], None] | None = None,
    on_progress: Callable[[loop.RunProgress], None] | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Runs what is not yet in `<workdir>/results.jsonl`, then writes the report; returns every row (with its `part`)."""
    validate(cfg)
    # A run's name does not say its part (an init run and a train run of one depth, rate and seed share it).
    part = lambda c: "init" if c.steps == 0 else "train"  # noqa: E731
    runner = Runner(
        workdir,
        cfg.to_json(),
        cfg.base,
        command=command,
        key=lambda c: f"{part(c)}/{c.name}",
        row_key=lambda r: f"{r['part']}/{r['name']}",
    )
    rows = runner.run([*cfg.init_runs(), *cfg.train_runs()], on_event, on_progress, transform=lambda c, r: {**r, "part": part(c)})
    runner.close()  # the workdir's lock: the study's results are in (its report follows from them)
    write_report(workdir, cfg, rows)
    return rows


def _by(rows, **keys) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in keys.items())]


def _geo(values: Sequence[float | None]) -> float | None:
    v = np.array([np.nan if x is None else x for x in values], np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.mean(np.log(v)))) if v.size else None


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _mean_list(group: Sequence[dict[str, Any]], key: str, n: int) -> list[float | None] | None:
    """Per-point mean over the group's rows of the first n entries of `key` (None where a row lacks it)."""
    lists = [r[key][:n] for r in group if r.get(key)]
    if not lists:
        return None
    a = np.array([[np.nan if v is None else v for v in x] for x in lists], np.float64)
    with np.errstate(all="ignore"):
        return [metrics.clean(v) for v in np.mean(a, axis=0)]


def init_summary(rows: Sequence[dict[str, Any]], cfg: TransformerSweepConfig) -> list[dict[str, Any]]:
    """Per (block, depth) at initialization: chi along the stream, kernel gradients of the first and last block,
    c_tokens, the stream's q beside the theory's band where there is one."""
    out = []
    for b in cfg.blocks:
        for d in cfg.depths:
            group = _by(rows, part="init", block=b, depth=d)
            if not group:
                continue
            grads = np.array([[np.nan if v is None else v for v in r["grad_norms_init"]] for r in group])  # [seeds, 6 d]
            per_kernel = {k: [_geo(grads[:, i * d + j]) for j in range(d)] for i, k in enumerate(KERNELS)}
            block_grad = [_geo([per_kernel[k][j] for k in KERNELS]) for j in range(d)]
            c_last = [r["c_tokens_init"][d - 1] for r in group if r.get("c_tokens_init")]
            chis = [r["chi"] for r in group if r["chi"] is not None]
            out.append(
                {
                    "block": b,
                    "depth": d,
                    "seeds": len(group),
                    "chi": stats.mean_std_ci(chis)._asdict(),
                    "chi_theory": group[0]["chi_theory"],
                    "verdict": metrics.group_verdict(group),
                    "grad_first": block_grad[0],
                    "grad_last": block_grad[-1],
                    "grad_last_over_first": None if not (block_grad[0] and block_grad[-1]) else block_grad[-1] / block_grad[0],
                    "per_block_grad": block_grad,
                    "per_kernel_grad": per_kernel,
                    "signal_init": [_geo([r["signal_norms_init"][j] for r in group]) for j in range(d)],
                    "c_tokens_last": stats.mean_std_ci(c_last)._asdict(),
                    "c_tokens": _mean_list(group, "c_tokens_init", d),
                    # The residual stream's q after each block (mean over seeds), the theory's band (families.transformer).
                    "q": _mean_list(group, "q_init", d),
                    "q_last": stats.mean_std_ci(_finite(r["q_init"][d - 1] for r in group if r.get("q_init")))._asdict(),
                    "q_theory_low": (group[0].get("q_theory_low") or [None] * d)[:d],
                    "q_theory_high": (group[0].get("q_theory_high") or [None] * d)[:d],
                    "theory": group[0]["theory"],
                }
            )
    return out


def q_growth(s: dict[str, Any]) -> dict[str, Any] | None:
    """A least-squares line through the measured q after blocks 1..L (its slope per block and r^2) beside the
    theory's slope band; None without q or theory."""
    q, low, high = s.get("q"), s.get("q_theory_low"), s.get("q_theory_high")
    if not q or low[0] is None or any(v is None for v in q) or len(q) < 3:
        return None
    x, y = np.arange(1, len(q) + 1, dtype=np.float64), np.asarray(q, np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1.0 - float(np.sum((y - (slope * x + intercept)) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-300))
    step = lambda v: float(v[1] - v[0]) if len(v) > 1 else 0.0  # noqa: E731
    inside = sum(1 for v, lo, hi in zip(q, low, high, strict=True) if lo <= v <= hi)
    return {"slope": float(slope), "r2": r2, "slope_low": step(low), "slope_high": step(high), "inside": inside, "blocks": len(q)}


def train_summary(rows: Sequence[dict[str, Any]], cfg: TransformerSweepConfig) -> list[dict[str, Any]]:
    """Per (block, depth, warm-up): the rate chosen on validation accuracy and test accuracy at it over seeds."""
    out = []
    for b in cfg.train_blocks:
        for d in cfg.train_depths:
            for w in cfg.warmups:
                group = _by(rows, part="train", block=b, depth=d, warmup_steps=w)
                if group:
                    out.append({"block": b, "depth": d, "warmup": w, **_chosen(group, lambda r: r["learning_rate"])})
    return out


def best_summary(rows: Sequence[dict[str, Any]], cfg: TransformerSweepConfig) -> list[dict[str, Any]]:
    """Per (block, depth): the tuned best over warm-up and rate, chosen on validation accuracy."""
    out = []
    for b in cfg.train_blocks:
        for d in cfg.train_depths:
            group = _by(rows, part="train", block=b, depth=d)
            if group:
                chosen = _chosen(group, lambda r: (r["warmup_steps"], r["learning_rate"]))
                warmup, rate = chosen.pop("learning_rate")
                out.append({"block": b, "depth": d, "warmup": warmup, "learning_rate": rate, **chosen})
    return out


def _chosen(group: Sequence[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    choice = stats.best_by_validation(group, key)
    accs = [r["test_accuracy"] if r["test_accuracy"] is not None else 0.0 for r in choice.rows]  # diverged: 0
    return {
        "learning_rate": choice.value,
        "at_edge": choice.at_edge,
        "val_means": {str(k): v for k, v in choice.val_means.items()},
        "test_accuracy": stats.mean_std_ci(accs, (0.0, 1.0))._asdict(),
        "test_values": accs,
        "diverged_any_rate": sum(1 for r in group if r["diverged"]),
        "runs": len(group),
    }


def _welch(a: Sequence[float], b: Sequence[float]) -> str:
    if len(a) < 2 or len(b) < 2:
        return "not compared (fewer than 2 seeds)"
    return stats.welch(a, b).words()


def _acc(s: dict[str, Any]) -> str:
    return stats.Summary(**s["test_accuracy"]).fmt(100.0, ".1f", "%")


def findings(init: list[dict[str, Any]], train: list[dict[str, Any]], best: list[dict[str, Any]], cfg) -> list[str]:
    """The report's sentences, from the numbers alone."""
    lines = []
    deepest = max(cfg.depths)
    for s in (s for s in init if s["depth"] == deepest):
        ratio = s["grad_last_over_first"]
        lines.append(
            f"- **{s['block']}** at depth {deepest}: chi along the stream {stats.Summary(**s['chi']).fmt(1.0, '.3f')}"
            f" ({s['verdict']}); kernel gradient of the last block / the first"
            f" {'-' if ratio is None else f'{ratio:.3g}'}; c_tokens after the last block"
            f" {stats.Summary(**s['c_tokens_last']).fmt(1.0, '.3f')}."
        )
    for b in ("post_ln", "pre_ln"):  # Xiong et al.: the last block's gradient vs depth
        mine = [s for s in init if s["block"] == b and s["grad_last"]]
        if mine:
            parts = ", ".join(f"L = {s['depth']}: {s['grad_last']:.3g}" for s in mine)
            lines.append(f"- {b}: the last block's kernel gradient norm (geometric mean of its 6 kernels) by depth: {parts}.")
    pre = [s for s in init if s["block"] == "pre_ln" and s["q"] and s["q"][-1]]
    for s in pre:
        g = q_growth(s)
        if g:
            lines.append(
                f"- pre_ln at depth {s['depth']}: the stream's q grows by {g['slope']:.3g} per block (line r^2 {g['r2']:.3f});"
                f" theory: between {g['slope_low']:.3g} and {g['slope_high']:.3g}; measured q inside the predicted band at"
                f" {g['inside']}/{g['blocks']} blocks."
            )
    if len(pre) >= 2 and all(s["grad_last"] for s in pre):  # the last block's gradient goes as 1/sqrt(q_L) (the final norm)
        a = pre[0]
        parts = ", ".join(
            f"L = {a['depth']} -> {s['depth']}: measured {s['grad_last'] / a['grad_last']:.3g},"
            f" sqrt(q_{a['depth']} / q_{s['depth']}) {math.sqrt(a['q'][-1] / s['q'][-1]):.3g}"
            for s in pre[1:]
        )
        lines.append(
            f"- pre_ln: the last block's gradient relative to the shallowest depth, and 1/sqrt(q_L) from the measured q: {parts}."
        )
    for d in cfg.train_depths:
        for b in cfg.train_blocks:
            sides = {s["warmup"]: s for s in train if s["block"] == b and s["depth"] == d}
            if len(sides) >= 2:
                w0, w1 = min(sides), max(sides)
                a, c = sides[w1], sides[w0]
                lines.append(
                    f"- {b} at depth {d}: test accuracy with warm-up {w1} {_acc(a)} (lr {a['learning_rate']:g}), without"
                    f" {_acc(c)} (lr {c['learning_rate']:g}); with - without: {_welch(a['test_values'], c['test_values'])};"
                    f" diverged runs over every rate {c['diverged_any_rate']} without, {a['diverged_any_rate']} with."
                )
        ref = next((s for s in best if s["block"] == "post_ln" and s["depth"] == d), None)
        for s in (s for s in best if s["depth"] == d and ref is not None and s is not ref):
            lines.append(
                f"- depth {d}, each side's tuned best (warm-up and rate on validation): {s['block']} {_acc(s)} vs post_ln"
                f" {_acc(ref)}; {s['block']} - post_ln: {_welch(s['test_values'], ref['test_values'])}."
            )
    return lines


def write_report(workdir: str, cfg: TransformerSweepConfig, rows: Sequence[dict[str, Any]] | None = None) -> str:
    """Writes `report.md`, `transformer.json` and `plots/`; returns the report's path."""
    if rows is None:
        rows = results.read_jsonl(os.path.join(workdir, "results.jsonl"))
    init, train, best = init_summary(rows, cfg), train_summary(rows, cfg), best_summary(rows, cfg)
    lines_found = findings(init, train, best, cfg)
    plot_dir = os.path.join(workdir, "plots")
    plots.save(plots.transformer_init_figure(init, cfg.blocks), os.path.join(plot_dir, "init_profiles.png"))
    doc = {"config": cfg.to_json(), "init": init, "train": train, "best": best, "findings": lines_found}
    results.write_atomic(os.path.join(workdir, "transformer.json"), dumps(json.loads(json.dumps(doc, default=float))))
    b = cfg.base
    fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
    lines = [
        "# Deep transformers: where the norm sits",
        "",
        f"Digits as 16 patch tokens (2x2 pixels), width {b.width}, {b.heads} heads, MLP ratio {b.mlp_ratio}, {b.activation},"
        f" {b.norm} where the block has a norm. Init part: steps 0, {cfg.init_seeds} seeds per (block, depth). Train part:"
        f" depths {', '.join(map(str, cfg.train_depths))}, {b.steps} steps of {b.optimizer}, batch {b.batch_size}, linear"
        f" warm-up over {', '.join(map(str, cfg.warmups))} steps, rate chosen per (block, depth, warm-up) on validation"
        f" accuracy from {', '.join(f'{x:g}' for x in cfg.learning_rates)}; test accuracy at it: mean ± sample std [95% t"
        f" interval] over {cfg.seeds} seeds (a diverged run counts 0).",
        "",
        "## Findings",
        "",
        *lines_found,
        "",
        "## At initialization",
        "",
        "chi: per-block factor of the squared backprop signal along the residual stream, fitted as along depth (mean ±"
        " std [95% interval] over seeds; theory where the row has one); grad first / last: geometric mean of the 6 kernel"
        " gradient norms (q, k, v, out, mlp_in, mlp_out) of the first and the last block; c_tokens: mean cosine between"
        " an example's tokens after the last block (1: every token the same direction); q_L: the stream's mean square"
        " after the last block (mean ± std [95% interval] over seeds), and the theory's band [tokens uncorrelated, tokens"
        " alike] (pre_ln, rezero; see"
        " docs/transformer.md).",
        "",
        "| block | depth | chi | chi theory | verdict | grad first block | grad last block | last / first | c_tokens last"
        " | q_L | q_L theory |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in init:
        band = "-" if s["q_theory_low"][-1] is None else f"[{s['q_theory_low'][-1]:.3g}, {s['q_theory_high'][-1]:.3g}]"
        lines.append(
            f"| {s['block']} | {s['depth']} | {stats.Summary(**s['chi']).fmt(1.0, '.3f')} | {fmt(s['chi_theory'])} |"
            f" {s['verdict']} | {fmt(s['grad_first'])} | {fmt(s['grad_last'])} | {fmt(s['grad_last_over_first'])} |"
            f" {stats.Summary(**s['c_tokens_last']).fmt(1.0, '.3f')} | {stats.Summary(**s['q_last']).fmt(1.0, '.3g')} | {band} |"
        )
    lines += [
        "",
        "## Training",
        "",
        "Per (block, depth, warm-up), the rate chosen on validation:",
        "",
        "| block | depth | warm-up | lr (val) | test accuracy | diverged (all rates) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in train:
        edge = " (edge)" if s["at_edge"] else ""
        lines.append(
            f"| {s['block']} | {s['depth']} | {s['warmup']} | {s['learning_rate']:g}{edge} | {_acc(s)} |"
            f" {s['diverged_any_rate']}/{s['runs']} |"
        )
    lines += [
        "",
        "Per (block, depth), the tuned best over warm-up and rate (chosen on validation):",
        "",
        "| block | depth | warm-up, lr (val) | test accuracy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in best:
        lines.append(f"| {s['block']} | {s['depth']} | {s['warmup']}, {s['learning_rate']:g} | {_acc(s)} |")
    lines += [
        "",
        "![per-block profiles at initialization](plots/init_profiles.png)",
        "",
        "Every number: transformer.json; every run: results.jsonl.",
    ]
    path = os.path.join(workdir, "report.md")
    results.write_atomic(path, "\n".join(lines) + "\n")
    return path
