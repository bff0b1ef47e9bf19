"""What the benchmarks share: interleaved repeated timings, measurements in child processes, the parts run in
order, the check of --parts, the printed table, the JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, `repeats` times, the variants taking turns (after one untimed call each,
    which compiles and warms up); every call waits for its device results."""
    for fn in variants.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return times


def write_json(path: str, data: Any) -> None:
    """Writes a benchmark's figures and raw timings as indented JSON (the folder made if need be)."""
    import json
    import os

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def check_parts(parts: Iterable[str], known: Iterable[str]) -> None:
    """Exits with status 2 and one line on stderr when --parts names a part the benchmark does not have."""
    known = list(known)
    unknown = [p for p in parts if p not in known]
    if unknown:
        print(f"error: --parts has {', '.join(unknown)}; allowed: {', '.join(known)}", file=sys.stderr)
        sys.exit(2)


def table(rows: Sequence[tuple[str, str, float, str]]) -> str:
    """Rows of (measurement, figures, ratio, goal) as aligned text under a header line."""
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    lines = [f"{'measurement':<{w}}  {'figures':>{v}}  {'ratio':>6}  goal"]
    lines += [f"{a:<{w}}  {b:>{v}}  {c:6.2f}  {d}" for a, b, c, d in rows]
    return "\n".join(lines)


def child_json(module: str, *args: str, env: dict[str, str]) -> dict:
    """`python -m module args` in a fresh process from the repository root: the JSON of its last stdout line, with
    `attempts`. A child killed by a signal (the OOM killer of a shared machine) is run once more."""
    for attempt in range(2):
        out = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            env={**os.environ, **env},
        )
        if out.returncode >= 0 or attempt:
            break
    if out.returncode:
        raise RuntimeError(f"child {' '.join(args)} failed (exit status {out.returncode}):\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "attempts": attempt + 1}


def run_parts(names: Sequence[str], parts: dict[str, Callable[[int], dict]], repeats: int) -> dict:
    """The machine (cores, platform, Python, load average), each named part's figures, and the total seconds."""
    t0 = time.perf_counter()
    res: dict = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}}
    try:
        res["machine"]["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    for name in names:
        res[name] = parts[name](repeats)
    res["total_s"] = time.perf_counter() - t0
    return res
