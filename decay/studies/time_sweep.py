"""The time sweep: depth in time. Recurrent nets on a long-range task at several sequence lengths.

Each variant (a vanilla tanh rnn, an orthogonal one, the IRNN, an LSTM, a GRU, an rnn above
the critical recurrent variance with and without gradient clipping) is run at every sequence
length, every learning rate of the grid and every seed, one `results.jsonl` row each (the study
runner: finished runs are skipped, a new sequence length loads its own task). Per (variant, T)
the learning rate is chosen on the validation split (lowest mean validation loss over seeds);
test numbers at that rate are reported with their spread over seeds. `write_report` writes
`report.md`, `time.json` (every number of the report) and the figures under `plots/`.
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
from decay.data import SOLVED_MSE, TASK_OF
from decay.errors import ConfigError
from decay.runner import Event, Runner
from decay.validation import validate_run

__all__ = ["VARIANTS", "Event", "TimeSweepConfig", "run_time_sweep", "write_report"]

EXPLODING_WEIGHT_VAR = 4.0  # sigma_w^2 of the exploding tanh rnn: mean field gives chi ~ 1.3 per step on the adding task

# Each variant: what it sets on the base config, and one line on what it is.
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "tanh": (dict(model="rnn", activation="tanh", weight_var=1.0), "vanilla tanh rnn, Gaussian W, sigma_w^2 = 1"),
    "orthogonal": (dict(model="rnn", activation="tanh", recurrent_init="orthogonal"), "tanh rnn, orthogonal W"),
    "irnn": (dict(model="rnn", activation="relu", recurrent_init="identity"), "IRNN: ReLU, W = I (Le et al. 2015)"),
    "lstm": (dict(model="lstm", activation="tanh"), "LSTM, orthogonal W, forget bias 1"),
    "gru": (dict(model="gru", activation="tanh"), "GRU, orthogonal W"),
    "exploding": (
        dict(model="rnn", activation="tanh", weight_var=EXPLODING_WEIGHT_VAR),
        f"tanh rnn, sigma_w^2 = {EXPLODING_WEIGHT_VAR:g} (above critical)",
    ),
    "exploding_clip": (
        dict(model="rnn", activation="tanh", weight_var=EXPLODING_WEIGHT_VAR, clip_norm=1.0),
        "the same, gradients clipped to global norm 1 (Pascanu et al. 2013)",
    ),
}


@dataclasses.dataclass(frozen=True)
class TimeSweepConfig:
    """Variants x sequence lengths x learning rates x seeds, all else shared by `base`."""

    base: RunConfig = RunConfig(
        model="rnn",
        dataset="adding",
        depth=1,
        width=32,
        batch_size=64,
        steps=1500,
        eval_every=250,
        log_every=50,
        checkpoint_every=0,
        optimizer="adam",
        learning_rate=3e-3,
        instruments="basic",
    )
    variants: tuple[str, ...] = tuple(VARIANTS)
    seq_lens: tuple[int, ...] = (10, 30, 100)
    depths: tuple[int, ...] = (1,)  # stacked recurrent layers (theory covers one)
    seeds: int = 3
    learning_rates: tuple[float, ...] = (3e-3, 1e-2)

    def config(self, variant: str, seq_len: int, learning_rate: float, seed: int, depth: int = 1) -> RunConfig:
        """The run of one grid point."""
        settings, _ = VARIANTS[variant]
        return dataclasses.replace(self.base, seq_len=seq_len, depth=depth, learning_rate=learning_rate, seed=seed, **settings)

    def runs(self) -> list[tuple[str, RunConfig]]:
        """(variant, config) of every run; learning rates and seeds innermost so that one program serves them."""
        return [
            (v, self.config(v, t, lr, s, d))
            for d in self.depths
            for t in self.seq_lens
            for v in self.variants
            for lr in self.learning_rates
            for s in range(self.seeds)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base.to_json(),
            "variants": list(self.variants),
            "seq_lens": list(self.seq_lens),
            "depths": list(self.depths),
            "seeds": self.seeds,
            "learning_rates": list(self.learning_rates),
        }


def validate(cfg: TimeSweepConfig) -> None:
    """One-line ConfigErrors for the study's own flags, then every run's config."""
    for v in cfg.variants:
        if v not in VARIANTS:
            raise ConfigError(f"--variants contains unknown {v!r}; allowed: {', '.join(VARIANTS)}")
    if not cfg.variants or len(set(cfg.variants)) != len(cfg.variants):
        raise ConfigError("--variants must list each variant once, e.g. tanh,lstm")
    if not cfg.seq_lens or any(t < 1 for t in cfg.seq_lens) or len(set(cfg.seq_lens)) != len(cfg.seq_lens):
        raise ConfigError(f"--seq_lens={','.join(map(str, cfg.seq_lens))}; give distinct integers >= 1, e.g. 10,30,100")
    if not cfg.learning_rates or any(not (math.isfinite(lr) and lr > 0) for lr in cfg.learning_rates):
        raise ConfigError("--learning_rates must be numbers > 0, e.g. 0.001,0.01")
    if not cfg.depths or any(d < 1 for d in cfg.depths) or len(set(cfg.depths)) != len(cfg.depths):
        raise ConfigError(f"--depths={','.join(map(str, cfg.depths))}; give distinct integers >= 1, e.g. 1,2")
    if cfg.seeds < 1:
        raise ConfigError(f"--seeds={cfg.seeds}; must be an integer >= 1")
    if TASK_OF.get(cfg.base.dataset) != "regression":
        raise ConfigError(f"--dataset={cfg.base.dataset}: the time sweep reads the adding problem (--dataset=adding)")
    for _, run in cfg.runs()[:: max(1, cfg.seeds * len(cfg.learning_rates))]:
        validate_run(run)


def run_time_sweep(
    cfg: TimeSweepConfig,
    workdir: str,
    on_event: Callable[[Event], None] | None = None,
    on_progress: Callable[[loop.RunProgress], None] | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Runs every grid point not yet in `<workdir>/results.jsonl` (TensorBoard and checkpoints under tb/ and runs/),
    then writes the report; returns the rows, each with its `variant`."""
    validate(cfg)
    first = dataclasses.replace(cfg.base, seq_len=cfg.seq_lens[0])  # the runner loads each length's task when it comes
    runner = Runner(workdir, cfg.to_json(), first, run_folders=True, command=command)
    pairs = cfg.runs()
    variant_of = {c.name: v for v, c in pairs}
    rows = runner.run([c for _, c in pairs], on_event, on_progress, transform=lambda c, r: {**r, "variant": variant_of[c.name]})
    runner.close()  # the workdir's lock: the study's results are in (its report follows from them)
    write_report(workdir, cfg, rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Summaries and the report


def _mse_summary(rows: Sequence[dict[str, Any]]) -> stats.Summary:
    return stats.mean_std_ci([r["test_loss"] for r in rows if r["test_loss"] is not None], (0.0, math.inf))


def summarize(rows: Sequence[dict[str, Any]], cfg: TimeSweepConfig) -> list[dict[str, Any]]:
    """Per (variant, T): the learning rate chosen on validation and, at it, test MSE over seeds, solved seeds,
    diverged seeds, and the gradient measured at initialization against theory."""
    out = []
    for d, t, v in ((d, t, v) for d in cfg.depths for t in cfg.seq_lens for v in cfg.variants):
        group = [r for r in rows if r["variant"] == v and r["seq_len"] == t and r["depth"] == d]
        if not group:
            continue
        choice = stats.best_by_validation(group, lambda r: r["learning_rate"], by="loss")
        best = choice.rows
        # At initialization a seed's net is the same at every rate: one value per seed (the chosen rate's runs).
        chis = [r["chi"] for r in best if r["chi"] is not None]
        cell_chis = [metrics.fit_chi(r["cell_signal_norms_init"][-t:]) for r in best if r.get("cell_signal_norms_init")]
        mse = _mse_summary(best)
        out.append(
            {
                "variant": v,
                "seq_len": t,
                "depth": d,
                "learning_rate": choice.value,
                "at_edge": choice.at_edge,
                "seeds": len(best),
                "test_mse": mse._asdict(),
                "test_mse_values": [r["test_loss"] for r in best],
                "solved": sum(1 for r in best if r["test_loss"] is not None and r["test_loss"] < SOLVED_MSE),
                "diverged": sum(1 for r in best if r["diverged"]),
                "diverged_any_rate": sum(1 for r in group if r["diverged"]),
                "chi": stats.mean_std_ci(chis)._asdict(),
                "cell_chi": stats.mean_std_ci([c for c in cell_chis if c is not None])._asdict() if cell_chis else None,
                "chi_theory": group[0]["chi_theory"],
                "theory": group[0]["theory"],
                "verdict": metrics.group_verdict(group),
                "gain": _gain(chis, t),
                # The last layer's steps: its signal arrives from the loss through time alone.
                "signal_init": _mean_profile([r["signal_norms_init"][-t:] for r in best]),
                "cell_signal_init": _mean_profile([(r.get("cell_signal_norms_init") or [])[-t:] for r in best]) or None,
                "signal_theory": group[0]["signal_profile_theory"],
            }
        )
    return out


def _gain(chis: Sequence[float], t: int) -> float | None:
    """log10 of the median chi^(T-1): the squared signal's change from the last step back to the first."""
    if not chis or t < 2:
        return None
    return float((t - 1) * math.log10(float(np.median(chis))))


def _mean_profile(profiles: Sequence[Sequence[Any]]) -> list[float | None]:
    """Geometric mean over seeds of per-step norms (the figures' lines), None where any seed has none."""
    usable = [p for p in profiles if p]
    if not usable:
        return []
    a = np.stack([plots.as_float_array(p) for p in usable])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.where(a > 0, a, np.nan))
    mean = np.nanmean(logs, axis=0) if np.isfinite(logs).any() else np.full(a.shape[1], np.nan)
    return [metrics.clean(10.0**m) for m in mean]


def _fmt_mse(s: dict[str, Any]) -> str:
    return stats.Summary(**s).fmt(1.0, ".4f")


def _compare(summary: list[dict[str, Any]], a: str, b: str, t: int) -> str | None:
    """'a vs b at T: difference of test MSE [interval]' (Welch, 95%), or None without two seeds each (`summary`: one depth)."""
    sa = next((s for s in summary if s["variant"] == a and s["seq_len"] == t), None)
    sb = next((s for s in summary if s["variant"] == b and s["seq_len"] == t), None)
    if sa is None or sb is None:
        return None
    return _mse_difference(sa["test_mse_values"], sb["test_mse_values"])


def _mse_difference(a: Sequence[float | None], b: Sequence[float | None]) -> str | None:
    """mean(a) - mean(b) of test MSEs with its 95% Welch interval in words, or None without two finite seeds each."""
    a, b = [x for x in a if x is not None], [x for x in b if x is not None]
    if len(a) < 2 or len(b) < 2:
        return None
    return stats.welch(a, b).words(scale=1.0, unit="", spec="+.4f")


def _solved_words(s: dict[str, Any]) -> str:
    return f"{s['solved']}/{s['seeds']} seeds solved"


def verdict_sentences(summary: list[dict[str, Any]], cfg: TimeSweepConfig, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's findings, one sentence per variant and one per comparison, from the numbers alone; per depth
    (a heading line each) when the study stacks more than one."""
    lines = []
    for d in cfg.depths:
        if len(cfg.depths) > 1:
            lines.append(f"- Depth {d} (stacked recurrent layers):")
        lines += _depth_sentences([s for s in summary if s["depth"] == d], cfg, [r for r in rows if r["depth"] == d])
    return lines


def _same_rate(rows: Sequence[dict[str, Any]], lr: float, t: int) -> str:
    """Clipped against unclipped at one learning rate: diverged counts and the Welch difference of test MSE."""
    side = {
        v: [r for r in rows if r["variant"] == v and r["seq_len"] == t and r["learning_rate"] == lr]
        for v in ("exploding_clip", "exploding")
    }
    div = f"diverged {sum(r['diverged'] for r in side['exploding'])}/{sum(r['diverged'] for r in side['exploding_clip'])}"
    words = _mse_difference(*([r["test_loss"] for r in side[v]] for v in ("exploding_clip", "exploding")))
    return f"{div}, {words or 'MSE not compared (fewer than 2 finite seeds)'}"


def _depth_sentences(summary: list[dict[str, Any]], cfg: TimeSweepConfig, rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for v in cfg.variants:
        mine = [s for s in summary if s["variant"] == v]
        if not mine:
            continue
        solved = [s["seq_len"] for s in mine if s["solved"] == s["seeds"]]
        failed = [s["seq_len"] for s in mine if s["solved"] == 0]
        parts = [f"{s['seq_len']}: {_solved_words(s)}, MSE {_fmt_mse(s['test_mse'])}" for s in mine]
        where = (
            f"solves every T up to {max(solved)}" if solved and not failed
            else f"stops learning by T = {min(failed)}" if failed and solved and min(failed) > max(solved)
            else "solves none of the lengths" if len(failed) == len(mine)
            else "is mixed across lengths and seeds"
        )  # fmt: skip
        lines.append(f"- **{v}** ({VARIANTS[v][1]}) {where} ({'; '.join(f'T={p}' for p in parts)}).")
    longest = max(cfg.seq_lens)
    for other in ("lstm", "gru", "irnn", "orthogonal"):
        if other in cfg.variants and "tanh" in cfg.variants:
            words = _compare(summary, other, "tanh", longest)
            if words:
                lines.append(f"- {other} - tanh, test MSE at T = {longest}: {words}.")
    for t in cfg.seq_lens:
        if "exploding" in cfg.variants and "exploding_clip" in cfg.variants:
            a = next((s for s in summary if s["variant"] == "exploding_clip" and s["seq_len"] == t), None)
            b = next((s for s in summary if s["variant"] == "exploding" and s["seq_len"] == t), None)
            if a and b:
                words = _compare(summary, "exploding_clip", "exploding", t) or "not compared (fewer than 2 finite seeds)"
                same = "; ".join(f"at lr {lr:g}: {_same_rate(rows, lr, t)}" for lr in cfg.learning_rates)
                lines.append(
                    f"- Clipping at T = {t}: diverged runs over every rate {b['diverged_any_rate']} without,"
                    f" {a['diverged_any_rate']} with; clipped - unclipped test MSE at each one's best rate: {words};"
                    f" at equal rates (clipped - unclipped, diverged runs without/with): {same}."
                )
    return lines


def write_report(workdir: str, cfg: TimeSweepConfig | None = None, rows: Sequence[dict[str, Any]] | None = None) -> str:
    """Writes `report.md`, `time.json` and `plots/` of the study in `workdir` (rows from its results.jsonl); returns
    the report's path."""
    if cfg is None:
        data = results.read_json(os.path.join(workdir, "config.json"))
        fields = {f.name for f in dataclasses.fields(RunConfig)}
        cfg = TimeSweepConfig(
            base=RunConfig(**{k: v for k, v in data["base"].items() if k in fields}),
            variants=tuple(data["variants"]),
            seq_lens=tuple(data["seq_lens"]),
            depths=tuple(data.get("depths", [data["base"]["depth"]])),
            seeds=int(data["seeds"]),
            learning_rates=tuple(data["learning_rates"]),
        )
    if rows is None:
        rows = results.read_jsonl(os.path.join(workdir, "results.jsonl"))
    summary = summarize(rows, cfg)
    findings = verdict_sentences(summary, cfg, rows)
    plot_dir = os.path.join(workdir, "plots")
    os.makedirs(plot_dir, exist_ok=True)
    figures = {
        "gradient_vs_time": plots.save(
            plots.time_gradient_figure(summary, cfg.variants), os.path.join(plot_dir, "gradient_vs_time.png")
        ),
        "score_vs_length": plots.save(
            plots.time_score_figure(summary, cfg.variants, SOLVED_MSE, 1.0 / 6.0), os.path.join(plot_dir, "score_vs_length.png")
        ),
    }
    doc = {"config": cfg.to_json(), "solved_mse": SOLVED_MSE, "summary": summary, "findings": findings}
    results.write_atomic(os.path.join(workdir, "time.json"), dumps(json.loads(json.dumps(doc, default=float))))
    b = cfg.base
    rates = ", ".join(f"{x:g}" for x in cfg.learning_rates)
    layers = ", ".join(map(str, cfg.depths))
    lines = [
        "# Depth in time: recurrent nets on the adding problem",
        "",
        f"Adding problem (two marked values in U[0, 1] among T steps, target their sum; predicting 1 always gives MSE 1/6"
        f" = 0.1667). **Solved** = test MSE below {SOLVED_MSE:g} (6% of that baseline)."
        f" Recurrent layers: {layers}, width {b.width}, batch {b.batch_size}, {b.steps} steps of {b.optimizer} per run,"
        " learning rate chosen per (variant, T) on the"
        f" validation split (lowest mean validation MSE over {cfg.seeds} seeds) from {rates};"
        " test MSE at that rate: mean ± sample std [95% t interval, cut at 0] over seeds.",
        "",
        "## Findings",
        "",
        *findings,
        "",
        "## Per variant and length",
        "",
        "chi: the per-step factor of the squared backprop signal ||dL/dh_t||^2 at initialization, fitted over the middle"
        " half of the last layer's steps (mean ± std [95% interval] over seeds; a seed's net at initialization is the same"
        " at every rate); chi of c_t: the same fit along the LSTM's cell state; theory: the mean-field prediction where"
        " one applies;"
        " gain: log10 chi^(T-1), the squared signal's change from the last step back to the first.",
        "",
        "| variant | depth | T | chi measured | chi theory | chi of c_t (lstm) | log10 gain | verdict | lr (val) | test MSE"
        " | solved | diverged |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in summary:
        chi = stats.Summary(**s["chi"]).fmt(1.0, ".3f")
        theory = "-" if s["chi_theory"] is None else f"{s['chi_theory']:.3f}"
        cell = "-" if not s.get("cell_chi") else stats.Summary(**s["cell_chi"]).fmt(1.0, ".3f")
        gain = "-" if s["gain"] is None else f"{s['gain']:+.1f}"
        edge = " (edge)" if s["at_edge"] else ""
        lines.append(
            f"| {s['variant']} | {s['depth']} | {s['seq_len']} | {chi} | {theory} | {cell} | {gain} | {s['verdict']} |"
            f" {s['learning_rate']:g}{edge} | {_fmt_mse(s['test_mse'])} | {s['solved']}/{s['seeds']} |"
            f" {s['diverged']}/{s['seeds']} |"
        )
    lines += [
        "",
        "## Figures",
        "",
        "![gradient vs time](plots/gradient_vs_time.png)",
        "",
        "||dL/dh_t|| at initialization against the time step t (the loss reads h_T only), geometric mean over seeds and"
        " rates, one line per T; the LSTM's cell-state path ||dL/dc_t|| dashed; mean-field theory dotted where it applies.",
        "",
        "![score vs length](plots/score_vs_length.png)",
        "",
        "Test MSE at the validation-chosen rate against T: mean over seeds (line) and each seed (dots).",
        "",
        f"Figures: {', '.join(os.path.relpath(p, workdir) for p in figures.values())}; every number: time.json; every run:"
        " results.jsonl (one row each, TensorBoard under tb/).",
    ]
    path = os.path.join(workdir, "report.md")
    results.write_atomic(path, "\n".join(lines) + "\n")
    return path
