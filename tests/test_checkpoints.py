"""Orbax checkpoints: bitwise round trip, resume after a kill, offline analysis, Jacobian spectra, bad files."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decay import ConfigError, SweepConfig, analysis, checkpoints, load_run, run_sweep
from decay.loop import train_run
from decay.program import init_state
from decay.step import grads_and_stats
from tests import reference
from tests import shell as shell_lib
from tests.conftest import tiny_config, without_wall_time
from tests.shell import call, scratch, shell


def _equal_trees(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def test_save_restore_round_trip_is_bitwise(tmp_path, tiny_data):
    cfg = tiny_config(norm="batchnorm", optimizer="adam", learning_rate=0.01, depth=4)
    prog, state = init_state(cfg, tiny_data)
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    key = jax.random.fold_in(jax.random.key(7), 1)
    state, _ = prog.train_chunk(state, x, y, key, n_steps=3)  # non-trivial Adam moments and batch stats
    progress = {"done": 3, "history": [{"step": 0, "x": None}], "values": [0.1, 1e-30]}
    checkpoints.save(str(tmp_path), 3, state, key, progress, keep=2)
    _, template = init_state(cfg, tiny_data)
    restored, rkey, rprogress, step = checkpoints.restore(str(tmp_path), template)
    assert step == 3 and rprogress == progress
    assert _equal_trees(restored, state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    np.testing.assert_array_equal(jax.random.key_data(rkey), jax.random.key_data(key))


def test_keeps_the_newest_checkpoints_and_step_zero(tmp_path, tiny_data):
    cfg = tiny_config(steps=10, eval_every=2, checkpoint_every=2, keep_checkpoints=2)
    train_run(cfg, tiny_data, run_dir=str(tmp_path))
    assert checkpoints.steps(str(tmp_path / "checkpoints")) == [0, 8, 10]


class _Kill(Exception):
    pass


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, tiny_data):
    # Adam's state (two moments and a count) and batchnorm's running statistics: every kind of state a resume restores.
    cfg = tiny_config(depth=4, steps=10, eval_every=2, checkpoint_every=4, log_every=1, norm="batchnorm", optimizer="adam")
    clean = train_run(cfg, tiny_data, run_dir=str(tmp_path / "clean"))

    def kill_at_6(p):
        if p.step == 6:  # after the step-4 checkpoint; steps 4..6 are lost and must be redone
            raise _Kill

    with pytest.raises(_Kill):
        train_run(cfg, tiny_data, run_dir=str(tmp_path / "killed"), on_progress=kill_at_6)
    assert checkpoints.steps(str(tmp_path / "killed" / "checkpoints")) == [0, 4]
    resumed = train_run(cfg, tiny_data, run_dir=str(tmp_path / "killed"))
    clean.pop("wall_time_s")
    resumed.pop("wall_time_s")
    assert resumed == clean
    final_clean = load_run(str(tmp_path / "clean"))
    final_resumed = load_run(str(tmp_path / "killed"))
    assert final_clean.step == final_resumed.step == 10
    assert _equal_trees(final_clean.state, final_resumed.state)


def interrupted_sweep_in_background(out_dir: str) -> None:
    """Background work (tests/shell.py): a sweep run whole, and the same sweep with a machine lost during its second
    run (its row never reached results.jsonl, its last checkpoints gone), then resumed; both rows to JSON."""
    cfg = SweepConfig(
        base=tiny_config(steps=6, eval_every=2, checkpoint_every=2, dataset="synthetic"),
        depths=(2, 3),
        activations=("tanh",),
        norms=("none",),
        seeds=1,
    )
    full = run_sweep(cfg, os.path.join(out_dir, "full"), write_report=False)
    part = os.path.join(out_dir, "part")
    run_sweep(cfg, part, write_report=False)
    with open(os.path.join(part, "results.jsonl")) as f:
        first = f.readline()
    with open(os.path.join(part, "results.jsonl"), "w") as f:
        f.write(first)
    for step in ("6", "4"):
        shutil.rmtree(os.path.join(part, "runs", full[1]["name"], "checkpoints", step))
    resumed = run_sweep(cfg, part, write_report=False)
    with open(os.path.join(out_dir, "rows.json"), "w") as f:
        json.dump({"full": without_wall_time(full), "resumed": without_wall_time(resumed)}, f)


_INTERRUPTED = call("tests.test_checkpoints:interrupted_sweep_in_background", scratch("interrupted_sweep", make=True))


@pytest.mark.background
def test_interrupted_sweep_resumes_to_the_same_results():
    assert _INTERRUPTED().returncode == 0, _INTERRUPTED().stderr
    rows = json.loads((scratch("interrupted_sweep") / "rows.json").read_text())
    assert len(rows["full"]) == 2 and rows["resumed"] == rows["full"]


def test_loaded_run_analysis_equals_live_state(bn_run, tiny_data):
    cfg = bn_run.cfg  # depth 4, batchnorm, 6 steps, checkpoints every 3 (tests/conftest.py)
    run = load_run(str(bn_run.run_dir))  # latest: step 6
    assert run.step == 6 and run.available_steps == [0, 3, 6] and run.config == cfg
    # The live state, recomputed from scratch in this process.
    prog, state = init_state(cfg, tiny_data)
    x, y = jnp.asarray(tiny_data.x_train), jnp.asarray(tiny_data.y_train)
    key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
    state, _ = prog.train_chunk(state, x, y, key, n_steps=3)
    state, _ = prog.train_chunk(state, x, y, key, n_steps=3)
    assert _equal_trees(run.state, state)
    xb, yb = x[:16], y[:16]
    got = analysis.layer_stats(run, xb, yb)
    want = jax.device_get(jax.jit(lambda p, bs: grads_and_stats(prog.net, p, bs, xb, yb)[2])(state.params, state.batch_stats))
    for k in ("grad_norms", "signal_norms", "act_rms", "weight_norms", "loss"):
        np.testing.assert_array_equal(got[k], want[k])
    g = analysis.gradients(run, xb, yb)
    assert jax.tree.structure(g) == jax.tree.structure(run.params)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(g["stem"]["linear"]["kernel"][...])), got["grad_norms"][0], rtol=1e-5)
    logits, _ = run.model(xb)
    assert logits.shape == (16, 10)
    # The Jacobian's spectrum against the hand-written forward pass (batchnorm in evaluation mode), per example.
    p, bs = nnx.to_pure_dict(run.params), nnx.to_pure_dict(run.batch_stats)

    def rep(xi):
        _, rec, _ = reference.mlp_forward(p, bs, xi[None], cfg.activation, cfg.norm, train=False)
        return rec[-1]["y"][0]

    for xi, sv in zip(xb[:2], analysis.jacobian_singular_values(run, xb[:2])["singular_values"], strict=True):
        jac = np.asarray(jax.jacrev(rep)(xi)).reshape(cfg.width, -1)
        np.testing.assert_allclose(sv, np.linalg.svd(jac.astype(np.float64), compute_uv=False), rtol=1e-4, atol=1e-6)


def test_deep_linear_orthogonal_net_is_an_isometry(tmp_path, tiny_data):
    cfg = tiny_config(activation="linear", init="orthogonal", norm="none", depth=12, width=16, steps=0)
    train_run(cfg, tiny_data, run_dir=str(tmp_path))
    run = load_run(str(tmp_path), step=0)
    sv = np.asarray(analysis.jacobian_singular_values(run, jnp.asarray(tiny_data.x_train[:3]))["singular_values"])
    assert sv.shape == (3, 16)  # J: 16 x 64, the stem's orthonormal columns and 11 orthogonal squares
    np.testing.assert_allclose(sv, 1.0, atol=1e-4)
    # Matrix-free top/bottom-k agrees with the exact spectrum; a Gaussian net is no isometry.
    cfg2 = dataclasses.replace(cfg, init="lecun_normal")
    train_run(cfg2, tiny_data, run_dir=str(tmp_path / "gauss"))
    run2 = load_run(str(tmp_path / "gauss"), step=0)
    xs = jnp.asarray(tiny_data.x_train[:1])
    exact = np.asarray(analysis.jacobian_singular_values(run2, xs)["singular_values"][0])
    lanczos = analysis.jacobian_singular_values(run2, xs, k=3, exact_limit=8)
    assert lanczos["method"].startswith("lanczos")
    got = np.asarray(lanczos["singular_values"][0])
    np.testing.assert_allclose(got[:3], exact[:3], rtol=1e-3)
    np.testing.assert_allclose(got[-3:], exact[-3:], rtol=1e-2, atol=1e-5)
    assert exact.max() / exact.min() > 2


def _trained_run(tmp_path, tiny_data):
    cfg = tiny_config(depth=3, steps=4, eval_every=2, checkpoint_every=2)
    train_run(cfg, tiny_data, run_dir=str(tmp_path))
    return str(tmp_path)


def test_missing_run_folder_or_step(tmp_path, tiny_data):
    with pytest.raises(ConfigError, match="config.json not found: not a run folder"):
        load_run(str(tmp_path / "nope"))
    run_dir = _trained_run(tmp_path / "r", tiny_data)
    with pytest.raises(ConfigError, match="no checkpoint at step 3; available steps: 0, 2, 4"):
        load_run(run_dir, step=3)
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))
    with pytest.raises(ConfigError, match="no complete checkpoint found"):
        load_run(run_dir)


def test_partial_checkpoint_is_not_used(tmp_path, tiny_data):
    run_dir = _trained_run(tmp_path, tiny_data)
    # A save killed half-way: Orbax finalizes by renaming a temporary folder, so a half-written
    # step is a tmp folder (ignored) and the previous steps stay usable.
    tmp = os.path.join(run_dir, "checkpoints", "6.orbax-checkpoint-tmp-123")
    shutil.copytree(os.path.join(run_dir, "checkpoints", "4"), tmp)
    os.remove(os.path.join(tmp, "_CHECKPOINT_METADATA"))
    assert load_run(run_dir).step == 4
    # A step folder whose state item lost its files is reported, one line, naming the path.
    for f in glob.glob(os.path.join(run_dir, "checkpoints", "4", "state", "**", "*"), recursive=True):
        if os.path.isfile(f) and "manifest" in f:
            os.remove(f)
    with pytest.raises(ConfigError) as exc:
        load_run(run_dir, step=4)
    assert "checkpoints/4" in str(exc.value) and "\n" not in str(exc.value)


def test_corrupt_checkpoint_is_one_line(tmp_path, tiny_data):
    run_dir = _trained_run(tmp_path, tiny_data)
    for f in glob.glob(os.path.join(run_dir, "checkpoints", "2", "state", "**", "*"), recursive=True):
        if os.path.isfile(f) and "commit_success" not in f:
            with open(f, "wb") as fh:
                fh.write(b"not a checkpoint")
    with pytest.raises(ConfigError) as exc:
        load_run(run_dir, step=2)
    assert "checkpoints/2" in str(exc.value) and "\n" not in str(exc.value)


def test_checkpoint_of_another_model_is_refused(tmp_path, tiny_data):
    run_dir = _trained_run(tmp_path, tiny_data)
    path = os.path.join(run_dir, "config.json")
    data = json.loads(open(path).read())
    data["width"] = 12
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ConfigError, match=r"has shape \(.*8\), the config's model needs \(.*12\)"):
        load_run(run_dir)
    data["width"], data["norm"] = 8, "batchnorm"  # adds norm parameters the checkpoint lacks
    open(path, "w").write(json.dumps(data))
    with pytest.raises(ConfigError, match="does not match the run's model"):
        load_run(run_dir)
    open(path, "w").write("{not json")
    with pytest.raises(ConfigError, match="not a valid run config"):
        load_run(run_dir)


def analyze_in_background(out_dir: str) -> None:
    """Trains the `bn_run` fixture's config into out_dir/run, then runs `python -m experiments.analyze` on it at step 3
    and at step 2 (no checkpoint there), each command's exit status and stderr kept in out_dir/<step>.json."""
    import subprocess
    import sys

    from tests.conftest import make_tiny_data

    cfg = tiny_config(depth=4, steps=6, eval_every=3, checkpoint_every=3, norm="batchnorm")
    run_dir = os.path.join(out_dir, "run")
    train_run(cfg, make_tiny_data(), run_dir=run_dir)
    for step in (3, 2):
        cmd = [sys.executable, "-m", "experiments.analyze", f"--run_dir={run_dir}", f"--step={step}"]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(shell_lib.ROOT))
        with open(os.path.join(out_dir, f"{step}.json"), "w") as f:
            json.dump({"returncode": out.returncode, "stderr": out.stderr}, f)


_ANALYZE = call("tests.test_checkpoints:analyze_in_background", scratch("analyze", make=True))


@pytest.mark.background
def test_analyze_command_writes_json_and_plots():
    assert _ANALYZE().returncode == 0, _ANALYZE().stderr
    out = scratch("analyze")
    run_dir = out / "run"  # batchnorm, depth 4, width 8, checkpoints at 0, 3, 6
    good, bad = (json.loads((out / f"{step}.json").read_text()) for step in (3, 2))
    assert good["returncode"] == 0, good["stderr"]
    result = json.loads((run_dir / "analysis" / "step_3" / "analysis.json").read_text())
    assert result["step"] == 3 and len(result["layer_stats"]["grad_norms"]) == 4
    assert result["jacobian"]["method"] == "exact" and len(result["jacobian"]["singular_values"]) == 8
    for name in ("layer_norms.png", "jacobian_spectrum.png"):
        assert (run_dir / "analysis" / "step_3" / name).stat().st_size > 10_000
    assert bad["returncode"] == 2 and "no checkpoint at step 2" in bad["stderr"] and "Traceback" not in bad["stderr"]


_ANALYZE_BAD = [
    ([], "--run_dir is required"),
    (["--run_dir=/nonexistent/run"], "/nonexistent/run/config.json not found: not a run folder"),
    (["--run_dir=/nonexistent/run", "--examples=0"], "--examples and --jacobian_examples must be integers >= 1"),
    (["--run_dir=/nonexistent/run", "--step=abc"], "--step=abc"),
]
_ANALYZE_BAD_RUNS = {tuple(args): shell("experiments.analyze", *args) for args, _ in _ANALYZE_BAD}


@pytest.mark.parametrize("args, expected", _ANALYZE_BAD)
def test_analyze_bad_input_is_one_line(args, expected):
    out = _ANALYZE_BAD_RUNS[tuple(args)]()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and expected in out.stderr


def test_a_sweep_or_study_folder_is_named_as_such_not_read_as_a_run(tmp_path):
    from decay.errors import ConfigError

    sweep = tmp_path / "sweep"
    (sweep / "runs" / "mlp-d0002-tanh-none-lr0.1-s0").mkdir(parents=True)
    (sweep / "results.jsonl").write_text("")
    (sweep / "config.json").write_text('{"base": {}, "depths": [2], "seeds": 1}')
    with pytest.raises(
        ConfigError, match=r"is a sweep folder, not a run folder: .*--run_dir=.*mlp-d0002-tanh-none-lr0.1-s0; 1 in all"
    ):
        analysis.load_run(str(sweep))
    study = tmp_path / "claims"
    study.mkdir()
    (study / "config.json").write_text('{"dataset": "digits", "seeds": 5}')
    with pytest.raises(ConfigError, match="holds a study's config.json, not a run's"):
        analysis.load_run(str(study))
    with pytest.raises(ConfigError, match="not found: not a run folder"):
        analysis.load_run(str(tmp_path))
