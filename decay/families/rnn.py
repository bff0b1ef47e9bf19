"""`rnn`, `lstm`, `gru`: recurrent nets over time, the gradient measured at every time step.

`depth` recurrent layers (layer 0 reads the input features, layers 1..depth-1 identical and
scanned over), each run over the sequence by `jax.lax.scan` over time, so compile time is flat
in T. Per layer the input projection x_t U + b of every step is one matmul before the time
scan; the scan carries the state through the recurrent kernel W (one [width, width] block per
gate, initialized block by block). The cells, gates in PyTorch's order:

  rnn   h_t = phi(n(x_t U + h_{t-1} W + b))                         (Elman; phi = --activation)
  lstm  i, f, g, o = sig, sig, phi, sig of n(x_t U + h_{t-1} W + b)  (b_f = --forget_bias at init)
        c_t = f c_{t-1} + i g,  h_t = o phi(c_t)
  gru   r, z = sig(n(x_t U_rz + h_{t-1} W_rz + b_rz)),  n_t = phi(n(x_t U_n + b_n + r (h_{t-1} W_n + b_hn)))
        h_t = (1 - z) n_t + z h_{t-1}

n is the identity or a layer norm per gate (per time step). The probes sit on the state the
scan carries, h_t of every layer at every step (points layer-major: layer 0's t = 0..T-1
first), for the LSTM also on c_t: the probe's last axis holds [h part | c part], whose
gradient norms become the row's `signal_norms` and `cell_signal_norms`. The head reads h_T of
the last layer (classification, regression) or h_t at every step (per-position targets).

Theory (`predict`, vanilla rnn, one layer, no norm): the mean-field variance map of the
pre-activation a_t = h_{t-1} W + x_t U + b with the input's contribution added every step
(Chen, Pennington and Schoenholz 2018): q_t = sigma_w^2 E[phi(sqrt(q_{t-1}) z)^2] +
sigma_u^2 m_t + sigma_b^2, m_t the inputs' mean square at step t; each step back multiplies
the squared backprop signal by chi_t = sigma_w^2 E[phi'(sqrt(q_t) z)^2]. For a linear rnn
chi = sigma_w^2 = rho(W)^2 for Gaussian W (circular law) and exactly 1 for orthogonal or
identity W.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decay import instruments, metrics, theory
from decay.blocks import init_cache, rms, stacked
from decay.config import RunConfig
from decay.errors import ConfigError
from decay.family import Family, register
from decay.layers import ACTIVATIONS, INITIALIZERS, bias_init, kernel_init, resolve_init

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
RECURRENT_INITS = ("auto", "identity", *INITIALIZERS.names())  # --recurrent_init values
LN_EPS = 1e-5
NORMS = ("none", "layernorm")  # per gate and per time step


def recurrent_init_name(cfg: RunConfig) -> str:
    """The concrete recurrent init: 'mean_field' when --weight_var is set, 'orthogonal' for auto."""
    if cfg.weight_var is not None:
        return "mean_field"
    return "orthogonal" if cfg.recurrent_init == "auto" else cfg.recurrent_init


def _recurrent_init(cfg: RunConfig, gates: int):
    """Initializer of the [width, gates * width] recurrent kernel: each gate's square block drawn on its own."""
    name = recurrent_init_name(cfg)
    if name not in ("mean_field", "identity") and name not in INITIALIZERS:
        raise ConfigError(f"--recurrent_init={cfg.recurrent_init!r} is unknown; allowed: {', '.join(RECURRENT_INITS)}")

    def init(key, shape, dtype=jnp.float32):
        w = shape[0]
        keys = jax.random.split(key, gates)
        if name == "identity":
            block = lambda k: jnp.eye(w, dtype=dtype)  # noqa: E731
        elif name == "mean_field":
            block = lambda k: jax.random.normal(k, (w, w), dtype) * math.sqrt(cfg.weight_var / w)  # noqa: E731
        else:
            block = lambda k: INITIALIZERS.get(name)(k, (w, w), dtype)  # noqa: E731
        return jnp.concatenate([block(k) for k in keys], axis=1)

    return init


def _input_init(cfg: RunConfig):
    if cfg.input_var is not None:
        return jax.nn.initializers.variance_scaling(cfg.input_var, "fan_in", "normal")
    return kernel_init(resolve_init(cfg.init, cfg.activation), None)


def _bias_init(cfg: RunConfig, kind: str):
    base = bias_init(cfg.bias_var)
    if kind != "lstm":
        return base

    def init(key, shape, dtype=jnp.float32):
        b = base(key, shape, dtype)
        w = shape[0] // 4
        return b.at[w : 2 * w].add(cfg.forget_bias)  # the forget gate's block (order i, f, g, o)

    return init


class GateNorm(nnx.Module):
    """A layer norm's scale and shift for each gate's units (applied per gate, per time step)."""

    def __init__(self, gates: int, width: int):
        self.scale = nnx.Param(jnp.ones((gates, width)))
        self.shift = nnx.Param(jnp.zeros((gates, width)))


class Recurrent(nnx.Module):
    """One recurrent layer of `kind` over a whole sequence, with optional probes on its states."""

    def __init__(self, kind: str, in_features: int, cfg: RunConfig, *, rngs: nnx.Rngs):
        if cfg.norm not in NORMS:
            raise ConfigError(f"--norm={cfg.norm} is not supported by --model={kind}; allowed: {', '.join(NORMS)}")
        g, w = GATES[kind], cfg.width
        self.kind, self.width = kind, w
        self.input = nnx.Linear(in_features, g * w, kernel_init=_input_init(cfg), bias_init=_bias_init(cfg, kind), rngs=rngs)
        self.recurrent = nnx.Linear(
            w, g * w, use_bias=kind == "gru", kernel_init=_recurrent_init(cfg, g), bias_init=jax.nn.initializers.zeros, rngs=rngs
        )
        self.ln = GateNorm(g, w) if cfg.norm == "layernorm" else None
        self.act = ACTIVATIONS.get(cfg.activation)
        self.relu_like = cfg.activation in instruments.RELU_LIKE

    def _gates(self, pre: jax.Array, first: int, count: int) -> list[jax.Array]:
        """The gate blocks first..first+count-1 of pre [B, count * W] as [B, W] arrays, each layer-normed when the
        layer has a norm (contiguous slices of the last axis: no transposed copies)."""
        w = self.width
        blocks = [pre[:, k * w : (k + 1) * w] for k in range(count)]
        if self.ln is None:
            return blocks
        out = []
        for k, a in enumerate(blocks):
            mean = jnp.mean(a, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(a - mean), axis=-1, keepdims=True)
            out.append((a - mean) * jax.lax.rsqrt(var + LN_EPS) * self.ln.scale[first + k] + self.ln.shift[first + k])
        return out

    def cell(self, carry, xu, w_rec, b_rec, p=None):
        """One time step, probes `p` [B, W * parts] added to the new state(s): (new carry, the pre-activation
        whose sign the dead-unit count reads)."""
        width = self.width
        h = carry[0]
        p_h = 0.0 if p is None else p[:, :width]
        if self.kind == "rnn":
            (pre,) = self._gates(xu + h @ w_rec, 0, 1)
            return (self.act(pre) + p_h,), pre
        if self.kind == "lstm":
            i, f, g, o = self._gates(xu + h @ w_rec, 0, 4)
            c = jax.nn.sigmoid(f) * carry[1] + jax.nn.sigmoid(i) * self.act(g)
            if p is not None:  # c_t gets its probe before h_t = o phi(c_t) is formed from it
                c = c + p[:, width:]
            return (jax.nn.sigmoid(o) * self.act(c) + p_h, c), g
        hw = h @ w_rec + b_rec
        r, z = (jax.nn.sigmoid(a) for a in self._gates(xu[:, : 2 * width] + hw[:, : 2 * width], 0, 2))
        (pre_n,) = self._gates(xu[:, 2 * width :] + r * hw[:, 2 * width :], 2, 1)
        return ((1.0 - z) * self.act(pre_n) + z * h + p_h,), pre_n

    def __call__(self, x: jax.Array, probes: jax.Array | None, stats: bool = False):
        """x [T, B, F] -> (states h_t [T, B, W], per-step aux: act RMS [T], or with `stats` a dict of [T] arrays).

        probes [T, B, W * parts] are added to h_t (and c_t, the second part, for the LSTM) as each step makes them.
        """
        t, b = x.shape[0], x.shape[1]
        xu = (x.reshape(t * b, -1) @ self.input.kernel[...] + self.input.bias[...]).reshape(t, b, -1)
        w_rec = self.recurrent.kernel[...]
        b_rec = None if self.recurrent.bias is None else self.recurrent.bias[...]
        zeros = jnp.zeros((b, self.width), x.dtype)
        carry0 = (zeros, zeros) if self.kind == "lstm" else (zeros,)

        def step(carry, inputs):
            xu_t, p_t = inputs
            new, pre = self.cell(carry, xu_t, w_rec, b_rec, p_t)
            h = new[0]
            aux = rms(h)
            if stats:
                aux = {"act_rms": aux, **instruments.layer_stats(xu_t, h, pre, self.relu_like)}
            return new, (h, aux)

        _, (hs, aux) = jax.lax.scan(step, carry0, (xu, probes))
        return hs, aux


def _stacked(kind: str, cfg: RunConfig, key: jax.Array) -> Recurrent:
    """Layers 1..depth-1: one template whose variables hold the layers' values on a leading layer axis."""
    make = lambda k: Recurrent(kind, cfg.width, cfg, rngs=nnx.Rngs(params=k))  # noqa: E731
    return stacked(make, jax.random.split(key, cfg.depth - 1), init_cache(cfg, kind))


class RecurrentNet(nnx.Module):
    """`depth` recurrent layers of one kind (layer 0 reads the features, the rest stacked and scanned) and a linear head."""

    def __init__(self, kind: str, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array):
        from decay import data, tasks  # the task decides where the head reads

        k_stem, k_blocks, k_head = jax.random.split(key, 3)
        self.per_position = data.task_of(cfg.dataset) == "per_position"
        self.stem = Recurrent(kind, input_shape[-1], cfg, rngs=nnx.Rngs(params=k_stem))
        self.blocks = _stacked(kind, cfg, k_blocks) if cfg.depth > 1 else None
        out = tasks.TASKS.get(data.task_of(cfg.dataset)).outputs(num_classes)
        self.head = nnx.Linear(cfg.width, out, rngs=nnx.Rngs(params=k_head))

    def states(self, x: jax.Array, probes: jax.Array | None = None, stats: bool = False):
        """The last layer's states [T, B, W] and per-point aux (layer-major) of inputs x [B, T, F]."""
        seq = jnp.swapaxes(x, 0, 1)
        t = seq.shape[0]
        layer_probes = None if probes is None else probes.reshape(-1, t, *probes.shape[1:])
        hs, aux = self.stem(seq, None if probes is None else layer_probes[0], stats)
        if self.blocks is not None:
            graphdef, state = nnx.split(self.blocks)

            def body(h, xs):
                layer_state, p = xs
                layer = nnx.merge(graphdef, layer_state, copy=True)
                return layer(h, p, stats)

            hs, rest = jax.lax.scan(body, hs, (state, None if probes is None else layer_probes[1:]))
            aux = jax.tree.map(lambda a, r: jnp.concatenate([a, r.reshape(-1, *a.shape[1:])]), aux, rest)
        return hs, aux

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        del train  # no batch statistics in a recurrent layer
        hs, aux = self.states(x, probes, stats)
        out = jnp.swapaxes(self.head(hs), 0, 1) if self.per_position else self.head(hs[-1])
        return out, (aux if stats else {"act_rms": aux})


def _kernels(tree: Any) -> list[jax.Array]:
    out = [tree["stem"]["recurrent"]["kernel"][None]]
    if tree.get("blocks"):
        out.append(tree["blocks"]["recurrent"]["kernel"])
    return out


def _seq_inputs(x_train: np.ndarray, limit: int = 256) -> np.ndarray:
    """m_t: the inputs' mean square at each step (over examples and features)."""
    x = np.asarray(x_train[:limit], np.float64)
    return np.mean(x**2, axis=(0, 2))


@functools.lru_cache(maxsize=64)
def _step_factors(activation: str, wv: float, uv: float, bv: float, m: tuple[float, ...]) -> np.ndarray:
    """chi_t of every step from the variance recursion with the input's variance m_t added each step (seeds and
    learning rates share it: cached)."""
    q, chis = 0.0, []
    for t, m_t in enumerate(m):  # h_{-1} = 0: q_0 = sigma_u^2 m_0 + sigma_b^2
        q = (float(theory.variance_map(activation, wv, 0.0, q)) if t else 0.0) + uv * m_t + bv
        chis.append(float(theory.chi1(activation, wv, q)))
    return np.asarray(chis, np.float64)


def predict(cfg: RunConfig, dataset) -> dict[str, Any]:
    """Mean-field theory of a one-layer vanilla rnn: chi_theory and the predicted ||dL/dh_t|| / ||dL/dh_{T-1}||."""
    none = {"chi_theory": None, "signal_profile_theory": None}
    if cfg.depth != 1:
        return {**none, "theory": "no theory: stacked recurrent layers feed each other at every step (one layer only)"}
    if cfg.norm != "none":
        return {**none, "theory": f"no theory: mean field here covers the rnn without a norm, not {cfg.norm}"}
    if dataset.task == "per_position":
        return {**none, "theory": "no theory: the loss reads every step, so dL/dh_t is not a product of per-step factors"}
    init = recurrent_init_name(cfg)
    if init == "identity" and cfg.activation != "linear":
        return {**none, "theory": "no theory: an identity recurrent matrix is not random (mean field needs random W)"}
    try:
        if init == "mean_field":
            wv = float(cfg.weight_var)
        elif init == "identity":
            wv = 1.0
        else:
            wv = theory.init_weight_var(init, cfg.width, cfg.width)
        features = dataset.x_train.shape[2]
        uv = (
            float(cfg.input_var)
            if cfg.input_var is not None
            else theory.init_weight_var(resolve_init(cfg.init, cfg.activation), features, cfg.width)
        )
    except ValueError as e:
        return {**none, "theory": f"no theory: {e}"}
    chis = _step_factors(cfg.activation, wv, uv, float(cfg.bias_var or 0.0), tuple(_seq_inputs(dataset.x_train)))
    # ||dL/dh_{t-1}||^2 = chi_t ||dL/dh_t||^2: the profile is the product of the later steps' factors.
    log_profile = np.concatenate([np.cumsum(np.log(chis[:0:-1]))[::-1], [0.0]])
    profile = np.exp(log_profile)
    kind = "linear rnn: chi = rho(W)^2" if cfg.activation == "linear" else "mean field rnn (Chen et al. 2018)"
    return {
        "chi_theory": metrics.clean(metrics.fit_chi(np.sqrt(profile).tolist())),
        "signal_profile_theory": [metrics.clean(v) for v in np.sqrt(profile)],
        "theory": kind,
    }


def _family(kind: str) -> Family:
    parts = ("signal_norms", "cell_signal_norms") if kind == "lstm" else ("signal_norms",)
    gated = kind != "rnn"
    return Family(
        name=kind,
        build=lambda cfg, shape, classes, key: RecurrentNet(kind, cfg, shape, classes, key),
        point_shape=lambda cfg, shape: (cfg.width * len(parts),),
        probe_points="the state h_t of every layer at every time step, layer-major"
        + (" (and the cell state c_t: cell_signal_norms)" if kind == "lstm" else ""),
        layer_kernels=_kernels,
        is_layer_kernel=lambda path: path[-2:] == ("recurrent", "kernel"),
        representation=lambda model, x: model.states(x)[0][-1],
        theory=None,
        no_theory="no theory: gated cells (lstm, gru) have no mean-field theory here" if gated else "",
        tasks=("classification", "regression", "per_position"),
        sequence=True,
        norms=NORMS,
        count_points=lambda cfg, shape: cfg.depth * shape[0],
        signal_parts=parts,
        # Along time in the last layer: its h_t gets the loss's signal through time alone (a lower layer's h_t
        # also gets it from the layer above at every step).
        chi_points=lambda cfg, shape: ((cfg.depth - 1) * shape[0], cfg.depth * shape[0]),
        predict=None if gated else predict,
        row_fields=lambda cfg: {
            "recurrent_init": recurrent_init_name(cfg),
            "input_var": cfg.input_var,
            "forget_bias": cfg.forget_bias if kind == "lstm" else None,
        },
        name_suffix=_name_suffix,
    )


def _name_suffix(cfg: RunConfig) -> str:
    """Time, recurrent init and clipping vary across a time sweep."""
    init = f"wv{cfg.weight_var:g}" if cfg.weight_var is not None else cfg.recurrent_init
    clip = "" if cfg.clip_norm is None else f"-clip{cfg.clip_norm:g}"
    return f"-T{cfg.seq_len}-{init}{clip}"


RNN = register(_family("rnn"))
LSTM = register(_family("lstm"))
GRU = register(_family("gru"))
