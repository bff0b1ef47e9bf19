"""The seed's claims C1-C8, each settled by an experiment built on the library.

Every claim trains the runs it needs (through the study runner, `decay.runner.Runner`: the
seeds of a configuration train side by side over the devices; runs shared between claims
are trained once and kept in `<workdir>/runs.jsonl`, so an interrupted experiment resumes),
reduces them to its decisive numbers with their spread across seeds, draws one figure, and
derives its verdict from those numbers by the rules written in its function. Nothing in a
verdict is typed in by hand: other seeds, another dataset or other settings change the report
with the evidence.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from decay import metrics, results
from decay.config import RunConfig, SweepConfig
from decay.errors import ConfigError
from decay.row import Row
from decay.runner import Event, Runner
from decay.validation import validate_sweep

SUPPORTED, REFUTED = "supported", "refuted"
STALL_GAP = 0.10  # an accuracy difference of 10 points is "clearly better"


@dataclasses.dataclass(frozen=True)
class ClaimsConfig:
    """Settings shared by every claim's experiment."""

    dataset: str = "digits"  # dataset of every run (the embedded one by default)
    data_dir: str | None = None  # folder of local dataset files
    seeds: int = 3  # seeds per configuration
    steps: int = 300  # SGD/Adam steps per run
    width: int = 128  # hidden width of the MLPs
    shallow: int = 4  # the shallow depth of depth comparisons
    deep: int = 32  # the depth at which configurations are compared
    learning_rate: float = 0.02  # SGD learning rate (the depth sweep's default)
    adam_learning_rate: float = 1e-3  # Adam's learning rate (its usual default)
    clip_norm: float = 1.0  # global-norm clipping threshold tried in C2
    seed_net_seeds: int = 5  # seeds of the seed's example net (C7)
    seed_net_steps: int = 300  # its SGD steps at lr 0.01

    def base(self, **overrides: Any) -> RunConfig:
        """A run of these settings; `overrides` set the configuration under test."""
        cfg = RunConfig(
            dataset=self.dataset,
            data_dir=self.data_dir,
            width=self.width,
            steps=self.steps,
            learning_rate=self.learning_rate,
            eval_every=max(self.steps, 1),
            checkpoint_every=0,
            instruments="basic",
        )
        return dataclasses.replace(cfg, **overrides)


QUICK = ClaimsConfig(seeds=2, steps=150, width=64, deep=16, seed_net_seeds=3, seed_net_steps=150)


class Runs:
    """Trains configurations on demand, every seed side by side, and keeps each row in `<workdir>/runs.jsonl`."""

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

    def get(self, seeds: int | None = None, **overrides: Any) -> list[Row]:
        """Rows of the configuration `base(**overrides)`, one per seed."""
        cfgs = [self.cfg.base(**overrides, seed=seed) for seed in range(seeds or self.cfg.seeds)]
        return self.runner.run(cfgs, self._on_event, transform=lambda c, r: {**r, "_key": _key(c)})


def _key(c: RunConfig) -> str:
    return json.dumps(c.to_json(), sort_keys=True)


def _label(c: RunConfig) -> str:
    parts = [c.model, c.activation, c.norm, f"depth {c.depth}"]
    if c.init != "auto":
        parts.append(c.init)
    if c.weight_var is not None:
        parts.append(f"weight_var {c.weight_var:g}")
    if c.residual:
        parts.append(f"residual {c.residual_scale:.3g}")
    if c.optimizer != "sgd":
        parts.append(c.optimizer)
    if c.clip_norm is not None:
        parts.append(f"clip {c.clip_norm:g}")
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


def acc(rows: Sequence[Row]) -> tuple[float, float]:
    """Mean and std over seeds of test accuracy; a diverged run (no test score) counts as 0."""
    v = [0.0 if r["test_accuracy"] is None else r["test_accuracy"] for r in rows]
    return float(np.mean(v)), float(np.std(v))


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


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def _acc_str(rows: Sequence[Row]) -> str:
    m, s = acc(rows)
    return f"{100 * m:.1f} ± {100 * s:.1f}%"


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


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return out


@dataclasses.dataclass
class Claim:
    """One claim's outcome: what was asked, how it was measured, the numbers, the figure, the verdict."""

    id: str
    claim: str
    question: str
    experiment: str
    table: list[str]
    verdict: str
    because: str
    figure: str | None = None
    figure_series: dict[str, Any] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# The claims


def c1_saturating(runs: Runs) -> Claim:
    cfg = runs.cfg
    acts = ("sigmoid", "tanh")
    lines, shrinks, stalls = [], {}, {}
    for act in (*acts, "relu"):
        for depth in (cfg.shallow, cfg.deep):
            rows = runs.get(activation=act, depth=depth)
            lines.append(
                [
                    act,
                    str(depth),
                    _range_str(rows, lambda r: r["chi"]),
                    _range_str(rows, metrics.first_over_last, ".2e"),
                    _range_str(rows, first_layer_update, ".2e"),
                    _acc_str(rows),
                ]
            )
        deep_rows = runs.get(activation=act, depth=cfg.deep)
        ratio = median(deep_rows, metrics.first_over_last)
        shrinks[act] = ratio is not None and ratio < 0.5 and (median(deep_rows, lambda r: r["chi"]) or 0) < 1
        stalls[act] = acc(deep_rows)[0] < 1.5 * runs.chance
    # Rule: supported when every saturating activation shrinks the gradient toward the input at
    # the deep depth and stalls there; refuted when none shrinks it; otherwise it depends.
    if all(shrinks[a] and stalls[a] for a in acts):
        verdict, because = SUPPORTED, f"both shrink the gradient toward the input and stall at depth {cfg.deep}"
    elif not any(shrinks[a] for a in acts):
        verdict, because = REFUTED, f"neither sigmoid nor tanh shrinks the gradient toward the input at depth {cfg.deep}"
    else:
        parts = []
        for a in acts:
            state = ("shrinks" if shrinks[a] else "does not shrink") + " the gradient toward the input and "
            state += "stalls (chance accuracy)" if stalls[a] else "still trains"
            parts.append(f"{a} {state}")
        verdict, because = "depends on the activation", "; ".join(parts) + f" at depth {cfg.deep}"
    return Claim(
        "C1",
        "Deep nets with saturating activations have gradients that shrink toward the input, stalling early layers.",
        "Does the backprop signal shrink toward the input for sigmoid and tanh, and do the early layers stop learning?",
        f"Plain MLPs (width {cfg.width}, LeCun init; ReLU with He init as the reference) at depths {cfg.shallow} and "
        f"{cfg.deep}, SGD lr {cfg.learning_rate:g}, {cfg.steps} steps, {cfg.seeds} seeds. chi = per-layer factor of "
        "||dL/dh||^2 at init; first/last = ||dL/dh_0|| / ||dL/dh_{L-1}|| at init; first-layer update = the first "
        "layer's relative update over the last layer's at the last step.",
        _table(["activation", "depth", "chi", "grad first/last", "first-layer update / last", "test acc"], lines),
        verdict,
        because,
        figure_series={
            "kind": "layers",
            "ylabel": "log10 ||dL/dh_l|| at init (median over seeds)",
            "series": {a: _median_profile(runs.get(activation=a, depth=cfg.deep), "signal_norms_init") for a in (*acts, "relu")},
        },
    )


def c2_exploding(runs: Runs) -> Claim:
    cfg = runs.cfg
    ref = runs.get(activation="relu", depth=cfg.deep)
    cases = {
        "relu, weight_var 3 (chaotic init)": dict(activation="relu", depth=cfg.deep, weight_var=3.0),
        "relu + batchnorm": dict(activation="relu", norm="batchnorm", depth=cfg.deep),
    }
    lines = [
        [
            "relu, He init (reference)",
            "no",
            _range_str(ref, lambda r: r["chi"]),
            _range_str(ref, metrics.first_over_last, ".2e"),
            _diverged(ref),
            _acc_str(ref),
        ]
    ]
    exploding, destabilised, clip_effect = [], [], []
    ref_acc = acc(ref)[0]
    for name, over in cases.items():
        plain = runs.get(**over)
        clipped = runs.get(**over, clip_norm=cfg.clip_norm)
        for rows, clip in ((plain, "no"), (clipped, f"global norm {cfg.clip_norm:g}")):
            lines.append(
                [
                    name,
                    clip,
                    _range_str(rows, lambda r: r["chi"]),
                    _range_str(rows, metrics.first_over_last, ".2e"),
                    _diverged(rows),
                    _acc_str(rows),
                ]
            )
        ratio = median(plain, metrics.first_over_last)
        # Exploding: the sweep's verdict (which also reads an overflowed signal as exploding), or a
        # measured gradient ratio first/last > 10.
        if metrics.group_verdict(plain) == "exploding" or (ratio is not None and ratio > 10):
            exploding.append(name)
            n_div = sum(bool(r["diverged"]) for r in plain)
            if n_div or acc(plain)[0] < ref_acc - STALL_GAP:
                destabilised.append(name)
            clip_effect.append(
                f"{name}: clipping changed divergence {_diverged(plain)} -> {_diverged(clipped)} and accuracy "
                f"{100 * acc(plain)[0]:.0f}% -> {100 * acc(clipped)[0]:.0f}%"
            )
    # Rule: supported when some configuration explodes at init (verdict exploding or first/last > 10) and
    # then diverges or trains >= 10 points worse than the stable reference; refuted when none explodes.
    if destabilised:
        verdict = SUPPORTED
        because = f"gradients explode in {', '.join(exploding)} and training is destabilised in {', '.join(destabilised)}"
    elif exploding:
        verdict, because = "depends on the configuration", f"gradients explode in {', '.join(exploding)} but training survives"
    else:
        verdict, because = REFUTED, "no configuration tried made gradients explode"
    if clip_effect:
        because += ". " + "; ".join(clip_effect)
    return Claim(
        "C2",
        "Gradients can also explode and destabilise training.",
        "Do per-layer gradients grow toward the input, does training then diverge or degrade, and what does clipping do?",
        f"MLPs of depth {cfg.deep}, width {cfg.width}: ReLU with weight_var 3 (chi_1 = 1.5, past the He point 2) and "
        f"ReLU with batchnorm (explodes at init, Yang et al. 2019), each without and with global-norm clipping at "
        f"{cfg.clip_norm:g}; SGD lr {cfg.learning_rate:g}, {cfg.steps} steps, {cfg.seeds} seeds; He-init ReLU as the reference.",
        _table(["net", "clipping", "chi", "grad first/last", "diverged", "test acc"], lines),
        verdict,
        because,
        figure_series={
            "kind": "layers",
            "ylabel": "log10 ||dL/dh_l|| at init (median over seeds)",
            "series": {
                "relu He": _median_profile(ref, "signal_norms_init"),
                **{n: _median_profile(runs.get(**o), "signal_norms_init") for n, o in cases.items()},
            },
        },
    )


def c3_normalization(runs: Runs) -> Claim:
    cfg = runs.cfg
    acts = ("sigmoid", "tanh", "relu")
    lines, rescues, fails, explodes = [], [], [], []
    accs: dict[str, dict[str, float]] = {}
    for act in acts:
        base = runs.get(activation=act, depth=cfg.deep)
        for norm in ("none", "batchnorm", "layernorm"):
            rows = base if norm == "none" else runs.get(activation=act, norm=norm, depth=cfg.deep)
            chi0 = median(rows, lambda r: r["chi"])
            lines.append(
                [
                    act,
                    norm,
                    _range_str(rows, lambda r: r["chi"]),
                    _fmt(median(rows, lambda r: r.get("chi_theory"))),
                    _range_str(rows, chi_final),
                    _acc_str(rows),
                ]
            )
            accs.setdefault(norm, {})[act] = acc(rows)[0]
            if norm == "none":
                continue
            gain = acc(rows)[0] - acc(base)[0]
            base_bad = acc(base)[0] < 1.5 * runs.chance
            if base_bad and gain > STALL_GAP:
                rescues.append(f"{norm} rescues {act} ({100 * acc(base)[0]:.0f}% -> {100 * acc(rows)[0]:.0f}%)")
            elif base_bad:
                fails.append(f"{norm} does not rescue {act} (chi {_fmt(chi0, '.2f')}, {100 * acc(rows)[0]:.0f}%)")
            if metrics.group_verdict(rows) == "exploding":
                explodes.append(f"{norm} + {act} explodes at init (chi {_fmt(chi0, '.2f')})")
    # Rule: supported when each norm rescues every activation that fails without it and none makes
    # gradients explode at init; refuted when neither rescues anything; otherwise it depends.
    if not rescues and not fails:
        verdict = "not tested"
    elif rescues and not fails and not explodes:
        verdict = SUPPORTED
    elif not rescues:
        verdict = REFUTED
    else:
        verdict = "depends on the norm and the activation"
    because = "; ".join(rescues + fails + explodes) or "no configuration failed without a norm"
    return Claim(
        "C3",
        "LayerNorm / BatchNorm stabilise training and prevent gradient decay.",
        "With and without each norm: the gradient factor chi at init and after training, and the accuracy.",
        f"MLPs of depth {cfg.deep}, width {cfg.width}, sigmoid/tanh/relu x none/batchnorm/layernorm, SGD lr "
        f"{cfg.learning_rate:g}, {cfg.steps} steps, {cfg.seeds} seeds. chi theory: mean field (decay/theory.py); "
        "chi after training: the same fit on the last step's backprop signal.",
        _table(["activation", "norm", "chi at init", "chi theory", "chi after training", "test acc"], lines),
        verdict,
        because,
        figure_series={"kind": "bars", "ylabel": f"test accuracy at depth {cfg.deep}", "groups": accs, "chance": runs.chance},
    )


def c4_restructuring(runs: Runs) -> Claim:
    cfg = runs.cfg
    alpha = 1.0 / math.sqrt(cfg.deep)
    acts = ("sigmoid", "tanh", "relu")
    depths = sorted({2, cfg.shallow, cfg.deep // 2, cfg.deep, 2 * cfg.deep})
    lines, skip_helps, deeper = [], {}, {}
    curves: dict[str, dict[str, float]] = {}
    for act in acts:
        plain = runs.get(activation=act, depth=cfg.deep)
        res = runs.get(activation=act, depth=cfg.deep, residual=True, residual_scale=alpha)
        lines.append([act, f"plain, depth {cfg.deep}", _range_str(plain, lambda r: r["chi"]), _acc_str(plain)])
        lines.append([act, f"residual alpha={alpha:.3g}, depth {cfg.deep}", _range_str(res, lambda r: r["chi"]), _acc_str(res)])
        skip_helps[act] = acc(res)[0] - acc(plain)[0]
        by_depth = {d: acc(runs.get(activation=act, depth=d))[0] for d in depths}
        curves[act] = {str(d): a for d, a in by_depth.items()}
        best = max(by_depth, key=lambda d: (by_depth[d], -d))
        deeper[act] = best
        lines.append([act, "plain, accuracy by depth", "-", ", ".join(f"{d}: {100 * a:.0f}%" for d, a in by_depth.items())])
    helped = [a for a in acts if skip_helps[a] > 0.05]
    # Rule: skips help an activation when they add > 5 points at equal depth; "adding layers helps"
    # holds for an activation when its best plain depth is the deepest one tried.
    adding_helps = [a for a in acts if deeper[a] == depths[-1]]
    parts = [
        "skip connections add "
        + ", ".join(f"{round(100 * skip_helps[a]):+d} points ({a})" for a in acts)
        + f" at depth {cfg.deep}",
        "adding layers: best plain depth " + ", ".join(f"{deeper[a]} ({a})" for a in acts) + f" of {depths}",
    ]
    if helped and adding_helps:
        verdict = SUPPORTED
    elif not helped and not adding_helps:
        verdict = REFUTED
    else:
        verdict = "depends on the restructuring: " + ("skip connections help" if helped else "skip connections do not help")
        verdict += ", adding layers " + ("helps" if adding_helps else "does not")
    return Claim(
        "C4",
        "Restructuring the network (e.g. skip connections; 'adding layers') helps.",
        "Residual against plain at equal depth; deeper against shallower plain nets.",
        f"MLPs, width {cfg.width}; residual blocks x + alpha f(x) with alpha = 1/sqrt(depth) = {alpha:.3g}; plain nets "
        f"at depths {depths}; SGD lr {cfg.learning_rate:g}, {cfg.steps} steps, {cfg.seeds} seeds.",
        _table(["activation", "net", "chi", "test acc"], lines),
        verdict,
        "; ".join(parts),
        figure_series={
            "kind": "curves",
            "ylabel": "test accuracy (lines: plain nets; stars: residual)",
            "xlabel": "depth",
            "curves": curves,
            "points": {a: (cfg.deep, curves[a][str(cfg.deep)] + skip_helps[a], f"residual alpha={alpha:.3g}") for a in acts},
        },
    )


def c5_relu(runs: Runs) -> Claim:
    cfg = runs.cfg
    cases = {
        "relu, He init": dict(activation="relu"),
        "relu, LeCun init": dict(activation="relu", init="lecun_normal"),
        "tanh, LeCun init": dict(activation="tanh"),
        "sigmoid, LeCun init": dict(activation="sigmoid"),
    }
    lines, verdicts, accs = [], {}, {}
    for name, over in cases.items():
        rows = runs.get(depth=cfg.deep, **over)
        verdicts[name] = metrics.group_verdict(rows)
        accs[name] = acc(rows)[0]
        lines.append(
            [
                name,
                _range_str(rows, lambda r: r["chi"]),
                _fmt(median(rows, lambda r: r.get("chi_theory"))),
                verdicts[name],
                _range_str(rows, metrics.first_over_last, ".2e"),
                _acc_str(rows),
            ]
        )
    he, lecun = verdicts["relu, He init"], verdicts["relu, LeCun init"]
    beats = accs["relu, He init"] > max(accs["tanh, LeCun init"], accs["sigmoid, LeCun init"]) + 0.02
    # Rule: supported when ReLU keeps a stable gradient with both inits and beats tanh and sigmoid in
    # accuracy; depends on the init when only He keeps it stable; refuted when ReLU is not stable with He.
    if he == "stable" and lecun == "stable" and beats:
        verdict = SUPPORTED
    elif he == "stable" and lecun != "stable":
        verdict = "depends on the initialization"
    else:
        verdict = REFUTED
    because = (
        f"gradient verdict at depth {cfg.deep}: He {he}, LeCun {lecun}; test accuracy ReLU/He {100 * accs['relu, He init']:.0f}% "
        f"vs tanh {100 * accs['tanh, LeCun init']:.0f}% and sigmoid {100 * accs['sigmoid, LeCun init']:.0f}%"
    )
    return Claim(
        "C5",
        "ReLU is more robust than sigmoid/tanh.",
        "Activation x initialization: is ReLU's gradient stable on its own, or only with He-scaled weights?",
        f"Plain MLPs of depth {cfg.deep}, width {cfg.width}; ReLU with He (weight_var 2) and LeCun (weight_var 1) init, "
        f"tanh and sigmoid with LeCun; SGD lr {cfg.learning_rate:g}, {cfg.steps} steps, {cfg.seeds} seeds.",
        _table(["net", "chi", "chi theory", "verdict", "grad first/last", "test acc"], lines),
        verdict,
        because,
        figure_series={
            "kind": "layers",
            "ylabel": "log10 ||dL/dh_l|| at init (median over seeds)",
            "series": {n: _median_profile(runs.get(depth=cfg.deep, **o), "signal_norms_init") for n, o in cases.items()},
        },
    )


def c6_adam(runs: Runs) -> Claim:
    cfg = runs.cfg
    candidates = {
        f"sigmoid, depth {cfg.deep}": dict(activation="sigmoid", depth=cfg.deep),
        f"sigmoid + layernorm, depth {cfg.deep}": dict(activation="sigmoid", norm="layernorm", depth=cfg.deep),
        f"relu, depth {2 * cfg.deep}": dict(activation="relu", depth=2 * cfg.deep),
        f"tanh, depth {2 * cfg.deep}": dict(activation="tanh", depth=2 * cfg.deep),
    }
    lines, stalled, helped, hurt = [], [], [], []
    # The best SGD accuracy of the claims' nets on this dataset: what "training works" means here.
    best = max(acc(runs.get(activation=a, depth=d))[0] for a in ("tanh", "relu") for d in (cfg.shallow, cfg.deep))
    accs: dict[str, dict[str, float]] = {}
    for name, over in candidates.items():
        sgd = runs.get(**over)
        adam = runs.get(**over, optimizer="adam", learning_rate=cfg.adam_learning_rate)
        lines.append(
            [
                name,
                _acc_str(sgd),
                _acc_str(adam),
                _range_str(sgd, first_layer_update, ".2e"),
                _range_str(adam, first_layer_update, ".2e"),
            ]
        )
        accs.setdefault("SGD", {})[name] = acc(sgd)[0]
        accs.setdefault("Adam", {})[name] = acc(adam)[0]
        if acc(adam)[0] < acc(sgd)[0] - STALL_GAP:
            hurt.append(f"{name} ({100 * acc(sgd)[0]:.0f}% -> {100 * acc(adam)[0]:.0f}%)")
        if acc(sgd)[0] < 0.5 * best:  # SGD stalls: below half the accuracy of the best net
            stalled.append(name)
            if acc(adam)[0] - acc(sgd)[0] > STALL_GAP:
                helped.append(name)
    # Rule: among the nets where SGD stalls (< half the best SGD net's accuracy), supported when Adam adds > 10
    # points on all, refuted when on none, otherwise it depends on the net.
    if not stalled:
        verdict, because = "not tested", "SGD stalled on none of the nets tried"
    elif len(helped) == len(stalled):
        verdict, because = SUPPORTED, f"SGD stalls on {', '.join(stalled)}; Adam trains all of them"
    elif not helped:
        verdict, because = REFUTED, f"SGD stalls on {', '.join(stalled)}; Adam rescues none"
    else:
        rest = [s for s in stalled if s not in helped]
        verdict = "depends on the net"
        because = f"Adam rescues {', '.join(helped)} but not {', '.join(rest)}"
    if hurt:
        because += f"; where SGD trained, Adam at lr {cfg.adam_learning_rate:g} did worse on {', '.join(hurt)}"
    return Claim(
        "C6",
        "Adam copes better with small gradients than SGD.",
        "On the deep nets where SGD stalls, does Adam train, and does it move the first layers?",
        f"SGD (lr {cfg.learning_rate:g}) against Adam (lr {cfg.adam_learning_rate:g}), {cfg.steps} steps, {cfg.seeds} seeds, "
        f"width {cfg.width}. First-layer update = the first layer's relative update over the last layer's at the last "
        "step: Adam's per-parameter scaling makes it ~1 even where the gradient vanished.",
        _table(
            ["net", "SGD test acc", "Adam test acc", "SGD first-layer update / last", "Adam first-layer update / last"], lines
        ),
        verdict,
        because,
        figure_series={"kind": "bars", "ylabel": "test accuracy", "groups": accs, "chance": runs.chance},
    )


def c7_seed_net(runs: Runs) -> Claim:
    cfg = runs.cfg
    over = dict(
        model="seed_cnn",
        depth=1,
        width=6,
        activation="relu",
        learning_rate=0.01,
        steps=cfg.seed_net_steps,
        eval_every=cfg.seed_net_steps,
    )
    rows = {norm: runs.get(seeds=cfg.seed_net_seeds, norm=norm, **over) for norm in ("none", "batchnorm")}
    lines, stats = [], {}
    for norm, rs in rows.items():
        final = _vals(rs, lambda r: r["final_loss"])
        wiggle = _vals(rs, _loss_wiggle)
        stats[norm] = (acc(rs)[0], float(np.mean(final)) if final else math.inf, float(np.mean(wiggle)) if wiggle else math.inf)
        lines.append(
            [
                norm,
                _acc_str(rs),
                f"{np.mean(final):.3f} ± {np.std(final):.3f}" if final else "-",
                f"{np.mean(wiggle):.3f}" if wiggle else "-",
                _range_str(rs, lambda r: r["grad_norms_init"][0], ".3g"),
                _diverged(rs),
            ]
        )
    bn, plain = stats["batchnorm"], stats["none"]
    # Rule: supported when batchnorm makes the loss curve >= 20% less wiggly, or gives >= 2 points
    # more accuracy and a lower final loss; refuted when it gives >= 2 points less accuracy without a
    # calmer loss curve; otherwise no clear difference.
    calmer = bn[2] <= 0.8 * plain[2]
    if calmer or (bn[0] >= plain[0] + 0.02 and bn[1] < plain[1]):
        verdict = SUPPORTED
    elif bn[0] <= plain[0] - 0.02:
        verdict = REFUTED
    else:
        verdict = "no clear difference"
    because = (
        f"batchnorm {100 * bn[0]:.1f}% vs {100 * plain[0]:.1f}% test accuracy, final loss {bn[1]:.3f} vs {plain[1]:.3f}, "
        f"loss wiggle {bn[2]:.3f} vs {plain[2]:.3f}; with one hidden layer there is no depth for a gradient to decay over"
    )
    return Claim(
        "C7",
        "Adding BatchNorm to the example conv net stabilises training.",
        "The seed's net (Conv 3x3, 6 channels -> [BatchNorm] -> ReLU -> Linear), SGD lr 0.01: with and without BatchNorm.",
        f"`--model=seed_cnn` on {cfg.dataset} (flatten size computed from the input), {cfg.seed_net_steps} steps, "
        f"batch 128, {cfg.seed_net_seeds} seeds. Loss wiggle = std of the step-to-step change of the logged training loss "
        "over the second half of training.",
        _table(["norm", "test acc", "final train loss", "loss wiggle", "conv grad norm at init", "diverged"], lines),
        verdict,
        because,
        figure_series={"kind": "losses", "runs": {n: [r["loss_history"] for r in rs] for n, rs in rows.items()}},
    )


def c8_small_weights(runs: Runs) -> Claim:
    cfg = runs.cfg
    lines, decaying, small = [], [], []
    series = {}
    for act in ("sigmoid", "tanh"):
        rows = runs.get(activation=act, depth=cfg.deep)
        w_spread = median(rows, lambda r: _spread(r["weight_norms_init"][1:]))
        g_spread = median(rows, lambda r: _spread(r["grad_norms_init"][1:]))
        w_change = median(rows, lambda r: _mean_ratio(r["weight_norms_final"], r["weight_norms_init"]))
        lines.append([act, _fmt(w_spread), _fmt(g_spread, ".2e"), _fmt(w_change, ".3f"), _acc_str(rows)])
        if g_spread is not None and g_spread > 100:  # the gradient decays by more than 100x across the hidden layers
            decaying.append(act)
            if (w_spread is not None and w_spread >= 2) or (w_change is not None and w_change < 0.5):
                small.append(act)
        series[f"{act}: ||W_l||"] = _median_profile(rows, "weight_norms_init")
        series[f"{act}: ||dL/dW_l||"] = _median_profile(rows, "grad_norms_init")
    # Rule: among nets whose kernel gradients differ by > 100x across hidden layers, the claim is
    # refuted when none has weights that differ by >= 2x across layers or shrank by half in training,
    # supported when all have, and depends otherwise.
    if not decaying:
        verdict, because = "not tested", "no net tried had a decaying gradient"
    elif not small:
        verdict = REFUTED
        because = (
            f"in {', '.join(decaying)} the kernel gradients span orders of magnitude across layers while the weight norms "
            "are equal across layers and stay at their initial size: the gradient shrinks through the activation's "
            "derivative (sigmoid' <= 1/4), not because weights are small"
        )
    elif len(small) == len(decaying):
        verdict, because = SUPPORTED, f"where gradients decay ({', '.join(decaying)}) the weights are small or shrank"
    else:
        verdict, because = "depends on the activation", f"small weights go with decay in {', '.join(small)} only"
    return Claim(
        "C8",
        "The cause of gradient decay is weights becoming small.",
        "Per layer: weight norms beside gradient norms. Are small weights where the gradient vanishes?",
        f"Plain MLPs of depth {cfg.deep}, width {cfg.width}, sigmoid and tanh, LeCun init, SGD lr {cfg.learning_rate:g}, "
        f"{cfg.steps} steps, {cfg.seeds} seeds. Spread = max/min over hidden layers 1..L-1 at init (median over seeds); "
        "weight change = mean over layers of ||W_l|| at the end / at init.",
        _table(["activation", "weight-norm spread", "gradient-norm spread", "weight change", "test acc"], lines),
        verdict,
        because,
        figure_series={"kind": "layers", "ylabel": "log10 norm at init (median over seeds)", "series": series},
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
        raise ConfigError(f"--seeds={cfg.seeds}: must be >= 2 (the report gives the spread across seeds)")
    base = cfg.base()
    validate_sweep(
        SweepConfig(base=base, depths=(cfg.shallow, cfg.deep), activations=("tanh",), norms=("none",), seeds=cfg.seeds)
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
    return report


def _markdown(cfg: ClaimsConfig, claims: Sequence[Claim], runs: Runs) -> str:
    n_runs = len(runs.rows)
    lines = [
        "# The seed's claims, tested",
        "",
        f"Every number below comes from {n_runs} training runs on `{cfg.dataset}` "
        f"({runs.dataset.x_train.shape[0]} training / {runs.dataset.x_test.shape[0]} test examples, chance "
        f"{100 * runs.chance:.0f}%), made by `python -m experiments.seed_claims` with these settings: "
        + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
        + ". Spread: `median [min, max]` over seeds, or `mean ± std`. Verdicts follow from the numbers by the rules "
        "in `decay/studies/claims.py`.",
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
            f"![{c.id}]({c.figure})",
        ]
    return "\n".join(lines) + "\n"
