"""What should I expect? Mean-field predictions for one configuration, before any training.

    python -m experiments.theory --activation=tanh --weight_var=1.5 --bias_var=0.05
    python -m experiments.theory --activation=relu --norm=batchnorm --batch_size=32
    python -m experiments.theory --activation=relu --residual_scale=0.5 --depth=64 --json

Answers first, in words, whether the net is trainable at --depth and why (trainable depth 6 xi_c,
how far from critical in depth-scale terms), then prints a table (or JSON with --json, which
carries the same `answer`, `trainable` and `phase_words`): the plain net's fixed points q*, c*, chi_1, depth scales and
phase, and for the configuration given the per-layer factor chi of ||dL/dh_l||^2, the gradient
ratio first/last layer over --depth layers, and the verdict the depth sweep would give.
"""

from __future__ import annotations

import json
import math

from absl import app, flags

from decay import theory
from decay.layers import ACTIVATIONS, INITIALIZERS, resolve_init
from experiments._cli import fail, parse_flags

_ACTIVATION = flags.DEFINE_string("activation", "tanh", "Registered activation.")
_NORM = flags.DEFINE_string("norm", "none", "none, batchnorm, layernorm or rmsnorm.")
_INIT = flags.DEFINE_string("init", "auto", "Named init giving weight_var (square hidden layers); auto as in the sweep.")
_WEIGHT_VAR = flags.DEFINE_float("weight_var", None, "sigma_w^2; overrides --init.")
_BIAS_VAR = flags.DEFINE_float("bias_var", 0.0, "sigma_b^2.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size (batchnorm theory).")
_RESIDUAL_SCALE = flags.DEFINE_float("residual_scale", None, "alpha of residual blocks x + alpha f(x); default: no skips.")
_DEPTH = flags.DEFINE_integer("depth", 32, "Hidden layers, for the gradient ratio and the verdict.")
_Q_IN = flags.DEFINE_float("q_in", 1.0, "Mean squared input entry (1 for standardized data).")
_JSON = flags.DEFINE_bool("json", False, "Print JSON instead of a table.")

_ROWS = [
    ("weight_var", "sigma_w^2"),
    ("bias_var", "sigma_b^2"),
    ("plain_q_star", "q*: fixed point of the variance map (plain net, no norm)"),
    ("plain_c_star", "c*: fixed point of the correlation map"),
    ("plain_chi_1", "chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]"),
    ("plain_chi_c", "slope of the correlation map at c*"),
    ("plain_phase", "ordered (chi_1 < 1) / critical / chaotic (chi_1 > 1) / unbounded (q grows)"),
    ("plain_xi_q", "depth scale of q (layers)"),
    ("plain_xi_c", "depth scale of c (layers)"),
    ("plain_xi_grad", "depth scale of the gradient, -1/log chi_1 (negative: grows)"),
    ("plain_trainable_depth", "6 xi_c: deepest trainable net (Schoenholz et al. 2017)"),
    ("residual_block_factor_first", "residual: factor of ||dL/dx||^2 across block 1"),
    ("residual_block_factor_last", "residual: factor of ||dL/dx||^2 across the last block"),
    ("chi", "THIS CONFIG: per-layer factor of ||dL/dh_l||^2 (middle layers)"),
    ("gain_first_over_last", "THIS CONFIG: ||dL/dh_0|| / ||dL/dh_{L-1}|| over --depth layers"),
    ("verdict", "THIS CONFIG: the sweep's verdict at --depth"),
]


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "undefined"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    return str(v)


def _json_safe(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def main(argv: list[str]) -> None:
    parse_flags(argv)
    act = _ACTIVATION.value
    if act not in ACTIVATIONS:
        fail(f"--activation={act} is not one of {', '.join(ACTIVATIONS.names())}")
    if _NORM.value not in ("none", "batchnorm", "layernorm", "rmsnorm"):
        fail(f"--norm={_NORM.value} is not one of none, batchnorm, layernorm, rmsnorm")
    if _INIT.value != "auto" and _INIT.value not in INITIALIZERS:
        fail(f"--init={_INIT.value} is not one of auto, {', '.join(INITIALIZERS.names())}")
    weight_var = _WEIGHT_VAR.value
    if weight_var is None:
        weight_var = theory.init_weight_var(resolve_init(_INIT.value, act), 1, 1)
    for name, v in (("weight_var", weight_var), ("q_in", _Q_IN.value)):
        if not (math.isfinite(v) and v > 0):
            fail(f"--{name}={v} must be a finite number > 0")
    if not (math.isfinite(_BIAS_VAR.value) and _BIAS_VAR.value >= 0):
        fail(f"--bias_var={_BIAS_VAR.value} must be a finite number >= 0")
    if _DEPTH.value < 2:
        fail(f"--depth={_DEPTH.value} must be >= 2")
    if _NORM.value == "batchnorm" and _BATCH_SIZE.value < 5:
        fail(f"--batch_size={_BATCH_SIZE.value}: batchnorm theory needs a batch of at least 5")
    if _NORM.value == "batchnorm" and _RESIDUAL_SCALE.value is not None:
        fail("--norm=batchnorm with --residual_scale: no theory for batchnorm with residual connections")
    rs = _RESIDUAL_SCALE.value
    if rs is not None and not (math.isfinite(rs) and rs > 0):
        fail(f"--residual_scale={rs} must be a finite number > 0")
    out = theory.expectations(act, _NORM.value, weight_var, _BIAS_VAR.value, _BATCH_SIZE.value, rs, _DEPTH.value, _Q_IN.value)
    if _JSON.value:
        print(json.dumps({k: _json_safe(v) for k, v in out.items()}, indent=2))
        return
    extra = f", residual alpha={rs:g}" if rs is not None else ""
    print(f"{act}, norm {_NORM.value}{extra}, batch {_BATCH_SIZE.value}, depth {_DEPTH.value}, q_in {_Q_IN.value:g}")
    print(f"theory: {out['theory']}")
    print()
    print(f"Trainable at depth {_DEPTH.value}? {out['answer']}")
    print()
    print("| quantity | value | meaning |")
    print("|---|---:|---|")
    for key, meaning in _ROWS:
        if key in out:
            print(f"| {key} | {_fmt(out[key])} | {meaning} |")


if __name__ == "__main__":
    app.run(main)
