"""Depth sweep: per-layer gradient flow and trainability over depths x activations x norms x seeds.

    python -m experiments.depth_sweep                      # the default sweep, a few minutes on a CPU
    python -m experiments.depth_sweep --depths=4,16 --activations=tanh --norms=none,batchnorm --seeds=2

Writes <workdir>/config.json, <workdir>/results.jsonl (one JSON line per run), TensorBoard events
under <workdir>/tb/, per-run configs and Orbax checkpoints under <workdir>/runs/, report.md and
plots/, and prints a summary table. Re-running the same command on the same --workdir skips
finished runs and resumes unfinished ones from their latest checkpoint.
"""

from __future__ import annotations

import datetime
import shlex
import sys

from absl import app, flags
from tqdm import tqdm

from experiments._cli import fail, fmt_time, parse_flags

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
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Steps between TensorBoard points.")
_HISTOGRAMS = flags.DEFINE_bool("histograms", False, "Also log per-layer log10|gradient| histograms to TensorBoard.")
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 1000, "Steps between Orbax checkpoints (also at step 0 and the end); 0: only those."
)
_KEEP_CHECKPOINTS = flags.DEFINE_integer("keep_checkpoints", 2, "Newest checkpoints kept per run, besides step 0.")
_INSTRUMENTS = flags.DEFINE_string(
    "instruments", "standard", "basic | standard (+ q_l, c_l, dead units, distance from init) | full (+ per-sample, curvature)."
)
_INSTRUMENT_EVERY = flags.DEFINE_integer("instrument_every", 100, "Steps between the full tier's curvature measurements.")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress output; print only the final table.")


class Progress:
    """Progress of a sweep: live bars on a terminal, one line per run otherwise (CI, pipes)."""

    def __init__(self, total: int, quiet: bool):
        self.quiet = quiet
        self.live = not quiet and sys.stderr.isatty()
        self.runs = None
        self.steps = None
        if self.live:
            fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]"
            self.runs = tqdm(total=total, bar_format=fmt, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def on_event(self, e) -> None:
        if self.quiet:
            return
        if e.kind == "start" and self.live:
            self.runs.set_description(e.name)
            self.runs.set_postfix_str(f"left ~{fmt_time(e.eta_s)}")
        elif e.kind == "skip":
            self.line(f"[{e.index}/{e.total}] {e.name}: already in results.jsonl, skipped")
            if self.live:
                self.runs.update(1)
        elif e.kind == "done":
            if self.steps is not None:
                self.steps.close()
                self.steps = None
            r = e.row
            acc = "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.1f}%"
            chi = "-" if r["chi"] is None else f"{r['chi']:.3f}"
            div = f" DIVERGED at step {r['diverged_at_step']}" if r["diverged"] else ""
            self.line(
                f"[{e.index}/{e.total}] {e.name}: chi {chi} ({r['verdict']}), test acc {acc}{div}"
                f" | {r['wall_time_s']:.1f}s, elapsed {fmt_time(e.elapsed_s)}, left ~{fmt_time(e.eta_s)}"
            )
            if self.live:
                self.runs.set_postfix_str(f"left ~{fmt_time(e.eta_s)}")
                self.runs.update(1)

    def on_step(self, p) -> None:
        if not self.live:
            return
        if self.steps is None:
            self.steps = tqdm(total=p.total, desc="  steps", leave=False, dynamic_ncols=True)
        self.steps.update(p.step - self.steps.n)
        self.steps.set_postfix_str(f"loss {p.loss:.3f}")

    def close(self) -> None:
        if self.steps is not None:
            self.steps.close()
        if self.runs is not None:
            self.runs.close()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; all settings are --flags (see --helpshort)")

    # Imported after flag parsing so that --help stays fast.
    from decay import ConfigError, RunConfig, SweepConfig, run_sweep
    from decay.metrics import summary_table

    depths = []
    for d in _DEPTHS.value:
        try:
            depths.append(int(d))
        except ValueError:
            fail(f"--depths contains {d!r}; give a comma list of integers >= 1, e.g. 2,4,8")
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
        log_every=_LOG_EVERY.value,
        histograms=_HISTOGRAMS.value,
        checkpoint_every=_CHECKPOINT_EVERY.value,
        keep_checkpoints=_KEEP_CHECKPOINTS.value,
        instruments=_INSTRUMENTS.value,
        instrument_every=_INSTRUMENT_EVERY.value,
    )
    cfg = SweepConfig(
        base=base,
        depths=tuple(depths),
        activations=tuple(_ACTIVATIONS.value),
        norms=tuple(_NORMS.value),
        seeds=_SEEDS.value,
    )
    workdir = _WORKDIR.value or f"runs/depth_sweep-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    command = " ".join(["python -m experiments.depth_sweep", *(shlex.quote(a) for a in sys.argv[1:])])

    progress = Progress(len(cfg.runs()), quiet=_QUIET.value)
    if not _QUIET.value:
        import jax

        n_dev = len(jax.devices())
        where = f"{n_dev} {jax.devices()[0].platform.upper()} device{'s' if n_dev > 1 else ''}"
        progress.line(f"depth sweep: {len(cfg.runs())} runs on {where} -> {workdir}")
    try:
        rows = run_sweep(cfg, workdir, on_event=progress.on_event, on_progress=progress.on_step, command=command)
    except ConfigError as e:
        progress.close()
        fail(str(e))
    progress.close()
    print()
    print(summary_table(rows))
    print(f"\nresults: {workdir}/results.jsonl\nreport:  {workdir}/report.md\nTensorBoard: tensorboard --logdir {workdir}/tb")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
