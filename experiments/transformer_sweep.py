"""Transformer sweep: Post-LN, Pre-LN, DeepNorm, ReZero, no norm and no skip, per block at initialization and in training.

    python -m experiments.transformer_sweep                      # the default study, a few minutes on a 2-core CPU
    python -m experiments.transformer_sweep --depths=4,16 --train_blocks=post_ln,pre_ln --train_depths=6 --seeds=2

Writes <workdir>/config.json, results.jsonl (one row per run, `part` init or train), report.md,
transformer.json and plots/. Re-running the same command on the same --workdir skips finished runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import shlex
import sys

from absl import flags

from experiments._cli import Progress, define_run_flags, fail, parse_list, run, run_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/transformer_sweep-<timestamp>.")
_BLOCKS = flags.DEFINE_list(
    "blocks", ["post_ln", "pre_ln", "deepnorm", "rezero", "no_norm", "no_skip"], "Block types measured at initialization."
)
_DEPTHS = flags.DEFINE_list("depths", ["4", "16", "48"], "Depths (blocks) measured at initialization.")
_INIT_SEEDS = flags.DEFINE_integer("init_seeds", 2, "Seeds per (block, depth) at initialization.")
_TRAIN_BLOCKS = flags.DEFINE_list("train_blocks", ["post_ln", "pre_ln", "deepnorm", "rezero"], "Block types trained.")
_TRAIN_DEPTHS = flags.DEFINE_list("train_depths", ["6", "16"], "Depths of the trained transformers (shallow, deep).")
_WARMUPS = flags.DEFINE_list("warmups", ["0", "50"], "Warm-up lengths compared in training (steps).")
_LRS = flags.DEFINE_list(
    "learning_rates", ["0.0003", "0.001", "0.003"], "Learning rates; each (block, depth, warm-up) is tuned on validation."
)
_SEEDS = flags.DEFINE_integer("seeds", 2, "Seeds per trained grid point.")
_RUN = define_run_flags(
    only=("width", "heads", "batch_size", "steps", "eval_every", "optimizer", "data_seed", "norm"),
    defaults={
        "width": 32,
        "heads": 4,
        "batch_size": 32,
        "steps": 200,
        "eval_every": 100,
        "optimizer": "adam",
        "norm": "layernorm",
    },
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress output; print only where the report is.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; all settings are --flags (see --helpshort)")
    from decay import ConfigError
    from decay.studies.transformer_sweep import TransformerSweepConfig, run_transformer_sweep, validate

    depths = parse_list("depths", _DEPTHS.value, int, "integers >= 1, e.g. 4,16")
    train_depths = parse_list("train_depths", _TRAIN_DEPTHS.value, int, "integers >= 1, e.g. 6,16")
    warmups = parse_list("warmups", _WARMUPS.value, int, "integers >= 0, e.g. 0,50")
    lrs = parse_list("learning_rates", _LRS.value, float, "numbers > 0, e.g. 0.001,0.003")
    flagged = run_config(_RUN)
    base = dataclasses.replace(TransformerSweepConfig().base, **{k: getattr(flagged, k) for k in _RUN})
    cfg = TransformerSweepConfig(
        base=base,
        blocks=tuple(_BLOCKS.value),
        depths=tuple(depths),
        init_seeds=_INIT_SEEDS.value,
        train_blocks=tuple(_TRAIN_BLOCKS.value),
        train_depths=tuple(train_depths),
        warmups=tuple(warmups),
        learning_rates=tuple(lrs),
        seeds=_SEEDS.value,
    )
    try:
        validate(cfg)
    except ConfigError as e:
        fail(str(e))
    workdir = _WORKDIR.value or f"runs/transformer_sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    command = " ".join(["python -m experiments.transformer_sweep", *(shlex.quote(a) for a in sys.argv[1:])])
    n_runs = len(cfg.init_runs()) + len(cfg.train_runs())
    progress = Progress(n_runs, quiet=_QUIET.value)
    progress.line(f"transformer sweep: {n_runs} runs -> {workdir}")
    try:
        run_transformer_sweep(cfg, workdir, on_event=progress.on_event, on_progress=progress.on_step, command=command)
    except ConfigError as e:
        progress.close()
        fail(str(e))
    progress.close()
    from decay import distributed

    if not distributed.is_writer():  # process 0 wrote the study's files and speaks
        return
    with open(f"{workdir}/report.md") as f:
        found = f.read().split("## Findings", 1)[1].split("##", 1)[0].strip()
    print(f"\n{found}\n\nreport: {workdir}/report.md")


if __name__ == "__main__":
    run(main)
