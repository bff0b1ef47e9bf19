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


def t975(df: float) -> float:
    """t_{0.975}, the two-sided 95% quantile of Student's t with `df` > 0 degrees of freedom (not necessarily an integer)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    from scipy.stats import t  # scipy comes with scikit-learn, the embedded dataset's package

    return float(t.ppf(0.975, df))


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

    def words(self, scale: float = 100.0, unit: str = " points", spec: str = "+.1f") -> str:
        """'+4.1 points [1.2, 7.0]' or 'no difference (+1.0 points [-2.1, 4.1])'; numbers scaled and formatted by `spec`."""
        f = lambda x: format(scale * x, spec)  # noqa: E731
        text = f"{f(self.diff)}{unit} [{f(self.lo)}, {f(self.hi)}]"
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


def grid_order(value: Any) -> tuple:
    """Sort key of a grid value: numbers (or tuples of numbers) in increasing order, None lowest."""
    parts = value if isinstance(value, tuple) else (value,)
    return tuple(-math.inf if p is None else float(p) if isinstance(p, int | float) else math.inf for p in parts)


class Choice(NamedTuple):
    """The grid value chosen on validation for one configuration."""

    value: Any  # the chosen grid value (e.g. a learning rate)
    rows: list[dict[str, Any]]  # the runs (seeds) at that value
    at_edge: bool  # the chosen value is the smallest or largest of a grid of >= 2 values
    val_means: dict[Any, float]  # mean validation accuracy (diverged runs count 0), or loss (by="loss"), per grid value


def best_by_validation(
    rows: Sequence[dict[str, Any]], grid_key: Callable[[dict[str, Any]], Hashable], by: str = "accuracy"
) -> Choice:
    """The grid value (`grid_key(row)`) with the best mean validation accuracy over seeds, ties broken by the
    lower mean validation loss, then the smaller value; `by="loss"` (regression): the lowest mean validation loss,
    a diverged run counting as infinite loss. Test numbers take no part."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(grid_key(r), []).append(r)
    if not groups:
        raise ValueError("best_by_validation needs at least one row")

    def score(value) -> tuple:
        s = [val_score(r) for r in groups[value]]
        acc = float(np.mean([max(a, 0.0) for a, _ in s]))
        loss = float(np.mean([lo for _, lo in s]))  # -inf when any run has no loss
        ties = tuple(-x for x in grid_order(value))  # ties: the smaller value
        return (loss, acc, ties) if by == "loss" else (acc, loss, ties)

    values = sorted(groups, key=lambda v: (grid_order(v), str(v)))
    best = max(values, key=score)
    edge = len(values) >= 2 and best in (values[0], values[-1])
    means = {v: (-score(v)[0] if by == "loss" else score(v)[0]) for v in values}
    return Choice(best, groups[best], edge, means)
