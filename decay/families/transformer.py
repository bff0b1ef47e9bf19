"""`transformer`: L identical blocks of multi-head self-attention and an MLP, stacked and scanned, five placements of the norm.

Tokens (one-hot, or image patches) are embedded by a linear map, positions added (learned, or
the fixed sinusoids of Vaswani et al.), then `depth` identical blocks run under `jax.lax.scan`
(compile time flat in depth). A block, with A the attention and F the MLP sublayer, n the norm
(`--norm`: layernorm or rmsnorm where the block has one):

  post_ln   x = n(x + A(x));             x = n(x + F(x))                (Vaswani et al. 2017)
  pre_ln    x = x + A(n(x));             x = x + F(n(x)); n before the head (Xiong et al. 2020)
  deepnorm  x = n(alpha x + A(x));       x = n(alpha x + F(x)), alpha = (2L)^(1/4), and the value,
            output and MLP kernels drawn with gain beta = (8L)^(-1/4) (Wang et al. 2022)
  rezero    x = x + a_1 A(x);            x = x + a_2 F(x), a = 0 at init, no norm (Bachlechner et al. 2020)
  no_norm   x = x + A(x);                x = x + F(x)
  no_skip   x = A(x);                    x = F(x), no residual and no norm (rank collapse, Dong et al. 2021)

Attention is written out with einsums (queries, keys, values and output each an `nnx.Linear`),
not `nnx.MultiHeadAttention`, so that each of the four kernels is a parameter of its own, with
its own gradient norm, and the probes sit exactly on the sublayer outputs. Causal or not (`--causal`).

Probe points, 3 per block, kind-major: the residual stream after each block (points 0..L-1, the
ones the chi fit reads), each attention sublayer's output (L..2L-1) and each MLP sublayer's
output (2L..3L-1), all positions and units. Kernels, 6 per block, kind-major: q, k, v, out,
mlp_in, mlp_out. With the standard instruments each point also reports `c_tokens`, the mean
cosine between the token representations of one example (rank collapse: 1 when every token
points one way, Dong, Cordonnier and Loukas 2021).
"""

from __future__ import annotations

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
from decay.layers import ACTIVATIONS, NORMS, kernel_init, resolve_init

BLOCKS = ("post_ln", "pre_ln", "deepnorm", "rezero", "no_norm", "no_skip")
NORMED = ("post_ln", "pre_ln", "deepnorm")  # blocks with a norm; rezero and no_norm have none
BLOCK_NORMS = ("layernorm", "rmsnorm")
KERNELS = ("q", "k", "v", "out", "mlp_in", "mlp_out")  # per block, in the order of grad_norms
POINT_KINDS = ("residual", "attention", "mlp")  # per block, in the order of the probe points
POSITIONS = ("learned", "sinusoidal")


def deepnorm_constants(blocks: int) -> tuple[float, float]:
    """DeepNorm's (alpha, beta) for an encoder of `blocks` blocks: ((2N)^(1/4), (8N)^(-1/4))."""
    return (2.0 * blocks) ** 0.25, (8.0 * blocks) ** -0.25


def check(cfg: RunConfig, seq_len: int | None = None) -> None:
    """One-line ConfigErrors for a transformer config (and a sequence of `seq_len` tokens)."""
    if cfg.block not in BLOCKS:
        raise ConfigError(f"--block={cfg.block!r} is unknown; allowed: {', '.join(BLOCKS)}")
    if cfg.block in NORMED and cfg.norm not in BLOCK_NORMS:
        raise ConfigError(f"--block={cfg.block} places a norm: give --norm(s)={' or '.join(BLOCK_NORMS)}, not {cfg.norm}")
    if cfg.block not in NORMED and cfg.norm != "none":
        raise ConfigError(f"--block={cfg.block} has no norm: give --norm(s)=none, not {cfg.norm}")
    if cfg.heads < 1 or cfg.width % cfg.heads:
        raise ConfigError(f"--width={cfg.width} is not divisible by --heads={cfg.heads}")
    if cfg.mlp_ratio < 1:
        raise ConfigError(f"--mlp_ratio={cfg.mlp_ratio}; must be an integer >= 1")
    if cfg.positions not in POSITIONS:
        raise ConfigError(f"--positions={cfg.positions!r} is unknown; allowed: {', '.join(POSITIONS)}")
    if seq_len is not None and cfg.max_len and seq_len > cfg.max_len:
        raise ConfigError(f"the data's sequences have {seq_len} tokens, beyond --max_len={cfg.max_len} positions")


def sinusoids(length: int, width: int) -> jax.Array:
    """The fixed positions of Vaswani et al.: sin and cos of position / 10000^(2i / width)."""
    pos = jnp.arange(length, dtype=jnp.float32)[:, None]
    rate = jnp.exp(-math.log(10000.0) * jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    table = jnp.zeros((length, width), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(pos * rate))
    return table.at[:, 1::2].set(jnp.cos(pos * rate)[:, : width // 2])


def c_tokens(h: jax.Array) -> jax.Array:
    """Mean cosine between distinct tokens of one example, averaged over the batch: h [B, L, W] -> scalar."""
    n = h.shape[1]
    if n < 2:
        return jnp.zeros((), h.dtype)
    u = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-30)
    total = jnp.sum(jnp.square(jnp.sum(u, axis=1)), axis=-1) - jnp.sum(jnp.square(u), axis=(1, 2))
    return jnp.mean(total / (n * (n - 1)))


class Block(nnx.Module):
    """One block: self-attention and MLP sublayers, the norm placed as `cfg.block` says, probes on their outputs."""

    def __init__(self, cfg: RunConfig, blocks: int, *, rngs: nnx.Rngs):
        w = cfg.width
        alpha, beta = deepnorm_constants(blocks) if cfg.block == "deepnorm" else (1.0, 1.0)
        base = kernel_init(resolve_init(cfg.init, cfg.activation), cfg.weight_var)
        scaled = lambda key, shape, dtype=jnp.float32: beta * base(key, shape, dtype)  # noqa: E731
        zeros = jax.nn.initializers.zeros
        make = lambda i, o, init: nnx.Linear(i, o, kernel_init=init, bias_init=zeros, rngs=rngs)  # noqa: E731
        self.q, self.k = make(w, w, base), make(w, w, base)
        self.v, self.out = make(w, w, scaled), make(w, w, scaled)
        self.mlp_in, self.mlp_out = make(w, cfg.mlp_ratio * w, scaled), make(cfg.mlp_ratio * w, w, scaled)
        norm = NORMS.get(cfg.norm)
        self.norm1, self.norm2 = norm(w, (-1,), cfg.bn_momentum, rngs=rngs), norm(w, (-1,), cfg.bn_momentum, rngs=rngs)
        self.rezero = nnx.Param(jnp.zeros((2,))) if cfg.block == "rezero" else None
        self.kind, self.alpha, self.heads, self.causal = cfg.block, alpha, cfg.heads, cfg.causal
        self.act = ACTIVATIONS.get(cfg.activation)
        self.relu_like = cfg.activation in instruments.RELU_LIKE

    def attention(self, x: jax.Array) -> jax.Array:
        """Multi-head scaled dot-product self-attention of x [B, L, W]."""
        b, n, w = x.shape
        d = w // self.heads
        split = lambda t: t.reshape(b, n, self.heads, d)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        if self.causal:  # position i reads positions <= i only
            logits = jnp.where(jnp.tril(jnp.ones((n, n), bool)), logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, w))

    def mlp(self, x: jax.Array) -> jax.Array:
        return self.mlp_out(self.act(self.mlp_in(x)))

    def __call__(self, x: jax.Array, probes: jax.Array | None, train: bool, stats: bool = False):
        """x [B, L, W] -> (x after the block, per-point aux in POINT_KINDS order); probes [3, B, L, W] in that order."""
        p = (0.0, 0.0, 0.0) if probes is None else (probes[0], probes[1], probes[2])
        n1 = lambda t: self.norm1(t, train)  # noqa: E731
        n2 = lambda t: self.norm2(t, train)  # noqa: E731
        if self.kind == "pre_ln":
            a = self.attention(n1(x)) + p[1]
            x = x + a
            f = self.mlp(n2(x)) + p[2]
            x = x + f
        elif self.kind in ("post_ln", "deepnorm"):
            a = self.attention(x) + p[1]
            x = n1(self.alpha * x + a)
            f = self.mlp(x) + p[2]
            x = n2(self.alpha * x + f)
        elif self.kind == "no_skip":  # no residual: the stream is the sublayers' output
            a = self.attention(x) + p[1]
            f = self.mlp(a) + p[2]
            x = f
        else:  # rezero (a learned scalar per branch, 0 at init) or no_norm
            gain = (1.0, 1.0) if self.rezero is None else (self.rezero[0], self.rezero[1])
            a = self.attention(x) + p[1]
            x = x + gain[0] * a
            f = self.mlp(x) + p[2]
            x = x + gain[1] * f
        x = x + p[0]
        values = (x, a, f)
        if not stats:
            return x, jnp.stack([rms(v) for v in values])
        per = [{"act_rms": rms(v), "c_tokens": c_tokens(v), **instruments.layer_stats(v, v, v, self.relu_like)} for v in values]
        return x, jax.tree.map(lambda *vs: jnp.stack(vs), *per)


class Transformer(nnx.Module):
    """Embedding and positions, `depth` scanned blocks, (pre_ln: a final norm,) a linear head."""

    def __init__(self, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int, key: jax.Array):
        from decay import data, tasks  # the task decides where the head reads

        check(cfg, input_shape[0])
        k_embed, k_pos, k_blocks, k_head = jax.random.split(key, 4)
        length, features = input_shape
        w = cfg.width
        self.embed = nnx.Linear(features, w, rngs=nnx.Rngs(params=k_embed))
        self.pos = nnx.Param(0.02 * jax.random.normal(k_pos, (length, w))) if cfg.positions == "learned" else None
        keys = jax.random.split(k_blocks, cfg.depth)
        make = lambda k: Block(cfg, cfg.depth, rngs=nnx.Rngs(params=k))  # noqa: E731
        self.blocks = nnx.data(stacked(make, keys, init_cache(cfg, "transformer")))
        final = cfg.norm if cfg.block == "pre_ln" else "none"  # pre_ln's stream is normed once more before the head
        self.final_norm = NORMS.get(final)(w, (-1,), cfg.bn_momentum, rngs=nnx.Rngs(0))
        task = data.task_of(cfg.dataset)
        self.per_position, self.causal = task == "per_position", cfg.causal
        self.head = nnx.Linear(w, tasks.TASKS.get(task).outputs(num_classes), rngs=nnx.Rngs(params=k_head))

    def stream(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        """The residual stream after the last block [B, L, W] and the per-point aux (kind-major) of inputs x [B, L, F]."""
        h = self.embed(x)
        h = h + (self.pos[...] if self.pos is not None else sinusoids(h.shape[1], h.shape[2]))
        n = self.blocks.q.kernel.shape[0]
        per_block = None if probes is None else jnp.swapaxes(probes.reshape(3, n, *probes.shape[1:]), 0, 1)
        graphdef, state = nnx.split(self.blocks)

        def body(h, xs):
            block_state, p = xs
            block = nnx.merge(graphdef, block_state, copy=True)
            h, aux = block(h, p, train, stats)
            return h, (aux, nnx.state(block, nnx.BatchStat))

        h, (aux, batch_stats) = jax.lax.scan(body, h, (state, per_block))
        if train:
            nnx.update(self.blocks, batch_stats)
        return h, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:]), aux)  # [L, 3] -> kind-major

    def __call__(self, x: jax.Array, probes: jax.Array | None = None, train: bool = False, stats: bool = False):
        h, aux = self.stream(x, probes, train, stats)
        h = self.final_norm(h, train)
        if self.per_position:
            out = self.head(h)
        else:  # a causal model's last token has read every token; otherwise the mean over tokens
            out = self.head(h[:, -1] if self.causal else jnp.mean(h, axis=1))
        return out, (aux if stats else {"act_rms": aux})


def _kernels(tree: Any) -> list[jax.Array]:
    return [tree["blocks"][name]["kernel"] for name in KERNELS]


def _representation(model: Transformer, x: jax.Array) -> jax.Array:
    h = model.final_norm(model.stream(x)[0], False)
    return h.reshape(h.shape[0], -1)


def _weight_vars(cfg: RunConfig) -> dict[str, float]:
    """sigma^2 = fan_in Var(W) of each of a block's kernels at init (DeepNorm's beta not included)."""
    w, m = cfg.width, cfg.mlp_ratio * cfg.width
    if cfg.weight_var is not None:
        return dict.fromkeys(KERNELS, float(cfg.weight_var))
    init = resolve_init(cfg.init, cfg.activation)
    shapes = {"q": (w, w), "k": (w, w), "v": (w, w), "out": (w, w), "mlp_in": (w, m), "mlp_out": (m, w)}
    return {k: theory.init_weight_var(init, *shapes[k]) for k in KERNELS}


def embedded_q(cfg: RunConfig, x: np.ndarray) -> float:
    """q of the stream entering block 0: the embedding's lecun_normal kernel gives each unit the variance
    mean_i x_i^2 of a token (zero bias), plus the positions' mean square (learned N(0, 0.02^2); or the sinusoids)."""
    pos = 0.02**2 if cfg.positions == "learned" else float(np.mean(np.square(np.asarray(sinusoids(x.shape[1], cfg.width)))))
    return float(np.mean(np.square(x, dtype=np.float64))) + pos


def predict(cfg: RunConfig, dataset) -> dict[str, Any]:
    """Theory at initialization (derived in docs/transformer.md) for pre_ln and rezero blocks, else 'no theory'.

    Over the random weights, a sublayer's output is uncorrelated with the stream it is added to, so the
    stream's q adds the sublayers' q: q_{l+1} = q_l + a_l + f_l. An MLP on an input of mean square s
    gives f = s_2 E[phi(z)^2], z ~ N(0, s_1 s) (s_1, s_2 the kernels' sigma^2); attention gives
    a = s_v s_o s sum_jk p_j p_k rho_jk, between s_v s_o s / n (tokens uncorrelated, attention uniform)
    and s_v s_o s (every token alike). pre_ln: s = 1 (the norm), so q grows linearly, by f + a per
    block. rezero: both branches are scaled by 0, so q stays q_0, and dL/dx_l = dL/dx_{l+1}: chi = 1.
    """
    none = {"chi_theory": None, "signal_profile_theory": None}
    if cfg.block not in ("pre_ln", "rezero"):
        return {**none, "theory": f"no theory: the residual-stream theory here covers pre_ln and rezero, not {cfg.block}"}
    try:
        s = _weight_vars(cfg)
    except ValueError as e:
        return {**none, "theory": f"no theory: {e}"}
    n = dataset.x_train.shape[1]
    # With a causal mask token i averages over i + 1 tokens: uniform attention gives sum_j p_j^2 = 1 / (i + 1).
    spread = float(np.mean(1.0 / np.arange(1, n + 1))) if cfg.causal else 1.0 / n
    q0 = embedded_q(cfg, dataset.x_train)
    s_in = 1.0 if cfg.block == "pre_ln" else q0
    f = float(theory.variance_map(cfg.activation, s["mlp_out"], 0.0, s["mlp_in"] * s_in))
    a_hi = s["v"] * s["out"] * s_in
    a_lo = a_hi * spread
    blocks = np.arange(1, cfg.depth + 1)
    if cfg.block == "pre_ln":
        low = [*(q0 + blocks * (a_lo + f)), *[a_lo] * cfg.depth, *[f] * cfg.depth]
        high = [*(q0 + blocks * (a_hi + f)), *[a_hi] * cfg.depth, *[f] * cfg.depth]
        out = {
            **none,
            "theory": "pre_ln residual stream (derived here): q_l = q_0 + l (a + f), a between tokens"
            " uncorrelated and alike; no backward theory",
        }
    else:
        low = [*[q0] * cfg.depth, *[a_lo] * cfg.depth, *[f] * cfg.depth]
        high = [*[q0] * cfg.depth, *[a_hi] * cfg.depth, *[f] * cfg.depth]
        out = {
            "chi_theory": 1.0,
            "signal_profile_theory": [1.0] * cfg.depth,
            "theory": "rezero at init (derived here): every block the identity, q_l = q_0 and chi = 1 exactly",
        }
    return {**out, "q_theory_low": [metrics.clean(v) for v in low], "q_theory_high": [metrics.clean(v) for v in high]}


FAMILY = register(
    Family(
        name="transformer",
        build=Transformer,
        point_shape=lambda cfg, shape: (shape[0], cfg.width),
        probe_points="per block, kind-major: the residual stream after it, its attention output, its MLP output",
        layer_kernels=_kernels,
        is_layer_kernel=lambda path: len(path) >= 3 and path[0] == "blocks" and path[-1] == "kernel" and path[-2] in KERNELS,
        representation=_representation,
        no_theory="no theory: the residual-stream theory here covers pre_ln and rezero",
        predict=predict,
        tasks=("classification", "regression", "per_position"),
        sequence=True,
        norms=("none", *BLOCK_NORMS),
        count_points=lambda cfg, shape: len(POINT_KINDS) * cfg.depth,
        chi_points=lambda cfg, shape: (0, cfg.depth),  # along the residual stream
        count_kernels=lambda cfg: len(KERNELS) * cfg.depth,
        point_names=lambda cfg, shape: [f"{k}/block_{i:03d}" for k in POINT_KINDS for i in range(cfg.depth)],
        kernel_names=lambda cfg: [f"{k}/block_{i:03d}" for k in KERNELS for i in range(cfg.depth)],
        row_fields=lambda cfg: {"block": cfg.block, "heads": cfg.heads, "causal": cfg.causal},
        name_suffix=lambda cfg: f"-{cfg.block}" + (f"-warm{cfg.warmup_steps}" if cfg.warmup_steps else ""),
        check_config=check,
    )
)
