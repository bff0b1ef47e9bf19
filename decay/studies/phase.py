"""The order-to-chaos phase diagram, and trainability measured against it (Schoenholz et al. 2017).

Theory: chi_1 over a (weight_var, bias_var) grid, the critical line chi_1 = 1 between the ordered
and the chaotic phase, and the correlation depth scale xi_c along weight_var at a fixed bias_var.
Measurement: nets trained for a fixed number of steps over a (weight_var, depth) grid at that
bias_var, their test accuracy set beside the predicted trainable depth 6 xi_c.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from decay import families, metrics, results, theory
from decay.config import RunConfig, SweepConfig, dumps
from decay.errors import ConfigError
from decay.runner import Event, Runner
from decay.validation import validate_sweep

TRAINABLE_XI = 6.0  # Schoenholz et al. 2017: nets train up to about 6 xi_c layers


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """A phase-diagram experiment: the theory grid and the trained (weight_var, depth) grid."""

    base: RunConfig = RunConfig(
        activation="tanh", steps=300, instruments="basic"
    )  # shared run settings (activation, width, lr, ...)
    bias_var: float = 0.05  # sigma_b^2 of the trained nets and of the xi_c line
    weight_vars: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)  # sigma_w^2 of the trained nets
    depths: tuple[int, ...] = (4, 8, 16, 32, 64, 128)  # depths of the trained nets
    seeds: int = 2  # seeds per (weight_var, depth)
    theory_weight_vars: tuple[float, float] = (0.25, 5.5)  # range of the theory grid in sigma_w^2
    theory_bias_vars: tuple[float, float] = (0.0, 0.3)  # range of the theory grid in sigma_b^2

    def runs(self) -> list[RunConfig]:
        """Every trained run: weight_var x depth x seed, seeds innermost."""
        return [
            dataclasses.replace(self.base, weight_var=w, bias_var=self.bias_var, depth=d, seed=s)
            for w in self.weight_vars
            for d in self.depths
            for s in range(self.seeds)
        ]


def validate(cfg: PhaseConfig) -> None:
    """Raises ConfigError (one line naming the flag) for settings the experiment cannot run."""
    sweep = SweepConfig(base=cfg.base, depths=cfg.depths, activations=(cfg.base.activation,), norms=(cfg.base.norm,))
    validate_sweep(dataclasses.replace(sweep, seeds=max(cfg.seeds, 1)))
    if cfg.base.norm != "none" or cfg.base.residual or families.of(cfg.base).theory != "mean_field":
        raise ConfigError("the phase diagram is for plain nets with mean-field theory: no --norm, no --residual, --model=mlp")
    if not cfg.weight_vars or any(not (math.isfinite(w) and w > 0) for w in cfg.weight_vars):
        raise ConfigError(f"--weight_vars={','.join(map(str, cfg.weight_vars))} must be finite numbers > 0")
    if len(set(cfg.weight_vars)) != len(cfg.weight_vars):
        raise ConfigError(f"--weight_vars={','.join(map(str, cfg.weight_vars))} lists a value more than once")
    if any(d < 2 for d in cfg.depths):
        raise ConfigError(f"--depths={','.join(map(str, cfg.depths))} must be integers >= 2")
    if not (math.isfinite(cfg.bias_var) and cfg.bias_var >= 0):
        raise ConfigError(f"--bias_var={cfg.bias_var} must be a finite number >= 0")
    if cfg.seeds < 1:
        raise ConfigError(f"--seeds={cfg.seeds} must be >= 1")
    if cfg.base.steps < 1:
        raise ConfigError(f"--steps={cfg.base.steps} must be >= 1")


def theory_grid(activation: str, weight_vars: np.ndarray, bias_vars: np.ndarray) -> dict[str, Any]:
    """chi_1 and q* over the grid (rows: bias_var, columns: weight_var)."""
    w, b = np.meshgrid(weight_vars, bias_vars)
    q = theory.q_fixed_points(activation, w, b)
    chi = theory.chi1(activation, w, q)
    strict = lambda a: [[metrics.clean(v) for v in row] for row in a]  # noqa: E731  (inf q*: null, strict JSON)
    return {"weight_vars": weight_vars.tolist(), "bias_vars": bias_vars.tolist(), "chi_1": strict(chi), "q_star": strict(q)}


def xi_c_line(activation: str, weight_vars: np.ndarray, bias_var: float) -> dict[str, Any]:
    """xi_c, chi_1 and the phase along weight_var at one bias_var."""
    fps = [theory.fixed_point(activation, float(w), bias_var) for w in weight_vars]
    return {
        "weight_vars": weight_vars.tolist(),
        "xi_c": [metrics.clean(f.xi_c) for f in fps],  # None where infinite (critical) or undefined
        "chi_1": [f.chi_1 for f in fps],
        "phase": [f.phase for f in fps],
    }


def _key(c: RunConfig) -> str:
    return f"{float(c.weight_var)!r}/{c.depth}/{c.seed}"


def _row_key(r: dict[str, Any]) -> str:
    return f"{float(r['weight_var'])!r}/{int(r['depth'])}/{int(r['seed'])}"


def run(cfg: PhaseConfig, workdir: str, on_event: Callable[[Event], None] | None = None) -> dict[str, Any]:
    """Trains every run not yet in `<workdir>/runs.jsonl`, then writes `phase_diagram.json` and `.png`.

    Returns the JSON document. Rows are appended as runs finish, so an interrupted experiment resumes.
    """
    from decay import plots

    validate(cfg)
    b = cfg.base
    new = json_config(cfg)
    runner = Runner(workdir, new, b, rows_file="runs.jsonl", key=_key, row_key=_row_key)
    dataset = runner.dataset
    drop = lambda c, r: {k: v for k, v in r.items() if k != "loss_history"}  # noqa: E731
    rows = list(runner.run(cfg.runs(), on_event, transform=drop))
    runner.close()  # the workdir's lock: the study's results are in (its report follows from them)

    act = b.activation
    tw = np.linspace(*cfg.theory_weight_vars, 111)
    tb = np.linspace(*cfg.theory_bias_vars, 61)
    doc = {
        "activation": act,
        "bias_var": cfg.bias_var,
        "config": new,
        "theory": theory_grid(act, tw, tb),
        "xi_c": xi_c_line(act, np.linspace(min(cfg.weight_vars), max(cfg.weight_vars), 61), cfg.bias_var),
        "critical_weight_var": theory.critical_weight_var(act, cfg.bias_var),
        "trainable_xi_multiple": TRAINABLE_XI,
        "accuracy": _accuracy_grid(cfg, rows),
        "chance": 1.0 / dataset.num_classes,
    }
    results.write_atomic(os.path.join(workdir, "phase_diagram.json"), dumps(doc))
    plots.save(plots.phase_diagram(doc), os.path.join(workdir, "phase_diagram.png"))
    return doc


def _accuracy_grid(cfg: PhaseConfig, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median test accuracy over seeds [depth, weight_var] (None: every seed diverged), and divergence counts."""
    acc, diverged = [], []
    for d in cfg.depths:
        acc_row, div_row = [], []
        for w in cfg.weight_vars:
            rs = [r for r in rows if (float(r["weight_var"]), int(r["depth"])) == (float(w), d)]
            accs = [r["test_accuracy"] for r in rs if r["test_accuracy"] is not None]
            acc_row.append(float(np.median(accs)) if accs else None)
            div_row.append(sum(bool(r["diverged"]) for r in rs))
        acc.append(acc_row)
        diverged.append(div_row)
    return {"weight_vars": list(cfg.weight_vars), "depths": list(cfg.depths), "test_accuracy": acc, "diverged": diverged}


def json_config(cfg: PhaseConfig) -> dict[str, Any]:
    """The experiment's settings as plain JSON."""
    out = dataclasses.asdict(cfg)
    for k in ("weight_vars", "depths", "theory_weight_vars", "theory_bias_vars"):
        out[k] = list(out[k])
    return out
