"""Runs spread over devices: the same numbers on one device or many, grouped or alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from decay import sweep, train
from decay.config import RunConfig, SweepConfig
from tests.conftest import ROOT, tiny_config, without_wall_time

SWEEP = [
    "--depths=2,3",
    "--activations=tanh",
    "--norms=none,batchnorm",
    "--seeds=3",  # 3 runs on 4 devices: the run axis is padded
    "--width=8",
    "--batch_size=16",
    "--steps=6",
    "--eval_every=3",
    "--dataset=synthetic",
    "--compilation_cache=",
]


def _sweep(workdir, *extra, env=None):
    cmd = [sys.executable, "-m", "experiments.depth_sweep", f"--workdir={workdir}", *SWEEP, *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return out.stdout, [json.loads(line) for line in f]


def test_four_devices_give_the_numbers_of_one(tmp_path):
    env4 = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out4, rows4 = _sweep(tmp_path / "four", env=env4)
    out1, rows1 = _sweep(tmp_path / "one", "--cpu_devices=1", env={"XLA_FLAGS": ""})
    assert "on 4 CPU devices" in out4 and "on 1 CPU device " in out1
    assert len(rows4) == 12
    assert without_wall_time(rows4) == without_wall_time(rows1)


def test_cpu_devices_flag_sets_the_device_count(tmp_path):
    out, _ = _sweep(tmp_path / "two", "--cpu_devices=2", "--depths=2", "--norms=none", env={"XLA_FLAGS": ""})
    assert "on 2 CPU devices" in out


def test_bad_cpu_devices_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "experiments.depth_sweep", f"--workdir={tmp_path}", "--cpu_devices=0"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip() == "error: --cpu_devices=0; give an integer >= 1"


def test_runs_trained_together_equal_runs_trained_alone(tiny_data):
    cfgs = [tiny_config(norm="batchnorm", seed=s, steps=5) for s in range(3)]
    cfgs.append(tiny_config(norm="batchnorm", seed=7, steps=5, weight_var=2.0, bias_var=0.1))  # same program, other init
    together = train.train_runs(cfgs, tiny_data)
    alone = [train.train_run(c, tiny_data) for c in cfgs]
    assert without_wall_time(together) == without_wall_time(alone)
    assert len({r["grad_norms_init"][0] for r in together}) == 4  # the runs really differ


def test_train_runs_refuses_runs_of_different_programs(tiny_data):
    with pytest.raises(ValueError, match="differ only in seed"):
        train.train_runs([tiny_config(), tiny_config(depth=4)], tiny_data)


def test_interrupted_group_resumes_to_the_same_rows(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr("decay.data.load", lambda *a: tiny_data)
    base = RunConfig(width=8, batch_size=16, steps=6, eval_every=2, checkpoint_every=2, dataset="synthetic")
    cfg = SweepConfig(base=base, depths=(3,), activations=("tanh",), norms=("batchnorm",), seeds=3)
    clean = sweep.run_sweep(cfg, str(tmp_path / "clean"), write_report=False)

    class Stop(Exception):
        pass

    def stop_at_4(p):
        if p.step >= 4:
            raise Stop

    with pytest.raises(Stop):
        sweep.run_sweep(cfg, str(tmp_path / "killed"), on_progress=stop_at_4, write_report=False)
    resumed = sweep.run_sweep(cfg, str(tmp_path / "killed"), write_report=False)
    assert without_wall_time(resumed) == without_wall_time(clean)


def test_a_run_diverging_in_its_group_leaves_the_others_as_if_alone(tiny_data):
    # steps not a multiple of eval_every: the chunks differ in length, so the group's step must
    # come from a run that is still training.
    kw = dict(norm="none", activation="relu", steps=7, eval_every=3)
    cfgs = [tiny_config(seed=0, weight_var=1e10, **kw), tiny_config(seed=1, **kw)]  # the first diverges at step 2
    together = train.train_runs(cfgs, tiny_data)
    assert together[0]["diverged"] and not together[1]["diverged"]
    alone = train.train_run(cfgs[1], tiny_data)
    assert without_wall_time([together[1]]) == without_wall_time([alone])
    assert [h["step"] for h in together[1]["history"]] == [0, 3, 6, 7]
