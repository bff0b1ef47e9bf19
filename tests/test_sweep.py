"""The depth sweep end to end: results.jsonl, resume, divergence, determinism and bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from absl import flags

from decay import ConfigError, SweepConfig, run_sweep
from tests.conftest import tiny_config, without_wall_time
from tests.shell import scratch, shell

REQUIRED = [
    "model",
    "dataset",
    "depth",
    "width",
    "activation",
    "norm",
    "init",
    "weight_var",
    "bias_var",
    "residual",
    "residual_scale",
    "optimizer",
    "learning_rate",
    "batch_size",
    "steps",
    "seed",
    "final_loss",
    "test_accuracy",
    "diverged",
    "diverged_at_step",
    "chi",
    "verdict",
    "grad_norms_init",
    "signal_norms_init",
    "act_rms_init",
    "grad_norms_final",
    "signal_norms_final",
]


@pytest.mark.background  # waits for work started at collection (tests/shell.py)
def test_depth_sweep_end_to_end(cli_sweep, capsys):
    # The sweep itself ran once from the shell (tests/conftest.py, shared with test_devices).
    workdir, out = cli_sweep.workdir, cli_sweep.out
    assert "[16/16]" in out.stdout and "| depth | activation | norm |" in out.stdout
    rows = cli_sweep.rows
    assert len(rows) == 16
    assert {(r["depth"], r["activation"], r["norm"], r["learning_rate"]) for r in rows} == {
        (d, a, n, lr) for d in (2, 3) for a in ("tanh", "relu") for n in ("none", "batchnorm") for lr in (0.05, 0.2)
    }
    for r in rows:
        assert set(REQUIRED) <= set(r)
        for key in ("grad_norms_init", "signal_norms_init", "act_rms_init", "grad_norms_final", "signal_norms_final"):
            assert len(r[key]) == r["depth"] and all(v > 0 for v in r[key])
        assert r["verdict"] in ("vanishing", "stable", "exploding")
        assert r["chi"] > 0 and 0 <= r["test_accuracy"] <= 1 and r["diverged"] is False
        assert r["init"] == ("he_normal" if r["activation"] == "relu" else "lecun_normal")
        assert [h["step"] for h in r["history"]] == [0, 3, 6]
        assert 0 <= r["val_accuracy"] <= 1 and r["trainability"] in ("trains", "partial", "fails")
    config = json.loads((workdir / "config.json").read_text())
    assert config["depths"] == [2, 3] and config["base"]["width"] == 8 and config["learning_rates"] == [0.05, 0.2]
    # The table shows each configuration once, at its rate chosen on validation.
    table = [line for line in out.stdout.splitlines() if line.startswith("| 2 ") or line.startswith("| 3 ")]
    assert len(table) == 8
    assert (workdir / "report.md").is_file()

    # Same command again (the entry point's main, in this process): every run is skipped, results.jsonl untouched.
    before = (workdir / "results.jsonl").read_bytes()
    code, stdout, _ = _main(capsys, *cli_sweep.args)
    assert code == 0 and stdout.count("skipped") == 16
    assert (workdir / "results.jsonl").read_bytes() == before

    # Different flags on the same workdir: refused, naming the flag.
    other = [a for a in cli_sweep.args if not a.startswith("--batch_size")]
    code, _, err = _main(capsys, *other, "--batch_size=16", "--quiet")
    assert code != 0 and "--batch_size (32 -> 16)" in err and "\n" not in err
    assert (workdir / "results.jsonl").read_bytes() == before


def test_same_seed_gives_identical_results(tmp_path):
    cfg = SweepConfig(
        base=tiny_config(steps=5, dataset="synthetic"), depths=(3,), activations=("tanh",), norms=("batchnorm",), seeds=2
    )
    a = run_sweep(cfg, str(tmp_path / "a"), write_report=False)  # the report is checked elsewhere
    b = run_sweep(cfg, str(tmp_path / "b"), write_report=False)
    assert without_wall_time(a) == without_wall_time(b)
    assert a[0]["signal_norms_init"] != a[1]["signal_norms_init"]  # different seeds differ


def test_diverging_run_is_recorded_and_sweep_goes_on(tmp_path):
    cfg = SweepConfig(
        base=tiny_config(steps=20, eval_every=5, learning_rate=1e30, dataset="synthetic"),
        depths=(2, 4),
        activations=("relu",),
        norms=("none",),
        seeds=1,
    )
    rows = run_sweep(cfg, str(tmp_path), write_report=False)  # reports of diverged rows: test_logging
    assert len(rows) == 2
    for r in rows:
        assert r["diverged"] is True and 0 <= r["diverged_at_step"] < 20
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["diverged"] for line in lines)


def test_steps_zero_measures_at_initialization(tmp_path):
    # A steps-0 run measures through its own program (`Program.measure`); a 1-step run's initial
    # numbers come from its first training step. Both must see the same net on the same first batch.
    base = tiny_config(dataset="synthetic", depth=4)
    zero, one = (
        run_sweep(
            SweepConfig(base=dataclasses.replace(base, steps=s), depths=(4,), activations=("tanh",), norms=("none",), seeds=1),
            str(tmp_path / str(s)),
        )[0]
        for s in (0, 1)
    )
    for key in ("signal_norms_init", "grad_norms_init", "act_rms_init", "weight_norms_init"):
        np.testing.assert_allclose(zero[key], one[key], rtol=1e-5, err_msg=key)
    assert zero["chi"] == pytest.approx(one["chi"], rel=1e-5) and zero["verdict"] == one["verdict"]
    assert zero["train_loss_init"] == pytest.approx(one["train_loss_init"], rel=1e-6)
    assert zero["steps"] == 0 and zero["trainability"] == "untrained" and one["trainability"] != "untrained"
    assert [h["step"] for h in zero["history"]] == [0] and zero["final_loss"] > 0


# ---- bad input: one line on stderr naming the flag, non-zero exit, no traceback ----


def _main(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the depth sweep's main with these flags, in this process."""
    from experiments import depth_sweep

    capsys.readouterr()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["depth_sweep", *args])
    try:
        depth_sweep.main(["depth_sweep"])
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        flags.FLAGS.unparse_flags()
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def _run_main(capsys, *args):
    code, _, err = _main(capsys, *args)
    return code, err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--activations=tanh,softsign"], "--activations contains unknown 'softsign'; allowed: linear, sigmoid"),
        (["--norms=groupnorm"], "--norms contains unknown 'groupnorm'; allowed: none, batchnorm, layernorm, rmsnorm"),
        (["--model=perceiver"], "--model='perceiver' is unknown; allowed: mlp, cnn, seed_cnn"),
        (["--init=xavier"], "--init='xavier' is unknown; allowed: auto, lecun_normal"),
        (["--optimizer=lbfgs"], "--optimizer='lbfgs' is unknown; allowed: sgd, momentum, adam, adamw"),
        (["--dataset=imagenet"], "--dataset='imagenet' is unknown; allowed: digits, synthetic, mnist, cifar10"),
        (["--depths=4,0"], "--depths contains 0; every depth must be an integer >= 1"),
        (["--depths=4,x"], "--depths contains 'x'"),
        (["--width=0"], "--width=0; must be an integer >= 1"),
        (["--learning_rates=0.1,-0.1"], "--learning_rates contains -0.1; every rate must be a finite number > 0"),
        (["--learning_rates=0"], "--learning_rates contains 0; every rate must be a finite number > 0"),
        (["--learning_rates=0.1,x"], "--learning_rates contains 'x'"),
        (["--learning_rates=0.1,0.1"], "--learning_rates lists 0.1 more than once"),
        (["--val_fraction=1"], "--val_fraction=1.0; must be in (0, 1)"),
        (["--adam_eps=0"], "--adam_eps=0.0; must be > 0"),
        (["--weight_decay=-1"], "--weight_decay=-1.0; must be >= 0"),
        (["--batch_size=0"], "--batch_size=0; must be an integer >= 1"),
        (["--batch_size=5000"], "--batch_size=5000 exceeds the 1150 training examples of --dataset=digits"),
        (["--dataset=mnist"], "--dataset=mnist reads local files: set --data_dir"),
        (["--dataset=mnist", "--data_dir=/nonexistent/mnist"], "--data_dir=/nonexistent/mnist is not a folder"),
        (["--model=seed_cnn", "--depths=2"], "--depths must be 1 for --model=seed_cnn"),
        (["--learning_rates=inf"], "--learning_rates contains inf; every rate must be a finite number > 0"),
        (["--residual_scale=nan"], "--residual_scale=nan; must be a finite number"),
        (["--depths=2,4,2"], "--depths lists 2 more than once"),
        (["--activations=tanh,tanh"], "--activations lists tanh more than once"),
        (["--checkpoint_every=-1"], "--checkpoint_every=-1; must be an integer >= 0"),
        (["--keep_checkpoints=0"], "--keep_checkpoints=0; must be an integer >= 1"),
        (["--log_every=0"], "--log_every=0; must be an integer >= 1"),
        (["--data_seed=-1"], "--data_seed=-1; must be an integer >= 0"),
        (["--bn_momentum=1.5"], "--bn_momentum=1.5; must be in [0, 1)"),
        (["--checkpoints=never"], "--checkpoints='never' is unknown; allowed: every, ends, none"),
    ],
)
def test_bad_input_gives_one_line_error(capsys, tmp_path, args, expected):
    depths = [] if any(a.startswith("--depths") for a in args) else ["--depths=2"]
    code, err = _run_main(capsys, f"--workdir={tmp_path}", *depths, "--quiet", *args)
    assert code != 0
    assert "\n" not in err and "Traceback" not in err
    assert expected in err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--num_processes=0"], "error: --num_processes=0; give an integer >= 1"),
        (["--num_processes=2"], "error: --num_processes=2 needs --coordinator_address=host:port"),
        (["--num_processes=2", "--coordinator_address=127.0.0.1:9", "--process_id=2"], "error: --process_id=2; give this"),
    ],
)
def test_bad_process_flags_are_one_line_before_joining_a_job(capsys, args, expected):
    from experiments import _cli, depth_sweep  # noqa: F401  (the entry point's flags)

    flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(SystemExit) as stopped:
            _cli.parse_flags(["depth_sweep", *args])
    finally:
        flags.FLAGS.unparse_flags()
    err = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in err and err.startswith(expected), err


_SHELL_BAD = [(["--activations=softsign"], "--activations"), (["--width=abc"], "--width")]
_SHELL_BAD_RUNS = {
    tuple(args): shell("experiments.depth_sweep", f"--workdir={scratch(f'sweep_bad{i}')}", "--depths=2", *args)
    for i, (args, _) in enumerate(_SHELL_BAD)
}


@pytest.mark.parametrize("args, flag", _SHELL_BAD)
def test_bad_input_from_the_shell_has_no_traceback(args, flag):
    out = _SHELL_BAD_RUNS[tuple(args)]()
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and flag in out.stderr


def test_unusable_workdir_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = _run_main(capsys, f"--workdir={blocker}", "--depths=2", "--quiet")
    assert code != 0 and "\n" not in err and "Traceback" not in err
    assert f"--workdir={blocker} cannot be created" in err


def test_run_sweep_raises_config_error_on_bad_config(tmp_path):
    cfg = SweepConfig(base=dataclasses.replace(tiny_config(), width=0), depths=(2,))
    with pytest.raises(ConfigError, match="--width=0"):
        run_sweep(cfg, str(tmp_path))
