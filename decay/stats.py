"""Statistics over seeds, and choices made on the validation split.

- `mean_std_ci`: mean, sample standard deviation (ddof = 1) and a 95% Student-t interval of the mean;
- `welch`: the difference of two means with its 95% Welch interval; a difference whose
  interval holds 0 is "no difference";
- `best_by_validation`: of one configuration's runs over a grid (learning rates, clipping
  thresholds, ...), the grid value whose mean validation accuracy over seeds is best; the
  test split never takes part in the choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple

import numpy as np

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959964


def t975(df: float) -> float:
    """t_{0.975} for `df` degrees of freedom (> 0, not necessarily an integer).

    The table for df <= 30 (linear in 1/df between integers), the Cornish-Fisher expansion above
    (error < 1e-4 there).
    """
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if df > 30:
        z = _Z975
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    if df < 1:
        return _T975[0] * (1 / df)  # wide and conservative below one degree of freedom
    lo = int(math.floor(df))
    if lo == df or lo == 30:
        return _T975[lo - 1]
    w = (1 / lo - 1 / df) / (1 / lo - 1 / (lo + 1))
    return (1 - w) * _T975[lo - 1] + w * _T975[lo]


class Summary(NamedTuple):
    """Mean over seeds with its sample std (ddof = 1) and 95% t interval; std and interval None for one value."""

    n: int
    mean: float | None
    std: float | None
    lo: float | None
    hi: float | None

    def fmt(self, scale: float = 1.0, spec: str = ".1f", unit: str = "") -> str:
        """'mean ± std [lo, hi]' (scaled), or 'mean' for one seed, '-' for none."""
        if self.mean is None:
            return "-"
        if self.std is None:
            return f"{format(scale * self.mean, spec)}{unit}"
        return (
            f"{format(scale * self.mean, spec)} ± {format(scale * self.std, spec)}{unit} "
            f"[{format(scale * self.lo, spec)}, {format(scale * self.hi, spec)}]"
        )


def mean_std_ci(values: Sequence[float], bounds: tuple[float, float] | None = None) -> Summary:
    """Mean, sample std (ddof = 1) and the 95% Student-t interval mean ± t_{0.975, n-1} std / sqrt(n),
    the interval clipped to `bounds` (e.g. (0, 1) for an accuracy) when given."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    n = int(v.size)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = float(v.mean())
    if n == 1:
        return Summary(1, mean, None, None, None)
    std = float(v.std(ddof=1))
    half = t975(n - 1) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return Summary(n, mean, std, lo, hi)


class Difference(NamedTuple):
    """a - b with its 95% Welch interval; `significant` when the interval excludes 0."""

    diff: float
    lo: float
    hi: float
    df: float | None

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def words(self, scale: float = 100.0, unit: str = " points") -> str:
        """'+4.1 points [1.2, 7.0]' or 'no difference (+1.0 points [-2.1, 4.1])'."""
        text = f"{scale * self.diff:+.1f}{unit} [{scale * self.lo:+.1f}, {scale * self.hi:+.1f}]"
        return text if self.significant else f"no difference ({text})"


def welch(a: Sequence[float], b: Sequence[float]) -> Difference:
    """Welch's t interval (95%) for mean(a) - mean(b), unequal variances, Welch-Satterthwaite degrees of freedom.

    Needs at least two values on each side. When both sides have zero spread the interval is the point.
    """
    x, y = (np.asarray(list(s), np.float64) for s in (a, b))
    if x.size < 2 or y.size < 2:
        raise ValueError("welch needs at least two values on each side")
    d = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = vx + vy
    if se2 == 0:
        return Difference(d, d, d, None)
    df = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = t975(df) * math.sqrt(se2)
    return Difference(d, float(d - half), float(d + half), float(df))


def val_score(row: dict[str, Any]) -> tuple[float, float]:
    """A run's validation score for choices: (accuracy, -loss); a diverged run or one without a score ranks last."""
    acc, loss = row.get("val_accuracy"), row.get("val_loss")
    if row.get("diverged") or acc is None:
        return (-1.0, -math.inf)
    return (float(acc), -float(loss) if loss is not None else -math.inf)


class Choice(NamedTuple):
    """The grid value chosen on validation for one configuration."""

    value: Any  # the chosen grid value (e.g. a learning rate)
    rows: list[dict[str, Any]]  # the runs (seeds) at that value
    at_edge: bool  # the chosen value is the smallest or largest of a grid of >= 2 values
    val_means: dict[Any, float]  # mean validation accuracy over seeds per grid value (diverged runs count 0)


def best_by_validation(rows: Sequence[dict[str, Any]], grid_key: Callable[[dict[str, Any]], Hashable]) -> Choice:
    """The grid value (`grid_key(row)`) with the best mean validation accuracy over seeds, ties broken by the
    lower mean validation loss, then the smaller value. Test numbers take no part."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(grid_key(r), []).append(r)
    if not groups:
        raise ValueError("best_by_validation needs at least one row")

    def score(value) -> tuple[float, float, float]:
        s = [val_score(r) for r in groups[value]]
        acc = float(np.mean([max(a, 0.0) for a, _ in s]))
        loss = float(np.mean([lo for _, lo in s]))  # -inf when any run has no loss
        return (acc, loss, -float(value) if isinstance(value, int | float) else 0.0)

    best = max(sorted(groups, key=str), key=score)
    values = sorted(groups, key=lambda v: (0, v, "") if isinstance(v, int | float) else (1, 0, str(v)))
    edge = len(values) >= 2 and best in (values[0], values[-1])
    return Choice(best, groups[best], edge, {v: score(v)[0] for v in values})
