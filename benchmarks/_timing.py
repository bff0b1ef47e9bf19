"""What the benchmarks share: interleaved repeated timings."""

from __future__ import annotations

import time
from collections.abc import Callable
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
