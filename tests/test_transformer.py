"""The transformer family, its tasks (associative recall, patch digits) and the learning-rate warm-up.

Every block computes its formula, written out here by hand from the model's parameters (DeepNorm's
alpha in the forward and beta in the init, ReZero the identity at init); the probes measure the
gradient of the hand-written net's residual stream and sublayer outputs; a causal model's position i
reads no later token; the generators make what they promise; warm-up scales the first updates by
(step + 1) / warmup_steps; bad settings are one-line errors that name the flag.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from decay import data, families, optim, tasks, theory
from decay.errors import ConfigError
from decay.families import transformer
from decay.families.transformer import check
from decay.step import Net, apply, grads_and_stats, loss_fn
from decay.validation import validate_run
from tests.conftest import tiny_config

N, FEATURES = 5, 10  # tokens per sequence, input features per token (the copy task's one-hot width)
CLASSES = data.COPY_SYMBOLS + 1  # the copy task's outputs per position
WIDTH, HEADS, DEPTH, RATIO = 8, 2, 2, 2
BATCH = N  # the mask test's N variants of one sequence share the forward's batch shape
EPS = 1e-5  # the norms' epsilon

# Every block once (pre_ln with rmsnorm, the others' norms layernorm), causal or not; per-position outputs.
CASES = {
    "post_ln": ("layernorm", False),
    "pre_ln": ("rmsnorm", True),
    "deepnorm": ("layernorm", False),
    "rezero": ("none", True),
    "no_norm": ("none", False),
}


def _cfg(block: str = "pre_ln", **overrides):
    norm, causal = CASES.get(block, ("layernorm", False))
    settings = dict(model="transformer", dataset="copy", seq_len=1, width=WIDTH, heads=HEADS, depth=DEPTH, mlp_ratio=RATIO)
    settings.update(batch_size=BATCH, block=block, norm=norm, causal=causal, activation="tanh")
    return tiny_config(**{**settings, **overrides})


def _build(cfg):
    return families.build(cfg, (N, FEATURES), CLASSES)


def _pure(params) -> dict:
    return nnx.to_pure_dict(params)


def _perturbed(params, seed: int):
    """The parameters plus N(0, 0.3^2) noise: norm scales off 1, biases and ReZero's gains off 0."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: a + 0.3 * rng.standard_normal(a.shape).astype(np.float32), params)


def _batch(seed: int):
    """Inputs [B, 5, 10] and per-position targets [B, 5] in 0..8."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, N, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, (BATCH, N)).astype(np.int32)


# ---- The net written out by hand (numpy in float64, or jax.numpy to differentiate): attention head by head,
# the MLP, the norms, the five blocks, from the model's parameters.


def _linear(p, x):
    return x @ p["kernel"] + p["bias"]


def _norm(xp, kind: str, p: dict, x):
    if kind == "layernorm":
        mean = xp.mean(x, axis=-1, keepdims=True)
        var = xp.mean(xp.square(x - mean), axis=-1, keepdims=True)
        return (x - mean) / xp.sqrt(var + EPS) * p["ln"]["scale"] + p["ln"]["bias"]
    assert kind == "rmsnorm", kind
    return x / xp.sqrt(xp.mean(xp.square(x), axis=-1, keepdims=True) + EPS) * p["rms"]["scale"]


def _attention(xp, blk: dict, x, causal: bool):
    n, d = x.shape[1], WIDTH // HEADS
    q, k, v = _linear(blk["q"], x), _linear(blk["k"], x), _linear(blk["v"], x)
    heads = []
    for h in range(HEADS):
        cols = slice(h * d, (h + 1) * d)
        scores = xp.einsum("bid,bjd->bij", q[..., cols], k[..., cols]) / math.sqrt(d)
        if causal:
            later = np.arange(n)[None, :] > np.arange(n)[:, None]  # [i, j]: token j comes after token i
            scores = xp.where(later, -np.inf, scores)
        weights = xp.exp(scores - xp.max(scores, axis=-1, keepdims=True))
        weights = weights / xp.sum(weights, axis=-1, keepdims=True)
        heads.append(xp.einsum("bij,bjd->bid", weights, v[..., cols]))
    return _linear(blk["out"], xp.concatenate(heads, axis=-1))


def _mlp(xp, blk: dict, x):
    return _linear(blk["mlp_out"], xp.tanh(_linear(blk["mlp_in"], x)))


def _block(xp, cfg, blk: dict, x, dr=0.0, da=0.0, df=0.0):
    """(stream after the block, attention output, MLP output), the perturbations added to the three."""
    norm = lambda name, t: _norm(xp, cfg.norm, blk[name], t)  # noqa: E731
    if cfg.block == "pre_ln":
        a = _attention(xp, blk, norm("norm1", x), cfg.causal) + da
        x = x + a
        f = _mlp(xp, blk, norm("norm2", x)) + df
        x = x + f
    elif cfg.block in ("post_ln", "deepnorm"):
        alpha = (2.0 * cfg.depth) ** 0.25 if cfg.block == "deepnorm" else 1.0  # DeepNorm: (2N)^(1/4)
        a = _attention(xp, blk, x, cfg.causal) + da
        x = norm("norm1", alpha * x + a)
        f = _mlp(xp, blk, x) + df
        x = norm("norm2", alpha * x + f)
    else:
        g = blk["rezero"] if cfg.block == "rezero" else np.ones(2)
        a = _attention(xp, blk, x, cfg.causal) + da
        x = x + g[0] * a
        f = _mlp(xp, blk, x) + df
        x = x + g[1] * f
    return x + dr, a, f


def _embedded(p: dict, x):
    return _linear(p["embed"], x) + p["pos"]


def _hand_forward(xp, cfg, p: dict, x, perturb=None):
    """(head outputs, [(stream, attention, mlp) per block]) of the hand-written net; perturb[kind][block] added."""
    h, points = _embedded(p, x), []
    for i in range(cfg.depth):
        blk = jax.tree.map(lambda a, i=i: a[i], p["blocks"])
        h, a, f = _block(xp, cfg, blk, h, *((0.0,) * 3 if perturb is None else (d[i] for d in perturb)))
        points.append((h, a, f))
    if cfg.block == "pre_ln":
        h = _norm(xp, cfg.norm, p["final_norm"], h)
    if data.task_of(cfg.dataset) == "per_position":
        return _linear(p["head"], h), points
    return _linear(p["head"], h[:, -1] if cfg.causal else xp.mean(h, axis=1)), points


def _float64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _rms(t) -> float:
    return float(np.sqrt(np.mean(np.square(t))))


# ---- Fixtures: each model built, its parameters perturbed and its forward compiled once for the module.


class Compiled:
    """A transformer of `cfg`, perturbed parameters, and its compiled forward (outputs, per-point RMS) at any parameters."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model = _build(cfg)
        graphdef, self.init_params, self.batch_stats = nnx.split(self.model, nnx.Param, nnx.BatchStat)
        self.params = _perturbed(self.init_params, 1)
        self.graphdef = graphdef
        self._forward = jax.jit(lambda params, bs, x: apply(graphdef, params, bs, x, None, False)[:2])

    def forward(self, x, params=None):
        out, aux = self._forward(self.params if params is None else params, self.batch_stats, x)
        return np.asarray(out), np.asarray(aux["act_rms"])


@pytest.fixture(scope="module")
def compiled() -> dict[str, Compiled]:
    return {block: Compiled(_cfg(block)) for block in CASES}


# ---- 1. Each block computes its formula.


@pytest.mark.parametrize("block", list(CASES))
def test_each_block_computes_its_formula_from_the_models_parameters(compiled, block):
    net = compiled[block]
    x, _ = _batch(1)
    out, act_rms = net.forward(x)
    want, points = _hand_forward(np, net.cfg, _float64(_pure(net.params)), x.astype(np.float64))
    assert out.shape == (BATCH, N, CLASSES)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    # The probe points, kind-major: every block's stream, then every attention output, then every MLP output.
    np.testing.assert_allclose(act_rms, [_rms(points[i][kind]) for kind in range(3) for i in range(DEPTH)], rtol=1e-4)


def test_deepnorm_draws_value_output_and_mlp_kernels_at_beta_times_the_post_ln_init(compiled):
    beta = (8.0 * DEPTH) ** -0.25
    deep = _pure(compiled["deepnorm"].init_params)["blocks"]
    post = _pure(compiled["post_ln"].init_params)["blocks"]  # the same seed: the same keys
    for name in ("q", "k"):
        np.testing.assert_array_equal(deep[name]["kernel"], post[name]["kernel"])
    for name in ("v", "out", "mlp_in", "mlp_out"):
        assert float(np.std(post[name]["kernel"])) > 0.1
        np.testing.assert_allclose(deep[name]["kernel"], beta * post[name]["kernel"], rtol=1e-6)


def test_rezero_blocks_are_the_identity_at_init(compiled):
    net = compiled["rezero"]
    x, _ = _batch(2)
    embedded = _embedded(_pure(net.init_params), x)
    out, act_rms = net.forward(x, net.init_params)
    # The stream after every block is the embedding plus positions; the branches compute something, dropped by a = 0.
    np.testing.assert_allclose(act_rms[:DEPTH], np.full(DEPTH, _rms(embedded)), rtol=1e-6)
    assert np.all(act_rms[DEPTH:] > 0.01)
    np.testing.assert_allclose(out, _linear(_pure(net.init_params)["head"], embedded), rtol=1e-5, atol=1e-6)


# ---- 2, 3. The probes measure dL/d(stream) and dL/d(sublayer output) of the hand-written net.


def _hand_probe_grads(cfg, p: dict, x, y) -> list:
    """dL/d stream_l, then dL/d attention_l, then dL/d mlp_l of the hand-written net (traced, jax.numpy)."""

    def loss(perturb):
        return tasks.mean_loss("per_position", _hand_forward(jnp, cfg, p, x, perturb)[0], y)

    zeros = [[jnp.zeros((x.shape[0], N, WIDTH)) for _ in range(cfg.depth)] for _ in range(3)]
    return [g for kind in jax.grad(loss)(zeros) for g in kind]


def _signals(net: Compiled, params, x, y, through_train_step: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the model's probe signal norms, the hand-written net's), both compiled in one program per net."""
    if not hasattr(net, "_signals"):
        fam = families.of(net.cfg)
        shape = (N, FEATURES)
        probed = Net(net.graphdef, fam, fam.points(net.cfg, shape), fam.point_shape(net.cfg, shape), "per_position")

        def both(params, x, y):
            if through_train_step:  # the train step's signal_norms
                got = grads_and_stats(probed, params, net.batch_stats, x, y, "basic")[2]["signal_norms"]
            else:  # d loss / d zero probes
                loss = lambda pr: loss_fn(net.graphdef, params, pr, net.batch_stats, x, y, task="per_position")[0]  # noqa: E731
                g = jax.grad(loss)(jnp.zeros((probed.points, x.shape[0], *probed.point_shape)))
                got = jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 2, 3)))
            want = jnp.stack([jnp.linalg.norm(g) for g in _hand_probe_grads(net.cfg, _pure(params), x, y)])
            return got, want

        net._signals = jax.jit(both)
    return tuple(map(np.asarray, net._signals(params, x, y)))


@pytest.mark.parametrize(("block", "through_train_step"), [("deepnorm", False), ("rezero", True)])
def test_signal_norms_are_the_gradients_of_the_hand_written_stream_and_sublayer_outputs(compiled, block, through_train_step):
    net = compiled[block]  # ReZero's gains perturbed off 0, so that every point carries a signal
    got, want = _signals(net, net.params, *_batch(3), through_train_step)
    assert got.shape == (3 * DEPTH,) and np.all(want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_rezero_at_init_carries_the_stream_signal_unchanged_through_every_block(compiled):
    net = compiled["rezero"]
    s, _ = _signals(net, net.init_params, *_batch(4), True)
    stream, branches = s[:DEPTH], s[DEPTH:]
    assert np.all(stream > 0)
    np.testing.assert_allclose(stream, np.full(DEPTH, stream[-1]), rtol=1e-6)
    np.testing.assert_array_equal(branches, 0.0)  # a sublayer's output reaches the loss only through its zero gain


# ---- 4. The attention mask.


@pytest.mark.parametrize("block", list(CASES))
def test_a_causal_models_position_i_ignores_later_tokens_and_a_non_causal_ones_does_not(compiled, block):
    net = compiled[block]
    x, _ = _batch(5)
    x, other = x[:1], x[1:2]
    # Row 0: x; row i + 1: x with every token after position i replaced.
    variants = np.concatenate([x] + [np.where(np.arange(N)[None, :, None] > i, other, x) for i in range(N - 1)])
    assert variants.shape == (BATCH, N, FEATURES)
    out, _ = net.forward(variants)
    for i in range(N - 1):
        same = np.allclose(out[i + 1, : i + 1], out[0, : i + 1], rtol=1e-6, atol=1e-6)
        assert same == net.cfg.causal, (i, net.cfg.causal)
        assert not np.allclose(out[i + 1, i + 1 :], out[0, i + 1 :], rtol=1e-3, atol=1e-4)  # the changed tokens' own outputs


# ---- 5. The tasks' generators.


def test_associative_recall_asks_for_the_value_of_one_of_its_distinct_keys():
    pairs, n = 4, 300
    x, y = data.associative_recall(n, pairs, np.random.default_rng(0))
    assert x.shape == (n, 2 * pairs + 1, 2 * data.RECALL_KEYS) and y.shape == (n,) and y.dtype == np.int32
    assert set(np.unique(x)) == {0.0, 1.0} and np.all(x.sum(axis=-1) == 1)
    tokens = np.argmax(x, axis=-1)
    keys, values, query = tokens[:, 0:-1:2], tokens[:, 1:-1:2] - data.RECALL_KEYS, tokens[:, -1]
    assert keys.min() >= 0 and keys.max() < data.RECALL_KEYS
    assert values.min() >= 0 and values.max() < data.RECALL_KEYS
    for row in range(n):
        assert len(set(keys[row])) == pairs
        asked = list(keys[row]).index(query[row])  # ValueError if the query is not one of the keys
        assert y[row] == values[row, asked]
    assert len(set(np.unique(query))) > 1 and len(np.unique(y)) > 1


def test_recall_is_determined_by_the_data_seed_and_its_input_blind_baseline_is_ln_32():
    pairs = 1
    a, b, c = (data.load("recall", None, seed, 0.2, pairs) for seed in (0, 0, 1))
    for split in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))
    assert not np.array_equal(a.x_train, c.x_train) and not np.array_equal(a.y_train, c.y_train)
    assert a.x_train.shape[1:] == (2 * pairs + 1, 2 * data.RECALL_KEYS) and a.num_classes == data.RECALL_KEYS
    assert a.task == "classification" and a.chance == pytest.approx(math.log(32))
    y = np.concatenate([a.y_train, a.y_val, a.y_test])
    # Uniform over the 32 values: cross-entropy ln 32 exactly, whatever the targets.
    uniform = tasks.mean_loss("classification", jnp.zeros((len(y), 32)), jnp.asarray(y))
    assert float(uniform) == pytest.approx(math.log(32), rel=1e-6)
    # The best constant prediction, the values' frequencies: their entropy, within 0.05 of ln 32.
    freq = np.bincount(y, minlength=32) / len(y)
    best = -float(np.sum(freq[freq > 0] * np.log(freq[freq > 0])))
    assert math.log(32) - best < 0.05


def test_patch_digits_are_sixteen_2x2_patches_that_reassemble_to_the_digits():
    patches, digits = data.load("patch_digits", None, 0), data.load("digits", None, 0)
    assert patches.task == "classification" and patches.num_classes == 10
    for split in ("train", "val", "test"):
        p, img = getattr(patches, f"x_{split}"), getattr(digits, f"x_{split}")[..., 0]
        assert p.shape == (img.shape[0], 16, 4)
        np.testing.assert_array_equal(getattr(patches, f"y_{split}"), getattr(digits, f"y_{split}"))
        rebuilt = np.zeros_like(img)
        for token in range(16):
            row, col = divmod(token, 4)  # patches row by row
            for pixel in range(4):
                dr, dc = divmod(pixel, 2)  # pixels row by row within a patch
                rebuilt[:, 2 * row + dr, 2 * col + dc] = p[:, token, pixel]
        np.testing.assert_array_equal(rebuilt, img)


# ---- 6. The learning-rate warm-up.


def test_warmup_scales_the_first_sgd_updates_by_step_plus_one_over_warmup_steps():
    lr, warmup = 0.1, 4
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    for tx in (optim.build("sgd", lr, warmup_steps=warmup), optim.of(tiny_config(learning_rate=lr, warmup_steps=warmup))):
        state = tx.init(params)
        for step, factor in enumerate([1 / 4, 2 / 4, 3 / 4, 1.0, 1.0, 1.0]):
            grads = {"w": jnp.array([0.5, 1.0 + step, -2.0])}
            updates, state = tx.update(grads, state, params)
            np.testing.assert_allclose(updates["w"], -lr * factor * grads["w"], rtol=1e-6)
            params = optax.apply_updates(params, updates)
    plain = optim.build("sgd", lr)  # no warm-up: the full rate from the first step
    updates, _ = plain.update({"w": jnp.ones(3)}, plain.init(params), params)
    np.testing.assert_allclose(updates["w"], -lr * jnp.ones(3), rtol=1e-6)


# ---- 7. Bad settings: one-line errors that name the flag.


def _one_line_error(call, *flags: str) -> None:
    with pytest.raises(ConfigError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for flag in flags:
        assert flag in message, message


@pytest.mark.parametrize(
    ("settings", "flags"),
    [
        (dict(width=10, heads=4), ("--width=10", "--heads=4")),
        (dict(block="pre_ln", norm="none"), ("--block=pre_ln", "--norm")),
        (dict(block="deepnorm", norm="none"), ("--block=deepnorm", "--norm")),
        (dict(block="rezero", norm="layernorm"), ("--block=rezero", "--norm")),
        (dict(block="no_norm", norm="rmsnorm"), ("--block=no_norm", "--norm")),
        (dict(block="sandwich", norm="layernorm"), ("--block='sandwich'",)),
        (dict(positions="rotary"), ("--positions='rotary'", "learned, sinusoidal")),
        (dict(mlp_ratio=0), ("--mlp_ratio=0", ">= 1")),
    ],
    ids=["width_heads", "pre_ln_none", "deepnorm_none", "rezero_layernorm", "no_norm_rmsnorm", "block", "positions", "ratio"],
)
def test_validate_run_rejects_bad_transformer_settings_in_one_line(settings, flags):
    cfg = _cfg(**settings)
    _one_line_error(lambda: validate_run(cfg), *flags)
    _one_line_error(lambda: _build(cfg), *flags)


@pytest.mark.parametrize(("settings", "flag"), [(dict(warmup_steps=-1), "--warmup_steps=-1"), (dict(max_len=-1), "--max_len=-1")])
def test_negative_warmup_or_max_len_is_a_one_line_error(settings, flag):
    _one_line_error(lambda: validate_run(_cfg(**settings)), flag, ">= 0")


@pytest.mark.parametrize("block", ["post_ln", "pre_ln", "deepnorm", "rezero", "no_norm"])
def test_validate_run_accepts_every_block_with_the_norm_it_places(block):
    validate_run(_cfg(block))
    validate_run(_cfg(block, dataset="recall", seq_len=2, causal=False))


def test_sequences_longer_than_max_len_are_a_one_line_error():
    cfg = _cfg("pre_ln", max_len=N - 1)
    _one_line_error(lambda: check(cfg, N), f"--max_len={N - 1}", f"{N} tokens")
    _one_line_error(lambda: _build(cfg), "--max_len")
    check(dataclasses.replace(cfg, max_len=N), N)  # exactly enough positions
    check(dataclasses.replace(cfg, max_len=0), N)  # 0: the data's length


def test_recall_with_more_pairs_than_keys_is_a_one_line_error():
    _one_line_error(lambda: data.load("recall", None, 0, 0.2, data.RECALL_KEYS + 1), "--seq_len=33", "--dataset=recall")
    x, _ = data.associative_recall(4, data.RECALL_KEYS, np.random.default_rng(0))  # 32 pairs: every key once
    np.testing.assert_array_equal(np.sort(np.argmax(x[:, 0:-1:2], axis=-1), axis=1), np.tile(np.arange(32), (4, 1)))


# ---- Theory: the residual stream's q at init (decay.families.transformer.predict).


@pytest.mark.parametrize("block", ["pre_ln", "rezero"])
def test_the_streams_q_at_init_follows_the_residual_theory_at_width_512(block):
    """pre_ln: q grows linearly, inside the predicted band, the MLP outputs' q is sigma_2^2 E[gelu(z)^2];
    rezero: the stream's q is the embedding's at every block, chi = 1."""
    depth, tokens, features, width = 6, 16, 8, 512
    norm = "layernorm" if block == "pre_ln" else "none"
    cfg = tiny_config(
        model="transformer", dataset="patch_digits", width=width, heads=4, depth=depth, mlp_ratio=2, block=block, norm=norm,
        activation="gelu", instruments="standard",
    )  # fmt: skip
    x = np.random.default_rng(0).standard_normal((32, tokens, features)).astype(np.float32)
    want = transformer.predict(cfg, data.Dataset("t", x, None, x, None, 10))
    model = families.build(cfg, (tokens, features), 10)
    q = np.asarray(nnx.jit(lambda m, x: m(x, stats=True)[1]["q"])(model, x))
    low, high = np.array(want["q_theory_low"]), np.array(want["q_theory_high"])
    stream, attention, mlp = q[:depth], q[depth : 2 * depth], q[2 * depth :]
    q0 = float(np.mean(np.square(x, dtype=np.float64))) + 0.02**2  # the embedding's (lecun_normal) plus learned positions
    s_in = 1.0 if block == "pre_ln" else q0  # the sublayers' input: normed, or the stream itself
    f = float(theory.variance_map("gelu", 2.0, 0.0, 2.0 * s_in))  # he_normal for gelu: sigma^2 = 2 for every kernel
    np.testing.assert_allclose(low[2 * depth :], f, rtol=1e-6)
    np.testing.assert_allclose(high[2 * depth :], f, rtol=1e-6)
    a_low, a_high = 2.0 * 2.0 * s_in / tokens, 2.0 * 2.0 * s_in  # uniform attention over uncorrelated tokens; all alike
    np.testing.assert_allclose(low[depth : 2 * depth], a_low, rtol=1e-6)
    np.testing.assert_allclose(high[depth : 2 * depth], a_high, rtol=1e-6)
    blocks = np.arange(1, depth + 1)
    grows = block == "pre_ln"  # rezero: q stays q_0
    np.testing.assert_allclose(low[:depth], q0 + grows * blocks * (a_low + f), rtol=1e-6)
    np.testing.assert_allclose(high[:depth], q0 + grows * blocks * (a_high + f), rtol=1e-6)
    np.testing.assert_allclose(np.mean(mlp), f, rtol=0.08)
    assert np.all(attention >= low[depth : 2 * depth]) and np.all(attention <= high[depth : 2 * depth])
    if block == "pre_ln":
        assert np.all(stream >= 0.9 * low[:depth]) and np.all(stream <= 1.1 * high[:depth])
        slope, intercept = np.polyfit(np.arange(1, depth + 1), stream, 1)
        assert np.corrcoef(np.arange(depth), stream)[0, 1] > 0.99  # linear in depth
        assert (high[1] - high[0]) * 1.1 > slope > (low[1] - low[0]) * 0.9
        assert want["chi_theory"] is None and "pre_ln residual stream" in want["theory"]
    else:
        np.testing.assert_allclose(stream, stream[0], rtol=1e-6)
        np.testing.assert_allclose(stream[0], low[0], rtol=0.08)
        assert want["chi_theory"] == 1.0 and want["signal_profile_theory"] == [1.0] * depth


def test_blocks_without_a_residual_theory_say_so():
    for block in ("post_ln", "deepnorm", "no_norm", "no_skip"):
        cfg = _cfg(block, **({"norm": "none"} if block == "no_skip" else {}))
        got = transformer.predict(cfg, data.Dataset("t", np.ones((2, N, FEATURES), np.float32), None, None, None, 9))
        assert got["theory"].startswith("no theory") and block in got["theory"] and got["chi_theory"] is None
        assert "q_theory_low" not in got
