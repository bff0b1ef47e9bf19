"""Mean-field theory: the numeric path against closed forms and definitions, and against measurement."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from decay import data, metrics, theory
from decay.config import RunConfig
from decay.errors import ConfigError
from decay.layers import INITIALIZERS
from decay.loop import train_run
from decay.studies import phase
from tests.conftest import tiny_config
from tests.shell import scratch, shell


@pytest.mark.parametrize("weight_var", [0.5, 1.3, 2.0, 3.7])
@pytest.mark.parametrize("q", [0.01, 1.0, 40.0])
def test_relu_chi1_is_half_weight_var_at_any_q(weight_var, q):
    assert float(theory.chi1("relu", weight_var, q)) == pytest.approx(weight_var / 2, rel=1e-12)


@pytest.mark.parametrize("weight_var,bias_var", [(1.0, 0.1), (1.5, 0.3), (1.9, 0.01)])
def test_relu_fixed_point_and_correlation_map_match_closed_forms(weight_var, bias_var):
    q = theory.q_fixed_point("relu", weight_var, bias_var)
    assert q == pytest.approx(bias_var / (1 - weight_var / 2), rel=1e-10)
    assert q == pytest.approx(theory.relu_q_star(weight_var, bias_var), rel=1e-10)
    for c in (-0.7, 0.0, 0.4, 0.95):
        assert theory.correlation_map("relu", weight_var, bias_var, q, c) == pytest.approx(
            theory.relu_correlation_map(weight_var, bias_var, q, c), rel=1e-10
        )
        assert theory.chi_c("relu", weight_var, q, c) == pytest.approx(theory.relu_chi_c(weight_var, c), rel=1e-10)


def test_relu_variance_map_is_neutral_at_he_and_unbounded_above():
    assert theory.q_fixed_point("relu", 2.0, 0.0, q_in=3.5) == pytest.approx(3.5, rel=1e-12)
    assert theory.q_fixed_point("relu", 2.5, 0.0) == theory.UNBOUNDED
    assert theory.fixed_point("relu", 2.5, 0.0).phase == "unbounded"


def test_algebraic_growth_is_unbounded_and_slow_convergence_is_not_death():
    # ReLU at the He point with a bias, and linear at weight_var 1 with a bias: q grows by bias_var per layer.
    assert theory.q_fixed_point("relu", 2.0, 0.05) == theory.UNBOUNDED
    assert theory.q_fixed_point("linear", 1.0, 0.05) == theory.UNBOUNDED
    # tanh just past criticality without bias: a small but positive q* (~ 5e-4), reached slowly.
    q = theory.q_fixed_point("tanh", 1.001, 0.0)
    assert 1e-4 < q < 1e-3 and float(theory.variance_map("tanh", 1.001, 0.0, q)) == pytest.approx(q, rel=1e-8)
    assert theory.fixed_point("tanh", 0.5, 0.0).trainable_depth != theory.fixed_point("tanh", 0.5, 0.0).trainable_depth  # NaN


def test_linear_net_chi_is_weight_var_and_q_star_closed_form():
    fp = theory.fixed_point("linear", 0.8, 0.2)
    assert fp.q_star == pytest.approx(0.2 / (1 - 0.8), rel=1e-10)
    assert fp.chi_1 == pytest.approx(0.8, rel=1e-12)
    assert fp.xi_grad == pytest.approx(-1 / math.log(0.8), rel=1e-10)


def test_tanh_without_bias_is_critical_at_weight_var_one():
    assert theory.fixed_point("tanh", 1.0, 0.0).phase == "critical"
    assert theory.fixed_point("tanh", 1.0, 0.0).chi_1 == pytest.approx(1.0, abs=1e-12)
    below, above = theory.fixed_point("tanh", 0.9, 0.0), theory.fixed_point("tanh", 1.1, 0.0)
    assert below.phase == "ordered" and below.q_star == 0.0 and below.chi_1 == pytest.approx(0.9, rel=1e-10)
    assert above.phase == "chaotic" and above.q_star > 0 and above.c_star < 1
    assert theory.critical_weight_var("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)


def test_tanh_critical_line_moves_right_with_bias_and_chi_is_one_there():
    w = theory.critical_weight_var("tanh", 0.05)
    assert 1.7 < w < 1.8  # Schoenholz et al. 2017, Fig. 1: ~1.76 at sigma_b^2 = 0.05
    assert float(theory.chi1("tanh", w, theory.q_fixed_point("tanh", w, 0.05))) == pytest.approx(1.0, abs=1e-9)
    assert theory.fixed_point("tanh", w, 0.05).xi_c > 100  # xi_c diverges at criticality


def test_selu_with_lecun_init_has_q_star_one():
    weight_var = theory.init_weight_var("lecun_normal", 128, 128)
    assert weight_var == 1.0
    assert theory.q_fixed_point("selu", weight_var, 0.0, q_in=0.3) == pytest.approx(1.0, abs=1e-9)
    # SELU is not gradient-neutral: chi_1 > 1 (slightly chaotic) at its own fixed point.
    assert theory.fixed_point("selu", 1.0, 0.0).chi_1 == pytest.approx(1.0716, abs=1e-3)


def test_chaotic_correlation_fixed_point_is_a_fixed_point():
    fp = theory.fixed_point("tanh", 3.0, 0.05)
    assert fp.phase == "chaotic" and 0 < fp.c_star < 1
    assert theory.correlation_map("tanh", 3.0, 0.05, fp.q_star, fp.c_star) == pytest.approx(fp.c_star, abs=1e-10)
    assert float(theory.variance_map("tanh", 3.0, 0.05, fp.q_star)) == pytest.approx(fp.q_star, rel=1e-10)
    assert fp.trainable_depth == pytest.approx(6 * fp.xi_c)


@pytest.mark.parametrize("batch_size", [5, 8, 32, 128, 1000])
def test_batchnorm_linear_factor_is_b_minus_2_over_b_minus_3(batch_size):
    expected = (batch_size - 2) / (batch_size - 3)
    assert theory.batchnorm_chi("linear", batch_size) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("batch_size", [6, 16, 128, 1024])
def test_batchnorm_relu_numeric_matches_closed_form(batch_size):
    assert theory.batchnorm_chi("relu", batch_size) == pytest.approx(theory.batchnorm_chi_relu(batch_size), rel=1e-9)


def test_batchnorm_relu_tends_to_pi_over_pi_minus_one():
    assert theory.batchnorm_chi_relu(10**7) == pytest.approx(math.pi / (math.pi - 1), rel=1e-6)
    # Explosion is worse at small batches and is never below 1, whatever the activation.
    assert theory.batchnorm_chi_relu(8) > theory.batchnorm_chi_relu(64) > math.pi / (math.pi - 1)
    assert all(theory.batchnorm_chi(a, 64) > 1 for a in ("tanh", "sigmoid", "gelu"))


def test_layernorm_relu_is_neutral_and_tanh_explodes():
    assert theory.layernorm_chi("relu", 2.0, 0.0) == pytest.approx(1.0, rel=1e-12)
    assert theory.layernorm_chi("tanh", 1.0, 0.0) > 1.1


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_residual_block_factor_linear_and_relu(alpha):
    lin = theory.residual_block_factors("linear", "none", 1.0, 0.0, 6, 1.0, alpha)
    assert lin == pytest.approx(np.full(5, 1 + alpha**2), rel=1e-12)
    relu = theory.residual_block_factors("relu", "none", 2.0, 0.0, 6, 1.0, alpha)
    assert relu == pytest.approx(np.full(5, 1 + alpha**2), rel=1e-10)  # 1 + alpha^2 weight_var / 2


def test_plain_profile_is_product_of_chi1_along_the_variance_recursion():
    depth, wv, bv, q_in = 6, 1.8, 0.1, 0.7
    profile = theory.signal_profile("tanh", "none", wv, bv, depth, q_in)
    q = [wv * q_in + bv]
    for _ in range(depth - 1):
        q.append(float(theory.variance_map("tanh", wv, bv, q[-1])))
    chis = [float(theory.chi1("tanh", wv, qi)) for qi in q]
    expected = [math.prod(chis[layer:-1]) for layer in range(depth)]
    assert profile == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("init", INITIALIZERS.names())
@pytest.mark.parametrize("shape", [(256, 256), (64, 256), (256, 64)])
def test_named_inits_map_to_their_weight_var(init, shape):
    kernel = INITIALIZERS.get(init)(jax.random.key(0), shape)
    measured = shape[0] * float(np.mean(np.asarray(kernel, np.float64) ** 2))
    assert measured == pytest.approx(theory.init_weight_var(init, *shape), rel=0.03)


def _measured_and_theory(**overrides) -> tuple[float, float]:
    ds = data.load("synthetic", None, 0)
    settings = dict(dataset="synthetic", depth=20, width=512, batch_size=128, steps=0) | overrides
    cfg = dataclasses.replace(tiny_config(), **settings)
    row = train_run(cfg, ds)
    return row["chi"], row["chi_theory"]


@pytest.mark.parametrize("weight_var,bias_var", [(1.5, 0.05), (3.0, 0.05)])  # ordered, chaotic
def test_wide_tanh_net_measured_chi_matches_theory(weight_var, bias_var):
    fp = theory.fixed_point("tanh", weight_var, bias_var)
    assert fp.phase == ("ordered" if weight_var < 1.76 else "chaotic")
    measured, predicted = _measured_and_theory(activation="tanh", weight_var=weight_var, bias_var=bias_var)
    assert predicted == pytest.approx(fp.chi_1, rel=0.01)  # the profile has settled at q* in the middle layers
    assert measured == pytest.approx(predicted, rel=0.03)


@pytest.mark.parametrize(
    "overrides",
    [dict(residual=True, residual_scale=0.7, weight_var=1.0), dict(norm="layernorm", weight_var=1.5, bias_var=0.1)],
)
def test_wide_tanh_residual_and_layernorm_nets_match_their_profiles(overrides):
    measured, predicted = _measured_and_theory(activation="tanh", **overrides)
    assert measured == pytest.approx(predicted, rel=0.03)


def test_wide_batchnorm_relu_net_explodes_as_predicted():
    measured, predicted = _measured_and_theory(activation="relu", norm="batchnorm", batch_size=32)
    assert predicted == pytest.approx(theory.batchnorm_chi_relu(32), rel=1e-6)
    assert measured == pytest.approx(predicted, rel=0.04)


def test_rows_carry_theory_or_say_why_not(tiny_data):
    row = train_run(tiny_config(steps=0), tiny_data)
    assert row["chi_theory"] is not None and len(row["signal_profile_theory"]) == 3
    assert row["signal_profile_theory"][-1] == pytest.approx(1.0)
    assert row["theory"].startswith("mean field")
    cnn = theory.predict(tiny_config(model="cnn"), np.ones(4), 64)
    assert cnn["chi_theory"] is None and cnn["theory"].startswith("no theory")
    bn_res = theory.predict(tiny_config(norm="batchnorm", residual=True), np.ones(4), 64)
    assert bn_res["chi_theory"] is None and "residual" in bn_res["theory"]
    both = [dict(row, seed=0), dict(row, seed=1, chi=row["chi_theory"] * 1.5)]
    (s,) = metrics.summarize(both)
    assert s["chi_ratio"] == pytest.approx(np.median([row["chi"], row["chi_theory"] * 1.5]) / row["chi_theory"])
    assert f"{s['chi_theory']:.3f}" in metrics.summary_table(both)


_THEORY_JSON = shell("experiments.theory", "--activation=relu", "--norm=batchnorm", "--batch_size=32", "--json")
_THEORY_TABLE = shell("experiments.theory", "--activation=tanh", "--weight_var=3", "--bias_var=0.05")


def test_theory_cli_prints_json_and_table():
    out = _THEORY_JSON()
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["chi"] == pytest.approx(theory.batchnorm_chi_relu(32), rel=1e-9) and doc["verdict"] == "exploding"
    table = _THEORY_TABLE()
    assert table.returncode == 0 and "| plain_phase | chaotic |" in table.stdout


_THEORY_BAD = [
    (["--activation=nope"], "--activation=nope"),
    (["--weight_var=-1"], "--weight_var"),
    (["--norm=batchnorm", "--batch_size=4"], "--batch_size=4"),
    (["--norm=groupnorm"], "--norm=groupnorm"),
    (["--init=xavier"], "--init=xavier"),
    (["--bias_var=-0.1"], "--bias_var"),
    (["--depth=1"], "--depth=1"),
    (["--q_in=0"], "--q_in"),
    (["--residual_scale=nan"], "--residual_scale"),
    (["--norm=batchnorm", "--residual_scale=0.5"], "--norm=batchnorm with --residual_scale"),
]
_THEORY_BAD_RUNS = {tuple(args): shell("experiments.theory", *args) for args, _ in _THEORY_BAD}


@pytest.mark.parametrize("args,needle", _THEORY_BAD)
def test_theory_cli_bad_flags_are_one_line(args, needle):
    out = _THEORY_BAD_RUNS[tuple(args)]()
    assert out.returncode == 2 and needle in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


_PHASE = shell(
    "experiments.phase_diagram",
    *["--weight_vars=1.0,3.0", "--depths=2,4", "--steps=3", "--width=8", "--seeds=1", f"--workdir={scratch('phase')}"],
    heavy=True,
)


@pytest.mark.background  # waits for work started at collection (tests/shell.py)
def test_phase_diagram_writes_figure_and_json_and_resumes():
    out = _PHASE()
    assert out.returncode == 0, out.stderr
    tmp_path = scratch("phase")
    doc = json.loads((tmp_path / "phase_diagram.json").read_text())
    assert (tmp_path / "phase_diagram.png").stat().st_size > 10_000
    assert doc["accuracy"]["depths"] == [2, 4] and len(doc["accuracy"]["test_accuracy"][0]) == 2
    assert 1.7 < doc["critical_weight_var"] < 1.8
    chi = np.array(doc["theory"]["chi_1"])
    assert chi.shape == (len(doc["theory"]["bias_vars"]), len(doc["theory"]["weight_vars"]))
    # The same experiment again, in-process: every run is found in runs.jsonl, none is retrained.
    cfg = phase.PhaseConfig(
        base=RunConfig(activation="tanh", width=8, steps=3, checkpoint_every=0, instruments="basic"),  # the CLI's
        weight_vars=(1.0, 3.0),
        depths=(2, 4),
        seeds=1,
    )
    events = []
    again = phase.run(cfg, str(tmp_path), events.append)
    assert [(e.kind, e.row) for e in events] == [("skip", None)] * 4 and again["accuracy"] == doc["accuracy"]
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ConfigError, match="--workdir"):
        phase.run(dataclasses.replace(cfg, bias_var=0.1), str(tmp_path))


_PHASE_BAD = [
    shell("experiments.phase_diagram", "--weight_vars=1,x", f"--workdir={scratch('phase_bad')}"),
    shell("experiments.phase_diagram", "--depths=1,4", f"--workdir={scratch('phase_bad')}"),
    shell("experiments.phase_diagram", "--bias_var=-1", "--seeds=0", f"--workdir={scratch('phase_bad')}"),
]


def test_phase_diagram_bad_flags_are_one_line():
    out = _PHASE_BAD[0]()
    assert out.returncode == 2 and "--weight_vars" in out.stderr and "Traceback" not in out.stderr
    out = _PHASE_BAD[1]()
    assert out.returncode == 2 and "--depths" in out.stderr and "Traceback" not in out.stderr
    out = _PHASE_BAD[2]()
    assert out.returncode == 2 and ("--bias_var" in out.stderr or "--seeds" in out.stderr) and "Traceback" not in out.stderr
    assert not scratch("phase_bad").exists()  # refused before the workdir was made


_ANSWER_YES = shell("experiments.theory", "--activation=tanh", "--weight_var=2", "--bias_var=0.1", "--depth=50")
_ANSWER_NO = shell("experiments.theory", "--activation=tanh", "--weight_var=0.5", "--bias_var=0.05", "--depth=50", "--json")


def test_theory_command_answers_whether_the_net_trains_at_that_depth():
    # tanh (2, 0.1): chi_1 = 1.003, xi_c = 336, 6 xi_c = 2016 > 50, gain 0.79 although chi > 1.
    out = _ANSWER_YES()
    assert out.returncode == 0, out.stderr
    line = next(t for t in out.stdout.splitlines() if t.startswith("Trainable at depth 50?"))
    assert "Yes: depth 50 is within the trainable depth 6 xi_c = 2016" in line
    assert "near-critical (on the chaotic side: chi_1 = 1.003, 0.3% from 1" in line
    assert "the first/last gain is 0.793: it is set by the first layers" in line
    # tanh (0.5, 0.05): 6 xi_c = 7.1 < 50, in JSON too.
    doc = json.loads(_ANSWER_NO().stdout)
    fp = theory.fixed_point("tanh", 0.5, 0.05)
    assert doc["trainable"] is False and doc["plain_trainable_depth"] == pytest.approx(6 * fp.xi_c)
    assert doc["answer"].startswith(f"No: depth 50 is beyond the trainable depth 6 xi_c = {6 * fp.xi_c:.4g}")
    assert doc["phase_words"].startswith("ordered (chi_1 = 0.432")
