"""What watching your own model costs: the user's bare jitted step against the watched step, per tier.

    python -m benchmarks.watch_cost [--repeats=7 --steps=20 --models=transformer,resnet --json=docs/watch/cost.json]

Both example models (examples/transformer.py: pre-LN, 8 scanned blocks, width 64, 32 tokens, batch 32;
examples/resnet.py: 6 residual blocks with BatchNorm, 16 channels, 8x8 digits, batch 64), each step
jitted with nnx.jit as a user writes it. Interleaved, medians of `--repeats` timings of `--steps` steps:
  bare       nnx.value_and_grad(loss_fn) and optimizer.update
  basic      watch.step, tier basic: per-point signal norms and RMS, per-parameter gradient, weight norms, update ratio
  standard   + q, c and dead fraction per point
  curvature  one Watch.curvature call (top Hessian eigenvalue and Hutchinson trace), on request; 3 timings
"""

from __future__ import annotations

import statistics

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

import decay
from benchmarks._timing import interleaved, write_json
from examples import resnet, transformer

_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed repetitions (medians reported).")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed call.")
_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_MODELS = flags.DEFINE_list("models", ["transformer", "resnet"], "Which example models to time.")


def _cases():
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 16, (32, 32)))
    yield (
        "transformer",
        lambda: transformer.Transformer(16, 32, 64, 4, 8, nnx.Rngs(0)),
        transformer.loss_fn,
        tokens,
        "marked",
        optax.adam(3e-3),
    )
    x = jnp.asarray(rng.standard_normal((64, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
    yield "resnet", lambda: resnet.ResNet(16, 6, 10, nnx.Rngs(0)), resnet.loss_fn, (x, y), "linear", optax.sgd(0.05, momentum=0.9)


def _chunk(step, model, opt, batch, steps):
    def run():
        out = None
        for _ in range(steps):
            out = step(model, opt, batch)
        return out

    return run


def main(argv: list[str]) -> None:
    del argv
    out = {}
    for name, make, loss_fn, batch, points, tx in _cases():
        if name not in _MODELS.value:
            continue
        variants = {}
        model = make()
        opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def bare(m, o, b, loss_fn=loss_fn):
            loss, grads = nnx.value_and_grad(loss_fn)(m, b)
            o.update(m, grads)
            return loss

        variants["bare"] = _chunk(bare, model, opt, batch, _STEPS.value)
        for tier in ("basic", "standard"):
            m = make()
            o = nnx.Optimizer(m, tx, wrt=nnx.Param)
            w = decay.watch(m, loss_fn, points=points, tier=tier)
            variants[tier] = _chunk(nnx.jit(w.step), m, o, batch, _STEPS.value)
        mc = make()
        wc = decay.watch(mc, loss_fn, points=points)
        curv = nnx.jit(wc.curvature)
        key = jax.random.key(0)
        times = interleaved(variants, _REPEATS.value)
        # Seconds per call: timed apart, 3 times (it is ~50-1000 steps' worth, asked for every few hundred steps).
        times.update(interleaved({"curvature": lambda curv=curv, mc=mc, key=key, batch=batch: curv(mc, batch, key)}, 3))
        med = {k: statistics.median(v) for k, v in times.items()}
        per_step = {k: med[k] / (_STEPS.value if k != "curvature" else 1) for k in med}
        out[name] = {
            "points": len(w.point_names),
            "params": len(w.param_names),
            "ms_per_step": {k: round(1e3 * v, 3) for k, v in per_step.items()},
            "ratio_to_bare": {k: round(v / per_step["bare"], 3) for k, v in per_step.items()},
            "repeats": _REPEATS.value,
            "steps_per_timing": _STEPS.value,
        }
        print(f"{name}: {out[name]['points']} probe points, {out[name]['params']} parameter entries")
        for k, v in per_step.items():
            print(f"  {k:<10} {1e3 * v:8.3f} ms  {v / per_step['bare']:6.3f}x bare")
    if _JSON.value:
        write_json(_JSON.value, out)


if __name__ == "__main__":
    app.run(main)
