"""Statistics over seeds against hand-computed values, and choices on validation."""

from __future__ import annotations

import math

import pytest

from decay import stats


def test_t_quantiles_match_tables():
    # Two-sided 95% Student-t quantiles from any table; df = 4.5 lies between 4 and 5.
    assert stats.t975(1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t975(4) == pytest.approx(2.776, abs=1e-3)
    assert stats.t975(30) == pytest.approx(2.042, abs=1e-3)
    assert stats.t975(60) == pytest.approx(2.000, abs=1e-3)
    assert stats.t975(120) == pytest.approx(1.980, abs=1e-3)
    assert stats.t975(4) > stats.t975(4.5) > stats.t975(5)
    assert stats.t975(1.5) == pytest.approx(6.02, abs=0.01)  # Welch's degrees of freedom need not be integers
    with pytest.raises(ValueError):
        stats.t975(0)


def test_mean_std_and_interval_by_hand():
    # values 1, 2, 3, 6: mean 3, sample variance (4 + 1 + 0 + 9) / 3 = 14/3, std 2.1602
    s = stats.mean_std_ci([1.0, 2.0, 3.0, 6.0])
    assert s.n == 4 and s.mean == 3.0 and s.std == pytest.approx(math.sqrt(14 / 3))
    half = 3.182446 * math.sqrt(14 / 3) / 2  # t_{0.975, 3} std / sqrt(4)
    assert (s.lo, s.hi) == (pytest.approx(3 - half, rel=1e-4), pytest.approx(3 + half, rel=1e-4))
    assert stats.mean_std_ci([0.9, 0.95], bounds=(0.0, 1.0)).hi == 1.0  # an accuracy's interval stops at 1
    one = stats.mean_std_ci([0.5])
    assert one.mean == 0.5 and one.std is None and one.fmt(100) == "50.0"
    assert stats.mean_std_ci([]).fmt() == "-"


def test_welch_interval_by_hand():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    # var_a/n_a = 1/3, var_b/n_b = (20/3)/4 = 5/3; se^2 = 2; df = 4 / ((1/9)/2 + (25/9)/3) = 4.0
    d = stats.welch(a, b)
    assert d.diff == pytest.approx(-3.0) and d.df == pytest.approx(4 / ((1 / 9) / 2 + (25 / 9) / 3))
    half = stats.t975(d.df) * math.sqrt(2)
    assert (d.lo, d.hi) == (pytest.approx(-3 - half), pytest.approx(-3 + half))
    assert not d.significant and d.words().startswith("no difference")
    far = stats.welch([10.0, 10.5, 11.0], [1.0, 1.5, 2.0])
    assert far.significant and far.words(scale=1, unit="").startswith("+9.0")
    same = stats.welch([0.1, 0.1], [0.1, 0.1])  # no spread at all: the interval is the point 0
    assert same.lo == same.hi == 0 and not same.significant


def _row(lr, val, test, seed=0, diverged=False, val_loss=1.0):
    return {"learning_rate": lr, "val_accuracy": val, "val_loss": val_loss, "test_accuracy": test, "seed": seed,
            "diverged": diverged}  # fmt: skip


def test_best_by_validation_ignores_test_and_ranks_diverged_last():
    rows = [_row(0.1, 0.6, 0.99, s) for s in range(2)] + [_row(0.3, 0.8, 0.5, s) for s in range(2)]
    rows += [_row(1.0, None, None, s, diverged=True, val_loss=None) for s in range(2)]
    c = stats.best_by_validation(rows, lambda r: r["learning_rate"])
    assert c.value == 0.3 and len(c.rows) == 2 and not c.at_edge
    assert c.val_means == {0.1: pytest.approx(0.6), 0.3: pytest.approx(0.8), 1.0: 0.0}
    # Equal validation accuracy: the lower validation loss wins, then the smaller value.
    tie = [_row(0.1, 0.8, 0.1, val_loss=0.5), _row(0.3, 0.8, 0.9, val_loss=0.4)]
    assert stats.best_by_validation(tie, lambda r: r["learning_rate"]).value == 0.3
    exact = [_row(0.1, 0.8, 0.1), _row(0.3, 0.8, 0.9)]
    assert stats.best_by_validation(exact, lambda r: r["learning_rate"]).value == 0.1
    # Grid points as tuples (the claims' learning rate x clipping grids): numeric order, not string order.
    grid = [{**_row(lr, 0.8, 0.5), "clip": clip} for lr in (3.0, 10.0) for clip in (None, 1.0)]
    choice = stats.best_by_validation(grid, lambda r: (r["learning_rate"], r["clip"]))
    assert choice.value == (3.0, None) and choice.at_edge
    assert stats.best_by_validation(exact, lambda r: r["learning_rate"]).at_edge
