"""The time sweep from the shell: rows per variant and length, the report's numbers from the rows, figures, bad flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decay import data, stats
from decay.studies import time_sweep
from tests.shell import scratch, shell

ARGS = [
    "--variants=tanh,lstm,exploding,exploding_clip",
    "--seq_lens=5",
    "--seeds=2",
    "--learning_rates=0.01,0.1",
    "--steps=4",
    "--eval_every=2",
    "--width=8",
    "--batch_size=16",
    "--quiet",
]
_RUN = shell("experiments.time_sweep", f"--workdir={scratch('time_sweep')}", *ARGS, heavy=True)
_BAD = {
    "--variants=tanh,nope": "--variants contains unknown 'nope'",
    "--seq_lens=0": "--seq_lens=0",
    "--seq_lens=ten": "--seq_lens",
}
_BAD_RUNS = {flag: shell("experiments.time_sweep", f"--workdir={scratch('time_sweep_bad')}", flag) for flag in _BAD}


@pytest.fixture(scope="module")
def sweep():
    out = _RUN()
    assert out.returncode == 0, out.stderr
    workdir = scratch("time_sweep")
    rows = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
    doc = json.loads((workdir / "time.json").read_text())
    return workdir, out, rows, doc


@pytest.mark.background
def test_every_variant_length_rate_and_seed_has_a_row_measured_along_time(sweep):
    _, _, rows, _ = sweep
    assert len(rows) == 4 * 1 * 2 * 2
    variants = ("tanh", "lstm", "exploding", "exploding_clip")
    assert {(r["variant"], r["seq_len"], r["learning_rate"], r["seed"]) for r in rows} == {
        (v, t, lr, s) for v in variants for t in (5,) for lr in (0.01, 0.1) for s in (0, 1)
    }
    for r in rows:
        assert len(r["signal_norms_init"]) == r["seq_len"] and r["task"] == "regression"
        assert r["chance_loss"] == pytest.approx(data.ADDING_CHANCE)
        assert (r["clip_norm"] == 1.0) == (r["variant"] == "exploding_clip")
        assert (r["cell_signal_norms_init"] is not None) == (r["model"] == "lstm")
        if r["model"] == "rnn":  # mean field applies to the vanilla rnn, gated cells say why not
            assert len(r["signal_profile_theory"]) == r["seq_len"] and r["chi_theory"] > 0
        else:
            assert r["chi_theory"] is None and r["theory"].startswith("no theory")
    # sigma_w^2 = 4 is above critical: theory and measurement both put its per-step factor above the tanh rnn's.
    chi = {v: np.median([r["chi"] for r in rows if r["variant"] == v and r["seq_len"] == 5]) for v in ("tanh", "exploding")}
    theory = {v: next(r["chi_theory"] for r in rows if r["variant"] == v and r["seq_len"] == 5) for v in ("tanh", "exploding")}
    assert chi["exploding"] > chi["tanh"] and theory["exploding"] > 1.0 > theory["tanh"]


@pytest.mark.background
def test_report_numbers_come_from_the_rows_with_the_rate_chosen_on_validation(sweep):
    workdir, out, rows, doc = sweep
    assert len(doc["summary"]) == 4
    for s in doc["summary"]:
        group = [r for r in rows if r["variant"] == s["variant"] and r["seq_len"] == s["seq_len"]]
        by_rate = {lr: [r for r in group if r["learning_rate"] == lr] for lr in (0.01, 0.1)}
        val = {lr: np.mean([np.inf if r["diverged"] else r["val_loss"] for r in rs]) for lr, rs in by_rate.items()}
        assert s["learning_rate"] == min(val, key=lambda lr: (val[lr], lr))  # lowest validation MSE; test takes no part
        chosen = [r["test_loss"] for r in by_rate[s["learning_rate"]] if r["test_loss"] is not None]
        expected = stats.mean_std_ci(chosen, (0.0, np.inf))
        assert s["test_mse"]["mean"] == pytest.approx(expected.mean) and s["test_mse"]["std"] == pytest.approx(expected.std)
        assert s["solved"] == sum(v < data.SOLVED_MSE for v in chosen)
        assert s["chi"]["n"] == 2  # one value per seed: a seed's net at initialization is the same at every rate
    report = (workdir / "report.md").read_text()
    assert "## Findings" in report and "| tanh | 1 | 5 |" in report and "Clipping at T = 5" in report
    for name in ("gradient_vs_time.png", "score_vs_length.png"):
        assert (workdir / "plots" / name).stat().st_size > 10_000
    assert "report:" in out.stdout and "tanh" in out.stdout


@pytest.mark.background
def test_rerun_skips_finished_runs(sweep):
    workdir, _, rows, _ = sweep
    rerun = time_sweep.run_time_sweep(time_sweep_config(), str(workdir))
    stored = {r["name"]: r["wall_time_s"] for r in rows}
    assert {r["name"]: r["wall_time_s"] for r in rerun} == stored  # every run read back, none retrained


def time_sweep_config() -> time_sweep.TimeSweepConfig:
    """The config the shell run built from ARGS."""
    import dataclasses

    base = dataclasses.replace(time_sweep.TimeSweepConfig().base, steps=4, eval_every=2, width=8, batch_size=16)
    return time_sweep.TimeSweepConfig(
        base=base, variants=("tanh", "lstm", "exploding", "exploding_clip"), seq_lens=(5,), seeds=2, learning_rates=(0.01, 0.1)
    )


@pytest.mark.parametrize("flag", list(_BAD))
def test_bad_flags_are_one_line(flag):
    out = _BAD_RUNS[flag]()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and _BAD[flag] in lines[0], out.stderr


@pytest.mark.parametrize(
    ("changes", "message"),
    [(dict(depths=(0,)), "--depths=0"), (dict(learning_rates=(-0.1,)), "--learning_rates"), (dict(seeds=0), "--seeds=0")],
)
def test_bad_study_settings_are_one_line_errors(changes, message):
    import dataclasses

    from decay import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        time_sweep.validate(dataclasses.replace(time_sweep_config(), **changes))
    assert "\n" not in str(info.value)
