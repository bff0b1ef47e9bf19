"""Your own model: decay.watch, WatchLog, diagnose and load_run on NNX models decay has never seen, written here."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import decay
from decay import row as rowlib
from decay import watchlog
from decay.errors import ConfigError
from tests.shell import ROOT, call, scratch

# --- models a user might write ------------------------------------------------------------------


class Block(nnx.Module):
    def __init__(self, d, rngs):
        self.lin = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.perturb("h", self.lin(x)))


class Scanned(nnx.Module):
    """tanh layers stacked with nnx.vmap and applied with nnx.scan; a marked point per layer and before the head."""

    def __init__(self, d=6, depth=3, classes=3, rngs=None):
        rngs = rngs or nnx.Rngs(0)

        @nnx.split_rngs(splits=depth)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(d, rngs)

        self.blocks = make(rngs)
        self.head = nnx.Linear(d, classes, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x)

        return self.head(self.perturb("pre_head", body(x, self.blocks)))


class WithBatchNorm(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


class WithDropout(nnx.Module):
    def __init__(self, rngs=None):
        rngs = rngs or nnx.Rngs(0, dropout=1)
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.l1(x))))


class Dense(nnx.Module):
    """A plain deep net: `depth` square layers (a Python list), activation `act`, orthogonal or LeCun init."""

    def __init__(self, width, depth, act, orthogonal=False, bias=True, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        init = nnx.initializers.orthogonal() if orthogonal else nnx.initializers.lecun_normal()
        self.layers = nnx.List([nnx.Linear(width, width, use_bias=bias, kernel_init=init, rngs=rngs) for _ in range(depth)])
        self.act = act

    def __call__(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return x


class PostNormResNet(nnx.Module):
    """The original (v1, post-activation) ResNet block, dense: x <- relu(x + BN2(W2 relu(BN1(W1 x))))."""

    def __init__(self, width, blocks, rngs=None):
        rngs = rngs or nnx.Rngs(0)
        self.w1 = nnx.List([nnx.Linear(width, width, use_bias=False, rngs=rngs) for _ in range(blocks)])
        self.w2 = nnx.List([nnx.Linear(width, width, use_bias=False, rngs=rngs) for _ in range(blocks)])
        self.bn1 = nnx.List([nnx.BatchNorm(width, rngs=rngs) for _ in range(blocks)])
        self.bn2 = nnx.List([nnx.BatchNorm(width, rngs=rngs) for _ in range(blocks)])

    def __call__(self, x):
        for w1, w2, bn1, bn2 in zip(self.w1, self.w2, self.bn1, self.bn2, strict=True):
            x = nnx.relu(x + bn2(w2(nnx.relu(bn1(w1(x))))))
        return x


def xent(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def square(model, x):
    return 0.5 * jnp.mean(jnp.sum(model(x) ** 2, axis=-1))


def batch(n=8, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, d)), jnp.float32), jnp.asarray(rng.integers(0, classes, n), jnp.int32)


# --- the numbers ---------------------------------------------------------------------------------


def test_norms_equal_nnx_grad_and_a_hand_written_forward():
    model = Scanned()
    w = decay.watch(model, xent, points="marked")
    b = batch()
    loss, grads, stats = nnx.jit(w.value_and_grad)(model, b)
    assert w.point_names == ["blocks.h[0]", "blocks.h[1]", "blocks.h[2]", "pre_head"]
    # Parameters in forward order, the stacked ones split per layer.
    assert w.param_names == [
        *[f"blocks.lin.{k}[{i}]" for i in range(3) for k in ("kernel", "bias")],
        "head.kernel",
        "head.bias",
    ]
    ref = nnx.grad(xent)(model, b)
    kern, bias = ref["blocks"]["lin"]["kernel"][...], ref["blocks"]["lin"]["bias"][...]
    expected = [np.linalg.norm(a[i]) for i in range(3) for a in (kern, bias)]
    expected += [np.linalg.norm(ref["head"]["kernel"][...]), np.linalg.norm(ref["head"]["bias"][...])]
    np.testing.assert_allclose(stats["grad_norms"], expected, rtol=1e-6)
    weights = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(stats["weight_norms"][0], np.linalg.norm(weights["blocks"]["lin"]["kernel"][...][0]), rtol=1e-6)

    # The forward pass written out, with explicit probes: d loss / d probe = the backprop signal there.
    W, B = weights["blocks"]["lin"]["kernel"][...], weights["blocks"]["lin"]["bias"][...]
    Wh, Bh = weights["head"]["kernel"][...], weights["head"]["bias"][...]
    x, y = b

    def hand(probes, last):
        h, hs = x, []
        for i in range(3):
            pre = h @ W[i] + B[i] + probes[i]
            hs.append(pre)
            h = jnp.tanh(pre)
        h = h + last
        logits = h @ Wh + Bh
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), (hs, h)

    (hand_loss, (hs, last)), (gp, gl) = jax.value_and_grad(hand, argnums=(0, 1), has_aux=True)(
        jnp.zeros((3, 8, 6)), jnp.zeros((8, 6))
    )
    assert float(loss) == pytest.approx(float(hand_loss), rel=1e-6)
    want = [np.linalg.norm(gp[i]) for i in range(3)] + [np.linalg.norm(gl)]
    np.testing.assert_allclose(stats["signal_norms"], want, rtol=1e-5)
    np.testing.assert_allclose(stats["act_rms"], [np.sqrt(np.mean(np.square(h))) for h in [*hs, last]], rtol=1e-5)
    u = np.asarray(last) / np.linalg.norm(last, axis=1, keepdims=True)
    c = (np.sum(u.sum(0) ** 2) - 8) / (8 * 7)
    assert float(stats["c"][-1]) == pytest.approx(c, rel=1e-4, abs=1e-6)
    assert float(stats["dead_fraction"][0]) == pytest.approx(np.mean(np.all(np.asarray(hs[0]) <= 0, axis=0)))


@pytest.mark.parametrize("make", [WithBatchNorm, WithDropout, Scanned], ids=["batchnorm", "dropout", "scanned"])
def test_watched_step_trains_bitwise_like_the_plain_step(make):
    """Loss and every variable (parameters, batch statistics, optimizer and RNG state) bitwise after 3 steps."""

    def train(watched):
        model = make()
        opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
        w = decay.watch(model, xent)

        @nnx.jit
        def plain(m, o, b):
            loss, g = nnx.value_and_grad(xent)(m, b)
            o.update(m, g)
            return loss

        step = nnx.jit(lambda m, o, b: w.step(m, o, b)[0]) if watched else plain
        losses = [np.asarray(step(model, opt, batch(seed=s))) for s in range(3)]
        # Everything but RNG keys (not numbers) and the perturbations Flax leaves on a module whose perturb ran outside
        # nnx.capture (the plain step's: zeros, never trained)
        leaves = jax.tree.leaves(nnx.state((model, opt), nnx.Not(nnx.Any(nnx.RngKey, nnx.Perturbation))))
        return losses, [np.asarray(a) for a in leaves]

    (l0, s0), (l1, s1) = train(False), train(True)
    assert [a.tobytes() for a in l0] == [a.tobytes() for a in l1]
    assert len(s0) == len(s1) and all(a.tobytes() == b.tobytes() for a, b in zip(s0, s1, strict=True))


def test_update_ratio_is_the_optimizer_step_over_the_weight():
    model = WithBatchNorm()
    w = decay.watch(model, xent, points="linear")
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    before = nnx.state(model, nnx.Param)["l1"]["kernel"][...].copy()
    grad = nnx.grad(xent)(nnx.clone(model), batch())["l1"]["kernel"][...]
    _, stats = nnx.jit(w.step)(model, opt, batch())
    i = w.param_names.index("l1.kernel")
    assert float(stats["update_ratio"][i]) == pytest.approx(0.1 * np.linalg.norm(grad) / np.linalg.norm(before), rel=1e-5)
    assert w.point_names == ["l1.out", "l2.out"]


# --- diagnosis -----------------------------------------------------------------------------------


def test_diagnose_says_vanishing_for_a_deep_sigmoid_net(capsys):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((64, 32)), jnp.float32)
    model = Dense(32, 24, nnx.sigmoid)
    d = decay.diagnose(model, square, x)
    assert d.verdict == "vanishing" and d.chi < 0.5
    assert d.chi_along == "layers.*.out" and len(d.points) == 24
    assert "vanishing" in capsys.readouterr().out
    # Measuring does not change the model.
    assert np.array_equal(
        nnx.state(model, nnx.Param)["layers"][0]["kernel"][...], Dense(32, 24, nnx.sigmoid).layers[0].kernel[...]
    )


def test_diagnose_says_exploding_for_a_post_norm_batchnorm_resnet():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((64, 32)), jnp.float32)
    model = PostNormResNet(32, 16)
    stats_before = nnx.state(model, nnx.BatchStat)["bn1"][0]["mean"][...].copy()
    d = decay.diagnose(model, square, x, show=False)
    assert d.verdict == "exploding", str(d)
    assert d.chi_along == "w1.*.out" and d.chi > 1.2
    assert np.array_equal(nnx.state(model, nnx.BatchStat)["bn1"][0]["mean"][...], stats_before)  # batch stats untouched


def test_diagnose_gives_chi_one_for_an_orthogonal_linear_net():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((16, 24)), jnp.float32)
    d = decay.diagnose(Dense(24, 16, lambda h: h, orthogonal=True, bias=False), square, x, show=False)
    assert d.chi == pytest.approx(1.0, abs=1e-4)
    assert d.verdict == "stable" and not d.collapses and not d.blowups


# --- bad input -----------------------------------------------------------------------------------


class NoParams(nnx.Module):
    def __call__(self, x):
        return x


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_bad_input_gives_one_line_errors():
    with pytest.raises(ConfigError) as e:
        decay.watch(NoParams(), xent)
    assert "no nnx.Param" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        decay.watch({"not": "a module"}, xent)
    assert "flax.nnx.Module" in _one_line(e)
    model = Scanned()
    with pytest.raises(ConfigError) as e:
        nnx.jit(decay.watch(model, xent, points=("blocks.h", "nope")).value_and_grad)(model, batch())
    assert "'nope' is not a probe point" in _one_line(e) and "pre_head" in str(e.value)
    with pytest.raises(ConfigError) as e:
        nnx.jit(decay.watch(model, lambda m, b: m(b[0]).sum(-1)).value_and_grad)(model, batch())
    assert "not a scalar" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        nnx.jit(decay.watch(model, xent).value_and_grad)(model, batch(d=5))
    assert "do not fit Scanned" in _one_line(e) and "(8, 5)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        decay.watch(model, xent, points="every")
    assert "points" in _one_line(e)


# --- the outputs of a sweep run --------------------------------------------------------------------


def test_watch_log_writes_a_run_that_load_run_reopens(tmp_path, monkeypatch):
    model = Scanned()
    w = decay.watch(model, xent, tier="standard")
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    step = nnx.jit(w.step)
    log = decay.WatchLog(str(tmp_path / "run"), w, every=4)
    transfers = []
    real_get = jax.device_get
    monkeypatch.setattr(watchlog.jax, "device_get", lambda x: transfers.append(1) or real_get(x))
    for s in range(6):
        _, stats = step(model, opt, batch(seed=s))
        log.record(s, stats)
    row = log.close(model)
    assert len(transfers) == 2  # once per 4 steps and once at the end: never per layer or per step
    assert set(row) <= set(rowlib.WATCH_NAMES)
    assert set(row) >= {f.name for f in rowlib.WATCH_FIELDS if f.tier in ("basic", "standard")} - {"curvature"}
    assert row["points"] == w.point_names and len(row["signal_norms_init"]) == len(w.point_names)
    assert row["chi_along"] == "blocks.h[*]" and row["steps"] == 6 and row["loss_history"][-1][0] == 5
    assert json.loads((tmp_path / "run" / "results.jsonl").read_text()) == row
    assert (tmp_path / "run" / "gradient_flow.png").stat().st_size > 10_000

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "run"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "signal_norm/layer_00", "signal_norm/layer_03", "c/layer_03", "grad_norm/blocks.lin.kernel[2]"} <= tags
    assert len(acc.Scalars("grad_norm/head.kernel")) == 6

    with pytest.raises(ConfigError) as e:
        decay.load_run(str(tmp_path / "run"))
    assert "pass model=" in _one_line(e)
    fresh = Scanned(rngs=nnx.Rngs(7))
    run = decay.load_run(str(tmp_path / "run"), model=fresh)
    assert run.step == 6 and run.row["name"] == "run"
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(fresh, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_curvature_of_a_quadratic_loss_is_exact():
    """Loss 0.5 * mean_i ||W x_i||^2 of one linear layer, inputs with orthogonal columns: the Hessian is
    X^T X / n (x) I = diag(scales^2) (x) I, so the top eigenvalue is exact and Rademacher's trace estimate too."""
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((32, 5)))
    scales = np.array([2.0, 1.0, 0.8, 0.5, 0.3])
    x = jnp.asarray(np.sqrt(32) * q * scales, jnp.float32)
    model = nnx.Linear(5, 3, use_bias=False, rngs=nnx.Rngs(0))
    w = decay.watch(model, square, points="linear")
    out = nnx.jit(w.curvature)(model, x, jax.random.key(0))
    assert float(out["hessian_top"]) == pytest.approx(4.0, rel=1e-4)
    assert float(out["hessian_trace"]) == pytest.approx(3 * np.sum(scales**2), rel=1e-4)
    np.testing.assert_allclose(out["hessian_trace_layers"], [3 * np.sum(scales**2)], rtol=1e-4)


# --- installed, as a user's project uses it --------------------------------------------------------


def install_and_run_examples(out_dir: str) -> None:
    """Installs decay into a folder outside the repository and runs both examples (tiny) and a mesh check from a third."""
    out = pathlib.Path(out_dir)
    pkg, site, user = out / "pkg", out / "site", out / "user"
    for p in (pkg, user):
        p.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, pkg / name)
    shutil.copytree(ROOT / "decay", pkg / "decay", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("transformer.py", "resnet.py"):
        shutil.copy(ROOT / "examples" / name, user / name)
    shutil.copy(pathlib.Path(__file__).with_name("watch_mesh.py"), user / "watch_mesh.py")
    log = []
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--target",
        str(site),
        str(pkg),
    ]
    runs = [
        ("install", pip, {}),
        ("where", [sys.executable, "-c", "import decay; print(decay.__file__)"], {}),
        (
            "transformer",
            [
                sys.executable,
                "transformer.py",
                f"--workdir={out / 'transformer'}",
                "--depth=3",
                "--dim=16",
                "--heads=2",
                "--seq_len=8",
                "--steps=4",
                "--batch=8",
            ],
            {},
        ),
        (
            "resnet",
            [sys.executable, "resnet.py", f"--workdir={out / 'resnet'}", "--blocks=2", "--channels=4", "--steps=4", "--batch=16"],
            {},
        ),
        ("mesh", [sys.executable, "watch_mesh.py"], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}),
    ]
    for name, cmd, extra in runs:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
        env.update({"PYTHONPATH": str(site), **extra})
        p = subprocess.run(cmd, cwd=user, env=env, capture_output=True, text=True, timeout=600)
        log.append({"name": name, "code": p.returncode, "out": p.stdout[-3000:], "err": p.stderr[-3000:]})
        if p.returncode:
            break
    (out / "log.json").write_text(json.dumps(log))


_EXAMPLES = call("tests.test_watch:install_and_run_examples", scratch("watch_examples"))


@pytest.mark.background
def test_examples_run_against_the_installed_package():
    assert _EXAMPLES().returncode == 0, _EXAMPLES().stderr
    out = scratch("watch_examples")
    log = {e["name"]: e for e in json.loads((out / "log.json").read_text())}
    for name in ("install", "where", "transformer", "resnet", "mesh"):
        assert name in log and log[name]["code"] == 0, log.get(name, log)
    assert log["where"]["out"].strip().startswith(str(out / "site"))  # not the repository's copy
    for name in ("transformer", "resnet"):
        row = json.loads((out / name / "results.jsonl").read_text())
        assert row["steps"] == 4 and row["verdict"] in ("vanishing", "stable", "exploding")
        assert (out / name / "gradient_flow.png").exists() and (out / name / "checkpoints" / "4").is_dir()
        assert "decay.diagnose" in log[name]["out"]
    assert json.loads((out / "resnet" / "results.jsonl").read_text())["chi_along"] == "blocks.*.conv1.out"
    assert json.loads((out / "transformer" / "results.jsonl").read_text())["points"][0] == "blocks.residual[0]"
    assert "mesh ok" in log["mesh"]["out"]


def test_pyproject_pins_agree_with_requirements():
    import tomllib

    def pins(lines):
        return dict(line.split("==") for line in lines)

    req = pins(line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and line[0] != "#")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = pins(project["dependencies"])
    dev = pins(project["optional-dependencies"]["dev"])
    assert not set(deps) & set(dev)
    for name, version in {**deps, **dev}.items():
        assert req.get(name) == version, name
    assert set(req) - set(deps) - set(dev) == {"setuptools"}  # the build backend only


def test_docs_list_every_row_key_of_a_watched_run():
    text = (ROOT / "docs" / "watch.md").read_text()
    table = text[text.index("The row's keys") : text.index("## One-shot diagnosis")]
    listed = {k for cell in table.split("|") for k in cell.replace("`", " ").replace(",", " ").split() if k in rowlib.WATCH_NAMES}
    assert listed == set(rowlib.WATCH_NAMES)
