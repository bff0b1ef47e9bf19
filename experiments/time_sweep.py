"""Time sweep: vanilla, orthogonal and identity-initialized RNNs, LSTMs and GRUs on the adding problem at several lengths.

    python -m experiments.time_sweep                              # the default study, under 10 minutes on a 2-core CPU
    python -m experiments.time_sweep --seq_lens=10,50 --variants=tanh,lstm --seeds=2 --steps=500

Per (variant, sequence length) the learning rate is chosen on the validation split; the report
shows the per-step gradient factor chi along time at initialization beside mean-field theory,
where each variant stops learning, and what gradient clipping changes for an exploding RNN.

Writes <workdir>/config.json, results.jsonl (one row per run, `variant` added), TensorBoard
events under tb/, per-run configs and checkpoints under runs/, report.md, time.json and plots/.
Re-running the same command on the same --workdir skips finished runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shlex
import sys

from absl import flags

from experiments._cli import Progress, define_run_flags, fail, parse_list, run, run_config

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/time_sweep-<timestamp>.")
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["tanh", "orthogonal", "irnn", "lstm", "gru", "exploding", "exploding_clip"],
    "Recurrent variants (decay.studies.time_sweep.VARIANTS).",
)
_SEQ_LENS = flags.DEFINE_list("seq_lens", ["10", "30", "100"], "Sequence lengths T of the adding problem.")
_LRS = flags.DEFINE_list("learning_rates", ["0.003", "0.01"], "Learning rates; each (variant, T) is tuned on validation.")
_DEPTHS = flags.DEFINE_list("depths", ["1"], "Stacked recurrent layers (mean-field theory covers one).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per grid point (0..seeds-1).")
_RUN = define_run_flags(
    only=("width", "batch_size", "steps", "eval_every", "optimizer", "data_seed", "instruments"),
    defaults={
        "width": 32,
        "batch_size": 64,
        "steps": 1500,
        "eval_every": 250,
        "optimizer": "adam",
        "depth": 1,
        "instruments": "basic",
    },
)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress output; print only where the report is.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; all settings are --flags (see --helpshort)")
    from decay import ConfigError
    from decay.studies.time_sweep import TimeSweepConfig, run_time_sweep, validate

    seq_lens = parse_list("seq_lens", _SEQ_LENS.value, int, "integers >= 1, e.g. 10,30,100")
    lrs = parse_list("learning_rates", _LRS.value, float, "numbers > 0, e.g. 0.001,0.01")
    depths = parse_list("depths", _DEPTHS.value, int, "integers >= 1, e.g. 1,2")
    flagged = run_config(_RUN)
    base = dataclasses.replace(TimeSweepConfig().base, **{k: getattr(flagged, k) for k in _RUN})
    cfg = TimeSweepConfig(
        base=base,
        variants=tuple(_VARIANTS.value),
        seq_lens=tuple(seq_lens),
        depths=tuple(depths),
        seeds=_SEEDS.value,
        learning_rates=tuple(lrs),
    )
    try:
        validate(cfg)
    except ConfigError as e:
        fail(str(e))
    workdir = _WORKDIR.value or f"runs/time_sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    command = " ".join(["python -m experiments.time_sweep", *(shlex.quote(a) for a in sys.argv[1:])])
    n_runs = len(cfg.runs())
    progress = Progress(n_runs, quiet=_QUIET.value)
    progress.line(f"time sweep: {n_runs} runs ({len(cfg.variants)} variants x T in {list(cfg.seq_lens)}) -> {workdir}")
    try:
        run_time_sweep(cfg, workdir, on_event=progress.on_event, on_progress=progress.on_step, command=command)
    except ConfigError as e:
        progress.close()
        fail(str(e))
    progress.close()
    from decay import distributed

    if not distributed.is_writer():  # process 0 wrote the study's files and speaks
        return
    with open(f"{workdir}/time.json") as f:
        findings = "\n".join(json.load(f)["findings"])
    print(f"\n{findings}\n\nreport: {workdir}/report.md\nTensorBoard: tensorboard --logdir {workdir}/tb")


if __name__ == "__main__":
    run(main)
