"""The seed's claims C1-C8, each settled by an experiment built on the library, on the honest-science protocol.

Protocol (the same for every claim):
- every configuration is tuned: its learning rate (and, where a claim is about them, its clipping
  threshold or Adam's epsilon) is chosen over a grid on the validation split
  (`decay.stats.best_by_validation`); the test split only reports;
- a comparison is between each side's tuned best, over `seeds` seeds (5 by default), with Welch's
  95% interval of the difference of mean test accuracies (`decay.stats.welch`): a difference whose
  interval holds 0 is "no difference";
- trainability is read from the final training loss against chance (`decay.metrics.trainability`);
- every rule can come out either way; the verdict follows from the numbers, nothing is typed in.

Runs are trained through the study runner (`decay.runner.Runner`): a configuration's learning
rates and seeds share one compiled program and train side by side; every row is kept in
`<workdir>/runs.jsonl`, so an interrupted experiment resumes and runs shared between claims train once.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from decay import metrics, results, stats
from decay.config import RunConfig, SweepConfig
from decay.errors import ConfigError
from decay.row import Row
from decay.runner import Event, Runner
from decay.validation import validate_sweep

SUPPORTED, REFUTED = "supported", "refuted"


@dataclasses.dataclass(frozen=True)
class ClaimsConfig:
    """Settings shared by every claim's experiment."""

    dataset: str = "digits"  # dataset of every run (the embedded one by default)
    data_dir: str | None = None  # folder of local dataset files
    seeds: int = 5  # seeds per configuration and grid value
    steps: int = 300  # training steps per run
    width: int = 128  # hidden width of the MLPs
    shallow: int = 4  # the shallow depth of depth comparisons
    deep: int = 32  # the depth at which configurations are compared
    learning_rates: tuple[float, ...] = (0.01, 0.05, 0.25)  # SGD's grid
    adam_learning_rates: tuple[float, ...] = (1e-4, 1e-3, 1e-2)  # Adam's grid
    adam_eps: tuple[float, ...] = (1e-8, 1e-4)  # Adam's epsilon grid (C6)
    clip_norms: tuple[float, ...] = (1.0, 10.0)  # clipping thresholds tried against none (C2)
    weight_vars: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)  # the weights' scale sweep (C8)
    weight_decays: tuple[float, ...] = (1e-3, 1e-2)  # L2 weight decay against none (C8)
    seed_net_learning_rates: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)  # the seed's net (C7)
    seed_net_steps: int = 300  # its SGD steps

    def base(self, **overrides: Any) -> RunConfig:
        """A run of these settings; `overrides` set the configuration under test."""
        cfg = RunConfig(
            dataset=self.dataset,
            data_dir=self.data_dir,
            width=self.width,
            steps=self.steps,
            learning_rate=self.learning_rates[0],
            eval_every=max(self.steps // 3, 1),
            checkpoint_every=0,
            instruments="basic",
        )
        return dataclasses.replace(cfg, **overrides)


QUICK = ClaimsConfig(
    seeds=3,
    steps=150,
    width=64,
    deep=16,
    learning_rates=(0.05, 0.25),
    adam_learning_rates=(1e-3, 1e-2),
    adam_eps=(1e-8,),
    clip_norms=(1.0,),
    weight_vars=(0.5, 1.0, 2.0),
    weight_decays=(1e-2,),
    seed_net_learning_rates=(0.03, 0.3, 1.0),
    seed_net_steps=150,
)


class Tuned(NamedTuple):
    """One configuration tuned on validation over a grid."""

    rows: list[Row]  # the seeds at the chosen grid point
    choice: dict[str, Any]  # the chosen grid point, e.g. {"learning_rate": 0.05}
    at_edge: bool  # a chosen value is the smallest or largest of its axis (of >= 2 values)
    all_rows: list[Row]  # every run of the grid


class Runs:
    """Trains configurations on demand, every grid point and seed side by side; keeps each row in `<workdir>/runs.jsonl`."""

    def __init__(self, cfg: ClaimsConfig, workdir: str, on_run: Callable[[str, Row], None] | None = None):
        self.cfg = cfg
        self.runner = Runner(
            workdir, dataclasses.asdict(cfg), cfg.base(), rows_file="runs.jsonl", key=_key, row_key=lambda r: r.get("_key")
        )
        self.dataset = self.runner.dataset
        self.rows = self.runner.rows
        self.on_run = on_run
        self.chance = 1.0 / self.dataset.num_classes

    def _on_event(self, e: Event) -> None:
        if e.kind == "done" and self.on_run:
            self.on_run(_label(e.config), e.row)

    def _train(self, cfgs: list[RunConfig]) -> list[Row]:
        return self.runner.run(cfgs, self._on_event, transform=lambda c, r: {**r, "_key": _key(c)})

    def get(self, seeds: int | None = None, **overrides: Any) -> list[Row]:
        """Rows of the configuration `base(**overrides)`, one per seed."""
        return self._train([self.cfg.base(**overrides, seed=seed) for seed in range(seeds or self.cfg.seeds)])

    def tuned(self, grid: dict[str, Sequence[Any]] | None = None, seeds: int | None = None, **overrides: Any) -> Tuned:
        """`base(**overrides)` over the grid (default: SGD's learning rates), the best point chosen on validation."""
        grid = grid or {"learning_rate": self.cfg.learning_rates}
        names = list(grid)
        points = list(itertools.product(*(grid[n] for n in names)))
        cfgs = [
            self.cfg.base(**{**overrides, **dict(zip(names, p, strict=True))}, seed=seed)
            for p in points
            for seed in range(seeds or self.cfg.seeds)
        ]
        rows = self._train(cfgs)
        choice = stats.best_by_validation(rows, lambda r: tuple(r[n] for n in names))
        chosen = dict(zip(names, choice.value, strict=True))
        edge = any(
            len(set(grid[n])) >= 2 and chosen[n] in (min(grid[n], key=stats.grid_order), max(grid[n], key=stats.grid_order))
            for n in names
        )
        return Tuned(choice.rows, chosen, edge, rows)


def _key(c: RunConfig) -> str:
    return json.dumps(c.to_json(), sort_keys=True)


def _label(c: RunConfig) -> str:
    parts = [c.model, c.activation, c.norm, f"depth {c.depth}", f"lr {c.learning_rate:g}"]
    if c.init != "auto":
        parts.append(c.init)
    if c.weight_var is not None:
        parts.append(f"weight_var {c.weight_var:g}")
    if c.residual:
        parts.append(f"residual {c.residual_scale:.3g}")
    if c.optimizer != "sgd":
        parts.append(f"{c.optimizer} eps {c.adam_eps:g}")
    if c.clip_norm is not None:
        parts.append(f"clip {c.clip_norm:g}")
    if c.weight_decay:
        parts.append(f"weight decay {c.weight_decay:g}")
    return ", ".join(parts) + f", seed {c.seed}"


# ------------------------------------------------------------------------------------------
# Numbers from rows


def _vals(rows: Sequence[Row], fn: Callable[[Row], Any]) -> list[float]:
    out = []
    for r in rows:
        v = fn(r)
        if v is not None and math.isfinite(float(v)):
            out.append(float(v))
    return out


def test_accs(rows: Sequence[Row]) -> list[float]:
    """Test accuracy per seed; a diverged run (no test score) counts 0."""
    return [0.0 if r["test_accuracy"] is None else r["test_accuracy"] for r in rows]


def acc(rows: Sequence[Row]) -> stats.Summary:
    """Mean test accuracy over seeds with sample std and 95% interval (diverged runs count 0)."""
    return stats.mean_std_ci(test_accs(rows), (0.0, 1.0))


def compare(a: Sequence[Row], b: Sequence[Row]) -> stats.Difference:
    """Welch's 95% interval of mean test accuracy a - b."""
    return stats.welch(test_accs(a), test_accs(b))


def trains(rows: Sequence[Row]) -> str:
    """The most common trainability over seeds (trains | partial | fails | diverged)."""
    v = [r["trainability"] for r in rows]
    return max(sorted(set(v)), key=v.count)


def median(rows: Sequence[Row], fn: Callable[[Row], Any]) -> float | None:
    v = _vals(rows, fn)
    return float(np.median(v)) if v else None


def spread(rows: Sequence[Row], fn: Callable[[Row], Any]) -> tuple[float | None, float | None]:
    v = _vals(rows, fn)
    return (float(np.min(v)), float(np.max(v))) if v else (None, None)


def chi_final(r: Row) -> float | None:
    """chi fitted to the backprop signal at the end of training."""
    return metrics.fit_chi(r["signal_norms_final"])


def first_layer_update(r: Row) -> float | None:
    """First hidden layer's relative update over the last hidden layer's, at the last step."""
    u = r["update_ratio_final"]
    return u[0] / u[-1] if u and u[0] is not None and u[-1] else None


def first_layer_grad(r: Row) -> float | None:
    """||dL/dW_0|| at initialization."""
    g = r["grad_norms_init"]
    return g[0] if g else None


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _acc_str(rows: Sequence[Row]) -> str:
    return acc(rows).fmt(100, ".1f", "%")


def _range_str(rows: Sequence[Row], fn: Callable[[Row], Any], spec: str = ".3g") -> str:
    m = median(rows, fn)
    lo, hi = spread(rows, fn)
    if m is None:
        return "-"
    if lo == hi:
        return _fmt(m, spec)
    return f"{_fmt(m, spec)} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def _diverged(rows: Sequence[Row]) -> str:
    return f"{sum(bool(r['diverged']) for r in rows)}/{len(rows)}"


def _chosen(t: Tuned) -> str:
    names = {"learning_rate": "lr", "clip_norm": "clip", "adam_eps": "eps"}
    text = ", ".join(f"{names.get(k, k)} {'none' if v is None else format(v, 'g')}" for k, v in t.choice.items())
    return text + (" (edge)" if t.at_edge else "")


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


def _bars(groups: dict[str, dict[str, Sequence[Row]]], ylabel: str, chance: float) -> dict[str, Any]:
    """A bar figure of mean test accuracy with 95% intervals: group -> label -> rows."""
    means = {g: {k: acc(rs).mean for k, rs in v.items()} for g, v in groups.items()}
    errors = {g: {k: (acc(rs).lo, acc(rs).hi) for k, rs in v.items()} for g, v in groups.items()}
    return {"kind": "bars", "ylabel": ylabel, "groups": means, "errors": errors, "chance": chance}


@dataclasses.dataclass
class Claim:
    """One claim's outcome: what was asked, how it was measured, the numbers, the figure, the verdict and its rule."""

    id: str
    claim: str
    question: str
    experiment: str
    table: list[str]
    verdict: str
    because: str
    rule: str = ""
    figure: str | None = None
    figure_series: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# The claims


def _significant(d: stats.Difference, sign: int) -> bool:
    return d.significant and (d.diff > 0 if sign > 0 else d.diff < 0)


def rule_c1(cases: dict[str, tuple[bool, stats.Difference, str]]) -> tuple[str, str]:
    """cases: activation -> (backprop signal vanishing at the deep depth, deep - shallow test accuracy, deep trainability).

    An activation is affected when its signal vanishes and the deep net trains worse than the shallow one
    (a significant drop) or not at all. Supported: every activation affected; refuted: none; else depends.
    """
    affected = [a for a, (van, d, tr) in cases.items() if van and (_significant(d, -1) or tr != "trains")]
    vanishing = [a for a, (van, _, _) in cases.items() if van]
    parts = []
    for a, (van, d, tr) in cases.items():
        parts.append(f"{a}: signal {'vanishes' if van else 'does not vanish'}, deep vs shallow {d.words()}, deep net {tr}")
    if len(affected) == len(cases):
        return SUPPORTED, "; ".join(parts)
    if not affected:
        return REFUTED, "; ".join(parts) + ("" if vanishing else "; no saturating net's signal vanished")
    return "depends on the activation", "; ".join(parts)


def c1_saturating(runs: Runs) -> Claim:
    cfg = runs.cfg
    acts = ("sigmoid", "tanh")
    lines, cases, profiles = [], {}, {}
    for act in (*acts, "relu"):
        tuned = {d: runs.tuned(activation=act, depth=d) for d in (cfg.shallow, cfg.deep)}
        for d, t in tuned.items():
            lines.append(
                [
                    act,
                    str(d),
                    _chosen(t),
                    _range_str(t.rows, lambda r: r["chi"]),
                    metrics.group_verdict(t.rows),
                    _range_str(t.rows, metrics.first_over_last, ".2e"),
                    _range_str(t.rows, first_layer_update, ".2e"),
                    trains(t.rows),
                    _acc_str(t.rows),
                ]
            )
        deep, shallow = tuned[cfg.deep].rows, tuned[cfg.shallow].rows
        profiles[act] = _median_profile(deep, "signal_norms_init")
        if act in acts:
            cases[act] = (metrics.group_verdict(deep) == "vanishing", compare(deep, shallow), trains(deep))
    verdict, because = rule_c1(cases)
    return Claim(
        "C1",
        "Deep nets with saturating activations have gradients that shrink toward the input, stalling early layers.",
        "Does the backprop signal vanish toward the input for sigmoid and tanh, and does the deep net then train worse?",
        f"Plain MLPs (width {cfg.width}, LeCun init; ReLU with He init as the reference) at depths {cfg.shallow} and "
        f"{cfg.deep}, each tuned over SGD learning rates {list(cfg.learning_rates)} on validation, {cfg.steps} steps, "
        f"{cfg.seeds} seeds. chi = per-layer factor of ||dL/dh||^2 at init; first/last = ||dL/dh_0|| / ||dL/dh_{{L-1}}||; "
        "first-layer update = the first layer's relative update over the last layer's at the last step.",
        _table(
            [
                "activation",
                "depth",
                "chosen",
                "chi",
                "verdict",
                "signal first/last",
                "first-layer update / last",
                "training",
                "test acc",
            ],
            lines,
        ),
        verdict,
        because,
        rule="an activation is affected when its backprop signal vanishes at the deep depth and the deep net trains "
        "significantly worse than the shallow one (Welch 95%) or does not train; supported when sigmoid and tanh both are, "
        "refuted when neither is",
        figure_series={"kind": "layers", "ylabel": "log10 ||dL/dh_l|| at init (median over seeds)", "series": profiles},
    )


def rule_c2(cases: dict[str, tuple[bool, stats.Difference, bool, stats.Difference]]) -> tuple[str, str]:
    """cases: net -> (exploding at init, tuned net - stable reference test accuracy, diverged at every rate without
    clipping, best clipped - best unclipped).

    Destabilised: exploding, and diverging at every rate or training significantly worse than the reference.
    Supported: some net destabilised; refuted: nets explode but none is destabilised; not tested: none explodes.
    """
    exploding = [n for n, c in cases.items() if c[0]]
    destabilised = [n for n, (ex, d, div, _) in cases.items() if ex and (div or _significant(d, -1))]
    clip = "; ".join(f"clipping for {n}: {c[3].words()}" for n, c in cases.items())
    vs_ref = "; ".join(f"{n} vs the reference {c[1].words()}" for n, c in cases.items())
    if not exploding:
        return "not tested", f"no configuration tried made gradients explode; {vs_ref}"
    if destabilised:
        return (
            SUPPORTED,
            f"gradients explode in {', '.join(exploding)} and training is destabilised in {', '.join(destabilised)}; "
            f"{vs_ref}; {clip}",
        )
    return (
        REFUTED,
        f"gradients explode in {', '.join(exploding)} but tuned training is not worse than the reference; {vs_ref}; {clip}",
    )


def c2_exploding(runs: Runs) -> Claim:
    cfg = runs.cfg
    ref = runs.tuned(activation="relu", depth=cfg.deep)
    nets = {
        "relu, weight_var 3 (chaotic init)": dict(activation="relu", depth=cfg.deep, weight_var=3.0),
        "relu + batchnorm": dict(activation="relu", norm="batchnorm", depth=cfg.deep),
    }

    def line(label: str, t: Tuned) -> list[str]:
        return [
            label,
            _chosen(t),
            _range_str(t.rows, lambda r: r["chi"]),
            metrics.group_verdict(t.rows),
            _diverged(t.rows),
            trains(t.rows),
            _acc_str(t.rows),
        ]

    lines = [line("relu, He init (reference)", ref)]
    cases, groups = {}, {"tuned": {"relu He (reference)": ref.rows}}
    for name, over in nets.items():
        plain = runs.tuned(**over)
        clipped = runs.tuned({"clip_norm": cfg.clip_norms, "learning_rate": cfg.learning_rates}, **over)
        lines += [line(f"{name}, no clipping", plain), line(f"{name}, clipping tuned", clipped)]
        every_rate = all(r["diverged"] for r in plain.all_rows)
        exploding = metrics.group_verdict(plain.rows) == "exploding"
        cases[name] = (exploding, compare(plain.rows, ref.rows), every_rate, compare(clipped.rows, plain.rows))
        groups["tuned"][f"{name}"] = plain.rows
        groups.setdefault("clipping tuned", {})[f"{name}"] = clipped.rows
    verdict, because = rule_c2(cases)
    return Claim(
        "C2",
        "Gradients can also explode and destabilise training.",
        "Do per-layer gradients grow toward the input, does tuned training then diverge or degrade, and does tuned "
        "clipping help?",
        f"MLPs of depth {cfg.deep}, width {cfg.width}: ReLU with weight_var 3 (chi_1 = 1.5) and ReLU with batchnorm "
        f"(explodes at init, Yang et al. 2019), each tuned over SGD learning rates {list(cfg.learning_rates)}, and over "
        f"the same rates x global-norm clipping {list(cfg.clip_norms)}; {cfg.steps} steps, {cfg.seeds} seeds; He-init "
        "ReLU (tuned) as the reference.",
        _table(["net", "chosen", "chi", "verdict", "diverged", "training", "test acc"], lines),
        verdict,
        because,
        rule="destabilised = explodes at init (verdict exploding) and diverges at every rate or trains significantly worse "
        "than the tuned reference (Welch 95%); supported when some net is, refuted when nets explode but none is",
        figure_series=_bars(groups, "test accuracy (mean, 95% interval)", runs.chance),
    )


def rule_c3(cases: dict[tuple[str, int, str], tuple[str, stats.Difference]]) -> tuple[str, str]:
    """cases: (activation, depth, norm) -> (the plain net's trainability, norm - plain test accuracy).

    Where the plain net does not train, a norm rescues it when it adds significantly. Supported: some plain net
    fails and both norms rescue every one, hurting nowhere; refuted: plain nets fail and no norm rescues any;
    not tested: every plain net trains; else depends.
    """
    failing = sorted({(a, d) for (a, d, _), (tr, _) in cases.items() if tr != "trains"})
    rescues = [k for k, (tr, d) in cases.items() if tr != "trains" and _significant(d, +1)]
    hurts = [k for k, (_, d) in cases.items() if _significant(d, -1)]
    words = [
        f"{n} {'rescues' if k in rescues else 'does not rescue'} {a} at depth {dp} ({d.words()})"
        for k, (tr, d) in cases.items()
        if tr != "trains"
        for a, dp, n in [k]
    ]
    words += [f"{n} hurts {a} at depth {dp} ({cases[k][1].words()})" for k in hurts for a, dp, n in [k]]
    because = "; ".join(words) or "every plain net trained"
    if not failing:
        return "not tested", because
    if len(rescues) == sum(1 for k, (tr, _) in cases.items() if tr != "trains") and not hurts:
        return SUPPORTED, because
    if not rescues:
        return REFUTED, because
    return "depends on the norm and the activation", because


def c3_normalization(runs: Runs) -> Claim:
    cfg = runs.cfg
    acts = ("sigmoid", "tanh", "relu")
    depths = (cfg.deep // 2, cfg.deep)
    lines, cases, groups = [], {}, {}
    for depth in depths:
        for act in acts:
            plain = runs.tuned(activation=act, depth=depth)
            for norm in ("none", "batchnorm", "layernorm"):
                t = plain if norm == "none" else runs.tuned(activation=act, norm=norm, depth=depth)
                lines.append(
                    [
                        str(depth),
                        act,
                        norm,
                        _chosen(t),
                        _range_str(t.rows, lambda r: r["chi"]),
                        metrics.group_verdict(t.rows),
                        _range_str(t.rows, chi_final),
                        trains(t.rows),
                        _acc_str(t.rows),
                    ]
                )
                if depth == cfg.deep:
                    groups.setdefault(norm, {})[act] = t.rows
                if norm != "none":
                    cases[(act, depth, norm)] = (trains(plain.rows), compare(t.rows, plain.rows))
    verdict, because = rule_c3(cases)
    return Claim(
        "C3",
        "LayerNorm / BatchNorm stabilise training and prevent gradient decay.",
        "With and without each norm, each tuned: the gradient factor chi at init and after training, and training.",
        f"MLPs of depths {list(depths)}, width {cfg.width}, sigmoid/tanh/relu x none/batchnorm/layernorm, each tuned over "
        f"SGD learning rates {list(cfg.learning_rates)}, {cfg.steps} steps, {cfg.seeds} seeds. chi after training: the "
        "same fit on the last step's backprop signal.",
        _table(
            ["depth", "activation", "norm", "chosen", "chi at init", "verdict", "chi after training", "training", "test acc"],
            lines,
        ),
        verdict,
        because,
        rule="where the tuned plain net does not train (final training loss >= half of chance), a norm rescues it when it "
        "adds significantly (Welch 95%); supported when both norms rescue every such net and hurt none, refuted when "
        "none is rescued",
        figure_series=_bars(groups, f"test accuracy at depth {cfg.deep} (mean, 95% interval)", runs.chance),
    )


def rule_c4(cases: dict[str, tuple[stats.Difference, int, stats.Difference]]) -> tuple[str, str]:
    """cases: activation -> (residual - plain at the deep depth, best plain depth, best plain depth - depth 2).

    Skips help an activation when they add significantly; adding layers helps when a deeper plain net beats
    depth 2 significantly. Supported: both help for some activation; refuted: neither helps anywhere; else depends.
    """
    skips = [a for a, (d, _, _) in cases.items() if _significant(d, +1)]
    layers = [a for a, (_, best, g) in cases.items() if best > 2 and _significant(g, +1)]
    because = "; ".join(
        f"{a}: skip connections {d.words()} at equal depth, best plain depth {best} ({g.words()} over depth 2)"
        for a, (d, best, g) in cases.items()
    )
    if skips and layers:
        return SUPPORTED, because
    if not skips and not layers:
        return REFUTED, because
    verdict = "depends on the restructuring: skip connections " + ("help" if skips else "do not help")
    return verdict + ", adding layers " + ("helps" if layers else "does not"), because


def c4_restructuring(runs: Runs) -> Claim:
    cfg = runs.cfg
    alpha = 1.0 / math.sqrt(cfg.deep)
    acts = ("sigmoid", "tanh", "relu")
    depths = sorted({2, cfg.shallow, cfg.deep // 2, cfg.deep})
    lines, cases, curves, points = [], {}, {}, {}
    for act in acts:
        plain = {d: runs.tuned(activation=act, depth=d) for d in depths}
        res = runs.tuned(activation=act, depth=cfg.deep, residual=True, residual_scale=alpha)
        deep = plain[cfg.deep]
        lines.append(
            [act, f"plain, depth {cfg.deep}", _chosen(deep), _range_str(deep.rows, lambda r: r["chi"]), _acc_str(deep.rows)]
        )
        lines.append(
            [
                act,
                f"residual alpha={alpha:.3g}, depth {cfg.deep}",
                _chosen(res),
                _range_str(res.rows, lambda r: r["chi"]),
                _acc_str(res.rows),
            ]
        )
        best = max(depths, key=lambda d: (stats.mean_std_ci([r["val_accuracy"] or 0.0 for r in plain[d].rows]).mean, -d))
        lines.append([act, "plain, by depth", "-", "-", ", ".join(f"{d}: {100 * acc(plain[d].rows).mean:.1f}%" for d in depths)])
        cases[act] = (compare(res.rows, deep.rows), best, compare(plain[best].rows, plain[2].rows))
        curves[act] = {str(d): acc(plain[d].rows).mean for d in depths}
        points[act] = (cfg.deep, acc(res.rows).mean, f"residual alpha={alpha:.3g}")
    verdict, because = rule_c4(cases)
    return Claim(
        "C4",
        "Restructuring the network (e.g. skip connections; 'adding layers') helps.",
        "Residual against plain at equal depth; deeper against shallower plain nets; every net tuned.",
        f"MLPs, width {cfg.width}; residual blocks x + alpha f(x) with alpha = 1/sqrt(depth) = {alpha:.3g}; plain nets "
        f"at depths {depths}; each tuned over SGD learning rates {list(cfg.learning_rates)}, {cfg.steps} steps, "
        f"{cfg.seeds} seeds. The best plain depth is chosen on validation.",
        _table(["activation", "net", "chosen", "chi", "test acc"], lines),
        verdict,
        because,
        rule="skips help when residual beats plain at equal depth significantly (Welch 95%); adding layers helps when the "
        "best plain depth (chosen on validation) beats depth 2 significantly",
        figure_series={
            "kind": "curves",
            "ylabel": "test accuracy (lines: plain nets; stars: residual)",
            "xlabel": "depth",
            "curves": curves,
            "points": points,
        },
    )


def rule_c5(vs: dict[str, stats.Difference]) -> tuple[str, str]:
    """vs: other activation -> tuned ReLU (He) - tuned other test accuracy at the deep depth.

    Supported: ReLU significantly better than every other; refuted: significantly worse than any; depends on the
    activation: better than some, no difference to the rest; no difference: no significant difference at all.
    """
    because = "; ".join(f"ReLU vs {a}: {d.words()}" for a, d in vs.items())
    if any(_significant(d, -1) for d in vs.values()):
        return REFUTED, because
    better = [a for a, d in vs.items() if _significant(d, +1)]
    if len(better) == len(vs):
        return SUPPORTED, because
    if better:
        return "depends on the activation", because
    return "no difference", because


def c5_relu(runs: Runs) -> Claim:
    cfg = runs.cfg
    cases = {
        "relu, He init": dict(activation="relu"),
        "relu, LeCun init": dict(activation="relu", init="lecun_normal"),
        "tanh, LeCun init": dict(activation="tanh"),
        "sigmoid, LeCun init": dict(activation="sigmoid"),
    }
    tuned = {n: runs.tuned(depth=cfg.deep, **o) for n, o in cases.items()}
    lines = [
        [
            n,
            _chosen(t),
            _range_str(t.rows, lambda r: r["chi"]),
            _fmt(median(t.rows, lambda r: r.get("chi_theory"))),
            metrics.group_verdict(t.rows),
            trains(t.rows),
            _acc_str(t.rows),
        ]
        for n, t in tuned.items()
    ]
    relu = tuned["relu, He init"].rows
    verdict, because = rule_c5(
        {"tanh": compare(relu, tuned["tanh, LeCun init"].rows), "sigmoid": compare(relu, tuned["sigmoid, LeCun init"].rows)}
    )
    he, lecun = metrics.group_verdict(relu), metrics.group_verdict(tuned["relu, LeCun init"].rows)
    because += f"; ReLU's gradient at init is {he} with He init and {lecun} with LeCun init"
    if he == "stable" and lecun != "stable":
        because += ": the init, not the activation, keeps it stable"
    return Claim(
        "C5",
        "ReLU is more robust than sigmoid/tanh.",
        "At equal depth, each tuned: does ReLU train better, and is its gradient stable on its own or only with He init?",
        f"Plain MLPs of depth {cfg.deep}, width {cfg.width}; ReLU with He (weight_var 2) and LeCun (weight_var 1) init, "
        f"tanh and sigmoid with LeCun; each tuned over SGD learning rates {list(cfg.learning_rates)}, {cfg.steps} steps, "
        f"{cfg.seeds} seeds.",
        _table(["net", "chosen", "chi", "chi theory", "verdict", "training", "test acc"], lines),
        verdict,
        because,
        rule="supported when tuned ReLU (He) beats both tuned tanh and sigmoid significantly (Welch 95%), refuted when it "
        "is significantly worse than either, depends on the activation when it beats one and ties the other, else no "
        "difference",
        figure_series=_bars({"tuned": {n: t.rows for n, t in tuned.items()}}, "test accuracy (mean, 95% interval)", runs.chance),
    )


def rule_c6(cases: dict[str, tuple[str, stats.Difference]]) -> tuple[str, str]:
    """cases: net -> (tuned SGD's trainability, tuned Adam - tuned SGD test accuracy).

    Among the nets where tuned SGD does not train, supported when Adam adds significantly on all, refuted when
    on none, else depends; not tested when SGD trains every net.
    """
    stalled = [n for n, (tr, _) in cases.items() if tr != "trains"]
    helped = [n for n in stalled if _significant(cases[n][1], +1)]
    because = "; ".join(f"{n}: SGD {tr}, Adam vs SGD {d.words()}" for n, (tr, d) in cases.items())
    if not stalled:
        return "not tested", because + "; tuned SGD trained every net"
    if len(helped) == len(stalled):
        return SUPPORTED, because
    if not helped:
        return REFUTED, because
    return "depends on the net", because


def c6_adam(runs: Runs) -> Claim:
    cfg = runs.cfg
    nets = {
        f"sigmoid, depth {cfg.deep // 2}": dict(activation="sigmoid", depth=cfg.deep // 2),
        f"sigmoid, depth {cfg.deep}": dict(activation="sigmoid", depth=cfg.deep),
        f"relu LeCun init, depth {cfg.deep}": dict(activation="relu", init="lecun_normal", depth=cfg.deep),
    }
    lines, cases, groups = [], {}, {}
    for name, over in nets.items():
        sgd = runs.tuned(**over)
        adam = runs.tuned({"learning_rate": cfg.adam_learning_rates, "adam_eps": cfg.adam_eps}, optimizer="adam", **over)
        for opt, t in (("SGD", sgd), ("Adam", adam)):
            lines.append(
                [
                    name,
                    opt,
                    _chosen(t),
                    _range_str(t.rows, first_layer_grad, ".1e"),
                    _range_str(t.rows, first_layer_update, ".2e"),
                    trains(t.rows),
                    _acc_str(t.rows),
                ]
            )
            groups.setdefault(opt, {})[name] = t.rows
        cases[name] = (trains(sgd.rows), compare(adam.rows, sgd.rows))
    verdict, because = rule_c6(cases)
    return Claim(
        "C6",
        "Adam copes better with small gradients than SGD.",
        "On deep nets whose gradient vanishes toward the input (but is not 0), does tuned Adam train where tuned SGD does not?",
        f"SGD tuned over learning rates {list(cfg.learning_rates)} against Adam tuned over learning rates "
        f"{list(cfg.adam_learning_rates)} x epsilon {list(cfg.adam_eps)}, {cfg.steps} steps, {cfg.seeds} seeds, width "
        f"{cfg.width}. Where |g| << epsilon Adam's update is lr g / epsilon, so epsilon is tuned too. First-layer "
        "gradient = ||dL/dW_0|| at init; first-layer update = its relative update over the last layer's at the last step.",
        _table(
            ["net", "optimizer", "chosen", "first-layer gradient", "first-layer update / last", "training", "test acc"], lines
        ),
        verdict,
        because,
        rule="among the nets where tuned SGD does not train, supported when tuned Adam adds significantly (Welch 95%) on "
        "all, refuted when on none",
        figure_series=_bars(groups, "test accuracy (mean, 95% interval)", runs.chance),
    )


def largest_stable_rate(rows: Sequence[Row]) -> float | None:
    """The largest learning rate at which no seed diverged and most seeds train; None when there is none."""
    by_lr: dict[float, list[Row]] = {}
    for r in rows:
        by_lr.setdefault(r["learning_rate"], []).append(r)
    ok = [lr for lr, rs in by_lr.items() if not any(r["diverged"] for r in rs) and trains(rs) == "trains"]
    return max(ok) if ok else None


def rule_c7(stable_bn: float | None, stable_plain: float | None, best: stats.Difference) -> tuple[str, str]:
    """The largest stable learning rate with and without batchnorm, and tuned batchnorm - tuned plain test accuracy.

    Supported: batchnorm tolerates a larger rate or trains significantly better, and neither the opposite;
    refuted: the opposite; depends when they point both ways; else no difference.
    """
    b, p = stable_bn or 0.0, stable_plain or 0.0
    pro = b > p or _significant(best, +1)
    con = b < p or _significant(best, -1)
    because = (
        f"largest stable learning rate {_fmt(stable_bn, 'g')} with batchnorm vs {_fmt(stable_plain, 'g')} without; "
        f"tuned batchnorm vs plain {best.words()}"
    )
    if pro and not con:
        return SUPPORTED, because
    if con and not pro:
        return REFUTED, because
    return ("depends on what stability means" if pro else "no difference"), because


def c7_seed_net(runs: Runs) -> Claim:
    cfg = runs.cfg
    over = dict(
        model="seed_cnn",
        depth=1,
        width=6,
        activation="relu",
        steps=cfg.seed_net_steps,
        eval_every=max(cfg.seed_net_steps // 3, 1),
    )
    tuned = {n: runs.tuned({"learning_rate": cfg.seed_net_learning_rates}, norm=n, **over) for n in ("none", "batchnorm")}
    lines = []
    for norm, t in tuned.items():
        by_lr = {lr: [r for r in t.all_rows if r["learning_rate"] == lr] for lr in cfg.seed_net_learning_rates}
        lines.append(
            [
                norm,
                _fmt(largest_stable_rate(t.all_rows), "g"),
                _chosen(t),
                ", ".join(f"{lr:g}: {_diverged(rs)} diverged, {trains(rs)}" for lr, rs in by_lr.items()),
                _range_str(t.rows, lambda r: r["loss_history"] and _loss_wiggle(r), ".3f"),
                _acc_str(t.rows),
            ]
        )
    verdict, because = rule_c7(
        largest_stable_rate(tuned["batchnorm"].all_rows),
        largest_stable_rate(tuned["none"].all_rows),
        compare(tuned["batchnorm"].rows, tuned["none"].rows),
    )
    because += "; with one hidden layer there is no depth for a gradient to decay over"
    return Claim(
        "C7",
        "Adding BatchNorm to the example conv net stabilises training.",
        "The seed's net (Conv 3x3, 6 channels -> [BatchNorm] -> ReLU -> Linear) over a range of SGD learning rates: "
        "which rates does each survive, and which trains better when each is tuned?",
        f"`--model=seed_cnn` on {cfg.dataset}, learning rates {list(cfg.seed_net_learning_rates)}, {cfg.seed_net_steps} "
        f"steps, batch 128, {cfg.seeds} seeds. Stable rate: no seed diverged and the final training loss is under half "
        "of chance. Loss wiggle = std of the step-to-step change of the logged training loss over the second half.",
        _table(["norm", "largest stable rate", "chosen", "per rate", "loss wiggle", "test acc"], lines),
        verdict,
        because,
        rule="supported when batchnorm tolerates a larger learning rate or trains significantly better when both are tuned "
        "(Welch 95%), and not the opposite; refuted when the opposite",
        figure_series={
            "kind": "losses",
            "runs": {f"{n} (lr {t.choice['learning_rate']:g})": [r["loss_history"] for r in t.rows] for n, t in tuned.items()},
        },
    )


def rule_c8(chis: dict[float, float | None], weight_change: float | None, chi_change: float | None) -> tuple[str, str]:
    """chis: weight_var -> median chi at init; weight_change: median ||W|| end / init of ordinary training;
    chi_change: median chi after training / at init.

    The weights' scale controls decay when chi rises with weight_var (monotone, max/min > 1.5). Supported: it
    does, and ordinary training shrinks the weights by > 10% while chi falls. Refuted: the scale does not control
    decay (then small weights cannot be the cause). Depends: the scale controls decay, but training does not
    shrink the weights, or shrinks them without the gradient decaying more.
    """
    ws = sorted(w for w, c in chis.items() if c is not None)
    vals = [chis[w] for w in ws]
    controls = len(vals) >= 2 and all(b > a for a, b in zip(vals, vals[1:], strict=False)) and vals[-1] / vals[0] > 1.5
    shrinks = weight_change is not None and weight_change < 0.9
    decays_more = chi_change is not None and chi_change < 1.0
    because = (
        "chi at init by weight_var: "
        + ", ".join(f"{w:g}: {chis[w]:.3g}" for w in ws)
        + f" ({'the scale controls decay' if controls else 'no monotone control'}); ordinary training changes ||W|| by "
        f"x{_fmt(weight_change, '.3f')} and chi by x{_fmt(chi_change, '.3f')}"
    )
    if not controls:
        return REFUTED, because
    if shrinks and decays_more:
        return SUPPORTED, because
    if not shrinks:
        return "depends: small weights do cause decay, but training does not make them small", because
    return "depends: training shrinks the weights, but the gradient does not decay more", because


def c8_small_weights(runs: Runs) -> Claim:
    cfg = runs.cfg
    lines, series = [], {}
    chis = {}
    for wv in cfg.weight_vars:  # at initialization only: the scale's effect, separate from training
        rows = runs.get(activation="tanh", depth=cfg.deep, weight_var=wv, steps=0, eval_every=1)
        chis[wv] = median(rows, lambda r: r["chi"])
        lines.append(
            [
                f"tanh, weight_var {wv:g}",
                "init only",
                _range_str(rows, lambda r: r["chi"]),
                metrics.group_verdict(rows),
                "-",
                "-",
                "-",
            ]
        )
        series[f"weight_var {wv:g}: ||dL/dW_l||"] = _median_profile(rows, "grad_norms_init")
    trained = runs.tuned(activation="tanh", depth=cfg.deep)
    w_change = median(trained.rows, lambda r: _mean_ratio(r["weight_norms_final"], r["weight_norms_init"]))
    c_change = median(trained.rows, lambda r: (chi_final(r) or math.nan) / r["chi"] if r["chi"] else None)
    lines.append(
        [
            "tanh, LeCun init, trained",
            _chosen(trained),
            _range_str(trained.rows, lambda r: r["chi"]),
            metrics.group_verdict(trained.rows),
            _range_str(trained.rows, chi_final),
            _fmt(w_change, ".3f"),
            _acc_str(trained.rows),
        ]
    )
    for wd in cfg.weight_decays:
        t = runs.tuned(activation="tanh", depth=cfg.deep, weight_decay=wd)
        lines.append(
            [
                f"tanh, LeCun init, weight decay {wd:g}",
                _chosen(t),
                _range_str(t.rows, lambda r: r["chi"]),
                metrics.group_verdict(t.rows),
                _range_str(t.rows, chi_final),
                _fmt(median(t.rows, lambda r: _mean_ratio(r["weight_norms_final"], r["weight_norms_init"])), ".3f"),
                _acc_str(t.rows),
            ]
        )
    verdict, because = rule_c8(chis, w_change, c_change)
    return Claim(
        "C8",
        "The cause of gradient decay is weights becoming small.",
        "Does the weights' scale control decay (a sweep of sigma_w^2 at init), and does training make the weights small "
        "(ordinary training, and with L2 weight decay)?",
        f"Plain tanh MLPs of depth {cfg.deep}, width {cfg.width}: chi at init for weight_var {list(cfg.weight_vars)}; "
        f"trained with LeCun init and with weight decay {list(cfg.weight_decays)}, each tuned over SGD learning rates "
        f"{list(cfg.learning_rates)}, {cfg.steps} steps, {cfg.seeds} seeds. Weight change = mean over layers of "
        "||W_l|| at the end / at init; chi after training = the fit on the last step's backprop signal.",
        _table(["net", "chosen", "chi at init", "verdict", "chi after training", "weight change", "test acc"], lines),
        verdict,
        because,
        rule="the scale controls decay when chi at init rises monotonically with weight_var (max/min > 1.5); supported when "
        "it does and ordinary training shrinks the weights by > 10% while chi falls, refuted when the scale does not "
        "control decay, else depends",
        figure_series={"kind": "layers", "ylabel": "log10 ||dL/dW_l|| at init (median over seeds)", "series": series},
    )


def _spread(values: Sequence[Any]) -> float | None:
    v = np.array([x for x in values if x is not None and x > 0], np.float64)
    return float(v.max() / v.min()) if v.size >= 2 else None


def _mean_ratio(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y]
    return float(np.mean([x / y for x, y in pairs])) if pairs else None


def _loss_wiggle(r: Row) -> float | None:
    hist = [v for _, v in r["loss_history"] if v is not None]
    half = hist[len(hist) // 2 :]
    return float(np.std(np.diff(half))) if len(half) > 2 else None


def _median_profile(rows: Sequence[Row], key: str) -> list[float | None]:
    arr = np.array([[np.nan if v is None else v for v in r[key]] for r in rows], np.float64)
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN layers (underflow) stay NaN
        med = np.nanmedian(np.where(np.isfinite(arr), arr, np.nan), axis=0) if arr.size else np.array([])
    return [metrics.clean(v) for v in med]


CLAIMS = (c1_saturating, c2_exploding, c3_normalization, c4_restructuring, c5_relu, c6_adam, c7_seed_net, c8_small_weights)


def validate(cfg: ClaimsConfig) -> None:
    """Raises ConfigError naming the flag for settings the experiment cannot run."""
    if cfg.deep < 8 or cfg.shallow < 2 or cfg.shallow >= cfg.deep:
        raise ConfigError(f"--deep={cfg.deep} (with shallow {cfg.shallow}): need 2 <= shallow < deep and deep >= 8")
    if cfg.seeds < 2:
        raise ConfigError(f"--seeds={cfg.seeds}: must be >= 2 (every comparison is a Welch interval over seeds)")
    base = cfg.base()
    validate_sweep(
        SweepConfig(
            base=base,
            depths=(cfg.shallow, cfg.deep),
            activations=("tanh",),
            norms=("none",),
            seeds=cfg.seeds,
            learning_rates=cfg.learning_rates,
        )
    )
    if cfg.steps < 10 or cfg.seed_net_steps < 10:
        raise ConfigError(f"--steps={min(cfg.steps, cfg.seed_net_steps)}: must be >= 10")


def run(
    cfg: ClaimsConfig,
    workdir: str,
    on_run: Callable[[str, Row], None] | None = None,
    only: Sequence[str] | None = None,
) -> str:
    """Runs each claim's experiment (all, or the ids in `only`), writes `<workdir>/claims.md`, `claims.json`
    and figures; returns the report path."""
    from decay import plots

    validate(cfg)
    ids = [fn.__name__.split("_")[0].upper() for fn in CLAIMS]
    unknown = sorted(set(only or ()) - set(ids))
    if unknown or (only is not None and not only):
        raise ConfigError(f"--claims={','.join(only or [])}: allowed ids are {', '.join(ids)}")
    runs = Runs(cfg, workdir, on_run)
    os.makedirs(os.path.join(workdir, "claims"), exist_ok=True)
    claims = []
    for fn, claim_id in zip(CLAIMS, ids, strict=True):
        if only is not None and claim_id not in only:
            continue
        claim = fn(runs)
        path = os.path.join(workdir, "claims", f"{claim.id}.png")
        plots.save(plots.claim_figure(claim.id + ": " + claim.claim, claim.figure_series), path)
        claim.figure = os.path.relpath(path, workdir)
        claims.append(claim)
    results.write_atomic(
        os.path.join(workdir, "claims.json"),
        json.dumps([{k: v for k, v in dataclasses.asdict(c).items() if k != "figure_series"} for c in claims], indent=2) + "\n",
    )
    report = os.path.join(workdir, "claims.md")
    results.write_atomic(report, _markdown(cfg, claims, runs))
    runs.runner.close()  # the workdir's lock
    return report


def _markdown(cfg: ClaimsConfig, claims: Sequence[Claim], runs: Runs) -> str:
    n_runs = len(runs.rows)
    lines = [
        "# The seed's claims, tested",
        "",
        f"Every number below comes from {n_runs} training runs on `{cfg.dataset}` "
        f"({runs.dataset.x_train.shape[0]} training / {runs.dataset.x_val.shape[0]} validation / "
        f"{runs.dataset.x_test.shape[0]} test examples, chance "
        f"{100 * runs.chance:.0f}%), made by `python -m experiments.seed_claims` with these settings: "
        + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
        + ".",
        "",
        "**Protocol.** Every configuration is tuned: its learning rate (and, where a claim is about them, clipping or "
        f"Adam's epsilon) is chosen on a validation split of {runs.dataset.x_val.shape[0]} examples held out from the "
        "training set; `chosen` names the choice, `(edge)` when it is the smallest or largest of its grid. The test set "
        "only reports. Accuracies are `mean ± std [95% interval]` over seeds (sample std, Student t); other numbers "
        "`median [min, max]`. Comparisons are between tuned bests, with Welch's 95% interval of the difference of mean "
        "test accuracies; a difference whose interval holds 0 is called no difference. `training` is read from the final "
        "training loss against chance ln(classes): trains (< 0.5), partial, fails (>= 0.9). Each verdict follows from "
        "the numbers by the rule printed under it (code: `decay/studies/claims.py`).",
        "",
        "| id | claim | verdict |",
        "|---|---|---|",
    ]
    lines += [f"| {c.id} | {c.claim} | **{c.verdict}** |" for c in claims]
    for c in claims:
        lines += [
            "",
            f"## {c.id}: {c.claim}",
            "",
            f"**Question.** {c.question}",
            "",
            f"**Experiment.** {c.experiment}",
            "",
            *c.table,
            "",
            f"**Verdict: {c.verdict}.** {c.because[0].upper() + c.because[1:]}.",
            "",
            f"*Rule:* {c.rule}.",
            "",
            f"![{c.id}]({c.figure})",
        ]
    return "\n".join(lines) + "\n"
