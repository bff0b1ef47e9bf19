"""What recording every per-layer quantity costs, against a bare training step.

    python -m benchmarks.logging_cost [--width=128 --depth=32 --batch_size=128 --repeats=7]

Three ways to run the same chunk of steps on the same state, interleaved, several repeats,
medians reported:
  bare      loss, gradients and the optimizer update only (no probes, no per-layer norms)
  stats     the decay train step: + grad/signal/weight norms, act RMS, update ratio per layer
  logged    stats + the per-layer arrays fetched to the host and written to TensorBoard
            for every step (the --log_every=1 path of a sweep)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks._timing import interleaved
from decay import program
from decay.config import RunConfig
from decay.data import load
from decay.tensorboard_writer import RunWriter
from experiments._cli import check_benchmark_config, define_run_flags, parse_flags, run_config

# The measured net's settings, from RunConfig's fields (a deeper batchnorm net than RunConfig's default).
_RUN = define_run_flags(only=("width", "depth", "batch_size", "norm", "activation"), defaults={"depth": 32, "norm": "batchnorm"})
_STEPS = flags.DEFINE_integer("steps", 200, "Steps per timed chunk.")
_REPEATS = flags.DEFINE_integer("repeats", 11, "Timed repetitions of each variant (medians reported).")
_HIST = flags.DEFINE_bool("histograms", False, "Also compute and log per-layer gradient histograms every step.")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")


def measure(cfg: RunConfig, steps: int, repeats: int) -> dict:
    """Medians of `repeats` interleaved timings of the bare, stats and logged chunks of `steps` steps (s/step)."""
    data = load(cfg.dataset, None, 0)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    prog, state = program.init_state(cfg, data)
    n = steps
    log_dir = tempfile.mkdtemp(prefix="decay-bench-")
    writer = RunWriter(log_dir, cfg.depth)

    def bare():
        s, loss = prog.bare_chunk(state, x, y, key, n_steps=n)
        jax.block_until_ready(loss)

    def stats():
        s, chunk = prog.train_chunk(state, x, y, key, n_steps=n)
        jax.block_until_ready(chunk)

    def logged():
        s, chunk = prog.train_chunk(state, x, y, key, n_steps=n)
        chunk = jax.device_get(chunk)  # one transfer for the chunk
        writer.write_steps(np.arange(n), chunk)

    variants = {"bare": bare, "stats": stats, "logged": logged}
    times = {k: [t / n for t in v] for k, v in interleaved(variants, repeats).items()}
    writer.close()
    shutil.rmtree(log_dir, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "config": dataclasses.asdict(cfg),
        "ms_per_step": {k: 1e3 * v for k, v in med.items()},
        "ratio_vs_bare": {k: med[k] / med["bare"] for k in med},
        "all_ms_per_step": {k: [1e3 * t for t in v] for k, v in times.items()},
    }


def main(argv: list[str]) -> None:
    del argv
    cfg = run_config(_RUN, dataset="synthetic", log_every=1, histograms=_HIST.value, instruments="basic")
    check_benchmark_config(cfg, steps=_STEPS.value, repeats=_REPEATS.value)
    out = measure(cfg, _STEPS.value, _REPEATS.value)
    print(
        f"device: {jax.devices()[0].platform}  width {cfg.width}, depth {cfg.depth}, batch {cfg.batch_size}, "
        f"{cfg.activation}/{cfg.norm}, histograms {'on' if cfg.histograms else 'off'}; "
        f"median of {_REPEATS.value} x {_STEPS.value} steps"
    )
    print(f"{'variant':<8} {'ms/step':>9} {'vs bare':>8}")
    for k, ms in out["ms_per_step"].items():
        print(f"{k:<8} {ms:9.3f} {out['ratio_vs_bare'][k]:8.3f}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
