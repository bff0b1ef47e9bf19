"""The seed-claims experiment: verdict rules against made-up evidence, and one tiny real run."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from decay.errors import ConfigError
from decay.studies import claims
from tests.shell import call, scratch, shell


def _row(depth=8, chi=1.0, acc=0.9, grad_decay=1.0, weight_scale=1.0, weight_change=1.0, diverged=False):
    """A results row whose per-layer profiles follow the given factors (layer 0 nearest the input)."""
    signal = [math.sqrt((chi or 1.0) ** (depth - 1 - layer)) for layer in range(depth)]
    grads = [grad_decay ** (depth - 1 - layer) for layer in range(depth)]
    weights = [weight_scale**layer for layer in range(depth)]
    return {
        "depth": depth,
        "verdict": "n/a" if chi is None else ("exploding" if chi**depth > 100 else "stable"),
        "chi": chi,
        "chi_theory": chi,
        "signal_norms_init": signal,
        "signal_norms_final": signal,
        "grad_norms_init": grads,
        "weight_norms_init": weights,
        "weight_norms_final": [w * weight_change for w in weights],
        "update_ratio_final": [0.01] * depth,
        "test_accuracy": None if diverged else acc,
        "diverged": diverged,
        "final_loss": 1.0 - acc,
        "loss_history": [[0, 2.3], [10, 1.0], [20, 0.9], [30, 0.8]],
    }


class FakeRuns:
    """Stands in for `claims.Runs`: rows come from a function of the configuration overrides."""

    def __init__(self, make):
        self.cfg, self.make, self.chance = claims.ClaimsConfig(seeds=2), make, 0.1

    def get(self, seeds=None, **over):
        return [self.make(**over) for _ in range(seeds or self.cfg.seeds)]


def test_c1_verdict_follows_which_activations_shrink_and_stall():
    def world(stall_tanh):
        def make(activation, depth, **_):
            if activation == "sigmoid":
                return _row(depth, chi=0.05, acc=0.08)
            if activation == "tanh":
                return _row(depth, chi=0.8, acc=0.08 if stall_tanh else 0.9)
            return _row(depth, chi=1.0, acc=0.9)

        return FakeRuns(make)

    assert claims.c1_saturating(world(stall_tanh=True)).verdict == claims.SUPPORTED
    c = claims.c1_saturating(world(stall_tanh=False))
    assert c.verdict == "depends on the activation" and "tanh shrinks the gradient toward the input and still trains" in c.because
    assert claims.c1_saturating(FakeRuns(lambda activation, depth, **_: _row(depth, chi=1.0))).verdict == claims.REFUTED


def test_c8_small_weights_refuted_when_weights_are_equal_and_supported_when_they_shrink():
    equal = FakeRuns(lambda activation, depth, **_: _row(depth, grad_decay=0.1))
    c = claims.c8_small_weights(equal)
    assert c.verdict == claims.REFUTED and "not because weights are small" in c.because
    shrinking = FakeRuns(lambda activation, depth, **_: _row(depth, grad_decay=0.1, weight_change=0.3))
    assert claims.c8_small_weights(shrinking).verdict == claims.SUPPORTED
    no_decay = FakeRuns(lambda activation, depth, **_: _row(depth, grad_decay=1.0))
    assert claims.c8_small_weights(no_decay).verdict == "not tested"


def test_c6_adam_verdict_needs_sgd_to_stall():
    deep = claims.ClaimsConfig().deep

    def world(adam_acc, stall=True):
        def make(activation="tanh", depth=deep, optimizer="sgd", norm="none", **_):
            candidate = activation == "sigmoid" or depth == 2 * deep
            if optimizer == "adam":
                return _row(depth, acc=adam_acc)
            return _row(depth, acc=0.1 if candidate and stall else 0.9)

        return FakeRuns(make)

    assert claims.c6_adam(world(0.9)).verdict == claims.SUPPORTED
    assert claims.c6_adam(world(0.12)).verdict == claims.REFUTED
    c = claims.c6_adam(world(0.12, stall=False))
    assert c.verdict == "not tested" and "Adam at lr 0.001 did worse" in c.because


def test_c2_divergence_and_clipping_are_reported():
    def make(activation, depth, weight_var=None, norm="none", clip_norm=None, **_):
        if weight_var or norm == "batchnorm":
            return _row(depth, chi=1.5, diverged=clip_norm is None, acc=0.5)
        return _row(depth, chi=1.0, acc=0.9)

    c = claims.c2_exploding(FakeRuns(make))
    assert c.verdict == claims.SUPPORTED and "clipping changed divergence 2/2 -> 0/2" in c.because


def test_c2_counts_an_overflowed_signal_as_exploding():
    def make(activation, depth, weight_var=None, norm="none", clip_norm=None, **_):
        if weight_var or norm == "batchnorm":
            row = _row(depth, chi=None, diverged=clip_norm is None)
            row["verdict"] = "exploding"  # no chi fit: the signal overflowed
            return row
        return _row(depth, chi=1.0, acc=0.9)

    assert claims.c2_exploding(FakeRuns(make)).verdict == claims.SUPPORTED


def test_c3_verdicts_and_missing_chi():
    def world(ln_rescues_sigmoid, fit=True):
        def make(activation, depth, norm="none", **_):
            if activation == "sigmoid" and norm == "none":
                return _row(depth, chi=0.05 if fit else None, acc=0.08)
            if activation == "sigmoid" and norm == "layernorm" and not ln_rescues_sigmoid:
                return _row(depth, chi=0.16 if fit else None, acc=0.08)
            return _row(depth, chi=1.0, acc=0.95)

        return FakeRuns(make)

    assert claims.c3_normalization(world(True)).verdict == claims.SUPPORTED
    c = claims.c3_normalization(world(False, fit=False))  # no chi fit anywhere for sigmoid: no crash
    assert c.verdict == "depends on the norm and the activation" and "layernorm does not rescue sigmoid (chi -" in c.because
    assert claims.c3_normalization(FakeRuns(lambda depth, **_: _row(depth, acc=0.95))).verdict == "not tested"


def test_c7_calmer_loss_curve_supports_the_claim():
    def world(bn_wiggle):
        def make(norm, **_):
            row = _row(1, acc=0.9)
            row["loss_history"] = [[i, 1.0 + (bn_wiggle if norm == "batchnorm" else 0.2) * (-1) ** i] for i in range(20)]
            return row

        return FakeRuns(make)

    assert claims.c7_seed_net(world(0.05)).verdict == claims.SUPPORTED
    assert claims.c7_seed_net(world(0.2)).verdict == "no clear difference"


_REAL = dataclasses.replace(claims.QUICK, width=8, steps=10, seeds=2, shallow=2, deep=8, seed_net_seeds=2, seed_net_steps=10)
_ONLY = ("C1", "C2", "C7", "C8")  # every kind of run (mlp, clipped, seed_cnn) at a third of the cost of all eight


def _first_real_run(workdir: str) -> None:
    """The tiny real run's first pass; it trains, so it runs in the background (tests/shell.py)."""
    seen = []
    report = claims.run(_REAL, workdir, lambda label, row: seen.append(label), _ONLY)
    with open(os.path.join(workdir, "first_pass.json"), "w") as f:
        json.dump({"report": report, "seen": seen}, f)


_FIRST_REAL_RUN = call("tests.test_claims:_first_real_run", scratch("claims"))


@pytest.mark.background  # waits for work started at collection (tests/shell.py)
def test_tiny_real_run_writes_its_claims_and_resumes():
    out = _FIRST_REAL_RUN()
    assert out.returncode == 0, out.stderr
    tmp_path, cfg, only = scratch("claims"), _REAL, _ONLY
    first = json.loads((tmp_path / "first_pass.json").read_text())
    report, seen = first["report"], first["seen"]
    text = open(report).read()
    for i in (1, 2, 7, 8):
        assert f"## C{i}:" in text and (tmp_path / "claims" / f"C{i}.png").stat().st_size > 5000
    assert "## C3:" not in text and text.count("**Verdict: ") == 4
    assert len(seen) == len((tmp_path / "runs.jsonl").read_text().splitlines())
    again = []
    claims.run(cfg, str(tmp_path), lambda label, row: again.append(label), only)
    assert again == [] and open(report).read() == text  # every run reused, same report
    with pytest.raises(ConfigError, match="--workdir"):
        claims.run(dataclasses.replace(cfg, steps=11), str(tmp_path))
    with pytest.raises(ConfigError, match="--claims=C9"):
        claims.run(cfg, str(tmp_path), only=["C9"])


def test_claim_figures_of_every_kind(tmp_path):
    from decay import plots

    specs = [
        {"kind": "layers", "ylabel": "y", "series": {"a: ||W_l||": [1.0, 0.0, None], "a: grad": [1e-3, 1e-2, 1e-1]}},
        {"kind": "bars", "ylabel": "acc", "groups": {"SGD": {"x": 0.1}, "Adam": {"x": 0.9}}, "chance": 0.1},
        {
            "kind": "curves",
            "ylabel": "acc",
            "xlabel": "depth",
            "curves": {"tanh": {"2": 0.9, "8": 0.5}},
            "points": {"tanh": (8, 0.7, "residual")},
        },
        {"kind": "losses", "runs": {"none": [[[0, 2.3], [10, 1.0]]]}},
    ]
    for i, spec in enumerate(specs):
        path = plots.save(plots.claim_figure("t", spec), str(tmp_path / f"{i}.png"))
        assert (tmp_path / f"{i}.png").stat().st_size > 5000, path


_BAD = [
    (["--deep=4"], "--deep=4"),
    (["--seeds=1"], "--seeds=1"),
    (["--dataset=nope"], "--dataset"),
    (["--claims=C9"], "--claims=C9"),
]
_BAD_RUNS = {
    tuple(args): shell("experiments.seed_claims", *args, f"--workdir={scratch(f'seed_claims_bad{i}')}")
    for i, (args, _) in enumerate(_BAD)
}


@pytest.mark.parametrize("args,needle", _BAD)
def test_seed_claims_bad_flags_are_one_line(args, needle):
    out = _BAD_RUNS[tuple(args)]()
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
