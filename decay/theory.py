"""Mean-field theory of signal propagation at initialization, next to what `decay` measures.

Setting (Poole et al. 2016; Schoenholz et al. 2017): a wide net with pre-activations
h_l = W_l x_{l-1} + b_l, x_l = phi(h_l), W_ij ~ N(0, weight_var / fan_in), b_i ~ N(0, bias_var).
With z, z1, z2 independent standard normals:

  variance map     q_l = weight_var E[phi(sqrt(q_{l-1}) z)^2] + bias_var              -> fixed point q*
  correlation map  c_l = (weight_var E[phi(u1) phi(u2)] + bias_var) / q*,
                   u1 = sqrt(q*) z1, u2 = sqrt(q*) (c z1 + sqrt(1 - c^2) z2)          -> fixed point c*
  chi_1 = weight_var E[phi'(sqrt(q*) z)^2]   the per-layer factor of the squared backprop signal
                                             ||dL/dh_l||^2 = chi_1 ||dL/dh_{l+1}||^2 (what `decay` calls chi)
  chi_c = weight_var E[phi'(u1) phi'(u2)] at c*, the slope of the correlation map at c*
  depth scales     xi_q = -1 / log(chi_1 + weight_var E[phi''(sqrt(q*) z) phi(sqrt(q*) z)])
                   xi_c = -1 / log(chi_c)                  (ordered phase: c* = 1, chi_c = chi_1)
                   xi_grad = -1 / log(chi_1)               (negative: gradients grow toward the input)
  phase            ordered when chi_1 < 1 (c* = 1 attracts), chaotic when chi_1 > 1 (c* < 1);
                   Schoenholz et al. report that nets train up to a depth of about 6 xi_c.

Gaussian expectations are computed in float64 by Gauss-Legendre quadrature on [-10, 10] split
at 0 (the kink of ReLU-like activations), exact to ~1e-13 for the registered activations.

Batch normalization (Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz, ICLR 2019, "A Mean Field
Theory of Batch Normalization"): see `batchnorm_chi`. Layer/RMS normalization and residual
branches `x + alpha f(x)`: see `signal_profile`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from decay import families, metrics
from decay.config import RunConfig
from decay.layers import ACTIVATIONS, resolve_init

_CUT = 10.0  # |z| > 10 holds < 2e-23 of a standard normal's mass
_NODES = 64  # Gauss-Legendre nodes per half-line
UNBOUNDED = math.inf  # q* of a variance map that grows without limit


def _legendre(n: int, a, b):
    """Gauss-Legendre nodes and weights on [a, b] (a, b broadcastable arrays); nodes on the last axis."""
    x, w = np.polynomial.legendre.leggauss(n)
    a = jnp.asarray(a)[..., None]
    b = jnp.asarray(b)[..., None]
    half = (b - a) / 2
    return a + half * (x + 1), half * w


@functools.cache
def _normal_rule() -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w with sum(w f(z)) = E[f(z)], z ~ N(0, 1), split at 0."""
    x, w = np.polynomial.legendre.leggauss(_NODES)
    pos = (x + 1) * _CUT / 2
    wpos = w * _CUT / 2
    z = np.concatenate([-pos[::-1], pos])
    wz = np.concatenate([wpos[::-1], wpos]) * np.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    return z, wz


def _fns(activation: str):
    """phi, phi' and phi'' of a registered activation, elementwise."""
    phi = ACTIVATIONS.get(activation)

    def d1(x):
        return jax.jvp(phi, (x,), (jnp.ones_like(x),))[1]

    def d2(x):
        return jax.jvp(d1, (x,), (jnp.ones_like(x),))[1]

    return phi, d1, d2


def _x64(fn):
    """Runs `fn` with JAX in float64 (the theory's iterations need it near criticality)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


def _mean(f, q) -> jax.Array:
    """E[f(sqrt(q) z)], z ~ N(0, 1); q an array, result of the same shape."""
    z, w = _normal_rule()
    q = jnp.asarray(q, jnp.float64)
    return jnp.sum(w * f(jnp.sqrt(q)[..., None] * z), axis=-1)


def _mean2(f, g, q, c) -> jax.Array:
    """E[f(u1) g(u2)], u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2); scalars q, c.

    The inner integral over z2 is split where u2 = 0, so kinks of g at 0 cost no accuracy.
    """
    z1, w1 = _normal_rule()
    c = jnp.clip(jnp.asarray(c, jnp.float64), -1.0, 1.0)
    s = jnp.sqrt(jnp.maximum(1.0 - c**2, 0.0))
    sq = jnp.sqrt(jnp.asarray(q, jnp.float64))
    t = jnp.clip(-c * z1 / jnp.maximum(s, 1e-300), -_CUT, _CUT)  # u2 = 0 at z2 = t
    lo_z, lo_w = _legendre(_NODES, -_CUT, t)
    hi_z, hi_w = _legendre(_NODES, t, _CUT)
    z2 = jnp.concatenate([lo_z, hi_z], -1)
    w2 = jnp.concatenate([lo_w, hi_w], -1) * jnp.exp(-(z2**2) / 2) / math.sqrt(2 * math.pi)
    u1 = sq * z1
    u2 = sq * (c * z1[:, None] + s * z2)
    inner = jnp.sum(w2 * g(u2), axis=-1)
    return jnp.sum(w1 * f(u1) * inner)


# ---------------------------------------------------------------------------------------------
# Named inits as (weight_var, bias_var)


def init_weight_var(init: str, fan_in: int, fan_out: int) -> float:
    """sigma_w^2 = fan_in * Var(W_ij) of a registered init for a (fan_in, fan_out) kernel; biases are 0.

    lecun_normal 1; he_* 2; glorot_* 2 fan_in / (fan_in + fan_out) (1 for square layers);
    orthogonal min(fan_in, fan_out) / fan_out (1 for square layers: orthonormal rows or columns).
    """
    if init == "lecun_normal":
        return 1.0
    if init in ("he_normal", "he_uniform"):
        return 2.0
    if init in ("glorot_normal", "glorot_uniform"):
        return 2.0 * fan_in / (fan_in + fan_out)
    if init == "orthogonal":
        return min(fan_in, fan_out) / fan_out
    raise ValueError(f"unknown init '{init}' (no mean-field variance for it)")


def config_variances(cfg: RunConfig, fan_in: int) -> tuple[float, float, float]:
    """(stem weight_var, hidden weight_var, bias_var) of a config whose stem reads `fan_in` inputs."""
    bias_var = float(cfg.bias_var or 0.0)
    if cfg.weight_var is not None:
        return float(cfg.weight_var), float(cfg.weight_var), bias_var
    init = resolve_init(cfg.init, cfg.activation)
    return init_weight_var(init, fan_in, cfg.width), init_weight_var(init, cfg.width, cfg.width), bias_var


# ---------------------------------------------------------------------------------------------
# Poole et al. 2016, Schoenholz et al. 2017: plain nets


@_x64
def variance_map(activation: str, weight_var: float, bias_var: float, q) -> np.ndarray:
    """q_l from q_{l-1}: weight_var E[phi(sqrt(q) z)^2] + bias_var (q may be an array)."""
    phi, _, _ = _fns(activation)
    return np.asarray(weight_var * _mean(lambda u: phi(u) ** 2, q) + bias_var)


@functools.cache
def _q_solver(activation: str):
    """Jitted iteration of the variance map from q_in until it settles (elementwise over arrays)."""
    phi, _, _ = _fns(activation)

    @jax.jit
    def solve(weight_var, bias_var, q_in):
        def vmap_(q):
            return weight_var * _mean(lambda u: phi(u) ** 2, q) + bias_var

        def moving(state):
            q, prev, _ = state
            grow = jnp.isfinite(q) & (q < 1e30)
            return grow & (q > 1e-12) & (jnp.abs(q - prev) > 1e-13 * q)

        def cond(state):
            return (state[2] < 100_000) & jnp.any(moving(state))

        def body(state):
            q, _, i = state
            return jnp.where(moving(state), vmap_(q), q), q, i + 1

        q0 = jnp.asarray(q_in, jnp.float64) * jnp.ones(jnp.broadcast_shapes(jnp.shape(weight_var), jnp.shape(q_in)))
        state = jax.lax.while_loop(cond, body, (vmap_(q0), q0, 1))
        return state[0], state[1], moving(state)

    return solve


@_x64
def q_fixed_points(activation: str, weight_var, bias_var, q_in=1.0) -> np.ndarray:
    """q* that the variance map reaches from q_in, elementwise over arrays of weight_var, bias_var, q_in.

    The map is iterated until it settles (100,000 steps at most). 0 when signals die out (only
    without bias); `UNBOUNDED` when they grow without limit, also algebraically (e.g. ReLU at
    weight_var 2 with a bias: q grows by bias_var per layer). Every q is a fixed point when the
    map is the identity (ReLU with weight_var 2, linear with weight_var 1, both without bias);
    then q* = q_in.
    """
    wv = jnp.asarray(weight_var, jnp.float64)
    bv = np.asarray(jnp.asarray(bias_var, jnp.float64) * jnp.ones_like(wv))
    q, prev, moving = (np.asarray(a) for a in _q_solver(activation)(wv, jnp.asarray(bv), jnp.asarray(q_in, jnp.float64)))
    unbounded = ~np.isfinite(q) | (q >= 1e30) | (moving & (q > prev))
    dying = (bv == 0) & ((q <= 1e-12) | (moving & (q < prev)))
    return np.where(unbounded, UNBOUNDED, np.where(dying, 0.0, q))


def q_fixed_point(activation: str, weight_var: float, bias_var: float, q_in: float = 1.0) -> float:
    """q* of one (weight_var, bias_var) point; see `q_fixed_points`."""
    return float(q_fixed_points(activation, weight_var, bias_var, q_in))


@_x64
def chi1(activation: str, weight_var: float, q) -> np.ndarray:
    """chi_1 = weight_var E[phi'(sqrt(q) z)^2] at variance q (an array, or q* for the fixed-point value)."""
    _, d1, _ = _fns(activation)
    q = np.asarray(q, np.float64)
    q = np.where(np.isinf(q), 1e12, q)  # the q -> infinity limit (positive-homogeneous tails)
    q = np.where(q == 0, 1e-200, q)  # the q -> 0 limit (ReLU: weight_var / 2, not phi'(0) = 0)
    return np.asarray(weight_var * _mean(lambda u: d1(u) ** 2, q))


@_x64
def correlation_map(activation: str, weight_var: float, bias_var: float, q: float, c: float) -> float:
    """c_l from c_{l-1} at the variance q (normally q*)."""
    phi, _, _ = _fns(activation)
    return float((weight_var * _mean2(phi, phi, q, c) + bias_var) / q)


@_x64
def chi_c(activation: str, weight_var: float, q: float, c: float) -> float:
    """weight_var E[phi'(u1) phi'(u2)]: the slope of the correlation map at c."""
    _, d1, _ = _fns(activation)
    return float(weight_var * _mean2(d1, d1, q, c))


@functools.cache
def _c_gap(activation: str):
    """Jitted f(c) = C(c) - c, the correlation map's distance from the identity at q*."""
    phi, _, _ = _fns(activation)

    @jax.jit
    def gap(weight_var, bias_var, q_star, c):
        return (weight_var * _mean2(phi, phi, q_star, c) + bias_var) / q_star - c

    return gap


@_x64
def c_fixed_point(activation: str, weight_var: float, bias_var: float, q_star: float) -> float:
    """c*: 1 in the ordered phase (chi_1 <= 1) and where q* is 0 or unbounded, else the stable fixed point below 1.

    In the chaotic phase C(c) - c is >= 0 at c = 0 (bias_var >= 0) and < 0 just below c = 1
    (slope chi_1 > 1 there): c* is where it first turns negative, found by bisection, which stays
    exact near criticality where iterating the map would take millions of steps.
    """
    if not (0 < q_star < UNBOUNDED):
        return 1.0
    if float(chi1(activation, weight_var, q_star)) <= 1.0:
        return 1.0
    gap = _c_gap(activation)
    f = lambda c: float(gap(jnp.float64(weight_var), jnp.float64(bias_var), jnp.float64(q_star), jnp.float64(c)))  # noqa: E731
    grid = np.concatenate([np.linspace(0.0, 0.9, 10), 1.0 - np.logspace(-1.5, -12, 22)])
    values = [f(c) for c in grid]
    if values[0] <= 0:
        return 0.0  # odd activation without bias: c* = 0
    i = next((k for k, v in enumerate(values) if v <= 0), None)
    if i is None:
        return 1.0
    lo, hi = grid[i - 1], grid[i]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """Mean-field predictions of a plain (unnormalized, non-residual) net; inf where infinite, NaN where undefined."""

    activation: str
    weight_var: float
    bias_var: float
    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    xi_q: float  # inf at a neutral or unbounded variance map
    xi_c: float  # inf at criticality
    xi_grad: float  # -1/log chi_1: gradients shrink by e over xi_grad layers (negative: grow)
    phase: str  # ordered | critical | chaotic
    trainable_depth: float  # 6 xi_c (Schoenholz et al. 2017)


def _neg_inv_log(x: float) -> float:
    if not (x > 0) or not math.isfinite(x):
        return math.nan
    if abs(math.log(x)) < 1e-12:
        return math.inf
    return -1.0 / math.log(x)


@_x64
def fixed_point(activation: str, weight_var: float, bias_var: float = 0.0, q_in: float = 1.0) -> FixedPoint:
    """q*, c*, chi_1, chi_c, the depth scales, the phase and the trainable depth of a plain net."""
    phi, d1, d2 = _fns(activation)
    q = q_fixed_point(activation, weight_var, bias_var, q_in)
    c1 = float(chi1(activation, weight_var, q))
    c_star = c_fixed_point(activation, weight_var, bias_var, q)
    if q < UNBOUNDED:
        slope_q = c1 + weight_var * float(_mean(lambda u: d2(u) * phi(u), max(q, 1e-200)))
        xi_q = _neg_inv_log(slope_q)
        cc = c1 if c_star >= 1.0 else chi_c(activation, weight_var, q, c_star)  # ordered: c* = 1, chi_c = chi_1
    else:
        xi_q = math.inf
        cc = c1
    xi_c = _neg_inv_log(cc)
    if q == 0.0 or xi_c < 0:
        # Signals die out: the correlation map at q* = 0 is degenerate, so no correlation depth scale.
        xi_c = math.nan
    if xi_q < 0:
        xi_q = math.nan
    phase = "critical" if abs(c1 - 1.0) < 1e-9 else ("ordered" if c1 < 1.0 else "chaotic")
    if q == UNBOUNDED:
        # Signals grow without limit: no order-to-chaos fixed point, no correlation depth scale.
        phase, xi_c = "unbounded", math.nan
    return FixedPoint(
        activation=activation,
        weight_var=float(weight_var),
        bias_var=float(bias_var),
        q_star=q,
        c_star=c_star,
        chi_1=c1,
        chi_c=cc,
        xi_q=xi_q,
        xi_c=xi_c,
        xi_grad=_neg_inv_log(c1),
        phase=phase,
        trainable_depth=6.0 * xi_c,
    )


def critical_weight_var(activation: str, bias_var: float, lo: float = 0.1, hi: float = 10.0) -> float | None:
    """The weight_var where chi_1 = 1 at this bias_var (Brent's method, to 1e-12), None when chi_1 - 1 keeps its sign
    on [lo, hi]."""
    from scipy.optimize import brentq

    def f(w: float) -> float:
        return float(chi1(activation, w, q_fixed_point(activation, w, bias_var))) - 1.0

    a, b = f(lo), f(hi)
    if a * b > 0:
        return None
    if a == 0 or b == 0:
        return lo if a == 0 else hi
    return float(brentq(f, lo, hi, xtol=1e-12, rtol=1e-12))


# Closed forms (ReLU and linear), against which the numeric path is tested.


def relu_q_star(weight_var: float, bias_var: float, q_in: float = 1.0) -> float:
    """ReLU: q* = bias_var / (1 - weight_var / 2) for weight_var < 2; q_in at (2, 0); else unbounded."""
    if weight_var < 2.0:
        return bias_var / (1.0 - weight_var / 2.0)
    if weight_var == 2.0 and bias_var == 0.0:
        return q_in
    return UNBOUNDED


def relu_chi1(weight_var: float) -> float:
    """ReLU: chi_1 = weight_var / 2 (phi' is 1 on half the inputs), whatever q."""
    return weight_var / 2.0


def relu_correlation_map(weight_var: float, bias_var: float, q: float, c: float) -> float:
    """ReLU: the arc-cosine kernel, E[relu(u1) relu(u2)] = q (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi)."""
    k = (math.sqrt(max(1.0 - c * c, 0.0)) + (math.pi - math.acos(c)) * c) / (2 * math.pi)
    return (weight_var * q * k + bias_var) / q


def relu_chi_c(weight_var: float, c: float) -> float:
    """ReLU: weight_var P(u1 > 0, u2 > 0) = weight_var (pi - arccos c) / (2 pi)."""
    return weight_var * (math.pi - math.acos(c)) / (2 * math.pi)


# ---------------------------------------------------------------------------------------------
# Yang et al. 2019: batch-normalized feedforward nets


def _sphere_rules(batch_size: int):
    """Quadrature for one and two coordinates of z, z uniform on the sphere of radius sqrt(B)
    in the hyperplane sum(z) = 0 (dimension n = B - 1).

    One coordinate: z1 = sqrt(B - 1) u, u with density ~ (1 - u^2)^((n - 3) / 2) on [-1, 1].
    Two coordinates: (z1, z2) = sqrt(B) M v, v with density ~ (1 - |v|^2)^((n - 4) / 2) on the unit
    disk, M M^T = [[1 - 1/B, -1/B], [-1/B, 1 - 1/B]] (the Gram matrix of the centered e1, e2).
    """
    b = batch_size
    n = b - 1
    # u = sin(t) and r = sin(t) turn the densities' (1 - u^2)^k end points into smooth cosines.
    t, wt = _legendre(2 * _NODES, jnp.array([-math.pi / 2, 0.0]), jnp.array([0.0, math.pi / 2]))
    t, wt = t.ravel(), wt.ravel()
    u = jnp.sin(t)
    wu = wt * jnp.cos(t) ** (n - 2)
    z1 = jnp.sqrt(b - 1.0) * u
    w1 = wu / jnp.sum(wu)
    # Two coordinates in polar form; the angle integral is split where z1 or z2 changes sign.
    a11 = math.sqrt(1 - 1 / b)
    a21 = (-1 / b) / a11
    a22 = math.sqrt(1 - 1 / b - a21**2)
    t, wt = _legendre(2 * _NODES, 0.0, math.pi / 2)
    r = jnp.sin(t)
    wr = wt * r * jnp.cos(t) ** (n - 3)
    kinks = np.sort(np.mod([math.pi / 2, 3 * math.pi / 2, math.atan2(-a21, a22), math.atan2(a21, -a22)], 2 * math.pi))
    edges = np.concatenate([kinks, [kinks[0] + 2 * math.pi]])
    th, wth = _legendre(_NODES, jnp.asarray(edges[:-1]), jnp.asarray(edges[1:]))
    th, wth = th.ravel(), wth.ravel()
    v1 = r[:, None] * jnp.cos(th)[None, :]
    v2 = r[:, None] * jnp.sin(th)[None, :]
    w2 = wr[:, None] * wth[None, :]
    zz1 = math.sqrt(b) * a11 * v1
    zz2 = math.sqrt(b) * (a21 * v1 + a22 * v2)
    return z1, w1, zz1.ravel(), zz2.ravel(), (w2 / jnp.sum(w2)).ravel()


@functools.lru_cache(maxsize=64)
@_x64
def batchnorm_chi(activation: str, batch_size: int) -> float:
    """Per-layer factor of the squared backprop signal of a wide batch-normalized net at initialization.

    The net of Yang et al. (2019), `h_l = W_l x_{l-1} + b_l -> BN over the batch -> phi`, with
    gamma = 1, beta = 0, batch size B, under their assumptions (infinite width, gradient
    independence, forward signal at the permutation-symmetric "BSB1" fixed point). There the
    centered pre-activation of every unit is isotropic in the (B-1)-dimensional centered
    subspace, so the normalized batch vector z is uniform on the sphere of radius sqrt(B) in it.
    The backward map of the batch covariance of the gradient Delta (B x B) is

        Delta_{l-1} = weight_var E[ B / ||G h||^2  P D Delta_l D P ],   G = I - 11^T / B,
        P = G - z z^T / B (BN's Jacobian, a projection), D = diag(phi'(z)),

    and the squared gradient norm tr(Delta) grows by its eigenvalue on Delta = G (the only
    permutation-invariant direction it keeps), which is the explosion rate lambda_G of the paper:

        lambda_G = B E[tr(P D G D)] / ((B - 1)(B - 3) s),   s = E[phi(z1)^2] - E[phi(z1) phi(z2)],

    using E[B / ||G h||^2] = B / (weight_var s (B - 3)) (an inverse chi-square with B - 1 degrees
    of freedom). weight_var and bias_var drop out: BN removes both. The expectations reduce to one
    and two coordinates of z, computed here by quadrature over their exact (finite-B) densities.
    The paper's two closed forms follow and are tested: linear (B - 2)/(B - 3)
    (`batchnorm_chi_linear`), and ReLU, which tends to pi / (pi - 1) as B grows
    (`batchnorm_chi_relu`). Note: this function was written from these stated results and the
    model above; the paper's own text was not at hand, so equation numbers are not cited.
    """
    if batch_size < 5:
        raise ValueError(f"batchnorm theory needs batch_size >= 5, got {batch_size}")
    b = float(batch_size)
    s, e_d2, e_d12, e_dz2, e_dz12 = (float(v) for v in _sphere_expectations(activation)(*_sphere_rules(batch_size)))
    # E tr(G D G D) = (B - 2) E[d^2] + (E[d^2] + (B - 1) E[d1 d2]) / B;  E[z^T D G D z] / B = (B - 1)(e - f) / B.
    tr = (b - 2) * e_d2 + (e_d2 + (b - 1) * e_d12) / b - (b - 1) * (e_dz2 - e_dz12) / b
    return float(b * tr / ((b - 1) * (b - 3) * s))


@functools.cache
def _sphere_expectations(activation: str):
    """Jitted (one compiled program per activation, not one per operation): the expectations of `batchnorm_chi`
    over one and two coordinates of z: (s, E d^2, E d1 d2, E (d z)^2, E d1 z1 d2 z2), d = phi'."""
    _, d1, _ = _fns(activation)
    phi = ACTIVATIONS.get(activation)

    @jax.jit
    def expectations(z1, w1, zz1, zz2, w2):
        s = jnp.sum(w1 * phi(z1) ** 2) - jnp.sum(w2 * phi(zz1) * phi(zz2))
        e_d2 = jnp.sum(w1 * d1(z1) ** 2)
        e_d12 = jnp.sum(w2 * d1(zz1) * d1(zz2))
        e_dz2 = jnp.sum(w1 * (d1(z1) * z1) ** 2)
        e_dz12 = jnp.sum(w2 * d1(zz1) * zz1 * d1(zz2) * zz2)
        return jnp.stack([s, e_d2, e_d12, e_dz2, e_dz12])

    return expectations


def batchnorm_chi_linear(batch_size: int) -> float:
    """Linear activation: (B - 2) / (B - 3) per layer."""
    return (batch_size - 2) / (batch_size - 3)


def batchnorm_chi_relu(batch_size: int) -> float:
    """ReLU, closed form of `batchnorm_chi`; tends to pi / (pi - 1) ~ 1.467 as B grows.

    With rho = -1/(B-1) the correlation of two centered coordinates: P(z1 > 0, z2 > 0) =
    1/4 + arcsin(rho) / (2 pi), E[relu(z1) relu(z2)] = (sqrt(1 - rho^2) + (pi - arccos rho) rho) / (2 pi).
    """
    b = float(batch_size)
    rho = -1.0 / (b - 1)
    p2 = 0.25 + math.asin(rho) / (2 * math.pi)
    k2 = (math.sqrt(1 - rho * rho) + (math.pi - math.acos(rho)) * rho) / (2 * math.pi)
    s = 0.5 - k2
    tr = (b - 2) * 0.5 + (0.5 + (b - 1) * p2) / b - (b - 1) * (0.5 - k2) / b
    return b * tr / ((b - 1) * (b - 3) * s)


# ---------------------------------------------------------------------------------------------
# Layer-wise profiles: plain and residual nets, no norm or a per-example norm


@_x64
def layernorm_chi(activation: str, weight_var: float, bias_var: float) -> float:
    """Per-layer factor of a wide layer- or RMS-normalized plain net (h -> norm -> phi).

    In the wide limit the norm divides h_l by its RMS over units, sqrt(q_l): the normalized
    pre-activation is N(0, 1) whatever q, q_l = weight_var E[phi(z)^2] + bias_var, and the
    backward factor is weight_var E[phi'(z)^2] / q_l (the two directions the norm projects out
    are negligible against the width).
    """
    phi, d1, _ = _fns(activation)
    q = weight_var * float(_mean(lambda u: phi(u) ** 2, 1.0)) + bias_var
    return weight_var * float(_mean(lambda u: d1(u) ** 2, 1.0)) / q


@functools.cache
def _moments(activation: str, normalized: bool):
    """Jitted q -> (E phi, E phi^2, E phi'^2 [/ q when normalized]) at pre-activation variance q (or 1, normalized)."""
    phi, d1, _ = _fns(activation)

    @jax.jit
    def moments(q):  # one stacked array: a single transfer to the host per call (the recursion calls it per layer)
        scale = jnp.ones_like(q) if normalized else q
        return jnp.stack(
            [
                _mean(phi, scale),
                _mean(lambda u: phi(u) ** 2, scale),
                _mean(lambda u: d1(u) ** 2, scale) / (q if normalized else 1.0),
            ]
        )

    return moments


@_x64
def _profile_terms(activation, norm, weight_var, bias_var, depth, q_in, stem_weight_var, residual_scale):
    """log a_l and log pass_l, each [depth, examples]; see `signal_profile` for the recursion."""
    if norm not in ("none", "layernorm", "rmsnorm"):
        raise ValueError(f"no layer-wise profile for norm '{norm}'")
    jitted = _moments(activation, norm != "none")
    moments = lambda q: np.asarray(jitted(q))  # noqa: E731  (the recursion runs in NumPy float64)
    stem_wv = weight_var if stem_weight_var is None else stem_weight_var
    q_in = np.atleast_1d(np.asarray(q_in, np.float64))
    alpha = residual_scale

    q = stem_wv * q_in + bias_var
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # log 0 = -inf: a vanished signal
        return _recursion(moments, q, weight_var, bias_var, depth, alpha)


def _recursion(moments, q, weight_var, bias_var, depth, alpha):
    """The layer-by-layer part of `_profile_terms`, in NumPy float64."""
    m, big_q, dd = moments(q)
    log_a = [np.log(dd)]
    log_pass = [np.log(weight_var * dd)]  # the stem's: unused (nothing below it is measured)
    for _ in range(1, depth):
        q = weight_var * big_q + bias_var
        ey, ey2, dd = moments(q)
        if alpha is None:
            m, big_q, a = ey, ey2, dd
            log_pass.append(np.log(weight_var * a))
        else:
            big_q = big_q + 2 * alpha * m * ey + alpha * alpha * ey2  # (alpha * alpha: inf, not OverflowError, at huge alpha)
            m = m + alpha * ey
            a = alpha * alpha * dd
            log_pass.append(np.log1p(weight_var * a))
        log_a.append(np.log(a))
    return np.stack(log_a), np.stack(log_pass)


@_x64
def signal_profile(
    activation: str,
    norm: str,
    weight_var: float,
    bias_var: float,
    depth: int,
    q_in,
    stem_weight_var: float | None = None,
    residual_scale: float | None = None,
) -> np.ndarray:
    """Predicted ||dL/dh_l||^2 / ||dL/dh_{L-1}||^2 for layers l = 0..depth-1 (norm 'none', 'layernorm', 'rmsnorm').

    Forward, per unit (the carried state x_l has second moment Q_l and mean m_l, h_l variance q_l):
        q_0 = stem_weight_var q_in + bias_var,  q_l = weight_var Q_{l-1} + bias_var,
        y_l = phi(n(h_l)), n = identity (none) or h / sqrt(q_l) (layer/RMS norm, wide limit),
        plain: Q_l = E[y_l^2];  residual (l >= 1): x_l = x_{l-1} + alpha y_l, so
        Q_l = Q_{l-1} + 2 alpha m_{l-1} E[y_l] + alpha^2 E[y_l^2],  m_l = m_{l-1} + alpha E[y_l].
    Backward, with a_l = (alpha^2 for residual blocks) nu_l E[phi'(n(h_l))^2], nu_l = 1 or 1/q_l:
        ||dL/dh_l||^2 = a_l ||dL/dx_l||^2,  ||dL/dx_{l-1}||^2 = pass_l ||dL/dx_l||^2,
        pass_l = r + weight_var a_l, r = 1 for residual blocks (the skip), 0 otherwise.
    So a plain unnormalized net has the per-layer factor weight_var E[phi'(h_l)^2] = chi_1(q_l),
    and a residual block multiplies the squared carried gradient by 1 + alpha^2 weight_var nu E[phi'^2].
    `q_in` may be an array of per-example mean squared inputs; the profile is their average.
    """
    log_a, log_pass = _profile_terms(activation, norm, weight_var, bias_var, depth, q_in, stem_weight_var, residual_scale)
    # log ||dL/dx_l||^2 relative to the last layer: the sum of log pass_k over the layers k above l.
    # In NumPy: eager JAX operations would compile anew for every (depth, examples) shape.
    above = np.concatenate([np.cumsum(log_pass[::-1][:-1], axis=0)[::-1], np.zeros_like(log_pass[:1])])
    with np.errstate(invalid="ignore", over="ignore"):  # -inf - -inf where a signal vanished: NaN; exp overflows to inf
        log_s = log_a + above
        log_s = log_s - log_s[-1]
        # Average over examples in log space (the last layer is 1 for every example).
        avg = scipy.special.logsumexp(log_s, axis=1) - math.log(log_s.shape[1])
        return np.exp(avg)


@_x64
def residual_block_factors(
    activation: str, norm: str, weight_var: float, bias_var: float, depth: int, q_in: float, residual_scale: float
) -> np.ndarray:
    """Per-block factor of the squared carried gradient, 1 + alpha^2 weight_var nu_l E[phi'(n(h_l))^2], blocks 1..depth-1."""
    _, log_pass = _profile_terms(activation, norm, weight_var, bias_var, depth, q_in, None, residual_scale)
    with np.errstate(over="ignore"):
        return np.exp(log_pass[1:, 0])


def _fit(profile: np.ndarray) -> float | None:
    return metrics.fit_chi(np.sqrt(profile).tolist())


def _profile_for(
    activation: str,
    norm: str,
    weight_var: float,
    bias_var: float,
    depth: int,
    q_in: Any,
    stem_weight_var: float,
    residual_scale: float | None,
    batch_size: int,
) -> tuple[np.ndarray, str]:
    """The predicted squared-signal profile of one configuration and which theory gave it.

    Raises ValueError, saying why, where no theory applies.
    """
    if norm == "batchnorm":
        if residual_scale is not None:
            raise ValueError("batchnorm with residual connections")
        if batch_size < 5:
            raise ValueError("batchnorm theory needs batch_size >= 5")
        lam = batchnorm_chi(activation, batch_size)
        return lam ** np.arange(depth - 1, -1, -1, dtype=np.float64), "batchnorm mean field (Yang et al. 2019)"
    if norm not in ("none", "layernorm", "rmsnorm"):
        raise ValueError(f"norm '{norm}'")
    profile = signal_profile(activation, norm, weight_var, bias_var, depth, q_in, stem_weight_var, residual_scale)
    if norm == "none":
        return profile, "mean field (Poole et al. 2016, Schoenholz et al. 2017)"
    return profile, f"mean field, {norm} as a per-example rescaling (wide limit)"


def predict(cfg: RunConfig, q_in: Any, fan_in: int) -> dict[str, Any]:
    """Theory for one run: `chi_theory`, `signal_profile_theory` (||dL/dh_l|| / ||dL/dh_{L-1}||) and `theory`.

    `q_in` holds per-example mean squared inputs, `fan_in` the stem's input size. Where no theory
    applies, both numbers are None and `theory` says why.
    """
    none = {"chi_theory": None, "signal_profile_theory": None}
    fam = families.of(cfg)
    if fam.theory != "mean_field":
        return {**none, "theory": fam.no_theory}
    if cfg.depth < 2:
        return {**none, "theory": "no theory: depth 1 has no per-layer factor"}
    alpha = cfg.residual_scale if cfg.residual else None
    try:
        stem_wv, wv, bv = config_variances(cfg, fan_in)
        profile, kind = _profile_for(cfg.activation, cfg.norm, wv, bv, cfg.depth, q_in, stem_wv, alpha, cfg.batch_size)
    except ValueError as e:
        return {**none, "theory": f"no theory: {e}"}
    if alpha is not None:
        kind += f", residual alpha={alpha:g}"
    return {
        "chi_theory": metrics.clean(_fit(profile)),
        "signal_profile_theory": [metrics.clean(v) for v in np.sqrt(profile)],
        "theory": kind,
    }


def plain_fixed_point(cfg: RunConfig, fan_in: int) -> FixedPoint | None:
    """The mean-field fixed point of `cfg`'s hidden layers: a plain net of a family with mean-field theory
    (no norm, no residual), else None."""
    if families.of(cfg).theory != "mean_field" or cfg.norm != "none" or cfg.residual:
        return None
    _, wv, bv = config_variances(cfg, fan_in)
    return _fixed_point_cached(cfg.activation, wv, bv or 0.0)


def fixed_point_of(cfg: RunConfig, fan_in: int) -> tuple[float | None, float | None]:
    """(q*, c*) of `plain_fixed_point`, or (None, None)."""
    fp = plain_fixed_point(cfg, fan_in)
    return (None, None) if fp is None else (metrics.clean(fp.q_star), metrics.clean(fp.c_star))


@functools.lru_cache(maxsize=256)
def _fixed_point_cached(activation: str, weight_var: float, bias_var: float) -> FixedPoint:
    return fixed_point(activation, weight_var, bias_var)


def input_q(x_train: np.ndarray, limit: int = 256) -> tuple[np.ndarray, int]:
    """Per-example mean squared input (first `limit` examples) and the flattened input size."""
    x = np.asarray(x_train[:limit], np.float64).reshape(min(limit, x_train.shape[0]), -1)
    return np.mean(x**2, axis=1), x.shape[1]


def expectations(
    activation: str,
    norm: str = "none",
    weight_var: float = 1.0,
    bias_var: float = 0.0,
    batch_size: int = 128,
    residual_scale: float | None = None,
    depth: int = 32,
    q_in: float = 1.0,
) -> dict[str, Any]:
    """What theory expects of a net before it is trained: the fixed point of the plain net with
    these variances, and for this configuration the per-layer factor chi, the gain over `depth`
    layers and the verdict it implies. Infinite values are float('inf'); undefined ones NaN."""
    from decay import metrics

    fp = fixed_point(activation, weight_var, bias_var, q_in)
    out: dict[str, Any] = {
        "activation": activation,
        "norm": norm,
        "weight_var": weight_var,
        "bias_var": bias_var,
        "batch_size": batch_size,
        "residual_scale": residual_scale,
        "depth": depth,
        "q_in": q_in,
    }
    out.update({f"plain_{k}": v for k, v in dataclasses.asdict(fp).items() if k not in ("activation", "weight_var", "bias_var")})
    if norm == "batchnorm" and residual_scale is not None:
        raise ValueError("no theory for batchnorm with residual connections")
    # Every layer, the stem too, reads inputs of mean square q_in with this weight_var.
    profile, out["theory"] = _profile_for(
        activation, norm, weight_var, bias_var, depth, q_in, weight_var, residual_scale, batch_size
    )
    if norm == "batchnorm":
        chi = batchnorm_chi(activation, batch_size)
        out["theory"] += "; weight_var and bias_var drop out"
    else:
        chi = _fit(profile) if depth >= 2 else math.nan
        if residual_scale is not None and depth >= 2:
            blocks = residual_block_factors(activation, norm, weight_var, bias_var, depth, q_in, residual_scale)
            out["residual_block_factor_first"] = float(blocks[0])
            out["residual_block_factor_last"] = float(blocks[-1])
    chi = math.nan if chi is None else float(chi)
    out["chi"] = chi
    out["gain_first_over_last"] = float(np.sqrt(profile[0]))
    out["verdict"] = metrics.verdict(chi if math.isfinite(chi) else None, depth)
    out.update(_answer(fp, norm, residual_scale, depth, chi, out["gain_first_over_last"], q_in, out["verdict"]))
    return out


def _answer(
    fp: FixedPoint, norm: str, residual_scale: float | None, depth: int, chi: float, gain: float, q_in: float, verdict: str
) -> dict[str, Any]:
    """The question a user asks, answered in words: is this net trainable at this depth, and why.

    `trainable`: depth <= 6 xi_c for a plain net (no norm, no skips; None otherwise: no depth scale
    applies). `phase_words`: the phase, called near-critical when the gradient's depth scale |xi_grad|
    exceeds the depth (the net is too shallow to feel chi_1's distance from 1).
    """
    plain = norm == "none" and residual_scale is None
    xi_grad = abs(fp.xi_grad) if not math.isnan(fp.xi_grad) else math.nan
    phase = fp.phase
    if phase in ("ordered", "chaotic") and xi_grad >= depth:
        phase_words = (
            f"near-critical (on the {phase} side: chi_1 = {fp.chi_1:.4g}, {100 * abs(fp.chi_1 - 1):.2g}% from 1; the gradient "
            f"changes by e over {xi_grad:.3g} layers, more than the depth {depth})"
        )
    elif phase in ("ordered", "chaotic"):
        way = "shrinks" if fp.chi_1 < 1 else "grows"
        phase_words = (
            f"{phase} (chi_1 = {fp.chi_1:.4g}: the gradient {way} by e every {xi_grad:.3g} layers, within the depth {depth})"
        )
    else:
        phase_words = phase
    parts = []
    trainable: bool | None = None
    if plain and math.isfinite(fp.trainable_depth):
        trainable = depth <= fp.trainable_depth
        rel = "within" if trainable else "beyond"
        parts.append(
            f"{'Yes' if trainable else 'No'}: depth {depth} is {rel} the trainable depth 6 xi_c = {fp.trainable_depth:.4g} "
            f"(signals decorrelate over xi_c = {fp.xi_c:.3g} layers; Schoenholz et al. 2017)"
        )
    elif plain and fp.trainable_depth == math.inf:
        trainable = True
        parts.append(f"Yes: at criticality xi_c is infinite, so depth {depth} is within the trainable depth")
    elif plain:
        why = "q grows without limit" if fp.phase == "unbounded" else f"the forward signal dies out (q* = {fp.q_star:.3g})"
        parts.append(f"No correlation depth scale answers this: {why}; the verdict from chi at depth {depth} is '{verdict}'")
    else:
        what = "normalization" if norm != "none" else "residual connections"
        parts.append(f"No depth scale answers this with {what}; the verdict from chi is '{verdict}'")
    parts.append(f"the plain net's phase is {phase_words}")
    if math.isfinite(chi) and math.isfinite(gain) and gain > 0 and (chi - 1) * (gain - 1) < 0 and math.isfinite(fp.xi_q):
        parts.append(
            f"chi = {chi:.4g} is the middle layers' factor, yet the first/last gain is {gain:.3g}: it is set by the "
            f"first layers, where q moves from the input's {q_in:.3g} to q* = {fp.q_star:.3g} (depth scale "
            f"xi_q = {fp.xi_q:.3g} layers) and the per-layer factor is not yet chi"
        )
    return {"trainable": trainable, "phase_words": phase_words, "answer": "; ".join(parts) + "."}
