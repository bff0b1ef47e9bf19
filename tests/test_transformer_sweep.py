"""The transformer sweep from the shell: both parts' rows, the report's numbers from the rows, bad flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decay import stats
from tests.shell import scratch, shell

ARGS = [
    "--blocks=post_ln,rezero",
    "--depths=3",
    "--init_seeds=2",
    "--train_blocks=post_ln",
    "--train_depths=2",
    "--warmups=0,2",
    "--learning_rates=0.001,0.01",
    "--seeds=2",
    "--steps=4",
    "--eval_every=2",
    "--width=8",
    "--heads=2",
    "--batch_size=16",
    "--quiet",
]
_RUN = shell("experiments.transformer_sweep", f"--workdir={scratch('transformer_sweep')}", *ARGS, heavy=True)
_BAD = {
    "--blocks=pre_ln,sandwich": "--blocks contains unknown 'sandwich'",
    "--heads=3": "--width=32 is not divisible by --heads=3",
    "--norm=none": "--block=post_ln places a norm",
    "--train_depths=0": "--train_depths must be integers >= 1",
    "--warmups=-5": "--warmups must be integers >= 0",
    "--learning_rates=fast": "--learning_rates contains 'fast'",
}
_BAD_RUNS = {flag: shell("experiments.transformer_sweep", f"--workdir={scratch('transformer_bad')}", flag) for flag in _BAD}


@pytest.fixture(scope="module")
def sweep():
    out = _RUN()
    assert out.returncode == 0, out.stderr
    workdir = scratch("transformer_sweep")
    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    return workdir, rows, json.loads((workdir / "transformer.json").read_text())


@pytest.mark.background
def test_both_parts_have_their_rows_and_the_init_part_is_untrained(sweep):
    _, rows, _ = sweep
    init = [r for r in rows if r["part"] == "init"]
    train = [r for r in rows if r["part"] == "train"]
    assert len(init) == 2 * 1 * 2 and len(train) == 1 * 2 * 2 * 2
    assert all(r["steps"] == 0 and r["trainability"] == "untrained" for r in init)
    for r in init:  # 3 probe points and 6 kernels per block, c across tokens per point
        assert len(r["signal_norms_init"]) == 3 * r["depth"] and len(r["grad_norms_init"]) == 6 * r["depth"]
        assert len(r["c_tokens_init"]) == 3 * r["depth"]
    # ReZero is the identity at initialization: the residual stream's signal is the same after every block.
    for r in (r for r in init if r["block"] == "rezero"):
        np.testing.assert_allclose(r["signal_norms_init"][: r["depth"]], r["signal_norms_init"][0], rtol=1e-6)
    assert {r["warmup_steps"] for r in train} == {0, 2}


@pytest.mark.background
def test_training_summary_chooses_the_rate_on_validation_and_reports_test_at_it(sweep):
    workdir, rows, doc = sweep
    for s in doc["train"]:
        group = [r for r in rows if r["part"] == "train" and r["block"] == s["block"] and r["warmup_steps"] == s["warmup"]]
        means = {lr: np.mean([r["val_accuracy"] or 0.0 for r in group if r["learning_rate"] == lr]) for lr in (0.001, 0.01)}
        best = max(means.values())
        assert means[s["learning_rate"]] == best  # ties go to the smaller rate, a choice made on validation alone
        chosen = [r["test_accuracy"] for r in group if r["learning_rate"] == s["learning_rate"]]
        assert s["test_accuracy"]["mean"] == pytest.approx(stats.mean_std_ci(chosen, (0.0, 1.0)).mean)
    report = (workdir / "report.md").read_text()
    assert "## Findings" in report and "| rezero | 3 |" in report
    assert (workdir / "plots" / "init_profiles.png").stat().st_size > 10_000


@pytest.mark.parametrize("flag", list(_BAD))
def test_bad_flags_are_one_line(flag):
    out = _BAD_RUNS[flag]()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and _BAD[flag] in lines[0], out.stderr
