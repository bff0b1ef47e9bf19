"""The doctor: its proposals against theory computed here, its measurements, its outputs and its bad flags."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from decay import data, theory
from decay.config import DoctorConfig, RunConfig
from decay.studies import doctor
from tests.shell import call, scratch, shell

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(120)  # E f(z), z ~ N(0, 1): sum(w f(x)) / sqrt(2 pi)


def _gauss(values: np.ndarray) -> float:
    """E f(z) from f at the nodes."""
    return float(np.sum(_WEIGHTS * values) / math.sqrt(2 * math.pi))


def _tanh_chi1(weight_var: float, bias_var: float) -> float:
    """chi_1 = sigma_w^2 E[tanh'(sqrt(q*) z)^2] at the fixed point q* of q -> sigma_w^2 E[tanh(sqrt(q) z)^2] + sigma_b^2,
    written here with NumPy's Gauss-Hermite rule and a plain iteration (no code of decay.theory)."""
    q = 1.0
    for _ in range(5000):
        q = weight_var * _gauss(np.tanh(math.sqrt(q) * _NODES) ** 2) + bias_var
    return weight_var * _gauss(1.0 / np.cosh(math.sqrt(q) * _NODES) ** 4)


@pytest.fixture(scope="module")
def digits_q():
    ds = data.load("digits", None, 0)
    return theory.input_q(ds.x_train)


def _proposal(proposals, kind):
    return next(p for p in proposals if p.kind == kind)


def _critical_tanh_at_width_512(out_dir: str) -> None:
    """Background work (tests/shell.py): the critical-init proposal for a deep tanh net, measured at init."""
    from decay.loop import train_run

    base = RunConfig(depth=32, width=512, activation="tanh", norm="none", steps=0)
    ds = data.load("digits", None, 0)
    crit = _proposal(doctor.propose(base, *theory.input_q(ds.x_train)), "critical init")
    row = train_run(crit.config, ds)  # measured at initialization (steps 0)
    with open(f"{out_dir}/critical.json", "w") as f:
        json.dump({"changes": dict(crit.changes), "chi": row["chi"]}, f)


_CRITICAL = call("tests.test_doctor:_critical_tanh_at_width_512", scratch("doctor_critical", make=True))


@pytest.mark.background
def test_tanh_gets_a_point_of_the_critical_line_and_measures_chi_one_at_width_512():
    out = _CRITICAL()
    assert out.returncode == 0, out.stderr
    got = json.loads((scratch("doctor_critical") / "critical.json").read_text())
    wv, bv = got["changes"]["weight_var"], got["changes"]["bias_var"]
    assert abs(_tanh_chi1(wv, bv) - 1.0) < 1e-6, (wv, bv)
    assert got["chi"] == pytest.approx(1.0, abs=0.03)


def test_relu_without_norm_gets_he_variance_and_zero_bias(digits_q):
    proposals = doctor.propose(RunConfig(depth=64, activation="relu", init="lecun_normal", bias_var=0.1), *digits_q)
    p = proposals[0]
    assert p.kind == "critical init" and dict(p.changes) == {"weight_var": 2.0, "bias_var": 0.0}
    assert p.flags == "--weight_var=2 --bias_var=0"  # pasted back into the command line below
    assert p.chi_theory == pytest.approx(1.0, abs=1e-9)


def _doctors(out_dir: str) -> None:
    """Background work (tests/shell.py): the doctor on a deep batchnorm net without skips, and on a critical net twice
    (the second call resumes)."""
    explode = RunConfig(depth=64, width=64, activation="relu", norm="batchnorm", steps=0)
    doctor.doctor(DoctorConfig(base=explode, seeds=1, learning_rates=(0.01,)), f"{out_dir}/explode")
    critical = DoctorConfig(base=_CRITICAL_BASE, seeds=2, learning_rates=(0.05,))
    first = doctor.doctor(critical, f"{out_dir}/critical")
    runs = open(f"{out_dir}/critical/runs.jsonl").read()
    again = doctor.doctor(critical, f"{out_dir}/critical")
    with open(f"{out_dir}/resume.json", "w") as f:
        same_doc = json.dumps(again) == json.dumps(first)
        json.dump({"same_runs": open(f"{out_dir}/critical/runs.jsonl").read() == runs, "same_doc": same_doc}, f)


_CRITICAL_BASE = RunConfig(depth=12, width=64, activation="relu", norm="none", init="he_normal", steps=30, eval_every=15)
_DOCTORS = call("tests.test_doctor:_doctors", scratch("doctors", make=True))


@pytest.mark.background
def test_deep_batchnorm_without_skips_gets_a_proposal_that_removes_the_explosion():
    assert _DOCTORS().returncode == 0, _DOCTORS().stderr
    out = scratch("doctors") / "explode"
    doc = json.loads((out / "doctor.json").read_text())
    assert doc["diagnosis"]["verdict"] == "exploding" and not doc["nothing_to_fix"]
    assert doc["diagnosis"]["words"][0].startswith("Gradients explode: measured chi = ")
    chis = {e["flags"]: e["measured"]["chi"] for e in doc["proposals"]}
    assert any(abs(c - 1.0) < 0.1 for c in chis.values()), chis
    assert {e["kind"] for e in doc["proposals"]} >= {"residual", "norm"}
    for name in ("doctor.md", "doctor.json", "doctor.png", "runs.jsonl"):
        assert (out / name).stat().st_size > 0


@pytest.mark.background
def test_a_critical_configuration_has_nothing_to_fix_and_still_gets_its_numbers():
    assert _DOCTORS().returncode == 0, _DOCTORS().stderr
    out = scratch("doctors") / "critical"
    doc = json.loads((out / "doctor.json").read_text())
    assert doc["nothing_to_fix"]
    d = doc["diagnosis"]
    assert 0.1 <= d["gain"] <= 10 and d["chi"] is not None and d["val_accuracy"]["n"] == 2
    assert "**Nothing to fix in the gradient**" in (out / "doctor.md").read_text()
    # He init is already critical: no critical-init proposal; every proposal shown was trained and compared.
    assert all(e["kind"] != "critical init" for e in doc["proposals"])
    for e in doc["proposals"]:
        assert e["training"]["ci95"] is not None  # two seeds with a spread: an interval
    # Resuming: the same call trains nothing and gives the same document.
    resume = json.loads((scratch("doctors") / "resume.json").read_text())
    assert resume == {"same_runs": True, "same_doc": True}


def _row(seed, lr, val, chi=1.0, depth=8, test=0.5):
    return {"seed": seed, "learning_rate": lr, "val_accuracy": val, "val_loss": 1.0 - val, "test_accuracy": test,
            "diverged": False, "trainability": "trains", "depth": depth, "steps": 10, "chi": chi,
            "signal_norms_init": [1.0] * depth, "c_init": [0.1] * depth, "q_init": [1.0] * depth, "verdict": "stable",
            "dead_fraction_init": [None] * depth}  # fmt: skip


def test_measured_takes_each_side_at_its_rate_chosen_on_validation_and_init_numbers_per_seed():
    # Two rates x three seeds; rate 0.1 wins on validation. Init numbers: each seed's first row (chi 0.9, 1.0, 1.1).
    rows = [_row(s, lr, val, chi=[0.9, 1.0, 1.1][s]) for lr, val in ((0.01, 0.5), (0.1, 0.7)) for s in range(3)]
    m = doctor.measured(rows)
    assert m["learning_rate"] == 0.1 and m["val"].mean == pytest.approx(0.7) and m["chi"] == pytest.approx(1.0)
    assert m["chi_seeds"] == (0.9, 1.1) and m["rate_at_edge"]


def test_verification_claims_nothing_without_a_spread():
    before = doctor.measured([_row(s, 0.1, 0.5) for s in range(2)])
    same = doctor.measured([_row(s, 0.1, 0.6) for s in range(2)])  # +10 points, but no spread on either side
    p = doctor.Proposal("residual", (("residual", True),), "", RunConfig(), 1.0)
    e = doctor._verify(p, before, same)
    assert e["gradient_fixed"] and e["status"] == "gradient fixed; validation accuracy no different"
    assert "not compared" in e["training"]["words"]
    before = doctor.measured([_row(0, 0.1, 0.50), _row(1, 0.1, 0.52)])
    better = doctor._verify(p, before, doctor.measured([_row(0, 0.1, 0.80), _row(1, 0.1, 0.82)]))
    assert better["status"] == "verified" and doctor._best([better], before) == "--residual=true"
    bad = doctor._verify(p, before, doctor.measured([_row(0, 0.1, 0.20), _row(1, 0.1, 0.22)]))
    assert bad["status"].endswith("worse") and doctor._best([bad], before) is None
    far = doctor.measured([_row(s, 0.1, 0.9, chi=1.2) for s in range(2)])  # 1.2^7 = 3.6, inside [1e-1, 1e1]
    assert doctor._verify(p, before, far)["gradient_fixed"]


def test_extreme_gains_are_ranked_not_crashed(digits_q):
    # log10 gains of about -160 and +600: beyond float32 and float64 range as numbers, fine as logs.
    for cfg in (RunConfig(depth=200, activation="sigmoid"), RunConfig(depth=200, activation="relu", weight_var=100.0)):
        proposals = doctor.propose(cfg, *digits_q)
        assert proposals and all(p.lg_theory() is None or math.isfinite(p.lg_theory()) for p in proposals)
    # At depth 6 the residual scale is not assumed to grow the gain: whatever is proposed is predicted within range.
    for p in doctor.propose(RunConfig(depth=6, activation="sigmoid"), *digits_q):
        if p.kind == "residual":
            assert -1 <= p.lg_theory() <= 1


def test_proposal_flags_parse_back_on_the_command_line(digits_q):
    # Each proposal's flags, parsed by absl as the doctor's own run flags are defined, give the proposal's config.
    import dataclasses

    from absl import flags as absl_flags

    kinds = {"str": absl_flags.DEFINE_string, "int": absl_flags.DEFINE_integer, "float": absl_flags.DEFINE_float}
    kinds["bool"] = absl_flags.DEFINE_bool
    cfg = RunConfig(depth=64, activation="tanh", weight_var=0.8, bias_var=0.05)
    proposals = doctor.propose(cfg, *digits_q)
    assert {p.kind for p in proposals} >= {"critical init", "residual", "activation"}
    for p in proposals:
        fv = absl_flags.FlagValues()
        for f in dataclasses.fields(RunConfig):
            kinds[str(f.type).replace(" | None", "")](f.name, None, "", flag_values=fv)
        setting, _, removed = p.flags.partition(" (and remove ")
        fv(["doctor", *setting.split()])
        got = dataclasses.replace(cfg, **{f.name: fv[f.name].value for f in dataclasses.fields(RunConfig) if fv[f.name].present})
        for name in removed.rstrip(")").replace(",", " ").split():
            got = dataclasses.replace(got, **{name.lstrip("-"): None})
        assert got == p.config, p.flags


_CLI = shell(
    "experiments.doctor",
    *["--activation=tanh", "--norm=batchnorm", "--depth=6", "--width=16", "--steps=20", "--eval_every=10"],
    *["--seeds=2", "--learning_rates=0.03,0.3", f"--workdir={scratch('doctor_cli')}", "--compilation_cache="],
    heavy=True,
)


@pytest.mark.background
def test_doctor_command_prints_the_diagnosis_proposals_and_table():
    out = _CLI()
    assert out.returncode == 0, out.stderr
    assert "Diagnosis" in out.stdout and "Proposals, ranked by theory" in out.stdout
    assert "| original | (as given) |" in out.stdout and "| 1. " in out.stdout and "Wrote " in out.stdout
    doc = json.loads((scratch("doctor_cli") / "doctor.json").read_text())
    assert doc["settings"]["learning_rates"] == [0.03, 0.3] and doc["config"]["norm"] == "batchnorm"
    assert len(doc["proposals"]) >= 1 and all(e["measured"]["learning_rate"] in (0.03, 0.3) for e in doc["proposals"])


_BAD = [
    (["--depth=1"], "--depth=1; the doctor needs depth >= 2"),
    (["--learning_rates=0.1,x"], "--learning_rates contains 'x'"),
    (["--seeds=0"], "--seeds=0; must be an integer >= 1"),
    (["--activation=bogus"], "--activation='bogus' is unknown; allowed: linear, sigmoid"),
    (["--weight_var=-1"], "--weight_var=-1.0; must be > 0"),
]
_BAD_RUNS = {tuple(a): shell("experiments.doctor", *a, f"--workdir={scratch('doctor_bad')}") for a, _ in _BAD}


@pytest.mark.parametrize("args,needle", _BAD)
def test_doctor_bad_flags_are_one_line(args, needle):
    out = _BAD_RUNS[tuple(args)]()
    assert out.returncode == 2 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
