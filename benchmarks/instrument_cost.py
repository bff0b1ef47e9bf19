"""What each instrument tier costs, against a bare training step (decay.instruments).

    python -m benchmarks.instrument_cost [--width=128 --depth=32 --norm=batchnorm --activation=tanh --repeats=7]

Interleaved, medians of `--repeats` timings of a chunk of `--steps` steps each:
  bare       loss, gradients and the optimizer update only
  basic      the train step with the core's per-layer statistics
  standard   + q_l, c_l, dead units, distance from init
  full/step  + per-sample gradient statistics (every step)
  curvature  one top-eigenvalue + Hutchinson measurement (full tier, every --instrument_every steps)
  full       full/step + curvature amortized over --instrument_every steps
"""

from __future__ import annotations

import dataclasses
import json
import statistics

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks._timing import interleaved
from decay import program, step
from decay.data import load
from experiments._cli import check_benchmark_config, define_run_flags, parse_flags, run_config

# The measured net's settings, from RunConfig's fields (a deeper batchnorm net than RunConfig's default).
_RUN = define_run_flags(
    only=("width", "depth", "batch_size", "norm", "activation", "instrument_every"), defaults={"depth": 32, "norm": "batchnorm"}
)
_STEPS = flags.DEFINE_integer("steps", 100, "Steps per timed chunk.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repetitions (medians reported).")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")


def main(argv: list[str]) -> None:
    del argv
    base = run_config(_RUN, dataset="synthetic")
    check_benchmark_config(base, steps=_STEPS.value, repeats=_REPEATS.value, instrument_every=base.instrument_every)
    data = load("synthetic", None, 0)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    n = _STEPS.value
    progs = {t: program.init_state(dataclasses.replace(base, instruments=t), data) for t in ("basic", "standard", "full")}
    prog_b, state_b = progs["basic"]
    prog_f, state_f = progs["full"]
    curv = jax.jit(lambda s: step.curvature(prog_f.net, s.params, s.batch_stats, x[: base.batch_size], y[: base.batch_size], key))

    variants = {
        "bare": lambda: prog_b.bare_chunk(state_b, x, y, key, n_steps=n),
        "basic": lambda: prog_b.train_chunk(state_b, x, y, key, n_steps=n),
        "standard": lambda: progs["standard"][0].train_chunk(progs["standard"][1], x, y, key, n_steps=n),
        "full/step": lambda: prog_f.train_chunk(state_f, x, y, key, n_steps=n),
        "curvature": lambda: curv(state_f),
    }
    per_call = interleaved(variants, _REPEATS.value)
    times = {k: [t / (1 if k == "curvature" else n) for t in v] for k, v in per_call.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    med["full"] = med["full/step"] + med["curvature"] / base.instrument_every
    print(
        f"device: {jax.devices()[0].platform} x{len(jax.devices())}  width {base.width}, depth {base.depth}, "
        f"batch {base.batch_size}, "
        f"{base.activation}/{base.norm}; median of {_REPEATS.value}; curvature every {base.instrument_every} steps"
    )
    print(f"{'tier':<10} {'ms/step':>10} {'vs bare':>8} {'vs basic':>9}")
    for k, v in med.items():
        unit = "ms/call" if k == "curvature" else "ms/step"
        print(
            f"{k:<10} {1e3 * v:10.3f} {v / med['bare']:8.3f} {v / med['basic']:9.3f}"
            + ("  (" + unit + ")" if k == "curvature" else "")
        )
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(
                {"config": dataclasses.asdict(base), "ms": {k: 1e3 * v for k, v in med.items()}, "all_s": times}, f, indent=2
            )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
