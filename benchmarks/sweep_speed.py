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

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_PARTS = flags.DEFINE_list("parts", ["e2e", "compile", "steady", "first_step", "logging", "flops"], "Parts to run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repetitions of each measurement (medians reported).")
_JSON = flags.DEFINE_string("json", None, "Also write every figure and raw timing to this JSON file.")
_CHILD = flags.DEFINE_string("child", None, "Internal: run one measurement in this process and print JSON.")
_DEPTH = flags.DEFINE_integer("depth", 32, "Internal: depth of a child measurement.")

GRID = ["--depths=4,16,32", "--activations=tanh,relu", "--norms=none,batchnorm", "--seeds=2"]
COMMON = ["--width=128", "--batch_size=128", "--steps=300", "--dataset=synthetic"]


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
    """Compile seconds of each grid config's group executable (the sweep's real training program)."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import devices, program
    from decay.config import RunConfig
    from decay.data import load

    data = load("synthetic", None, 0)
    mesh = devices.run_mesh()
    x, y = (devices.replicate(jnp.asarray(a), mesh) for a in (data.x_train, data.y_train))
    test = devices.replicate(program.eval_sets(data), mesh)
    out = {}
    for depth in (4, 16, 32):
        for act in ("tanh", "relu"):
            for norm in ("none", "batchnorm"):
                cfg = RunConfig(
                    width=128, depth=depth, activation=act, norm=norm, dataset="synthetic", batch_size=128, instruments="basic"
                )
                prog, state = program.init_state(cfg, data)
                n = mesh.size
                states = devices.stack_runs([jax.device_get(state)] * n, mesh)
                keys = devices.shard_runs(jnp.stack([jax.random.key(0)] * n), mesh)
                t0 = time.perf_counter()
                lowered = prog.group_chunk(100, mesh).lower(states, x, y, keys, test)
                t1 = time.perf_counter()
                lowered.compile()
                out[f"d{depth}-{act}-{norm}"] = {"trace_s": t1 - t0, "compile_s": time.perf_counter() - t1}
    return out


def child_steady() -> dict:
    """ms per step at width 128, depth 32, batchnorm, tanh: one run alone, and per run with the devices shared."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import devices, program
    from decay.config import RunConfig
    from decay.data import load

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
        states = devices.stack_runs([jax.device_get(state)] * runs, mesh)
        keys = devices.shard_runs(jnp.stack([key] * runs), mesh)
        t0 = time.perf_counter()
        jax.block_until_ready(fn(states, xs, ys, keys, test))
        shared.append((time.perf_counter() - t0) / (n * runs))
    return {
        "devices": mesh.size,
        "single_ms": 1e3 * _median(single[1:]),
        "shared_ms_per_run": 1e3 * _median(shared[1:]),
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
    """FLOP/s of decay's training step at width 1024, batch 1024, depth 8, and of a 1024^3 f32 matmul."""
    jax = _setup()
    import jax.numpy as jnp

    from decay import program
    from decay.config import RunConfig
    from decay.data import load

    data = load("synthetic", None, 0)
    cfg = RunConfig(
        width=1024, depth=8, batch_size=1024, activation="tanh", norm="none", dataset="synthetic", instruments="basic"
    )
    prog, state = program.init_state(cfg, data)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    key = jax.random.key(0)
    n = 10
    a = jax.random.normal(jax.random.key(1), (1024, 1024), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (1024, 1024), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready((prog.train_chunk(state, x, y, key, n_steps=n), matmul(a, b)))
    step_t, mm_t = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(prog.train_chunk(state, x, y, key, n_steps=n))
        step_t.append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for _ in range(20):
            a = matmul(a, b) * (1.0 / 32.0)  # keeps the values finite; the scaling is fused, negligible
        jax.block_until_ready(a)
        mm_t.append((time.perf_counter() - t0) / 20)
    d_in = 64
    # Multiply-adds of one step: forward B*sum(in*out), backward twice that (inputs and weights).
    macs = cfg.batch_size * (d_in * cfg.width + (cfg.depth - 1) * cfg.width**2 + cfg.width * data.num_classes)
    step_flops = 6 * macs
    return {
        "step_ms": 1e3 * _median(step_t),
        "step_gflops": step_flops / _median(step_t) / 1e9,
        "matmul_ms": 1e3 * _median(mm_t),
        "matmul_gflops": 2 * 1024**3 / _median(mm_t) / 1e9,
    }


CHILDREN = {"compile": child_compile, "steady": child_steady, "first_step": child_first_step, "flops": child_flops}


# ---- the parent: interleaved repetitions, medians, a table ----


def part_e2e(repeats: int) -> dict:
    warm_cache = tempfile.mkdtemp(prefix="decay-cache-")
    _python(
        "-m",
        "experiments.depth_sweep",
        *GRID,
        *COMMON,
        "--instruments=basic",
        "--quiet",
        f"--workdir={warm_cache}/fill",
        f"--compilation_cache={warm_cache}/jax",
    )
    times: dict[str, list[float]] = {"decay_cold": [], "decay_warm": [], "torch": []}
    torch_runs = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="decay-bench-") as tmp:
            sweep = ["-m", "experiments.depth_sweep", *GRID, *COMMON, "--instruments=basic", "--quiet"]
            wall, _ = _python(*sweep, f"--workdir={tmp}/cold", f"--compilation_cache={tmp}/cache")
            times["decay_cold"].append(wall)
            wall, _ = _python(*sweep, f"--workdir={tmp}/warm", f"--compilation_cache={warm_cache}/jax")
            times["decay_warm"].append(wall)
            wall, out = _python("-m", "benchmarks.torch_reference", *GRID, *COMMON)
            times["torch"].append(wall)
            torch_runs = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(warm_cache, ignore_errors=True)
    med = {k: _median(v) for k, v in times.items()}
    return {
        "seconds": med,
        "ratio_cold": med["decay_cold"] / med["torch"],
        "ratio_warm": med["decay_warm"] / med["torch"],
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
    torch = _median(torch_ms)
    return {
        "devices": decay_runs[0]["devices"],
        "decay_single_ms": single,
        "decay_shared_ms_per_run": shared,
        "torch_ms": torch,
        "ratio_single": single / torch,
        "ratio_shared": shared / torch,
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
    step = _median([r["step_gflops"] for r in runs])
    mm = _median([r["matmul_gflops"] for r in runs])
    return {"step_gflops": step, "matmul_gflops": mm, "ratio": step / mm, "all": runs}


def part_compile(repeats: int) -> dict:
    del repeats  # one pass: twelve compilations are the repetitions
    per = _child("compile")
    comp = [v["compile_s"] for v in per.values()]
    trace = [v["trace_s"] for v in per.values()]
    return {"per_config": per, "median_compile_s": _median(comp), "total_compile_s": sum(comp), "median_trace_s": _median(trace)}


PARTS = {
    "e2e": part_e2e,
    "compile": part_compile,
    "steady": part_steady,
    "first_step": part_first_step,
    "logging": part_logging,
    "flops": part_flops,
}


def _table(res: dict) -> str:
    rows = []
    if "e2e" in res:
        e = res["e2e"]["seconds"]
        rows.append(
            (
                "end-to-end grid, decay (cold cache) / PyTorch",
                f"{e['decay_cold']:.1f} s / {e['torch']:.1f} s",
                res["e2e"]["ratio_cold"],
                "<= 0.5",
            )
        )
        rows.append(
            (
                "end-to-end grid, decay (warm cache) / PyTorch",
                f"{e['decay_warm']:.1f} s / {e['torch']:.1f} s",
                res["e2e"]["ratio_warm"],
                "<= 0.5",
            )
        )
    if "steady" in res:
        s = res["steady"]
        rows.append(
            (
                "steady step d32 BN tanh, one decay run / PyTorch",
                f"{s['decay_single_ms']:.2f} / {s['torch_ms']:.2f} ms",
                s["ratio_single"],
                "<= 0.8",
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
        fl = res["flops"]
        rows.append(
            (
                "train-step FLOP/s (w1024 b1024 d8) / matmul",
                f"{fl['step_gflops']:.1f} / {fl['matmul_gflops']:.1f} GFLOP/s",
                fl["ratio"],
                ">= 0.7",
            )
        )
    lines = ["| figure | measured | ratio | target |", "| --- | --- | ---: | --- |"]
    lines += [f"| {a} | {b} | {c:.2f} | {d} |" for a, b, c, d in rows]
    if "compile" in res:
        c = res["compile"]
        lines.append("")
        lines.append(
            f"compile per grid config (no cache): median {c['median_compile_s']:.2f} s, "
            f"total {c['total_compile_s']:.1f} s for {len(c['per_config'])} configs; tracing median {c['median_trace_s']:.2f} s"
        )
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
