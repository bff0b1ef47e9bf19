"""The chi fit and the verdict rules, against sequences with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decay import metrics


@pytest.mark.parametrize("chi", [0.5, 0.93, 1.0, 1.7])
@pytest.mark.parametrize("depth", [2, 5, 8, 33])
def test_fit_chi_recovers_exact_geometric_profile(chi, depth):
    # ||dL/dh_l||^2 = chi^(depth-1-l): the squared signal shrinks by chi per layer toward the input.
    s = [math.sqrt(chi ** (depth - 1 - l)) for l in range(depth)]
    assert metrics.fit_chi(s) == pytest.approx(chi, rel=1e-9)


def test_fit_chi_uses_only_middle_layers_when_deep():
    depth = 16
    s = [math.sqrt(0.8 ** (depth - 1 - l)) for l in range(depth)]
    s[0] = s[1] = 1e9  # a wild first layer is outside the fit window [4, 12)
    s[-1] = 1e-9
    assert metrics.fit_window(depth) == (4, 12)
    assert metrics.fit_chi(s) == pytest.approx(0.8, rel=1e-9)


def test_fit_chi_skips_underflow_and_non_finite():
    s = [0.0, None, 1.0, 2.0, 4.0]  # zero (underflow) and None (NaN in JSON) left out
    assert metrics.fit_chi(s) == pytest.approx(0.25)
    assert metrics.fit_chi([0.0, 0.0, 1.0]) is None
    assert metrics.fit_chi([1.0]) is None


def test_verdict_thresholds_on_chi_to_the_depth():
    assert metrics.verdict(0.9, 64) == "vanishing"  # 0.9^64 = 1.2e-3
    assert metrics.verdict(0.99, 64) == "stable"  # 0.53
    assert metrics.verdict(1.1, 64) == "exploding"  # 445
    assert metrics.verdict(1.1, 8) == "stable"  # 2.1
    assert metrics.verdict(None, 1) == "n/a"
    assert metrics.verdict(None, 4, [0.0, 0.0, 0.0, 1.0]) == "vanishing"
    assert metrics.verdict(None, 4, [float("inf"), None, 1.0, 1.0]) == "exploding"


def test_clean_makes_non_finite_json_safe():
    assert metrics.clean(float("nan")) is None
    assert metrics.clean(np.float32("inf")) is None
    assert metrics.clean(np.float32(2.5)) == 2.5


def test_summary_groups_seeds_and_counts_divergence():
    def row(seed, acc, diverged, chi):
        return {
            "model": "mlp",
            "depth": 8,
            "activation": "tanh",
            "norm": "none",
            "residual": False,
            "init": "lecun_normal",
            "chi": chi,
            "test_accuracy": acc,
            "diverged": diverged,
            "verdict": metrics.verdict(chi, 8),
            "signal_norms_init": [0.1, 1.0],
        }

    rows = [row(0, 0.5, False, 0.5), row(1, 0.7, True, 0.6), row(2, None, True, None)]
    (s,) = metrics.summarize(rows)
    assert s["seeds"] == 3 and s["diverged"] == 2
    assert s["acc_mean"] == pytest.approx(0.6) and s["chi"] == pytest.approx(0.55)
    assert s["first_over_last"] == pytest.approx(0.1)
    table = metrics.summary_table(rows)
    assert "| 8 | tanh | none | lecun_normal | 0.550 |" in table and "2/3" in table
