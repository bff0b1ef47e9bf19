"""Histograms of log10 |value| that survive any magnitude: fixed bins over the whole float32 range.

Gradients of a deep net span dozens of orders of magnitude, and a diverging one holds Inf
and NaN; linear bins (TensorBoard's default) collapse all of that into one bar or fail.
Here every finite non-zero value lands in a half-decade bin of log10 |value| between 1e-46
(below float32's smallest subnormal) and 1e40 (above its largest value); zeros, NaNs and
Infs are counted separately. The sign is dropped: this is a picture of magnitudes. (XLA on
CPU flushes float32 subnormals, below ~1.2e-38, to zero: there they count as zeros.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LOG10_MIN, LOG10_MAX, BINS_PER_DECADE = -46.0, 40.0, 2
NUM_BINS = int((LOG10_MAX - LOG10_MIN) * BINS_PER_DECADE)
EDGES = np.linspace(LOG10_MIN, LOG10_MAX, NUM_BINS + 1)  # bin i covers [EDGES[i], EDGES[i+1])


def log_histogram(x: jax.Array) -> dict[str, jax.Array]:
    """Counts of log10 |x| per bin ([NUM_BINS]) and of zeros, NaNs and Infs; jit-compatible."""
    a = jnp.abs(x.ravel()).astype(jnp.float32)
    finite = jnp.isfinite(a)
    pos = finite & (a > 0)
    lg = jnp.log10(jnp.where(pos, a, 1.0))
    idx = jnp.clip(jnp.floor((lg - LOG10_MIN) * BINS_PER_DECADE).astype(jnp.int32), 0, NUM_BINS - 1)
    counts = jnp.zeros((NUM_BINS,), jnp.float32).at[idx].add(pos.astype(jnp.float32))
    return {
        "counts": counts,
        "zero": jnp.sum(finite & (a == 0)).astype(jnp.float32),
        "nan": jnp.sum(jnp.isnan(a)).astype(jnp.float32),
        "inf": jnp.sum(jnp.isinf(a)).astype(jnp.float32),
    }


def summary_stats(counts: np.ndarray) -> dict[str, float] | None:
    """min, max, num, sum, sum of squares of log10 |x| from bin counts (bin centres); None if empty."""
    counts = np.asarray(counts, np.float64)
    num = float(counts.sum())
    if num == 0:
        return None
    centres = (EDGES[:-1] + EDGES[1:]) / 2
    used = np.flatnonzero(counts)
    return {
        "min": float(EDGES[used[0]]),
        "max": float(EDGES[used[-1] + 1]),
        "num": num,
        "sum": float(np.sum(counts * centres)),
        "sum_squares": float(np.sum(counts * centres**2)),
    }
