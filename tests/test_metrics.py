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


def test_verdict_thresholds_on_chi_to_the_depth_minus_one():
    assert metrics.verdict(0.9, 64) == "vanishing"  # 0.9^63 = 1.3e-3
    assert metrics.verdict(0.99, 64) == "stable"  # 0.53
    assert metrics.verdict(1.1, 64) == "exploding"  # 406
    assert metrics.verdict(1.1, 8) == "stable"  # 1.9
    # Depth 2 has one layer map between h_1 and h_0: the gain is chi itself, not chi^2.
    assert metrics.verdict(0.2, 2) == "stable"  # chi^2 = 0.04 would also be stable; chi^1 = 0.2
    assert metrics.verdict(0.0099, 2) == "vanishing" and metrics.verdict(0.0101, 2) == "stable"
    assert metrics.verdict(0.11, 3) == "stable" and metrics.verdict(0.09, 3) == "vanishing"  # 0.0121 vs 0.0081
    assert metrics.verdict(None, 1) == "n/a"
    assert metrics.verdict(None, 4, [0.0, 0.0, 0.0, 1.0]) == "vanishing"
    assert metrics.verdict(None, 4, [float("inf"), None, 1.0, 1.0]) == "exploding"


def test_thresholds_at_their_exact_boundaries():
    # chi^(depth-1) exactly at a threshold is stable (strict inequalities); just past it is not.
    d = 5
    at_low, at_high = 1e-2 ** (1 / (d - 1)), 1e2 ** (1 / (d - 1))
    assert metrics.verdict(at_low * (1 + 1e-9), d) == "stable" and metrics.verdict(at_low * (1 - 1e-6), d) == "vanishing"
    assert metrics.verdict(at_high * (1 - 1e-9), d) == "stable" and metrics.verdict(at_high * (1 + 1e-6), d) == "exploding"
    # Exactly on a threshold (depth 2: the gain is chi itself, and log10 of 1e-2 and 1e2 is exact): stable.
    assert metrics.verdict(1e-2, 2) == "stable" and metrics.verdict(1e2, 2) == "stable"
    assert metrics.log_gain(1e-2, 2) == -2.0 and metrics.log_gain(1e2, 2) == 2.0


def test_borderline_is_within_a_factor_two_of_a_threshold():
    assert metrics.borderline(0.015, 2) and metrics.borderline(0.006, 2)  # 1.5x above and 1.7x below 1e-2
    assert not metrics.borderline(0.021, 2) and not metrics.borderline(0.004, 2)
    assert metrics.borderline(150.0, 2) and not metrics.borderline(250.0, 2) and not metrics.borderline(1.0, 2)
    assert not metrics.borderline(None, 4) and not metrics.borderline(0.5, 1)


def test_trainability_from_the_training_loss_against_chance():
    chance = math.log(10)
    assert metrics.trainability(0.49 * chance, 10, False) == "trains"
    assert metrics.trainability(0.51 * chance, 10, False) == "partial"
    assert metrics.trainability(0.89 * chance, 10, False) == "partial"
    assert metrics.trainability(0.9 * chance, 10, False) == "fails"
    assert metrics.trainability(5.0, 10, False) == "fails" and metrics.trainability(None, 10, False) == "fails"
    assert metrics.trainability(0.1, 10, True) == "diverged"
    assert metrics.trainability(0.3 * math.log(2), 2, False) == "trains"


def test_still_improving_compares_the_end_with_the_budget_up_to_three_quarters():
    def hist(*accs):
        return [{"step": 100 * i, "val_accuracy": a} for i, a in enumerate(accs)]

    assert metrics.still_improving(hist(0.1, 0.5, 0.6, 0.65), 300) is True  # 0.65 > 0.6 + 0.01
    assert metrics.still_improving(hist(0.1, 0.5, 0.6, 0.605), 300) is False
    assert metrics.still_improving(hist(0.1, 0.7, 0.6, 0.65), 300) is False  # the best came early
    assert metrics.still_improving(hist(0.1, 0.9), 100) is None  # nothing after step 0 to compare with
    assert metrics.best_val_step(hist(0.1, 0.7, 0.7, 0.65)) == 100


def test_clean_makes_non_finite_json_safe():
    assert metrics.clean(float("nan")) is None
    assert metrics.clean(np.float32("inf")) is None
    assert metrics.clean(np.float32(2.5)) == 2.5


def _summary_row(seed, acc, diverged, chi, lr=0.1, val=None):
    return {
        "model": "mlp",
        "depth": 8,
        "width": 128,
        "activation": "tanh",
        "norm": "none",
        "residual": False,
        "init": "lecun_normal",
        "learning_rate": lr,
        "chi": chi,
        "test_accuracy": acc,
        "val_accuracy": acc if val is None else val,
        "val_loss": None if diverged else 1.0,
        "diverged": diverged,
        "verdict": metrics.verdict(chi, 8),
        "signal_norms_init": [0.1, 1.0],
        "grad_norms_init": [0.2, 1.0],
        "num_classes": 10,
    }


def test_summary_groups_seeds_and_counts_divergence():
    rows = [_summary_row(0, 0.5, False, 0.5), _summary_row(1, 0.7, True, 0.6), _summary_row(2, None, True, None)]
    (s,) = metrics.summarize(rows)
    assert s["seeds"] == 3 and s["diverged"] == 2
    # A diverged run counts 0: mean of (0.5, 0.7, 0) with its sample std (ddof = 1).
    assert s["acc_mean"] == pytest.approx(0.4) and s["acc_std"] == pytest.approx(float(np.std([0.5, 0.7, 0.0], ddof=1)))
    assert s["chi"] == pytest.approx(0.55) and (s["chi_min"], s["chi_max"]) == (0.5, 0.6)
    assert s["first_over_last"] == pytest.approx(0.1) and s["kernel_first_over_last"] == pytest.approx(0.2)
    table = metrics.summary_table(rows)
    assert "| 8 | tanh | none | 0.1 | 0.550 [0.500, 0.600] |" in table and "2/3" in table


def test_best_learning_rate_is_chosen_on_validation_never_on_test():
    # lr 0.1 wins on test, lr 0.3 on validation: the summary must show 0.3 and its test numbers.
    rows = [_summary_row(s, 0.9, False, 0.5, lr=0.1, val=0.6) for s in range(3)]
    rows += [_summary_row(s, 0.7, False, 0.5, lr=0.3, val=0.8) for s in range(3)]
    rows += [_summary_row(s, 0.1, False, 0.5, lr=1.0, val=0.1) for s in range(3)]
    (s,) = metrics.summarize(rows)
    assert s["learning_rate"] == 0.3 and s["acc_mean"] == pytest.approx(0.7) and not s["lr_at_edge"]
    assert [r["learning_rate"] for r in metrics.tuned_rows(rows)] == [0.3] * 3
    (edge,) = metrics.summarize(rows[3:])  # 0.3 is now the smallest rate of the grid
    assert edge["learning_rate"] == 0.3 and edge["lr_at_edge"]
    assert "| 0.3 (edge) |" in metrics.summary_table(rows[3:])


def test_theory_note_flags_disagreement_beyond_the_seeds_spread_with_its_reasons():
    def row(chi, q_last=1.0, depth=32, slope=0.5):
        return {"chi": chi, "chi_theory": 0.64, "q_init": [1.0] * (depth - 1) + [q_last], "q_slope_theory": slope,
                "depth": depth, "width": 128}  # fmt: skip

    assert metrics.theory_note([row(0.62), row(0.66)]) is None  # theory inside the seeds' range
    assert metrics.theory_note([row(0.68), row(0.69)]) is None  # outside, but within the 10% margin
    note = metrics.theory_note([row(1.1, q_last=1e-6), row(1.2, q_last=1e-5)])
    assert note.startswith("the forward signal collapsed in 2 of 2 seeds (q last/first 1.0e-06)")
    # GELU at He init, as a newcomer met it: one seed's q collapses, the other's stays near 1, theory's q* is 0.
    gelu = [{**row(1.03, q_last=0.92), "q_star_theory": 0.0}, {**row(1.12, q_last=3.2e-5), "q_star_theory": 0.0}]
    note = metrics.theory_note(gelu)
    assert (
        "collapsed in 1 of 2 seeds" in note
        and "the seeds' forward signals disagree (q last/first from 3.2e-05 to 9.2e-01" in note
    )
    assert "q has not reached theory's fixed point (last layer q 0.46 against q* = 0)" in note
    note = metrics.theory_note([row(0.9, slope=1.0), row(1.3, slope=1.0)])
    assert "the seeds disagree (chi 0.9 to 1.3: finite width 128)" in note and "never settles" in note
    assert "depth < 8" in metrics.theory_note([row(0.9, depth=4), row(0.95, depth=4)])
    assert metrics.theory_note([row(0.9), row(0.95)]) == "reason not identified"
    assert metrics.theory_note([{**row(0.9), "chi_theory": None}]) is None


def test_summary_keeps_configurations_that_differ_in_more_than_rate_and_seed_apart():
    rows = [{**_summary_row(s, 0.9, False, 0.5), "weight_var": wv} for wv in (1.0, 2.0) for s in range(2)]
    rows[-1]["q_init"] = [1.0, None]  # q overflowed at init: no crash
    summaries = metrics.summarize(rows)
    assert len(summaries) == 2 and all(s["seeds"] == 2 for s in summaries)
    assert metrics.trainability(2.0, 10, False, steps=0) == "untrained"
