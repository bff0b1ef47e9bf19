"""Depth sweep: per-layer gradient flow and trainability over depths x activations x norms x learning rates x seeds.

    python -m experiments.depth_sweep                      # the default sweep, a few minutes on a CPU
    python -m experiments.depth_sweep --depths=4,16 --activations=tanh --norms=none,batchnorm --seeds=2

Each (depth, activation, norm) is tuned over --learning_rates on the validation split; the
summary and the report show each configuration at its best rate, test numbers with intervals.

Writes <workdir>/config.json, <workdir>/results.jsonl (one JSON line per run), TensorBoard events
under <workdir>/tb/, per-run configs and Orbax checkpoints under <workdir>/runs/, report.md and
plots/, and prints a summary table. Re-running the same command on the same --workdir skips
finished runs and resumes unfinished ones from their latest checkpoint.
"""

from __future__ import annotations

import datetime
import shlex
import sys

from absl import flags

from decay.config import DEFAULT_LEARNING_RATES, SweepConfig
from experiments._cli import Progress, define_run_flags, fail, parse_list, run, run_config

_D = SweepConfig()  # the grid's defaults
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/depth_sweep-<timestamp>.")
_DEPTHS = flags.DEFINE_list("depths", [str(d) for d in _D.depths], "Hidden-layer counts to sweep.")
_ACTIVATIONS = flags.DEFINE_list("activations", list(_D.activations), "Activations to sweep.")
_NORMS = flags.DEFINE_list("norms", list(_D.norms), "Normalizations to sweep.")
_LRS = flags.DEFINE_list(
    "learning_rates",
    [f"{v:g}" for v in DEFAULT_LEARNING_RATES],
    "Learning rates; each configuration is tuned over them on validation.",
)
_SEEDS = flags.DEFINE_integer("seeds", _D.seeds, "Seeds per grid point (0..seeds-1).")
# Every other setting of a run: one flag per RunConfig field, with its default and help.
_RUN = define_run_flags(skip=("depth", "activation", "norm", "seed", "learning_rate"))
_QUIET = flags.DEFINE_bool("quiet", False, "No progress output; print only the final table.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; all settings are --flags (see --helpshort)")

    # Imported after flag parsing so that --help stays fast.
    from decay import ConfigError, run_sweep
    from decay.metrics import summary_table

    depths = parse_list("depths", _DEPTHS.value, int, "integers >= 1, e.g. 2,4,8")
    lrs = parse_list("learning_rates", _LRS.value, float, "numbers > 0, e.g. 0.01,0.05,0.25")
    base = run_config(_RUN, learning_rate=lrs[0] if lrs else SweepConfig().base.learning_rate)
    cfg = SweepConfig(
        base=base,
        depths=tuple(depths),
        activations=tuple(_ACTIVATIONS.value),
        norms=tuple(_NORMS.value),
        seeds=_SEEDS.value,
        learning_rates=tuple(lrs),
    )
    workdir = _WORKDIR.value or f"runs/depth_sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    command = " ".join(["python -m experiments.depth_sweep", *(shlex.quote(a) for a in sys.argv[1:])])

    from decay.studies.depth_sweep import check_sweep

    try:
        check_sweep(cfg)  # bad flags stop here, before anything is printed
    except ConfigError as e:
        fail(str(e))
    n_runs = len(cfg.runs())
    progress = Progress(n_runs, quiet=_QUIET.value)
    if not _QUIET.value:
        import jax

        n_dev = len(jax.devices())
        where = f"{n_dev} {jax.devices()[0].platform.upper()} device{'s' if n_dev > 1 else ''}"
        progress.line(f"depth sweep: {n_runs} run{'s' if n_runs != 1 else ''} on {where} -> {workdir}")
    from decay.program import CompileLog

    try:
        with CompileLog() as compiled:
            rows = run_sweep(cfg, workdir, on_event=progress.on_event, on_progress=progress.on_step, command=command)
    except ConfigError as e:
        progress.close()
        fail(str(e))
    progress.close()
    from decay import distributed

    if not distributed.is_writer():  # one process of a multi-process job speaks
        return
    print()
    print(summary_table(rows))
    print(f"\n{compiled.summary()}")
    print(f"results: {workdir}/results.jsonl\nreport:  {workdir}/report.md\nTensorBoard: tensorboard --logdir {workdir}/tb")


if __name__ == "__main__":
    run(main)
