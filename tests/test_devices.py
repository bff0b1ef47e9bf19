"""Runs spread over devices: the same numbers on one device or many, grouped or alone."""

from __future__ import annotations

import subprocess
import sys

import jax
import pytest

from decay import program
from decay.config import RunConfig, SweepConfig
from decay.loop import train_runs
from decay.studies.depth_sweep import run_sweep
from tests.conftest import ROOT, tiny_config, without_wall_time
from tests.shell import scratch, shell


@pytest.mark.background  # waits for work started at collection (tests/shell.py)
def test_four_devices_give_the_numbers_of_one(tmp_path, cli_sweep):
    # The shared sweep ran from the shell on 4 devices (XLA_FLAGS; its --cpu_devices=1 did not override them).
    assert "on 4 CPU devices" in cli_sweep.out.stdout
    assert jax.device_count() != 4, "this process must see another device count than the sweep's"
    # Its depth-3 runs again here, on this process's device: 8 runs of one shared program (the study's activations
    # and norms decide it), 2 slots on each of the 4 devices there, 8 slots on one here.
    base = RunConfig(width=8, steps=6, eval_every=3, batch_size=32)  # the sweep's flags (tests/conftest.py CLI_SWEEP)
    cfg = SweepConfig(
        base=base, depths=(3,), activations=("tanh", "relu"), norms=("none", "batchnorm"), seeds=1, learning_rates=(0.05, 0.2)
    )
    here = run_sweep(cfg, str(tmp_path), write_report=False)
    four = {r["name"]: r for r in cli_sweep.rows}
    assert len(here) == 8 and all(r["name"] in four for r in here)
    assert without_wall_time([four[r["name"]] for r in here]) == without_wall_time(here)


_CPU_DEVICES_3 = shell(
    "experiments.depth_sweep",
    f"--workdir={scratch('cpu_devices_3')}",
    "--cpu_devices=3",
    "--depths=1",
    "--activations=tanh",
    "--norms=none",
    "--learning_rates=0.1",
    "--seeds=1",
    "--width=4",
    "--steps=0",
    "--compilation_cache=",
)
_WIDTH_0 = shell("experiments.depth_sweep", f"--workdir={scratch('width_0')}", "--width=0")
_HELP = shell("experiments.depth_sweep", "--help")


def test_cpu_devices_flag_sets_the_device_count():
    out = _CPU_DEVICES_3()
    assert out.returncode == 0, out.stderr
    assert "depth sweep: 1 run on 3 CPU devices" in out.stdout


def test_bad_flags_stop_before_anything_is_printed_and_help_lists_the_device_flags():
    out = _WIDTH_0()
    assert out.returncode == 2 and out.stdout == "" and out.stderr.strip() == "error: --width=0; must be an integer >= 1"
    text = _HELP().stdout
    assert "--cpu_devices" in text and "--compilation_cache" in text and "--learning_rates" in text


def test_bad_cpu_devices_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.depth_sweep", f"--workdir={tmp_path}", "--cpu_devices=0"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip() == "error: --cpu_devices=0; give an integer >= 1"


def test_runs_trained_together_equal_runs_trained_alone(tiny_data):
    # steps=4, eval_every=2: chunks of 2 steps (uneven chunks: the diverging test below). Other seeds, inits,
    # rates, activations and norms: one shared program (decay.program.study_choices), 3 slots, so the second
    # batch has an empty slot (never stepped); each run alone in the same program gives the same row. (That a
    # batch's slot count changes no number: test_four_devices_give_the_numbers_of_one, 2 slots there, 8 here.)
    cfgs = [tiny_config(norm="batchnorm", seed=s, steps=4) for s in range(3)]
    cfgs.append(tiny_config(norm="batchnorm", seed=7, steps=4, weight_var=2.0, bias_var=0.1))  # same program, other init
    cfgs.append(tiny_config(activation="relu", norm="layernorm", seed=1, steps=4, learning_rate=0.3))
    choices = next(iter(program.study_choices(cfgs).values()))
    together = train_runs(cfgs, tiny_data, slots=3)
    alone = [train_runs([c], tiny_data, choices=choices, slots=3)[0] for c in cfgs]  # 1 run, 2 empty slots
    assert without_wall_time(together) == without_wall_time(alone)
    assert len({r["grad_norms_init"][0] for r in together}) == 5  # the runs really differ


def test_train_runs_refuses_runs_of_different_programs(tiny_data):
    with pytest.raises(ValueError, match="of one program"):
        train_runs([tiny_config(), tiny_config(depth=4)], tiny_data)


def test_interrupted_group_resumes_to_the_same_rows(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("decay.data.load", lambda *a: tiny_data)
    # The standard tier (RunConfig's default): the resumed runs also need their step-0 anchor back.
    base = RunConfig(
        width=8, batch_size=16, steps=6, eval_every=2, checkpoint_every=2, dataset="synthetic", instruments="standard"
    )
    cfg = SweepConfig(base=base, depths=(3,), activations=("tanh",), norms=("batchnorm",), seeds=3)
    clean = run_sweep(cfg, str(tmp_path / "clean"), write_report=False)

    class Stop(Exception):
        pass

    def stop_at_4(p):
        if p.step >= 4:
            raise Stop

    with pytest.raises(Stop):
        run_sweep(cfg, str(tmp_path / "killed"), on_progress=stop_at_4, write_report=False)
    resumed = run_sweep(cfg, str(tmp_path / "killed"), write_report=False)
    assert without_wall_time(resumed) == without_wall_time(clean)


def test_a_run_diverging_in_its_group_leaves_the_others_as_if_alone(tiny_data):
    # steps not a multiple of eval_every: the chunks differ in length, so the group's step must
    # come from a run that is still training.
    kw = dict(norm="none", activation="relu", steps=7, eval_every=3)
    cfgs = [tiny_config(seed=0, weight_var=1e10, **kw), tiny_config(seed=1, **kw)]  # the first diverges at step 2
    together = train_runs(cfgs, tiny_data)
    assert together[0]["diverged"] and not together[1]["diverged"]
    alone = train_runs(cfgs[1:], tiny_data, slots=2)[0]  # alone in a batch of the group's shape: one executable per chunk
    assert without_wall_time([together[1]]) == without_wall_time([alone])
    assert [h["step"] for h in together[1]["history"]] == [0, 3, 6, 7]
