"""Reopen a saved run and analyze one checkpoint against initialization.

    python -m experiments.analyze --run_dir=runs/depth_sweep-.../runs/mlp-d0032-tanh-none-s0 [--step=300]

Writes <run_dir>/analysis/step_<N>/analysis.json, layer_norms.png and jacobian_spectrum.png:
per-layer gradient, signal, activation and weight norms at that step against step 0, and the
singular values of the input-output Jacobian at both steps.
"""

from __future__ import annotations

import json
import os

from absl import flags

from experiments._cli import fail, run

_RUN_DIR = flags.DEFINE_string("run_dir", None, "A run folder: <workdir>/runs/<run name>.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to analyze; default the latest.")
_EXAMPLES = flags.DEFINE_integer("examples", 256, "Training examples for the per-layer statistics.")
_JACOBIAN_EXAMPLES = flags.DEFINE_integer("jacobian_examples", 8, "Examples whose Jacobian spectrum is computed.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; use --run_dir=... [--step=N]")
    if not _RUN_DIR.value:
        fail("--run_dir is required: a run folder <workdir>/runs/<run name> with config.json and checkpoints/")
    if _EXAMPLES.value < 1 or _JACOBIAN_EXAMPLES.value < 1:
        fail("--examples and --jacobian_examples must be integers >= 1")

    import jax.numpy as jnp

    from decay import ConfigError, analysis, plots
    from decay import data as data_lib
    from decay.metrics import clean
    from decay.results import write_atomic

    try:
        run = analysis.load_run(_RUN_DIR.value, _STEP.value)
        run0 = analysis.load_run(_RUN_DIR.value, 0)
        cfg = run.config
        ds = data_lib.load_for(cfg)
    except ConfigError as e:
        fail(str(e))
    n = min(_EXAMPLES.value, ds.x_train.shape[0])
    x, y = jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])
    xj = x[: _JACOBIAN_EXAMPLES.value]

    def as_json(stats):
        return {k: [clean(v) for v in (stats[k].ravel().tolist())] for k in stats}

    stats, stats0 = as_json(analysis.layer_stats(run, x, y)), as_json(analysis.layer_stats(run0, x, y))
    jac, jac0 = analysis.jacobian_singular_values(run, xj), analysis.jacobian_singular_values(run0, xj)
    out_dir = os.path.join(run.run_dir, "analysis", f"step_{run.step}")
    result = {
        "run_dir": os.path.abspath(run.run_dir),
        "step": run.step,
        "available_steps": run.available_steps,
        "examples": n,
        "config": cfg.to_json(),
        "layer_stats": stats,
        "layer_stats_step0": stats0,
        "jacobian": jac,
        "jacobian_step0": jac0,
    }
    write_atomic(os.path.join(out_dir, "analysis.json"), json.dumps(result, indent=1) + "\n")
    name = os.path.basename(os.path.normpath(run.run_dir))
    plots.save(
        plots.layer_comparison(
            stats, stats0, run.step, f"{name}: per-layer norms at step {run.step} vs initialization ({n} examples)"
        ),
        os.path.join(out_dir, "layer_norms.png"),
    )
    plots.save(
        plots.jacobian_spectrum(
            {"step 0": jac0["singular_values"], f"step {run.step}": jac["singular_values"]},
            f"{name}: input-output Jacobian singular values ({jac['method']}, {len(xj)} examples)",
        ),
        os.path.join(out_dir, "jacobian_spectrum.png"),
    )
    print(f"analysis: {out_dir}/analysis.json, layer_norms.png, jacobian_spectrum.png")


if __name__ == "__main__":
    run(main)
