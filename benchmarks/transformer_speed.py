"""How fast decay trains its transformer family, against a PyTorch eager loop, on this machine.

    python -m benchmarks.transformer_speed                 # all parts, 5 repeats: ~3 min on an idle 2-core CPU, 6 at load 2-5
    python -m benchmarks.transformer_speed --parts=step --depths=8 --json=docs/benchmarks/transformer_speed.json

Every step figure is a median over `--repeats` timings (best-of figures are kept beside them, for
a shared machine); the sides of each ratio are measured in the same invocation, interleaved.
Threads are left at their defaults (reported): PyTorch's intra-op pool, and JAX's CPU devices as
`decay.devices.configure` sets them (one per core, so one decay run computes on one core). Parts:

  step        one training step at width 128, 4 heads, MLP 512, exact GELU, LayerNorm, associative
              recall with 32 pairs (65 one-hot tokens of 64 symbols, 32 classes, cross-entropy on
              a linear head reading the mean over tokens), batch 32, plain SGD lr 0.01, a random
              minibatch per step (a fresh permutation per epoch), depth 8 and 32, pre_ln and
              post_ln blocks. decay: `prog.train_chunk` of `--steps` steps in one scan, its
              statistics copied to the host, divided by `--steps`:
                decay     instruments=basic, per block: the gradient norm of the residual stream,
                          attention and MLP outputs, their activation RMS, and per kernel (q, k, v,
                          out, mlp_in, mlp_out) the gradient norm, weight norm and update ratio
                bare      `prog.bare_chunk`: the same step without any statistics
              PyTorch, `--steps` eager steps of Linear(64, 128) + learned positions, a stack of
              nn.TransformerEncoderLayer(128, 4, 512, dropout 0, gelu, batch_first, norm_first for
              pre_ln), a final LayerNorm for pre_ln, the mean over tokens, Linear(128, 32):
                torch     every step the gradient norms of each layer's self_attn.in_proj_weight,
                          self_attn.out_proj.weight, linear1.weight and linear2.weight and the loss
                          copied to the host (one `.tolist()`, one `.item()`), as a hook-based script
                          reads them: 4 norms per layer, a smaller readout than decay's
                torch_1t  the same with PyTorch held to one intra-op thread (`--one_thread`): the
                          cores decay's single run computes on
              Ratios decay / torch (goal: <= 0.8), bare / torch, and against torch_1t.
  first_step  trace + compile + the first step of `train_chunk` (n_steps=1, instruments=basic,
              pre_ln) at depth 128 against depth 4, each in a fresh process with no persistent
              compilation cache (goal: depth 128 / depth 4 <= 2); trace, compile and run reported apart.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

from absl import app, flags

from benchmarks._timing import check_parts, child_json, run_parts, table, write_json

_PARTS = flags.DEFINE_list("parts", ["step", "first_step"], "Parts to run.")
_DEPTHS = flags.DEFINE_list("depths", ["8", "32"], "Depths (blocks) of the step part.")
_BLOCKS = flags.DEFINE_list("blocks", ["pre_ln", "post_ln"], "Block kinds of the step part.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions of each step measurement (medians reported).")
_STEPS = flags.DEFINE_integer("steps", 1, "Training steps per timed call (decay's chunk length, torch's loop).")
_FIRST_REPEATS = flags.DEFINE_integer("first_repeats", 2, "Fresh processes per first-step measurement (medians reported).")
_ONE_THREAD = flags.DEFINE_bool("one_thread", True, "Also time the PyTorch loop on one intra-op thread.")
_JSON = flags.DEFINE_string("json", None, "Also write every figure and raw timing to this JSON file.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process and print JSON.")
_DEPTH = flags.DEFINE_integer("depth", 4, "Internal: depth of a child measurement.")

WIDTH, HEADS, MLP_RATIO, PAIRS, BATCH, LR = 128, 4, 4, 32, 32, 0.01
FIRST_DEPTHS = (4, 128)


def _config(depth: int, block: str = "pre_ln"):
    from decay.config import RunConfig

    return RunConfig(
        model="transformer",
        dataset="recall",
        seq_len=PAIRS,
        width=WIDTH,
        heads=HEADS,
        depth=depth,
        block=block,
        norm="layernorm",
        activation="gelu",
        batch_size=BATCH,
        optimizer="sgd",
        learning_rate=LR,
        instruments="basic",
    )


# ---- child: a first-step measurement in a fresh process, one JSON line ----


def child_first_step() -> dict:
    """Seconds to trace, compile and run the first `train_chunk` (n_steps=1) at `--depth`, its statistics on the host."""
    t_start = time.perf_counter()
    from decay import devices

    devices.configure(None, None)
    import jax
    import jax.numpy as jnp

    from decay import data, program

    cfg = _config(_DEPTH.value)
    ds = data.load_for(cfg)
    prog, state = program.init_state(cfg, ds)
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    key = jax.random.key(0)
    jax.block_until_ready((state, x, y))
    t0 = time.perf_counter()
    lowered = prog.train_chunk.lower(state, x, y, key, n_steps=1)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    _, stats = compiled(state, x, y, key)
    stats = jax.device_get(stats)
    t3 = time.perf_counter()
    return {
        "depth": cfg.depth,
        "block": cfg.block,
        "import_init_s": t0 - t_start,
        "trace_s": t1 - t0,
        "compile_s": t2 - t1,
        "run_s": t3 - t2,
        "trace_compile_s": t2 - t0,
        "first_step_s": t3 - t0,
        "loss": float(stats["loss"][0]),
        "cache_dir": jax.config.jax_compilation_cache_dir,
        "cache_enabled": jax.config.jax_enable_compilation_cache,
    }


CHILDREN = {"first_step": child_first_step}


# ---- the PyTorch eager reference ----


def _torch_loop(depth: int, block: str, x_train, y_train, steps: int, one_thread: bool):
    """A callable running `steps` eager SGD steps of the PyTorch encoder; returns the last step's readout."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    n, length, features = x_all.shape
    per_epoch = n // BATCH
    gen = torch.Generator().manual_seed(0)
    pre = block == "pre_ln"
    embed = nn.Linear(features, WIDTH)
    pos = nn.Parameter(0.02 * torch.randn(length, WIDTH))
    layers = nn.ModuleList(
        nn.TransformerEncoderLayer(
            WIDTH, HEADS, MLP_RATIO * WIDTH, dropout=0.0, activation="gelu", batch_first=True, norm_first=pre
        )
        for _ in range(depth)
    )
    final = nn.LayerNorm(WIDTH) if pre else nn.Identity()
    head = nn.Linear(WIDTH, 32)
    modules = nn.ModuleList([embed, layers, final, head]).train()
    opt = torch.optim.SGD([*modules.parameters(), pos], lr=LR)
    watched = [
        w
        for layer in layers
        for w in (layer.self_attn.in_proj_weight, layer.self_attn.out_proj.weight, layer.linear1.weight, layer.linear2.weight)
    ]
    state = {"step": 0, "perm": None}

    def loop():
        read = None
        for _ in range(steps):
            i = state["step"] % per_epoch
            if i == 0:
                state["perm"] = torch.randperm(n, generator=gen)
            idx = state["perm"][i * BATCH : (i + 1) * BATCH]
            xb, yb = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            h = embed(xb) + pos
            for layer in layers:
                h = layer(h)
            loss = nn.functional.cross_entropy(head(final(h).mean(dim=1)), yb)
            loss.backward()
            opt.step()
            read = {"grad_norms": torch.stack([w.grad.norm() for w in watched]).tolist(), "loss": loss.item()}
            state["step"] += 1
        return read

    if not one_thread:
        return loop

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return loop()
        finally:
            torch.set_num_threads(threads)

    return run


# ---- the parent: interleaved repetitions, medians, a table ----


def part_step(repeats: int) -> dict:
    from decay import devices

    devices.configure(None, None)
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks._timing import interleaved
    from decay import data, program

    k = _STEPS.value
    key = jax.random.key(0)
    variants = {}

    def decay_chunk(fn, state, x, y):
        def run():
            _, stats = fn(state, x, y, key, n_steps=k)
            return jax.device_get(stats)  # the per-step statistics on the host, as the training loop copies them

        return run

    configs = [(int(d), b) for d in _DEPTHS.value for b in _BLOCKS.value]
    ds = data.load_for(_config(configs[0][0]))
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    for depth, block in configs:
        prog, state = program.init_state(_config(depth, block), ds)
        name = f"depth{depth}_{block}"
        variants[f"{name}/decay"] = decay_chunk(prog.train_chunk, state, x, y)
        variants[f"{name}/bare"] = decay_chunk(prog.bare_chunk, state, x, y)
        variants[f"{name}/torch"] = _torch_loop(depth, block, ds.x_train, ds.y_train, k, one_thread=False)
        if _ONE_THREAD.value:
            variants[f"{name}/torch_1t"] = _torch_loop(depth, block, ds.x_train, ds.y_train, k, one_thread=True)
    t0 = time.perf_counter()
    times = interleaved(variants, repeats)
    out: dict = {}
    for depth, block in configs:
        name = f"depth{depth}_{block}"
        mine = {v.split("/")[1]: s for v, s in times.items() if v.startswith(f"{name}/")}
        ms = {v: 1e3 * statistics.median(s) / k for v, s in mine.items()}
        best = {v: 1e3 * min(s) / k for v, s in mine.items()}
        ratio = {f"{a}/{b}": ms[a] / ms[b] for a in ("decay", "bare") for b in ms if b.startswith("torch")}
        ratio["decay/bare"] = ms["decay"] / ms["bare"]
        best_ratio = {f"{a}/{b}": best[a] / best[b] for a in ("decay", "bare") for b in best if b.startswith("torch")}
        out[name] = {
            "depth": depth,
            "block": block,
            "ms_per_step": ms,
            "ratio": ratio,
            "best_ms_per_step": best,
            "best_ratio": best_ratio,
        }
    return {
        "per_config": out,
        "tokens": 2 * PAIRS + 1,
        "steps_per_timing": k,
        "repeats": repeats,
        "timed_s": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "jax_devices": len(jax.devices()),
        "all_seconds": times,
    }


def _child(*args: str, env: dict[str, str]) -> dict:
    return child_json("benchmarks.transformer_speed", *args, env=env)


def part_first_step(repeats: int) -> dict:
    del repeats  # --first_repeats: each measurement is a fresh process
    runs: dict[int, list[dict]] = {d: [] for d in FIRST_DEPTHS}
    for _ in range(_FIRST_REPEATS.value):
        for depth in FIRST_DEPTHS:
            with tempfile.TemporaryDirectory(prefix="transformer-speed-cache-") as tmp:
                # No persistent cache: disabled, and pointed at an empty folder should anything enable it.
                env = {"JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_COMPILATION_CACHE_DIR": tmp}
                runs[depth].append(_child("--child=first_step", f"--depth={depth}", env=env))
    lo, hi = FIRST_DEPTHS
    fields = ("trace_s", "compile_s", "run_s", "trace_compile_s", "first_step_s")
    med = {d: {f: statistics.median(r[f] for r in rs) for f in fields} for d, rs in runs.items()}
    best = {d: {f: min(r[f] for r in rs) for f in fields} for d, rs in runs.items()}
    return {
        "block": "pre_ln",
        "seconds": {str(d): m for d, m in med.items()},
        "best_seconds": {str(d): b for d, b in best.items()},
        "ratio": med[hi]["first_step_s"] / med[lo]["first_step_s"],
        "trace_compile_ratio": med[hi]["trace_compile_s"] / med[lo]["trace_compile_s"],
        "best_ratio": best[hi]["first_step_s"] / best[lo]["first_step_s"],
        "first_repeats": _FIRST_REPEATS.value,
        "all": {str(d): rs for d, rs in runs.items()},
    }


PARTS = {"step": part_step, "first_step": part_first_step}


def _table(res: dict) -> str:
    rows = []
    if "step" in res:
        for r in res["step"]["per_config"].values():
            ms, ratio = r["ms_per_step"], r["ratio"]
            tag = f"depth {r['depth']} {r['block']}"
            pair = lambda a, b, ms=ms: f"{ms[a]:.0f} / {ms[b]:.0f} ms"  # noqa: E731
            rows.append((f"{tag} step, decay / torch", pair("decay", "torch"), ratio["decay/torch"], "<= 0.8"))
            rows.append((f"{tag} step, bare decay / torch", pair("bare", "torch"), ratio["bare/torch"], "-"))
            if "torch_1t" in ms:
                rows.append((f"{tag} step, decay / torch 1 thread", pair("decay", "torch_1t"), ratio["decay/torch_1t"], "-"))
                rows.append((f"{tag} step, bare / torch 1 thread", pair("bare", "torch_1t"), ratio["bare/torch_1t"], "-"))
            rows.append((f"{tag} step, decay basic / bare", pair("decay", "bare"), ratio["decay/bare"], "-"))
    if "first_step" in res:
        r = res["first_step"]
        s = r["seconds"]
        lo, hi = (str(d) for d in FIRST_DEPTHS)
        rows.append(
            (
                f"first step pre_ln, depth {hi} / depth {lo}",
                f"{s[hi]['first_step_s']:.2f} / {s[lo]['first_step_s']:.2f} s",
                r["ratio"],
                "<= 2",
            )
        )
        rows.append(
            (
                "  of which trace + compile",
                f"{s[hi]['trace_compile_s']:.2f} / {s[lo]['trace_compile_s']:.2f} s",
                r["trace_compile_ratio"],
                "-",
            )
        )
        run = (s[hi]["run_s"], s[lo]["run_s"])
        rows.append(("  of which the step itself", f"{run[0]:.2f} / {run[1]:.2f} s", run[0] / run[1], "-"))
    return table(rows)


def main(argv: list[str]) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(CHILDREN[_CHILD.value]()))
        return
    check_parts(_PARTS.value, PARTS)
    res = run_parts(_PARTS.value, PARTS, _REPEATS.value)
    if "step" in res:
        s = res["step"]
        print(
            f"threads: torch {s['torch_threads']} intra-op / {s['torch_interop_threads']} inter-op, "
            f"JAX {s['jax_devices']} CPU devices on {res['machine']['cores']} cores; {s['tokens']} tokens, "
            f"{s['steps_per_timing']} steps per timing, medians of {s['repeats']}"
        )
    print(_table(res))
    print(f"total {res['total_s']:.0f} s")
    if _JSON.value:
        write_json(_JSON.value, res)


if __name__ == "__main__":
    app.run(main)
