"""The seed-claims experiment: verdict rules against made-up evidence, and one tiny real run."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from decay import metrics, stats
from decay.errors import ConfigError
from decay.studies import claims
from tests.shell import call, scratch, shell


def _up(n=5):
    """A significant positive difference (about +40 points)."""
    return stats.welch([0.90 + 0.01 * i for i in range(n)], [0.50 + 0.01 * i for i in range(n)])


def _down():
    return stats.welch([0.50, 0.51, 0.52], [0.90, 0.91, 0.92])


def _none():
    """A difference whose interval holds 0."""
    return stats.welch([0.5, 0.6, 0.7], [0.55, 0.6, 0.65])


def test_differences_used_below_are_what_they_say():
    assert _up().significant and _up().diff > 0 and _down().significant and _down().diff < 0 and not _none().significant


def test_c1_rule_returns_each_verdict():
    assert claims.rule_c1({"sigmoid": (True, _down(), "trains"), "tanh": (True, _none(), "fails")})[0] == claims.SUPPORTED
    verdict, because = claims.rule_c1({"sigmoid": (True, _down(), "fails"), "tanh": (False, _none(), "trains")})
    assert verdict == "depends on the activation" and "tanh: signal does not vanish" in because
    # Vanishing without harm to training, and harm without vanishing, both refute "shrink and stall".
    assert claims.rule_c1({"sigmoid": (True, _none(), "trains"), "tanh": (False, _down(), "fails")})[0] == claims.REFUTED


def test_c2_rule_returns_each_verdict():
    assert claims.rule_c2({"a": (True, _down(), False, _none()), "b": (False, _none(), False, _none())})[0] == claims.SUPPORTED
    assert claims.rule_c2({"a": (True, _none(), True, _up())})[0] == claims.SUPPORTED  # diverges at every rate
    verdict, because = claims.rule_c2({"a": (True, _none(), False, _up())})
    assert verdict == claims.REFUTED and "clipping for a: +40.0 points" in because
    assert claims.rule_c2({"a": (False, _down(), False, _none())})[0] == "not tested"


def test_c3_rule_returns_each_verdict():
    both = {("sigmoid", 32, "batchnorm"): ("fails", _up()), ("sigmoid", 32, "layernorm"): ("partial", _up())}
    assert claims.rule_c3(both)[0] == claims.SUPPORTED
    hurt = {**both, ("tanh", 32, "batchnorm"): ("trains", _down())}
    verdict, because = claims.rule_c3(hurt)
    assert verdict == "depends on the norm and the activation" and "batchnorm hurts tanh at depth 32" in because
    assert claims.rule_c3({("sigmoid", 32, "batchnorm"): ("fails", _none())})[0] == claims.REFUTED
    assert claims.rule_c3({("tanh", 32, "batchnorm"): ("trains", _up())})[0] == "not tested"


def test_c4_rule_returns_each_verdict():
    assert claims.rule_c4({"tanh": (_up(), 4, _up())})[0] == claims.SUPPORTED
    assert claims.rule_c4({"tanh": (_none(), 4, _none()), "relu": (_down(), 2, _none())})[0] == claims.REFUTED
    v = claims.rule_c4({"tanh": (_up(), 2, _none())})[0]
    assert v == "depends on the restructuring: skip connections help, adding layers does not"
    v = claims.rule_c4({"tanh": (_none(), 16, _up())})[0]
    assert v == "depends on the restructuring: skip connections do not help, adding layers helps"


def test_c5_rule_returns_each_verdict():
    assert claims.rule_c5({"tanh": _up(), "sigmoid": _up()})[0] == claims.SUPPORTED
    assert claims.rule_c5({"tanh": _down(), "sigmoid": _up()})[0] == claims.REFUTED
    assert claims.rule_c5({"tanh": _none(), "sigmoid": _up()})[0] == "depends on the activation"
    assert claims.rule_c5({"tanh": _none(), "sigmoid": _none()})[0] == "no difference"


def test_c6_rule_returns_each_verdict():
    assert claims.rule_c6({"a": ("fails", _up()), "b": ("trains", _down())})[0] == claims.SUPPORTED
    assert claims.rule_c6({"a": ("fails", _none())})[0] == claims.REFUTED
    assert claims.rule_c6({"a": ("fails", _up()), "b": ("partial", _none())})[0] == "depends on the net"
    assert claims.rule_c6({"a": ("trains", _up())})[0] == "not tested"


def test_c7_rule_returns_each_verdict():
    assert claims.rule_c7(0.3, 0.1, _none())[0] == claims.SUPPORTED  # tolerates a larger rate
    assert claims.rule_c7(0.1, 0.1, _up())[0] == claims.SUPPORTED  # trains better when both are tuned
    assert claims.rule_c7(None, 0.1, _none())[0] == claims.REFUTED
    assert claims.rule_c7(0.3, 0.1, _down())[0] == "depends on what stability means"
    assert claims.rule_c7(0.1, 0.1, _none())[0] == "no difference"


def test_c8_rule_returns_each_verdict():
    rising = {0.5: 0.3, 1.0: 0.6, 2.0: 1.5}
    assert claims.rule_c8(rising, 0.7, 0.5)[0] == claims.SUPPORTED  # weights shrink and the gradient decays more
    assert claims.rule_c8({0.5: 0.9, 1.0: 0.8, 2.0: 1.0}, 0.7, 0.5)[0] == claims.REFUTED  # not monotone
    assert claims.rule_c8({0.5: 0.9, 1.0: 0.95, 2.0: 1.0}, 0.7, 0.5)[0] == claims.REFUTED  # too flat
    assert claims.rule_c8(rising, 1.0, 1.0)[0] == "depends: small weights do cause decay, but training does not make them small"
    assert claims.rule_c8(rising, 0.7, 1.5)[0] == "depends: training shrinks the weights, but the gradient does not decay more"


def _made_up(cfg):
    """A results row for a configuration: sigmoid's signal vanishes and its deep net fails; the learning rate 0.25
    scores best on test but worst on validation."""
    depth = cfg.depth
    chi = 0.1 if cfg.activation == "sigmoid" else 1.0
    deep_sigmoid = cfg.activation == "sigmoid" and depth >= 8
    val = 0.1 if deep_sigmoid else (0.5 if cfg.learning_rate == 0.25 else 0.9)
    test = 0.1 if deep_sigmoid else (0.99 if cfg.learning_rate == 0.25 else 0.9 - 0.01 * cfg.seed)
    signal = [math.sqrt(chi ** (depth - 1 - layer)) for layer in range(depth)]
    return {
        "depth": depth, "learning_rate": cfg.learning_rate, "seed": cfg.seed, "chi": chi, "chi_theory": chi,
        "verdict": metrics.verdict(chi, depth), "signal_norms_init": signal, "signal_norms_final": signal,
        "grad_norms_init": signal, "update_ratio_final": [0.01] * depth, "test_accuracy": test, "val_accuracy": val,
        "val_loss": 1.0, "diverged": False, "trainability": "fails" if deep_sigmoid else "trains",
    }  # fmt: skip


class FakeRuns:
    """`claims.Runs` with made-up rows: its own `get` and `tuned`, training replaced by `_made_up`."""

    get, tuned = claims.Runs.get, claims.Runs.tuned

    def __init__(self):
        self.cfg, self.chance = dataclasses.replace(claims.ClaimsConfig(), deep=8, shallow=2), 0.1

    def _train(self, cfgs):
        return [_made_up(c) for c in cfgs]


def test_c1_on_made_up_rows_tunes_on_validation_and_reads_the_verdict_from_them():
    c = claims.c1_saturating(FakeRuns())
    # tanh is not affected, sigmoid is: the rule's "depends", with the chosen rate 0.01 (validation), never 0.25 (test).
    assert c.verdict == "depends on the activation"
    assert "sigmoid: signal vanishes" in c.because and "tanh: signal does not vanish" in c.because
    assert "| tanh | 8 | lr 0.01 (edge) |" in "\n".join(c.table) and "0.25" not in "\n".join(c.table)


_REAL = dataclasses.replace(
    claims.QUICK, width=8, steps=10, seeds=2, shallow=2, deep=8, seed_net_steps=10, seed_net_learning_rates=(0.03, 0.3)
)
# Every kind of run (mlp, clipped, seed_cnn) at a fifth of the cost of all eight; C1's verdict rule is checked on
# made-up rows above.
_ONLY = ("C2", "C7")


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
    for i in (2, 7):
        assert f"## C{i}:" in text and (tmp_path / "claims" / f"C{i}.png").stat().st_size > 5000
    assert "## C1:" not in text and "## C3:" not in text and text.count("**Verdict: ") == 2
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
            "kind": "bars",
            "ylabel": "acc",
            "groups": {"SGD": {"x": 0.1, "y": None}},
            "errors": {"SGD": {"x": (0.05, 0.2), "y": (None, None)}},
            "chance": 0.1,
        },
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
