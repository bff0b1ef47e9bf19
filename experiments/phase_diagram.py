"""Order-to-chaos phase diagram with measured trainability (Schoenholz et al. 2017).

    python -m experiments.phase_diagram --quick           # a few minutes on a 2-core CPU
    python -m experiments.phase_diagram --workdir=runs/phase --seeds=3

Writes <workdir>/phase_diagram.png and .json (theory grid, xi_c line, accuracy grid) and
<workdir>/runs.jsonl (one row per trained net; rerunning the command resumes).
"""

from __future__ import annotations

import dataclasses
import datetime

from absl import flags

from decay.errors import ConfigError
from decay.studies import phase
from experiments._cli import define_run_flags, fail, run, run_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/phase_diagram-<timestamp>.")
_QUICK = flags.DEFINE_bool("quick", False, "Small grid: 6 weight_vars x depths 4..64, 1 seed, 200 steps, width 64.")
_BIAS_VAR = flags.DEFINE_float("bias_var", 0.05, "sigma_b^2 of the trained nets.")
_WEIGHT_VARS = flags.DEFINE_list("weight_vars", None, "sigma_w^2 values to train; default 0.5,1,1.5,2,2.5,3,4,5.")
_DEPTHS = flags.DEFINE_list("depths", None, "Depths to train; default 4,8,16,32,64,128.")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per grid point; default 2 (1 with --quick).")
# Run settings from RunConfig; width and steps default to the grid's own (smaller with --quick).
_RUN = define_run_flags(
    only=("dataset", "data_dir", "activation", "width", "steps", "learning_rate"), defaults={"width": None, "steps": None}
)

_QUICK_GRID = dict(weight_vars=(0.5, 1.0, 1.75, 2.5, 3.5, 5.0), depths=(4, 8, 16, 32, 64), seeds=1, steps=200, width=64)


def _numbers(flag: str, values: list[str] | None, kind: type) -> tuple | None:
    if values is None:
        return None
    try:
        return tuple(kind(v) for v in values)
    except ValueError:
        fail(f"--{flag}={','.join(values)} must be a comma list of {'integers' if kind is int else 'numbers'}")


def main(argv: list[str]) -> None:
    quick = _QUICK_GRID if _QUICK.value else {}
    defaults = phase.PhaseConfig()
    pick = lambda flag_value, key, default: flag_value if flag_value is not None else quick.get(key, default)  # noqa: E731
    base = run_config(
        _RUN,
        width=pick(_RUN["width"].value, "width", defaults.base.width),
        steps=pick(_RUN["steps"].value, "steps", defaults.base.steps),
        checkpoint_every=0,
        instruments=defaults.base.instruments,
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

    def on_event(e):
        if e.kind == "note":  # the disk estimate, what was written, a lock taken over
            print(e.name, flush=True)
        if e.kind in ("start", "note"):
            return
        row, run_cfg = e.row, e.config
        what = "already done" if row is None else f"test accuracy {100 * (row['test_accuracy'] or 0):.1f}%"
        if row is not None and row["diverged"]:
            what = f"diverged at step {row['diverged_at_step']}"
        where = f"weight_var={run_cfg.weight_var:g} depth={run_cfg.depth} seed={run_cfg.seed}"
        print(f"[{e.index}/{e.total}] {where}: {what}", flush=True)

    try:
        doc = phase.run(cfg, workdir, on_event)
    except ConfigError as e:
        fail(str(e))
    crit = doc["critical_weight_var"]
    print(f"critical sigma_w^2 at sigma_b^2={cfg.bias_var:g}: {crit:.4f}" if crit else "no critical point in range")
    print(f"figure: {workdir}/phase_diagram.png")
    print(f"data:   {workdir}/phase_diagram.json")


if __name__ == "__main__":
    run(main)
