"""The seed-claims experiment: verdict rules against made-up evidence, and one tiny real run."""

from __future__ import annotations

import dataclasses
import math

import pytest

from decay import claims
from tests.conftest import run_module


def _row(depth=8, chi=1.0, acc=0.9, grad_decay=1.0, weight_scale=1.0, weight_change=1.0, diverged=False):
    """A results row whose per-layer profiles follow the given factors (layer 0 nearest the input)."""
    signal = [math.sqrt(chi ** (depth - 1 - layer)) for layer in range(depth)]
    grads = [grad_decay ** (depth - 1 - layer) for layer in range(depth)]
    weights = [weight_scale**layer for layer in range(depth)]
    return {
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
    def world(adam_acc):
        return FakeRuns(lambda optimizer="sgd", **_: _row(acc=adam_acc if optimizer == "adam" else 0.1))

    assert claims.c6_adam(world(0.9)).verdict == claims.SUPPORTED
    assert claims.c6_adam(world(0.12)).verdict == claims.REFUTED
    assert claims.c6_adam(FakeRuns(lambda **_: _row(acc=0.9))).verdict == "not tested"


def test_c2_divergence_and_clipping_are_reported():
    def make(activation, depth, weight_var=None, norm="none", clip_norm=None, **_):
        if weight_var or norm == "batchnorm":
            return _row(depth, chi=1.5, diverged=clip_norm is None, acc=0.5)
        return _row(depth, chi=1.0, acc=0.9)

    c = claims.c2_exploding(FakeRuns(make))
    assert c.verdict == claims.SUPPORTED and "clipping changed divergence 2/2 -> 0/2" in c.because


def test_tiny_real_run_writes_every_claim_and_resumes(tmp_path):
    cfg = dataclasses.replace(claims.QUICK, width=8, steps=10, seeds=2, shallow=2, deep=8, seed_net_seeds=2, seed_net_steps=10)
    seen = []
    report = claims.run(cfg, str(tmp_path), lambda label, row: seen.append(label))
    text = open(report).read()
    for i in range(1, 9):
        assert f"## C{i}:" in text and (tmp_path / "claims" / f"C{i}.png").stat().st_size > 5000
    assert "**Verdict:" in text and len(seen) == len((tmp_path / "runs.jsonl").read_text().splitlines())
    again = []
    claims.run(cfg, str(tmp_path), lambda label, row: again.append(label))
    assert again == [] and open(report).read() == text  # every run reused, same report
    with pytest.raises(claims.ConfigError, match="--workdir"):
        claims.run(dataclasses.replace(cfg, steps=11), str(tmp_path))


@pytest.mark.parametrize(
    "args,needle", [(["--deep=4"], "--deep=4"), (["--seeds=1"], "--seeds=1"), (["--dataset=nope"], "--dataset")]
)
def test_seed_claims_bad_flags_are_one_line(tmp_path, args, needle):
    out = run_module("experiments.seed_claims", *args, f"--workdir={tmp_path}")
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr
