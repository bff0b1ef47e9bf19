"""Depth sweep: per-layer gradient flow and trainability over depths x activations x norms x seeds.

    python -m experiments.depth_sweep                      # the default sweep, a few minutes on a CPU
    python -m experiments.depth_sweep --depths=4,16 --activations=tanh --norms=none,batchnorm --seeds=2

Writes <workdir>/config.json and <workdir>/results.jsonl (one JSON line per run) and prints
a summary table. Re-running the same command on the same --workdir skips finished runs.
"""

from __future__ import annotations

import datetime
import shlex
import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/depth_sweep-<timestamp>.")
_DATASET = flags.DEFINE_string("dataset", "digits", "digits (embedded), synthetic, mnist or cifar10 (local files).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder with the local files of --dataset=mnist|cifar10.")
_MODEL = flags.DEFINE_string("model", "mlp", "mlp, cnn (deep conv net) or seed_cnn (the seed's example net).")
_DEPTHS = flags.DEFINE_list("depths", ["2", "4", "8", "16", "32", "64"], "Hidden-layer counts to sweep.")
_WIDTH = flags.DEFINE_integer("width", 128, "Units (mlp) or channels (cnn) per hidden layer.")
_ACTIVATIONS = flags.DEFINE_list("activations", ["sigmoid", "tanh", "relu"], "Activations to sweep.")
_NORMS = flags.DEFINE_list("norms", ["none", "batchnorm", "layernorm"], "Normalizations to sweep.")
_INIT = flags.DEFINE_string("init", "auto", "Kernel init; auto = he_normal for ReLU-like, lecun_normal otherwise.")
_WEIGHT_VAR = flags.DEFINE_float("weight_var", None, "sigma_w^2: W ~ N(0, weight_var/fan_in); overrides --init.")
_BIAS_VAR = flags.DEFINE_float("bias_var", None, "sigma_b^2: b ~ N(0, bias_var); default zero biases.")
_RESIDUAL = flags.DEFINE_bool("residual", False, "Layers 1..depth-1 compute h + residual_scale * layer(h).")
_RESIDUAL_SCALE = flags.DEFINE_float("residual_scale", 1.0, "alpha of the residual branch.")
_OPTIMIZER = flags.DEFINE_string("optimizer", "sgd", "sgd, momentum, adam or adamw.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.02, "Constant learning rate.")
_CLIP_NORM = flags.DEFINE_float("clip_norm", None, "Clip gradients to this global norm; default no clipping.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Examples per step.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per run; 0 measures at initialization only.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per grid point (0..seeds-1).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Steps between test evaluations.")
_QUIET = flags.DEFINE_bool("quiet", False, "Print only the final table.")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments {' '.join(argv[1:])}; all settings are --flags (see --helpshort)")

    # Imported after flag parsing so that --help stays fast.
    from decay import ConfigError, RunConfig, SweepConfig, run_sweep
    from decay.metrics import summary_table

    depths = []
    for d in _DEPTHS.value:
        try:
            depths.append(int(d))
        except ValueError:
            _fail(f"--depths contains {d!r}; give a comma list of integers >= 1, e.g. 2,4,8")
    base = RunConfig(
        model=_MODEL.value,
        dataset=_DATASET.value,
        data_dir=_DATA_DIR.value,
        width=_WIDTH.value,
        init=_INIT.value,
        weight_var=_WEIGHT_VAR.value,
        bias_var=_BIAS_VAR.value,
        residual=_RESIDUAL.value,
        residual_scale=_RESIDUAL_SCALE.value,
        optimizer=_OPTIMIZER.value,
        learning_rate=_LEARNING_RATE.value,
        clip_norm=_CLIP_NORM.value,
        batch_size=_BATCH_SIZE.value,
        steps=_STEPS.value,
        eval_every=_EVAL_EVERY.value,
    )
    cfg = SweepConfig(
        base=base,
        depths=tuple(depths),
        activations=tuple(_ACTIVATIONS.value),
        norms=tuple(_NORMS.value),
        seeds=_SEEDS.value,
    )
    workdir = _WORKDIR.value or f"runs/depth_sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    command = "python -m experiments.depth_sweep " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def on_event(e) -> None:
        if _QUIET.value:
            return
        if e.kind == "skip":
            print(f"[{e.index}/{e.total}] {e.name}: already in results.jsonl, skipped", flush=True)
        elif e.kind == "done":
            r = e.row
            acc = "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.1f}%"
            chi = "-" if r["chi"] is None else f"{r['chi']:.3f}"
            div = f" DIVERGED at step {r['diverged_at_step']}" if r["diverged"] else ""
            print(
                f"[{e.index}/{e.total}] {e.name}: chi {chi} ({r['verdict']}), test acc {acc}{div}"
                f" | {r['wall_time_s']:.1f}s, elapsed {_fmt_time(e.elapsed_s)}, left ~{_fmt_time(e.eta_s)}",
                flush=True,
            )

    if not _QUIET.value:
        print(f"depth sweep: {len(cfg.runs())} runs -> {workdir}", flush=True)
    try:
        rows = run_sweep(cfg, workdir, on_event=on_event, command=command)
    except ConfigError as e:
        _fail(str(e))
    print()
    print(summary_table(rows))
    print(f"\nresults: {workdir}/results.jsonl")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag value is one line on stderr, not a usage dump."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
        raise  # unreachable: _fail exits


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
