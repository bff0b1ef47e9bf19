"""Order-to-chaos phase diagram with measured trainability (Schoenholz et al. 2017).

    python -m experiments.phase_diagram --quick           # a few minutes on a 2-core CPU
    python -m experiments.phase_diagram --workdir=runs/phase --seeds=3

Writes <workdir>/phase_diagram.png and .json (theory grid, xi_c line, accuracy grid) and
<workdir>/runs.jsonl (one row per trained net; rerunning the command resumes).
"""

from __future__ import annotations

import dataclasses
import datetime

from absl import app, flags

from decay import phase
from decay.config import ConfigError, RunConfig
from experiments._cli import fail, parse_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/phase_diagram-<timestamp>.")
_QUICK = flags.DEFINE_bool("quick", False, "Small grid: 6 weight_vars x depths 4..64, 1 seed, 200 steps, width 64.")
_ACTIVATION = flags.DEFINE_string("activation", "tanh", "Registered activation.")
_BIAS_VAR = flags.DEFINE_float("bias_var", 0.05, "sigma_b^2 of the trained nets.")
_WEIGHT_VARS = flags.DEFINE_list("weight_vars", None, "sigma_w^2 values to train; default 0.5,1,1.5,2,2.5,3,4,5.")
_DEPTHS = flags.DEFINE_list("depths", None, "Depths to train; default 4,8,16,32,64,128.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per grid point; default 2 (1 with --quick).")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps; default 300 (200 with --quick).")
_WIDTH = flags.DEFINE_integer("width", None, "Hidden width; default 128 (64 with --quick).")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.02, "SGD learning rate.")
_DATASET = flags.DEFINE_string("dataset", "digits", "digits (embedded), synthetic, mnist or cifar10 (local files).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with the local files of --dataset=mnist|cifar10.")

_QUICK_GRID = dict(weight_vars=(0.5, 1.0, 1.75, 2.5, 3.5, 5.0), depths=(4, 8, 16, 32, 64), seeds=1, steps=200, width=64)


def _numbers(flag: str, values: list[str] | None, kind: type) -> tuple | None:
    if values is None:
        return None
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        fail(f"--{flag}={','.join(values)} must be a comma list of {'integers' if kind is int else 'numbers'}")


def main(argv: list[str]) -> None:
    parse_flags(argv)
    quick = _QUICK_GRID if _QUICK.value else {}
    defaults = phase.PhaseConfig()
    pick = lambda flag_value, key, default: flag_value if flag_value is not None else quick.get(key, default)  # noqa: E731
    base = RunConfig(
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        activation=_ACTIVATION.value,
        width=pick(_WIDTH.value, "width", defaults.base.width),
        steps=pick(_STEPS.value, "steps", defaults.base.steps),
        learning_rate=_LEARNING_RATE.value,
        checkpoint_every=0,
    )
    cfg = dataclasses.replace(
        defaults,
        base=base,
        bias_var=_BIAS_VAR.value,
        weight_vars=pick(_numbers("weight_vars", _WEIGHT_VARS.value, float), "weight_vars", defaults.weight_vars),
        depths=pick(_numbers("depths", _DEPTHS.value, int), "depths", defaults.depths),
        seeds=pick(_SEEDS.value, "seeds", defaults.seeds),
    )
    workdir = _WORKDIR.value or f"runs/phase_diagram-{datetime.datetime.now():%Y%m%d-%H%M%S}"

    def on_run(i, total, row, run_cfg):
        what = "already done" if row is None else f"test accuracy {100 * (row['test_accuracy'] or 0):.1f}%"
        if row is not None and row["diverged"]:
            what = f"diverged at step {row['diverged_at_step']}"
        print(f"[{i}/{total}] weight_var={run_cfg.weight_var:g} depth={run_cfg.depth} seed={run_cfg.seed}: {what}", flush=True)

    try:
        doc = phase.run(cfg, workdir, on_run)
    except ConfigError as e:
        fail(str(e))
    crit = doc["critical_weight_var"]
    print(f"critical sigma_w^2 at sigma_b^2={cfg.bias_var:g}: {crit:.4f}" if crit else "no critical point in range")
    print(f"figure: {workdir}/phase_diagram.png")
    print(f"data:   {workdir}/phase_diagram.json")


if __name__ == "__main__":
    app.run(main)
