"""How fast decay answers a sweep, against the PyTorch eager loop it replaces, on this machine.

    python -m benchmarks.sweep_speed                   # all parts, 3 repeats, ~10 min on a 2-core CPU
    python -m benchmarks.sweep_speed --parts=steady,flops --repeats=5 --json=speed.json

Every figure is a median over `--repeats` runs; the two sides of each ratio are measured in the
same process tree, interleaved, each in a fresh process (imports and compilation included where
the figure says so). Parts:

  e2e         the grid (depths 4,16,32 x tanh,relu x none,batchnorm x 2 seeds, width 128, batch
              128, 300 steps, synthetic data, SGD lr 0.02), end to end: `python -m
              experiments.depth_sweep` (TensorBoard, checkpoints, report and figures included)
              at `--instruments=basic` (the same per-layer gradient norms the reference reads),
              with an empty compilation cache ("cold") and with one filled by an earlier run
              ("warm"), against `python -m benchmarks.torch_reference` (same nets, inits, batch,
              steps and evaluations; per-layer gradient norms read every step)
  compile     compile time of each grid config's training executable (no cache)
  steady      steady-state step at width 128, depth 32, batchnorm, tanh: one decay run alone;
              decay's per-run time when the runs of a config share the devices; PyTorch
  first_step  first step at depth 4 and at depth 1024 (model build + compile + step)
  logging     per-layer statistics every step, and those written to TensorBoard, against a bare step
  flops       a training step at width 1024, batch 1024, depth 8, in FLOP/s, against a 1024^3 f32 matmul
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_PARTS = flags.DEFINE_list("parts", ["e2e", "compile", "steady", "first_step", "logging", "flops", "profile"], "Parts to run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repetitions of each measurement (medians reported).")
_JSON = flags.DEFINE_string("json", None, "Also write every figure and raw timing to this JSON file.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process and print JSON.")
_DEPTH = flags.DEFINE_integer("depth", 32, "Internal: depth of a child measurement.")

GRID = ["--depths=4,16,32", "--activations=tanh,relu", "--norms=none,batchnorm", "--seeds=2"]
COMMON = ["--width=128", "--batch_size=128", "--steps=300", "--dataset=synthetic"]
# The reference trains at one rate (its --learning_rate, 0.02): so does the sweep, not over its default grid of 5.
RATE = ["--learning_rates=0.02"]


def _python(*args: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Runs `python args` from the repository root; returns (wall seconds, stdout)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**os.environ, **(env or {})},
    )
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"python {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return wall, out.stdout


def _child(name: str, *extra: str) -> dict:
    _, out = _python("-m", "benchmarks.sweep_speed", f"--child={name}", *extra)
    return json.loads(out.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return statistics.median(values)


# ---- children: each runs in a fresh process and prints one JSON line ----


def _setup(cache: str | None = None):
    from decay import devices

    devices.configure(None, cache)
    import jax

    return jax


def child_compile() -> dict:
    """Seconds to trace and to compile the training executables of the reference grid: one shared program per depth
    (what a sweep compiles), and one plain program per depth x activation x norm (what it compiled before)."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import devices, program
    from decay.config import RunConfig
    from decay.data import load
    from decay.layers import Choices

    data = load("synthetic", None, 0)
    mesh = devices.run_mesh()
    x, y = (devices.replicate(jnp.asarray(a), mesh) for a in (data.x_train, data.y_train))
    test = devices.replicate(program.eval_sets(data), mesh)
    grid = Choices(("tanh", "relu"), ("none", "batchnorm"))
    out: dict[str, dict] = {"shared": {}, "plain": {}}
    for depth in (4, 16, 32):
        for act in grid.activations:
            for norm in grid.norms:
                cfg = RunConfig(
                    width=128, depth=depth, activation=act, norm=norm, dataset="synthetic", batch_size=128, instruments="basic"
                )
                for kind, choices in (("shared", grid), ("plain", None)):
                    name = f"d{depth}" if kind == "shared" else f"d{depth}-{act}-{norm}"
                    if name in out[kind]:
                        continue
                    prog, state = program.init_state(cfg, data, choices=choices)
                    states, count = devices.place([jax.device_get(state)], mesh, 1)
                    keys = devices.shard_runs(jnp.stack(devices.fill([jax.random.key(0)], mesh.size, 1)), mesh)
                    t0 = time.perf_counter()
                    lowered = prog.group_chunk(100, mesh).lower(states, x, y, keys, test, count)
                    t1 = time.perf_counter()
                    lowered.compile()
                    out[kind][name] = {"trace_s": t1 - t0, "compile_s": time.perf_counter() - t1}
    return out


def child_steady() -> dict:
    """ms per step at width 128, depth 32, batchnorm, tanh: one run alone, per run with the devices shared, and one
    run in a shared program (activation and norm chosen at run time)."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import devices, program
    from decay.config import RunConfig
    from decay.data import load
    from decay.layers import Choices

    data = load("synthetic", None, 0)
    cfg = RunConfig(
        width=128, depth=32, activation="tanh", norm="batchnorm", dataset="synthetic", batch_size=128, instruments="basic"
    )
    prog, state = program.init_state(cfg, data)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    n = 100
    single = []
    for _ in range(4):
        t0 = time.perf_counter()
        jax.block_until_ready(prog.train_chunk(state, x, y, key, n_steps=n))
        single.append((time.perf_counter() - t0) / n)
    mesh = devices.run_mesh()
    xs, ys = (devices.replicate(a, mesh) for a in (x, y))
    test = devices.replicate(program.eval_sets(data), mesh)
    runs = mesh.size
    fn = prog.group_chunk(n, mesh)
    shared = []
    for _ in range(4):
        states, count = devices.place([jax.device_get(state)] * runs, mesh, 1)
        keys = devices.shard_runs(jnp.stack([key] * runs), mesh)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(states, xs, ys, keys, test, count))
        shared.append((time.perf_counter() - t0) / (n * runs))
    # The same run in the default sweep's shared program (3 activations x 3 norms chosen at run time).
    choices = Choices(("sigmoid", "tanh", "relu"), ("none", "batchnorm", "layernorm"))
    sprog, sstate = program.init_state(cfg, data, choices=choices)
    switched = []
    for _ in range(4):
        t0 = time.perf_counter()
        jax.block_until_ready(sprog.train_chunk(sstate, x, y, key, n_steps=n))
        switched.append((time.perf_counter() - t0) / n)
    return {
        "devices": mesh.size,
        "single_ms": 1e3 * _median(single[1:]),
        "shared_ms_per_run": 1e3 * _median(shared[1:]),
        "switched_ms": 1e3 * _median(switched[1:]),
    }


def child_first_step() -> dict:
    """Seconds from nothing to the first step's end at `--depth`: model build, compile, one step."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import program
    from decay.config import RunConfig
    from decay.data import load

    data = load("synthetic", None, 0)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    jax.block_until_ready(x)
    cfg = RunConfig(width=128, depth=_DEPTH.value, activation="tanh", norm="batchnorm", dataset="synthetic", instruments="basic")
    t0 = time.perf_counter()
    prog, state = program.init_state(cfg, data)
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    jax.block_until_ready(prog.train_chunk(state, x, y, jax.random.key(0), n_steps=1))
    return {"depth": cfg.depth, "build_s": t1 - t0, "first_step_s": time.perf_counter() - t0}


def child_flops() -> dict:
    """FLOP/s of decay's training step (tanh, no norm, basic tier) at width 1024 (batch 1024, depth 8) and at
    width 128 (batch 128, depth 32), against a 1024^3 f32 matmul."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import program
    from decay.config import RunConfig
    from decay.data import load

    data = load("synthetic", None, 0)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    a = jax.random.normal(jax.random.key(1), (1024, 1024), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (1024, 1024), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    out = {}
    for width, depth, batch, n in ((1024, 8, 1024, 10), (128, 32, 128, 50)):
        cfg = RunConfig(
            width=width, depth=depth, batch_size=batch, activation="tanh", norm="none", dataset="synthetic", instruments="basic"
        )
        prog, state = program.init_state(cfg, data)
        jax.block_until_ready((prog.train_chunk(state, x, y, key, n_steps=n), matmul(a, b)))
        step_t, mm_t = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(prog.train_chunk(state, x, y, key, n_steps=n))
            step_t.append((time.perf_counter() - t0) / n)
            t0 = time.perf_counter()
            m = a
            for _ in range(20):
                m = matmul(m, b) * (1.0 / 32.0)  # keeps the values finite; the scaling is fused, negligible
            jax.block_until_ready(m)
            mm_t.append((time.perf_counter() - t0) / 20)
        d_in = 64
        # Multiply-adds of one step: forward B*sum(in*out), backward twice that (inputs and weights).
        macs = cfg.batch_size * (d_in * cfg.width + (cfg.depth - 1) * cfg.width**2 + cfg.width * data.num_classes)
        out[f"w{width}"] = {
            "depth": depth,
            "batch": batch,
            "step_ms": 1e3 * _median(step_t),
            "step_gflops": 6 * macs / _median(step_t) / 1e9,
            "matmul_ms": 1e3 * _median(mm_t),
            "matmul_gflops": 2 * 1024**3 / _median(mm_t) / 1e9,
        }
    return out


def child_profile() -> dict:
    """Where a step's time goes at width 128, depth 32, batch 128, tanh (one run, one device), by ablation: the
    matmuls alone (the same 3 per layer in a scanned forward and backward), then the bare step (+ bias,
    activation, loss, optimizer, minibatch gather) without and with batchnorm, then the basic and standard
    per-layer statistics. ms per step, medians of interleaved chunks of 100 steps."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import program
    from decay.config import RunConfig
    from decay.data import load

    data = load("synthetic", None, 0)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    n, width, depth, batch = 100, 128, 32, 128
    ws = jax.random.normal(key, (depth, width, width), jnp.float32) / width**0.5
    h0 = jax.random.normal(key, (batch, width), jnp.float32)

    def matmuls(ws):
        def loss(ws):
            h, _ = jax.lax.scan(lambda h, w: (h @ w, None), h0, ws)
            return jnp.sum(h * h)

        return jax.lax.fori_loop(0, n, lambda i, ws: ws - 1e-6 * jax.grad(loss)(ws), ws)

    variants = {"matmuls": (jax.jit(matmuls), (ws,))}
    for norm in ("none", "batchnorm"):
        for tier in ("bare", "basic", "standard"):
            if norm == "none" and tier == "standard":
                continue
            cfg = RunConfig(
                width=width, depth=depth, batch_size=batch, activation="tanh", norm=norm, dataset="synthetic",
                instruments="basic" if tier == "bare" else tier,
            )  # fmt: skip
            prog, state = program.init_state(cfg, data)
            fn = prog.bare_chunk if tier == "bare" else prog.train_chunk
            variants[f"{tier}_{norm}"] = (functools.partial(fn, n_steps=n), (state, x, y, key))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn, args in variants.values():
        jax.block_until_ready(fn(*args))
    for _ in range(7):
        for k, (fn, args) in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[k].append(1e3 * (time.perf_counter() - t0) / n)
    return {k: _median(v) for k, v in times.items()}


CHILDREN = {
    "compile": child_compile,
    "steady": child_steady,
    "first_step": child_first_step,
    "flops": child_flops,
    "profile": child_profile,
}


# ---- the parent: interleaved repetitions, medians, a table ----


def part_e2e(repeats: int) -> dict:
    """The grid end to end from the shell: decay with its default flags and at --instruments=basic, each with an
    empty ("cold") and a filled ("warm") compilation cache, against the PyTorch eager loop."""
    warm_cache = tempfile.mkdtemp(prefix="decay-cache-")
    variants = {"default": [], "basic": ["--instruments=basic"]}
    for name, extra in variants.items():  # fill the warm cache
        sweep = ["-m", "experiments.depth_sweep", *GRID, *COMMON, *RATE, *extra, "--quiet"]
        _python(*sweep, f"--workdir={warm_cache}/fill-{name}", f"--compilation_cache={warm_cache}/jax")
    times: dict[str, list[float]] = {f"decay_{v}_{c}": [] for v in variants for c in ("cold", "warm")}
    times["torch"] = []
    compiles: dict[str, str] = {}
    torch_runs = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="decay-bench-") as tmp:
            for name, extra in variants.items():
                sweep = ["-m", "experiments.depth_sweep", *GRID, *COMMON, *RATE, *extra, "--quiet"]
                wall, out = _python(*sweep, f"--workdir={tmp}/cold-{name}", f"--compilation_cache={tmp}/cache-{name}")
                times[f"decay_{name}_cold"].append(wall)
                compiles[name] = next((line for line in out.splitlines() if line.startswith("compiled:")), "")
                wall, _ = _python(*sweep, f"--workdir={tmp}/warm-{name}", f"--compilation_cache={warm_cache}/jax")
                times[f"decay_{name}_warm"].append(wall)
            wall, out = _python("-m", "benchmarks.torch_reference", *GRID, *COMMON)
            times["torch"].append(wall)
            torch_runs = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(warm_cache, ignore_errors=True)
    med = {k: _median(v) for k, v in times.items()}
    return {
        "seconds": med,
        "ratios": {k: v / med["torch"] for k, v in med.items() if k != "torch"},
        "compiled": compiles,
        "all_seconds": times,
        "torch_threads": torch_runs["threads"],
        "torch_step_ms_d32_tanh_batchnorm": _median(
            [r["median_step_ms"] for k, r in torch_runs["runs"].items() if k.startswith("d32-tanh-batchnorm")]
        ),
    }


def part_steady(repeats: int) -> dict:
    decay_runs, torch_ms = [], []
    torch_flags = ["--depths=32", "--activations=tanh", "--norms=batchnorm", "--seeds=1", "--steps=300"]
    for _ in range(repeats):
        decay_runs.append(_child("steady"))
        _, out = _python("-m", "benchmarks.torch_reference", *torch_flags)
        torch_ms.append(json.loads(out.strip().splitlines()[-1])["runs"]["d32-tanh-batchnorm-s0"]["median_step_ms"])
    single = _median([r["single_ms"] for r in decay_runs])
    shared = _median([r["shared_ms_per_run"] for r in decay_runs])
    switched = _median([r["switched_ms"] for r in decay_runs])
    torch = _median(torch_ms)
    return {
        "devices": decay_runs[0]["devices"],
        "decay_single_ms": single,
        "decay_shared_ms_per_run": shared,
        "decay_switched_ms": switched,
        "torch_ms": torch,
        "ratio_single": single / torch,
        "ratio_shared": shared / torch,
        "ratio_switched": switched / torch,
        "all": {"decay": decay_runs, "torch_ms": torch_ms},
    }


def part_first_step(repeats: int) -> dict:
    runs: dict[int, list[dict]] = {4: [], 1024: []}
    for _ in range(repeats):
        for depth in runs:
            runs[depth].append(_child("first_step", f"--depth={depth}"))
    med = {d: _median([r["first_step_s"] for r in v]) for d, v in runs.items()}
    return {
        "seconds": {str(d): s for d, s in med.items()},
        "ratio": med[1024] / med[4],
        "all": {str(d): v for d, v in runs.items()},
    }


def part_logging(repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "logging.json")
        _python("-m", "benchmarks.logging_cost", f"--repeats={max(repeats, 5)}", f"--json={path}")
        with open(path) as f:
            return json.load(f)


def part_flops(repeats: int) -> dict:
    runs = [_child("flops") for _ in range(repeats)]
    out = {}
    for w in runs[0]:
        step = _median([r[w]["step_gflops"] for r in runs])
        mm = _median([r[w]["matmul_gflops"] for r in runs])
        out[w] = {
            "step_gflops": step,
            "matmul_gflops": mm,
            "ratio": step / mm,
            "step_ms": _median([r[w]["step_ms"] for r in runs]),
        }
    return {**out, "all": runs}


def part_profile(repeats: int) -> dict:
    runs = [_child("profile") for _ in range(repeats)]
    return {"ms_per_step": {k: _median([r[k] for r in runs]) for k in runs[0]}, "all": runs}


def part_compile(repeats: int) -> dict:
    del repeats  # one pass: fifteen compilations are the repetitions
    per = _child("compile")
    out = {"per_program": per}
    for kind, progs in per.items():
        comp = [v["compile_s"] for v in progs.values()]
        out[kind] = {
            "programs": len(progs),
            "median_compile_s": _median(comp),
            "total_compile_s": sum(comp),
            "median_trace_s": _median([v["trace_s"] for v in progs.values()]),
        }
    return out


PARTS = {
    "e2e": part_e2e,
    "compile": part_compile,
    "steady": part_steady,
    "first_step": part_first_step,
    "logging": part_logging,
    "flops": part_flops,
    "profile": part_profile,
}


def _table(res: dict) -> str:
    rows = []
    if "e2e" in res:
        e, r = res["e2e"]["seconds"], res["e2e"]["ratios"]
        for name, label, goal in (
            ("default", "default flags", ("<= 0.5", "<= 0.35")),
            ("basic", "--instruments=basic", ("", "")),
        ):
            for cache, g in zip(("cold", "warm"), goal, strict=True):
                k = f"decay_{name}_{cache}"
                rows.append(
                    (f"reference grid end to end, {label}, {cache} cache / PyTorch", f"{e[k]:.1f} / {e['torch']:.1f} s", r[k], g)
                )
    if "steady" in res:
        s = res["steady"]
        rows.append(
            (
                "steady step d32 BN tanh, one run / PyTorch",
                f"{s['decay_single_ms']:.2f} / {s['torch_ms']:.2f} ms",
                s["ratio_single"],
                "<= 0.8",
            )
        )
        rows.append(
            (
                "same run in a shared program (3 activations x 3 norms) / PyTorch",
                f"{s['decay_switched_ms']:.2f} / {s['torch_ms']:.2f} ms",
                s["ratio_switched"],
                "",
            )
        )
        rows.append(
            (
                f"steady step per run, runs sharing {s['devices']} devices / PyTorch",
                f"{s['decay_shared_ms_per_run']:.2f} / {s['torch_ms']:.2f} ms",
                s["ratio_shared"],
                "<= 0.8",
            )
        )
    if "first_step" in res:
        f = res["first_step"]["seconds"]
        rows.append(("first step, depth 1024 / depth 4", f"{f['1024']:.2f} / {f['4']:.2f} s", res["first_step"]["ratio"], "<= 2"))
    if "logging" in res:
        lg = res["logging"]
        ms = lg["ms_per_step"]
        rows.append(
            (
                "per-layer stats every step / bare step",
                f"{ms['stats']:.2f} / {ms['bare']:.2f} ms",
                lg["ratio_vs_bare"]["stats"],
                "<= 1.10",
            )
        )
        rows.append(
            (
                "stats + TensorBoard every step / bare step",
                f"{ms['logged']:.2f} / {ms['bare']:.2f} ms",
                lg["ratio_vs_bare"]["logged"],
                "<= 1.10",
            )
        )
    if "flops" in res:
        for w, goal in (("w128", ">= 0.35"), ("w1024", "")):
            fl = res["flops"][w]
            label = "w128 b128 d32" if w == "w128" else "w1024 b1024 d8"
            rows.append(
                (
                    f"train-step FLOP/s ({label}) / 1024^3 matmul",
                    f"{fl['step_gflops']:.1f} / {fl['matmul_gflops']:.1f} GFLOP/s",
                    fl["ratio"],
                    goal,
                )
            )
    lines = ["| figure | measured | ratio | goal |", "| --- | --- | ---: | --- |"]
    lines += [f"| {a} | {b} | {c:.2f} | {d} |" for a, b, c, d in rows]
    if "e2e" in res:
        lines += ["", *(f"{k}: {v}" for k, v in res["e2e"]["compiled"].items())]
    if "compile" in res:
        c = res["compile"]
        lines.append("")
        for kind in ("shared", "plain"):
            k = c[kind]
            lines.append(
                f"compile, {kind} programs of the grid (no cache): {k['programs']}, median {k['median_compile_s']:.2f} s,"
                f" total {k['total_compile_s']:.1f} s; tracing and lowering median {k['median_trace_s']:.2f} s"
            )
    if "profile" in res:
        p = res["profile"]["ms_per_step"]
        lines += [
            "",
            "where a step goes (w128 d32 b128 tanh, one run, ms per step): " + ", ".join(f"{k} {v:.2f}" for k, v in p.items()),
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    if _CHILD.value:
        print(json.dumps(CHILDREN[_CHILD.value]()))
        return
    unknown = [p for p in _PARTS.value if p not in PARTS]
    if unknown:
        print(f"error: --parts has {', '.join(unknown)}; allowed: {', '.join(PARTS)}", file=sys.stderr)
        sys.exit(2)
    if _REPEATS.value < 1:
        print(f"error: --repeats={_REPEATS.value}; give an integer >= 1", file=sys.stderr)
        sys.exit(2)
    import platform

    from decay import devices

    res: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": devices.host_cores(),
            "python": platform.python_version(),
        },
        "repeats": _REPEATS.value,
    }
    for part in _PARTS.value:
        t0 = time.perf_counter()
        res[part] = PARTS[part](_REPEATS.value)
        print(f"[{part}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(_table(res))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    app.run(main)
