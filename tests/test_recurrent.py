"""The recurrent families (rnn, lstm, gru) and the sequence tasks (adding, copy, seq_digits, perm_digits).

The probes' gradients are the backprop signal dL/dh_t of a hand-unrolled net; a linear rnn keeps or
shrinks it exactly as its recurrent matrix says; the cells are PyTorch's; each task's generator makes
what it promises and its input-blind baseline is what the data give; bad settings are one-line errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from decay import data, families, tasks
from decay.errors import ConfigError
from decay.loop import train_run
from decay.step import Net, grads_and_stats
from decay.validation import validate_run
from tests.conftest import tiny_config

T, WIDTH, BATCH = 6, 8, 8  # the adding problem's steps, units per layer, examples per batch
FEATURES = 2  # the adding problem's (value, marker)
SHAPE = (T, FEATURES)


def _cfg(model: str, **overrides):
    return tiny_config(model=model, dataset="adding", seq_len=T, width=WIDTH, batch_size=BATCH, **overrides)


class Probed:
    """A recurrent net of `cfg` on the adding problem, and the train step's per-point statistics at any parameters."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.model = families.build(cfg, SHAPE, 1)
        fam = families.of(cfg)
        graphdef, self.params, self.batch_stats = nnx.split(self.model, nnx.Param, nnx.BatchStat)
        net = Net(graphdef, fam, fam.points(cfg, SHAPE), fam.point_shape(cfg, SHAPE), data.task_of(cfg.dataset))
        self.net = net
        self._stats = jax.jit(lambda params, bs, x, y: grads_and_stats(net, params, bs, x, y, "basic")[2])

    def stats(self, x, y, model=None) -> dict[str, np.ndarray]:
        params = self.params if model is None else nnx.state(model, nnx.Param)
        return jax.device_get(self._stats(params, self.batch_stats, x, y))

    def pure(self) -> dict:
        return nnx.to_pure_dict(self.params)


def _batch(seed: int, first_only: bool = False):
    """A batch of inputs [B, T, 2] (zero after t = 0 with `first_only`) and regression targets [B]."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (BATCH, T, FEATURES))
    if first_only:
        x = x.at[:, 1:].set(0.0)
    return x, jax.random.normal(ky, (BATCH,))


# ---- The cells written out by hand (PyTorch's equations and gate order), from the model's parameters.


def _layers(p: dict, depth: int) -> list[dict]:
    """Each layer's parameters {input: {kernel U, bias b}, recurrent: {kernel W[, bias]}}, layer 0 first."""
    rest = [jax.tree.map(lambda a, i=i: a[i], p["blocks"]) for i in range(depth - 1)]
    return [p["stem"], *rest]


def _rnn_step(layer, x_t, h, c, dh=0.0, dc=0.0):
    h = jnp.tanh(x_t @ layer["input"]["kernel"] + layer["input"]["bias"] + h @ layer["recurrent"]["kernel"])
    return h + dh, c


def _lstm_step(layer, x_t, h, c, dh=0.0, dc=0.0):
    pre = x_t @ layer["input"]["kernel"] + layer["input"]["bias"] + h @ layer["recurrent"]["kernel"]
    i, f, g, o = jnp.split(pre, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g) + dc
    return jax.nn.sigmoid(o) * jnp.tanh(c) + dh, c


def _gru_step(layer, x_t, h, c, dh=0.0, dc=0.0):
    xr, xz, xn = jnp.split(x_t @ layer["input"]["kernel"] + layer["input"]["bias"], 3, axis=-1)
    hr, hz, hn = jnp.split(h @ layer["recurrent"]["kernel"] + layer["recurrent"]["bias"], 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h + dh, c


STEPS = {"rnn": _rnn_step, "lstm": _lstm_step, "gru": _gru_step}


def _unrolled(kind: str, layers: list[dict], x, dh=None, dc=None):
    """The states h_t of the last layer [B, T, W] of inputs x [B, T, F], perturbations dh[l][t] (dc[l][t]) added."""
    seq = x
    for li, layer in enumerate(layers):
        h = c = jnp.zeros((x.shape[0], WIDTH))
        states = []
        for t in range(x.shape[1]):
            h, c = STEPS[kind](layer, seq[:, t], h, c, 0.0 if dh is None else dh[li][t], 0.0 if dc is None else dc[li][t])
            states.append(h)
        seq = jnp.stack(states, axis=1)
    return seq


def _hand_signal_norms(kind: str, p: dict, depth: int, x, y) -> tuple[np.ndarray, np.ndarray]:
    """||dL/dh_t|| and ||dL/dc_t|| (layer-major) of the hand-unrolled net, head on the last h_T, mean squared error."""

    def loss(dh, dc):
        h_last = _unrolled(kind, _layers(p, depth), x, dh, dc)[:, -1]
        out = h_last @ p["head"]["kernel"] + p["head"]["bias"]
        return jnp.mean(jnp.square(out[:, 0] - y))

    zeros = [[jnp.zeros((x.shape[0], WIDTH)) for _ in range(x.shape[1])] for _ in range(depth)]
    gh, gc = jax.jit(jax.grad(loss, argnums=(0, 1)))(zeros, zeros)
    norm = lambda g: np.array([float(jnp.linalg.norm(g_t)) for layer in g for g_t in layer])  # noqa: E731
    return norm(gh), norm(gc)


# ---- Fixtures: each net built (and its train step compiled) once for the module.


@pytest.fixture(scope="module")
def linear_rnn() -> Probed:
    return Probed(_cfg("rnn", depth=1, activation="linear", recurrent_init="orthogonal"))


@pytest.fixture(scope="module")
def tanh_rnn() -> Probed:
    return Probed(_cfg("rnn", depth=1, activation="tanh", bias_var=0.1))


@pytest.fixture(scope="module")
def lstm() -> Probed:
    return Probed(_cfg("lstm", depth=2, activation="tanh", bias_var=0.1))


# ---- 1. A linear rnn: the signal is carried back by W^T, exactly.


def test_linear_rnn_with_orthogonal_recurrence_keeps_the_signal_constant_over_time(linear_rnn):
    w = np.asarray(linear_rnn.pure()["stem"]["recurrent"]["kernel"], np.float64)
    np.testing.assert_allclose(w @ w.T, np.eye(WIDTH), atol=1e-5)  # the premise: W is orthogonal
    s = linear_rnn.stats(*_batch(0, first_only=True))["signal_norms"]
    assert s.shape == (T,) and np.all(s > 0)
    np.testing.assert_allclose(s, np.full(T, s[-1]), rtol=1e-4)


def test_linear_rnn_with_recurrence_0_9_identity_shrinks_the_signal_by_0_9_per_step_back(linear_rnn):
    model = families.build(linear_rnn.cfg, SHAPE, 1)
    model.stem.recurrent.kernel[...] = 0.9 * jnp.eye(WIDTH)
    s = linear_rnn.stats(*_batch(1, first_only=True), model=model)["signal_norms"]
    assert np.all(s > 0)
    for k in range(1, T):  # ||dL/dh_t|| / ||dL/dh_{t+k}|| = 0.9^k for every t
        np.testing.assert_allclose(s[:-k] / s[k:], 0.9**k, rtol=1e-4)


# ---- 2. The probes measure dL/dh_t (and dL/dc_t) of the unrolled net, layer-major.


def test_rnn_signal_norms_are_the_gradients_of_the_hand_unrolled_states(tanh_rnn):
    x, y = _batch(2)
    stats = tanh_rnn.stats(x, y)
    want_h, _ = _hand_signal_norms("rnn", tanh_rnn.pure(), 1, x, y)
    assert stats["signal_norms"].shape == (T,)
    np.testing.assert_allclose(stats["signal_norms"], want_h, rtol=1e-4)
    assert "cell_signal_norms" not in stats


def test_lstm_signal_and_cell_signal_norms_are_the_gradients_of_the_hand_unrolled_h_and_c(lstm):
    x, y = _batch(3)
    stats = lstm.stats(x, y)
    want_h, want_c = _hand_signal_norms("lstm", lstm.pure(), 2, x, y)
    assert stats["signal_norms"].shape == stats["cell_signal_norms"].shape == (2 * T,)
    np.testing.assert_allclose(stats["signal_norms"], want_h, rtol=1e-4)
    np.testing.assert_allclose(stats["cell_signal_norms"], want_c, rtol=1e-4)
    assert not np.allclose(want_h, want_c)  # the two parts are different signals


# ---- 3. The cells: PyTorch's gate order and equations; the forget bias on the forget gate.


def test_lstm_layer_computes_pytorch_lstm_cell_gates_i_f_g_o(lstm):
    x, _ = _batch(4)
    hs, _ = lstm.model.stem(jnp.swapaxes(x, 0, 1), None)
    want = _unrolled("lstm", [lstm.pure()["stem"]], x)
    np.testing.assert_allclose(np.swapaxes(hs, 0, 1), want, rtol=1e-5, atol=1e-6)


def test_gru_layer_computes_pytorch_gru_cell_with_the_reset_gate_on_the_recurrent_term():
    model = families.build(_cfg("gru", depth=1, bias_var=0.1), SHAPE, 1)
    # A nonzero recurrent bias b_h: r multiplies (h W_n + b_hn), and b_hr, b_hz join their gates.
    model.stem.recurrent.bias[...] = 0.5 * jax.random.normal(jax.random.key(7), (3 * WIDTH,))
    x, _ = _batch(5)
    hs, _ = model.stem(jnp.swapaxes(x, 0, 1), None)
    want = _unrolled("gru", [nnx.to_pure_dict(nnx.state(model, nnx.Param))["stem"]], x)
    np.testing.assert_allclose(np.swapaxes(hs, 0, 1), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forget_bias", [0.0, 1.0])
def test_lstm_forget_bias_initializes_the_forget_gate_block_of_every_layer(forget_bias):
    model = families.build(_cfg("lstm", depth=2, forget_bias=forget_bias), SHAPE, 1)
    want = np.concatenate([np.zeros(WIDTH), np.full(WIDTH, forget_bias), np.zeros(2 * WIDTH)])  # gates i, f, g, o
    np.testing.assert_array_equal(model.stem.input.bias[...], want)
    np.testing.assert_array_equal(model.blocks.input.bias[...], want[None])  # layers 1..depth-1, stacked


# ---- 4. The sequence tasks' generators and baselines.


def _loads(name: str, seq_len: int):
    """The loader's dataset at data seeds 0, 0 again and 1."""
    load = data.DATASETS.get(name)
    return load(None, 0, seq_len), load(None, 0, seq_len), load(None, 1, seq_len)


def _assert_seeded(a, b, c):
    for split in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, split), getattr(b, split))
    assert not np.array_equal(a.x_train, c.x_train) and not np.array_equal(a.y_train, c.y_train)


def test_adding_problem_marks_one_value_per_half_and_predicting_one_scores_one_sixth():
    seq_len = 8
    a, b, c = _loads("adding", seq_len)
    assert a.x_train.shape == (data.SEQ_TRAIN, seq_len, 2) and a.x_test.shape == (data.SEQ_TEST, seq_len, 2)
    assert a.y_train.shape == (data.SEQ_TRAIN,) and a.y_train.dtype == np.float32
    assert a.task == "regression" and a.num_classes == 1 and a.chance == data.ADDING_CHANCE
    _assert_seeded(a, b, c)
    x, y = np.concatenate([a.x_train, a.x_test]), np.concatenate([a.y_train, a.y_test])
    values, markers = x[..., 0].astype(np.float64), x[..., 1]
    assert np.all((values >= 0) & (values < 1)) and set(np.unique(markers)) == {0.0, 1.0}
    half = seq_len // 2
    assert np.all(markers[:, :half].sum(axis=1) == 1) and np.all(markers[:, half:].sum(axis=1) == 1)
    np.testing.assert_allclose(y, np.sum(values * markers, axis=1), rtol=1e-6)
    # Always predicting 1: E[(u1 + u2 - 1)^2] = Var(u1 + u2) = 1/6, and (u1 + u2 - 1)^2 has variance 7/180.
    assert data.ADDING_CHANCE == pytest.approx(2 / 12)
    mse = float(np.mean(np.square(y.astype(np.float64) - 1.0)))
    assert abs(mse - data.ADDING_CHANCE) < 5 * math.sqrt(7 / 180 / len(y))


def test_copy_memory_asks_for_the_first_ten_symbols_and_its_memoryless_baseline_is_copy_chance():
    blanks = 5
    length = blanks + 20
    a, b, c = _loads("copy", blanks)
    assert a.x_train.shape == (data.SEQ_TRAIN, length, 10) and a.x_test.shape == (data.SEQ_TEST, length, 10)
    assert a.y_train.shape == (data.SEQ_TRAIN, length)
    assert a.task == "per_position" and a.num_classes == 9 and a.chance == data.copy_chance(blanks)
    _assert_seeded(a, b, c)
    x, y = np.concatenate([a.x_train, a.x_test]), np.concatenate([a.y_train, a.y_test])
    assert np.all(x.sum(axis=-1) == 1) and set(np.unique(x)) == {0.0, 1.0}  # one-hot tokens
    tokens = np.argmax(x, axis=-1)
    symbols = tokens[:, :10]
    assert symbols.min() >= 1 and symbols.max() <= 8
    np.testing.assert_array_equal(tokens[:, blanks + 9], 9)  # the delimiter, 10 steps before the end
    assert np.all(tokens[:, 10 : blanks + 9] == 0) and np.all(tokens[:, blanks + 10 :] == 0)
    np.testing.assert_array_equal(y[:, -10:], symbols)
    assert np.all(y[:, :-10] == 0)
    # The memoryless predictor: blank with probability 1, then uniform over symbols 1..8 for the last 10.
    probs = np.zeros((length, 9))
    probs[:-10, 0] = 1.0
    probs[-10:, 1:] = 1.0 / 8
    with np.errstate(divide="ignore"):
        ce = -np.log(probs[np.arange(length), y])
    assert float(np.mean(ce)) == pytest.approx(10 * math.log(8) / (blanks + 20), rel=1e-12)
    assert float(np.mean(ce)) == pytest.approx(data.copy_chance(blanks), rel=1e-12)
    # The per_position task's loss of that predictor's logits is the same number.
    logits = jnp.asarray(np.where(probs > 0, np.log(np.maximum(probs, 1e-30)), -1e4), jnp.float32)
    loss = tasks.mean_loss("per_position", jnp.broadcast_to(logits, (16, length, 9)), jnp.asarray(y[:16]))
    assert float(loss) == pytest.approx(data.copy_chance(blanks), rel=1e-5)


def _column_order(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """An order o with b[:, j] == a[:, o[j]] for every step j (a permutation), or None if there is none."""
    cols_a, cols_b = a[..., 0].T, b[..., 0].T
    used, order = set(), []
    for col in cols_b:
        match = [i for i in range(len(cols_a)) if i not in used and np.array_equal(cols_a[i], col)]
        if not match:
            return None
        used.add(match[0])
        order.append(match[0])
    return np.array(order)


def test_sequential_digits_read_pixels_row_by_row_and_permuted_digits_shuffle_them_by_the_data_seed():
    digits = data.DATASETS.get("digits")(None, 0, 0)
    load = data.DATASETS.get("seq_digits")
    seq, seq1 = load(None, 0, 5), load(None, 1, 5)  # --seq_len does not apply: 64 steps
    perm, perm_again, perm1 = _loads("perm_digits", 5)
    for ds in (seq, perm, seq1, perm1):
        assert ds.x_train.shape[1:] == (64, 1) and ds.x_test.shape[1:] == (64, 1)
        assert ds.task == "classification" and ds.num_classes == 10
    np.testing.assert_array_equal(seq.x_train, digits.x_train.reshape(-1, 64, 1))
    _assert_seeded(perm, perm_again, perm1)
    # The same examples, their pixels in one fixed order.
    np.testing.assert_array_equal(perm.y_train, seq.y_train)
    np.testing.assert_array_equal(perm.y_test, seq.y_test)
    both = lambda ds: np.concatenate([ds.x_train, ds.x_test])  # noqa: E731
    order = _column_order(both(seq), both(perm))
    assert order is not None and sorted(order) == list(range(64))
    np.testing.assert_array_equal(both(perm), both(seq)[:, order])
    assert not np.array_equal(perm.x_train, seq.x_train)
    # Another data seed, another permutation.
    assert not np.array_equal(both(perm1), both(seq1)[:, order])
    assert _column_order(both(seq1), both(perm1)) is not None


# ---- 5. Bad settings: one-line errors that name the flag.


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
        (dict(model="rnn", dataset="adding", seq_len=0), ("--seq_len",)),
        (dict(model="lstm", dataset="copy", seq_len=0), ("--seq_len",)),
        (dict(model="rnn", dataset="adding", recurrent_init="nope"), ("--recurrent_init",)),
        (dict(model="gru", dataset="adding", norm="batchnorm"), ("--norm", "--model=gru")),
        (dict(model="lstm", dataset="adding", norm="batchnorm"), ("--norm", "--model=lstm")),
        (dict(model="rnn", dataset="digits"), ("--dataset=digits", "--model=rnn")),
        (dict(model="mlp", dataset="adding"), ("--dataset=adding", "--model=mlp")),
        (dict(model="rnn", dataset="adding", input_var=0.0), ("--input_var=0.0", "> 0")),
        (dict(model="lstm", dataset="adding", forget_bias=float("nan")), ("--forget_bias=nan", "finite")),
    ],
    ids=[
        "seq_len_0",
        "copy_seq_len_0",
        "recurrent_init",
        "gru_batchnorm",
        "lstm_batchnorm",
        "rnn_on_images",
        "mlp_on_sequences",
        "input_var_0",
        "forget_bias_nan",
    ],  # fmt: skip
)
def test_validate_run_rejects_bad_recurrent_settings_in_one_line(settings, flags):
    _one_line_error(lambda: validate_run(tiny_config(**settings)), *flags)


@pytest.mark.parametrize(
    "settings", [dict(model="lstm", dataset="copy", seq_len=5), dict(model="gru", dataset="adding", norm="layernorm")]
)
def test_validate_run_accepts_recurrent_models_on_sequence_tasks(settings):
    validate_run(tiny_config(**settings))


@pytest.mark.parametrize("name", ["adding", "copy"])
def test_loading_a_sequence_task_of_length_zero_is_a_one_line_error(name):
    _one_line_error(lambda: data.load(name, None, 0, seq_len=0), "--seq_len=0", f"--dataset={name}")


def test_building_with_an_unknown_recurrent_init_is_a_one_line_error():
    _one_line_error(lambda: families.build(_cfg("rnn", depth=1, recurrent_init="nope"), SHAPE, 1), "--recurrent_init='nope'")


# ---- End to end: a tiny lstm trained on the copy task.


def test_lstm_on_the_copy_task_trains_and_reports_per_time_step_signals():
    cfg = tiny_config(model="lstm", dataset="copy", seq_len=5, depth=2, width=8, steps=3, eval_every=3)
    row = train_run(cfg, data.load_for(cfg))
    points = cfg.depth * (5 + 20)
    assert len(row["signal_norms_init"]) == points and len(row["cell_signal_norms_init"]) == points
    assert len(row["grad_norms_init"]) == cfg.depth
    assert all(v > 0 for v in row["signal_norms_init"] + row["cell_signal_norms_init"])
    assert row["task"] == "per_position"
    assert row["chance_loss"] == pytest.approx(data.copy_chance(5))


# --- Mean-field theory along time (decay.families.rnn.predict) ------------------------------------


def _seq(**settings):
    return tiny_config(model="rnn", dataset="adding", depth=1, **settings)


def test_linear_rnn_theory_is_the_squared_spectral_radius_and_one_for_orthogonal():
    ds = data.load("adding", None, 0, 0.2, 12)
    predict = families.of(_seq()).predict
    gauss = predict(_seq(activation="linear", weight_var=0.81, seq_len=12), ds)
    assert gauss["chi_theory"] == pytest.approx(0.81, rel=1e-9)  # chi = sigma_w^2 = rho(W)^2 (circular law)
    np.testing.assert_allclose(gauss["signal_profile_theory"], 0.9 ** np.arange(11, -1, -1), rtol=1e-9)
    assert predict(_seq(activation="linear", recurrent_init="orthogonal", seq_len=12), ds)["chi_theory"] == pytest.approx(1.0)
    assert "no theory" in predict(_seq(activation="relu", recurrent_init="identity", seq_len=12), ds)["theory"]


def test_wide_tanh_rnn_measures_the_per_step_factor_that_mean_field_predicts_with_the_inputs_variance():
    # Width 512 is near the wide limit; the input adds sigma_u^2 m_t to q every step, which is what keeps chi below 1.
    cfg = _seq(activation="tanh", weight_var=1.5, width=512, batch_size=128, seq_len=16, steps=0)
    row = train_run(cfg, data.load_for(cfg))
    assert row["chi_theory"] < 1.0  # without the input's variance, sigma_w^2 = 1.5 would be chaotic (chi > 1)
    assert row["chi"] == pytest.approx(row["chi_theory"], rel=0.06)
    # The profile from the fit window on (the first steps, where q_t is still rising from the input's alone, are a
    # transient that mean field follows less closely): within 25% in norm over up to 12 steps.
    measured = np.log(np.asarray(row["signal_norms_init"]) / row["signal_norms_init"][-1])
    np.testing.assert_allclose(measured[4:], np.log(row["signal_profile_theory"])[4:], atol=0.25)
