"""How fast decay trains its recurrent families (rnn, lstm, gru), against a PyTorch eager loop, on this machine.

    python -m benchmarks.rnn_speed                      # all parts, 5 repeats, ~3 min on an idle 2-core CPU
    python -m benchmarks.rnn_speed --parts=step --repeats=7 --json=docs/benchmarks/rnn_speed.json

Every figure is a median over `--repeats` timings; the two sides of each ratio are measured in the
same invocation, interleaved. Threads are left at their defaults (reported): PyTorch's intra-op
pool, and JAX's CPU devices as `decay.devices.configure` sets them (one per core). Parts:

  step     one training step of each family at width 128, batch 128, T = 100, depth 1, the adding
           problem (x [N, T, 2], MSE on a linear head reading h_T), plain SGD lr 0.01, a random
           minibatch per step (a fresh permutation per epoch). decay: `prog.train_chunk` of `--steps`
           steps in one scan, its statistics copied to the host, divided by `--steps`:
             decay      instruments=basic: ||dL/dh_t|| at every t (and ||dL/dc_t|| for the lstm),
                        the recurrent kernel's gradient norm, weight norm, update ratio, activation RMS
             bare       `prog.bare_chunk`: the same step without any statistics
             standard   instruments=standard (+ q, c, dead fraction per t, distance from init)
           PyTorch, `--steps` eager steps, every step's readout copied to the host (`.tolist()`):
             torch      nn.RNN(tanh) / nn.LSTM / nn.GRU + Linear(128, 1): ||dL/d output[:, t]|| per t
                        (output.retain_grad()) and ||dL/d weight_hh_l0||. The fused layer keeps the
                        recurrence inside one autograd node, so output.grad holds only the head's
                        gradient: zero for t < T - 1. It is a lower bound on what the readout costs,
                        not the same readout.
             torch_cell nn.RNNCell / nn.LSTMCell / nn.GRUCell unrolled over t, h_t.retain_grad()
                        (and c_t for the lstm): the true ||dL/dh_t|| per t, decay's readout.
           Ratios decay / torch and decay / torch_cell (goal: <= 1.0).
  compile  trace + compile of `train_chunk` (one step per chunk, instruments=basic) at T = 1000
           against T = 10, per family, each in a fresh process with no persistent compilation cache
           (goal: T = 1000 / T = 10 <= 2).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time

from absl import app, flags

from benchmarks._timing import check_parts, child_json, run_parts, table, write_json

_PARTS = flags.DEFINE_list("parts", ["step", "compile"], "Parts to run.")
_FAMILIES = flags.DEFINE_list("families", ["rnn", "lstm", "gru"], "Recurrent families to time.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repetitions of each step measurement (medians reported).")
_STEPS = flags.DEFINE_integer("steps", 10, "Training steps per timed call (decay's chunk length, torch's loop).")
_COMPILE_REPEATS = flags.DEFINE_integer("compile_repeats", 2, "Fresh processes per compile measurement (medians reported).")
_STANDARD = flags.DEFINE_bool("standard", True, "Also time decay at instruments=standard.")
_CELLS = flags.DEFINE_bool("cells", True, "Also time the unrolled PyTorch cell loop (the exact per-step readout).")
_JSON = flags.DEFINE_string("json", None, "Also write every figure and raw timing to this JSON file.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process and print JSON.")
_MODEL = flags.DEFINE_string("model", "lstm", "Internal: family of a child measurement.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 100, "Internal: sequence length of a child measurement.")

WIDTH, BATCH, T_STEP, LR = 128, 128, 100, 0.01
T_COMPILE = (10, 1000)


def _config(model: str, seq_len: int, instruments: str = "basic"):
    from decay.config import RunConfig

    return RunConfig(
        model=model,
        dataset="adding",
        seq_len=seq_len,
        width=WIDTH,
        batch_size=BATCH,
        depth=1,
        optimizer="sgd",
        learning_rate=LR,
        instruments=instruments,
    )


# ---- child: a compile measurement in a fresh process, one JSON line ----


def child_compile() -> dict:
    """Seconds to trace and to compile `train_chunk` (n_steps=1) of `--model` at `--seq_len`."""
    from decay import devices

    devices.configure(None, None)
    import jax
    import jax.numpy as jnp

    from decay import data, program

    cfg = _config(_MODEL.value, _SEQ_LEN.value)
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
    del compiled  # not run: one step at T = 1000 takes seconds, and running is no part of the figure
    return {
        "model": cfg.model,
        "seq_len": cfg.seq_len,
        "trace_s": t1 - t0,
        "compile_s": t2 - t1,
        "trace_compile_s": t2 - t0,
        "cache_dir": jax.config.jax_compilation_cache_dir,
        "cache_enabled": jax.config.jax_enable_compilation_cache,
    }


CHILDREN = {"compile": child_compile}


# ---- the PyTorch eager reference ----


def _torch_loop(kind: str, x_train, y_train, steps: int, cells: bool):
    """A callable running `steps` eager SGD steps of the PyTorch `kind` net; returns the last step's readout."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x_all, y_all = torch.from_numpy(x_train), torch.from_numpy(y_train)
    n = x_all.shape[0]
    per_epoch = n // BATCH
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(WIDTH, 1)
    if cells:
        cell = {"rnn": lambda: nn.RNNCell(2, WIDTH, nonlinearity="tanh"), "lstm": lambda: nn.LSTMCell(2, WIDTH)}.get(
            kind, lambda: nn.GRUCell(2, WIDTH)
        )()
        layer, w_hh = cell, cell.weight_hh
    else:
        make = {
            "rnn": lambda: nn.RNN(2, WIDTH, nonlinearity="tanh", batch_first=True),
            "lstm": lambda: nn.LSTM(2, WIDTH, batch_first=True),
        }
        layer = make.get(kind, lambda: nn.GRU(2, WIDTH, batch_first=True))()
        w_hh = layer.weight_hh_l0
    params = list(layer.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=LR)
    state = {"step": 0, "perm": None}

    def forward(xb):
        """(prediction, tensors whose gradient is read per t)."""
        if not cells:
            out, _ = layer(xb)
            out.retain_grad()
            return head(out[:, -1]).squeeze(-1), [out]
        h = xb.new_zeros(xb.shape[0], WIDTH)
        c = xb.new_zeros(xb.shape[0], WIDTH)
        hs, cs = [], []
        for t in range(xb.shape[1]):
            if kind == "lstm":
                h, c = layer(xb[:, t], (h, c))
                c.retain_grad()
                cs.append(c)
            else:
                h = layer(xb[:, t], h)
            h.retain_grad()
            hs.append(h)
        return head(h).squeeze(-1), [hs, cs]

    def readout(watched) -> dict:
        if not cells:
            return {"signal_norms": watched[0].grad.norm(dim=(0, 2)).tolist()}
        hs, cs = watched
        out = {"signal_norms": torch.stack([h.grad.norm() for h in hs]).tolist()}
        if cs:
            out["cell_signal_norms"] = torch.stack([c.grad.norm() for c in cs]).tolist()
        return out

    def run():
        read = None
        for _ in range(steps):
            i = state["step"] % per_epoch
            if i == 0:
                state["perm"] = torch.randperm(n, generator=gen)
            idx = state["perm"][i * BATCH : (i + 1) * BATCH]
            xb, yb = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            pred, watched = forward(xb)
            loss = nn.functional.mse_loss(pred, yb)
            loss.backward()
            opt.step()
            read = readout(watched)
            read["grad_norm"] = w_hh.grad.norm().item()
            read["loss"] = loss.item()
            state["step"] += 1
        return read

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
    variants, loops = {}, {}

    def decay_chunk(fn, state, x, y):
        def run():
            _, stats = fn(state, x, y, key, n_steps=k)
            return jax.device_get(stats)  # the per-step statistics on the host, as the training loop copies them

        return run

    tiers = ["basic", "standard"] if _STANDARD.value else ["basic"]
    for fam in _FAMILIES.value:
        ds = None
        for tier in tiers:
            cfg = _config(fam, T_STEP, tier)
            ds = ds or data.load_for(cfg)
            prog, state = program.init_state(cfg, ds)
            x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
            if tier == "basic":
                variants[f"{fam}/decay"] = decay_chunk(prog.train_chunk, state, x, y)
                variants[f"{fam}/bare"] = decay_chunk(prog.bare_chunk, state, x, y)
            else:
                variants[f"{fam}/standard"] = decay_chunk(prog.train_chunk, state, x, y)
        loops[f"{fam}/torch"] = _torch_loop(fam, ds.x_train, ds.y_train, k, cells=False)
        if _CELLS.value:
            loops[f"{fam}/torch_cell"] = _torch_loop(fam, ds.x_train, ds.y_train, k, cells=True)
        variants.update(loops)
    t0 = time.perf_counter()
    times = interleaved(variants, repeats)
    ms = {name: 1e3 * statistics.median(v) / k for name, v in times.items()}
    out: dict = {}
    for fam in _FAMILIES.value:
        f = {v.split("/")[1]: ms[v] for v in ms if v.startswith(f"{fam}/")}
        ratios = {f"{a}/{b}": f[a] / f[b] for a in f if a in ("decay", "bare", "standard") for b in f if b.startswith("torch")}
        ratios["decay/bare"] = f["decay"] / f["bare"]
        best = {v.split("/")[1]: 1e3 * min(times[v]) / k for v in times if v.startswith(f"{fam}/")}
        out[fam] = {"ms_per_step": f, "ratio": ratios, "best_ms_per_step": best}
    sample = loops[f"{_FAMILIES.value[0]}/torch"]()
    return {
        "per_family": out,
        "steps_per_timing": k,
        "repeats": repeats,
        "timed_s": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "jax_devices": len(jax.devices()),
        "torch_fused_readout_zero_before_T": all(v == 0.0 for v in sample["signal_norms"][:-1]),
        "all_seconds": times,
    }


def _child(*args: str, env: dict[str, str]) -> dict:
    return child_json("benchmarks.rnn_speed", *args, env=env)


def part_compile(repeats: int) -> dict:
    del repeats  # --compile_repeats: each measurement is a fresh process
    runs: dict[str, dict[int, list[dict]]] = {fam: {t: [] for t in T_COMPILE} for fam in _FAMILIES.value}
    for _ in range(_COMPILE_REPEATS.value):
        for fam in _FAMILIES.value:
            for t in T_COMPILE:
                with tempfile.TemporaryDirectory(prefix="rnn-speed-cache-") as tmp:
                    # No persistent cache: disabled, and pointed at an empty folder should anything enable it.
                    env = {"JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_COMPILATION_CACHE_DIR": tmp}
                    runs[fam][t].append(_child("--child=compile", f"--model={fam}", f"--seq_len={t}", env=env))
    out = {}
    for fam, per_t in runs.items():
        med = {t: statistics.median(r["trace_compile_s"] for r in rs) for t, rs in per_t.items()}
        out[fam] = {
            "trace_compile_s": {str(t): s for t, s in med.items()},
            "ratio": med[T_COMPILE[1]] / med[T_COMPILE[0]],
            "all": {str(t): rs for t, rs in per_t.items()},
        }
    return {"per_family": out, "compile_repeats": _COMPILE_REPEATS.value}


PARTS = {"step": part_step, "compile": part_compile}


def _table(res: dict) -> str:
    rows = []
    if "step" in res:
        for fam, r in res["step"]["per_family"].items():
            ms, ratio = r["ms_per_step"], r["ratio"]
            rows.append(
                (
                    f"{fam} step T=100, decay / torch nn.{fam.upper()}",
                    f"{ms['decay']:.2f} / {ms['torch']:.2f} ms",
                    ratio["decay/torch"],
                    "<= 1.0",
                )
            )
            if "torch_cell" in ms:
                rows.append(
                    (
                        f"{fam} step, decay / torch cell loop",
                        f"{ms['decay']:.2f} / {ms['torch_cell']:.2f} ms",
                        ratio["decay/torch_cell"],
                        "<= 1.0",
                    )
                )
            rows.append(
                (
                    f"{fam} step, bare decay / torch nn.{fam.upper()}",
                    f"{ms['bare']:.2f} / {ms['torch']:.2f} ms",
                    ratio["bare/torch"],
                    "-",
                )
            )
            rows.append((f"{fam} step, decay basic / bare", f"{ms['decay']:.2f} / {ms['bare']:.2f} ms", ratio["decay/bare"], "-"))
            if "standard" in ms:
                rows.append(
                    (
                        f"{fam} step, decay standard / torch nn.{fam.upper()}",
                        f"{ms['standard']:.2f} / {ms['torch']:.2f} ms",
                        ratio["standard/torch"],
                        "-",
                    )
                )
    if "compile" in res:
        for fam, r in res["compile"]["per_family"].items():
            s = r["trace_compile_s"]
            rows.append((f"{fam} compile, T=1000 / T=10", f"{s['1000']:.2f} / {s['10']:.2f} s", r["ratio"], "<= 2"))
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
            f"JAX {s['jax_devices']} CPU devices on {res['machine']['cores']} cores; {s['steps_per_timing']} steps "
            f"per timing, medians of {s['repeats']}"
        )
    print(_table(res))
    print(f"total {res['total_s']:.0f} s")
    if _JSON.value:
        write_json(_JSON.value, res)


if __name__ == "__main__":
    app.run(main)
