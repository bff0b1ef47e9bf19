"""Your own Flax NNX model, measured inside your own jitted step.

    watch = decay.watch(model, loss_fn)                   # loss_fn(model, batch) -> scalar loss
    @nnx.jit
    def train_step(model, optimizer, batch):
        return watch.step(model, optimizer, batch)        # (loss, stats), stats reduced on device

Probe points are where the backprop signal dL/dh is measured, in forward order:
  marked   the points the model marks with Flax's own `h = self.perturb("name", h)`
  linear   the output of every nnx.Linear, nnx.LinearGeneral, nnx.Conv and nnx.Einsum, found without
           editing the model (their `__call__` is wrapped while the step is traced)
  all      both (the default)
or a tuple of point names (`watch.point_names` after the first trace lists them).

Forward order is read off the traced computation: each point's (and each parameter's) first use
in the jaxpr, nested through scans and calls. A point or parameter first used as a scanned input
(`nnx.scan` over a stacked layer axis) is split along that axis into one entry per layer.

The stats pytree of one step (P probe entries, K parameter entries, all in forward order):
  loss                  the training loss
  signal_norms [P]      ||dL/dh_p||_F over the batch and the point's shape (through zero perturbations)
  act_rms [P]           RMS of the value at the point (the forward signal)
  grad_norms [K]        ||dL/dW_k||_F per parameter entry (a path, or one layer of a stacked path)
  weight_norms [K]      ||W_k||_F before the update
  update_ratio [K]      ||W_k(after) - W_k(before)||_F / ||W_k(before)||_F (`step` only)
  finite                the loss and every gradient entry are finite
standard tier adds, per point, q (mean of h^2), c (mean pairwise cosine of h across the examples
of the batch, the batch being the leading axis of the value) and dead_fraction (fraction of
units, the last axis, <= 0 for every example and position: dead if a ReLU follows). `curvature`
gives the full tier's top Hessian eigenvalue and Hutchinson trace on request.

Statistics do not change training: the step's loss, gradients and update are those of
`nnx.value_and_grad(loss_fn)` followed by `optimizer.update`, bitwise on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decay import instruments
from decay.errors import ConfigError

POINTS = ("all", "marked", "linear")
LINEAR_TYPES = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.Einsum)
AUTO_NAME = "out"  # the perturbation name of an automatic point: <module path>.out
_VALUE = "value:"  # prefix of the sown value of a point (own key: a name holds one variable per module)


class _Value(nnx.Intermediate):
    """The value at a probe point, sown next to its perturbation while a watched step is traced."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One measured entry: a probe point or a parameter, one layer of it where it is stacked."""

    name: str  # dotted module path and variable name, "[i]" for layer i of a stacked one
    path: tuple  # the key path in the captured (or parameter) state
    layer: tuple[int, ...]  # the index on the leading (scanned) axes, () when not stacked
    shape: tuple[int, ...]  # the shape of one entry


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a watched step measures, in forward order; found when the step is first traced."""

    points: tuple[Entry, ...]
    params: tuple[Entry, ...]

    @property
    def point_names(self) -> list[str]:
        return [e.name for e in self.points]

    @property
    def param_names(self) -> list[str]:
        return [e.name for e in self.params]


def _key(k: Any) -> Any:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def _dotted(path: tuple) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


@contextlib.contextmanager
def _probing(auto: bool):
    """While tracing: every perturb also sows its value; with `auto`, linear layers' outputs are perturbed."""
    original_perturb = nnx.Module.perturb

    def perturb(self, name, value, variable_type=nnx.Perturbation):
        if hasattr(self, "__captures__"):
            self.sow(_Value, _VALUE + name, value, reduce_fn=lambda prev, new: new, init_fn=lambda: None)
        return original_perturb(self, name, value, variable_type)

    originals = {cls: cls.__call__ for cls in LINEAR_TYPES}

    def wrap(call):
        def probed(self, *args, **kwargs):
            return self.perturb(AUTO_NAME, call(self, *args, **kwargs))

        return probed

    nnx.Module.perturb = perturb
    if auto:
        for cls, call in originals.items():
            cls.__call__ = wrap(call)
    try:
        yield
    finally:
        nnx.Module.perturb = original_perturb
        for cls, call in originals.items():
            cls.__call__ = call


# --- forward order from the jaxpr -------------------------------------------------------------


def _sub_jaxprs(eqn) -> list[tuple[Any, list[int], int]]:
    """(inner jaxpr, eqn input index per inner input, how many leading inputs are scanned-over from) per body."""
    p = eqn.params
    name = eqn.primitive.name
    out = []
    if name == "scan":
        inner = p["jaxpr"].jaxpr
        out.append((inner, list(range(len(eqn.invars))), p["num_consts"] + p["num_carry"]))
    elif name == "cond":
        for branch in p["branches"]:
            out.append((branch.jaxpr, list(range(1, len(eqn.invars))), None))
    elif name == "while":
        nc, nb = p["cond_nconsts"], p["body_nconsts"]
        body = p["body_jaxpr"].jaxpr
        out.append((body, list(range(nc, nc + nb)) + list(range(nc + nb, len(eqn.invars))), None))
    else:
        for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
            if key in p:
                inner = getattr(p[key], "jaxpr", p[key])
                if hasattr(inner, "eqns") and len(inner.invars) == len(eqn.invars):
                    out.append((inner, list(range(len(eqn.invars))), None))
                break
    return out


LAYER = -1  # in a first-use position, the place of the layer index of a scanned input


def _first_uses(jaxpr) -> dict[Any, tuple[tuple[int, ...], int]]:
    """For every input of `jaxpr`: (position of its first use, nested through bodies, with LAYER where a scan
    splits it; the number of scan axes it is split on)."""
    found: dict[Any, tuple[tuple[int, ...], int]] = {}
    todo = set(jaxpr.invars)
    for i, eqn in enumerate(jaxpr.eqns):
        for j, v in enumerate(eqn.invars):
            if isinstance(v, jex_core.Literal) or v not in todo:
                continue
            todo.discard(v)
            position, scanned = (i,), 0
            for inner, mapping, first_x in _sub_jaxprs(eqn):
                if j in mapping:
                    sub = _first_uses(inner).get(inner.invars[mapping.index(j)], ((), 0))
                    if first_x is not None and j >= first_x:  # a scanned input: its layer index orders it here
                        position, scanned = (i, LAYER, *sub[0]), sub[1] + 1
                    else:
                        position, scanned = (i, *sub[0]), sub[1]
                    break
            found[v] = (position, scanned)
        if not todo:
            break
    return found


def _order(leaves_of: Callable, *trees) -> list[tuple[tuple[int, ...], int]]:
    """(first-use position, scan axes) of every leaf of `trees` in the function `leaves_of(*trees)`."""
    closed = jax.make_jaxpr(leaves_of)(*trees)
    uses = _first_uses(closed.jaxpr)
    never = (len(closed.jaxpr.eqns),)
    return [uses.get(v, (never, 0)) for v in closed.jaxpr.invars]


def _entries(tree: Any, order: list[tuple[tuple[int, ...], int]]) -> list[Entry]:
    """Every leaf of `tree` as entries in forward order, stacked leaves split per layer."""
    ranked = []
    for index, ((position, scanned), (path, leaf)) in enumerate(
        zip(order, jax.tree_util.tree_leaves_with_path(tree), strict=True)
    ):
        keys = tuple(_key(k) for k in path if not isinstance(k, jax.tree_util.GetAttrKey))  # not a Variable's own field
        shape = tuple(leaf.shape)
        for layer in np.ndindex(*shape[:scanned]):
            layer = tuple(int(i) for i in layer)
            fill = iter(layer)
            at = tuple(next(fill, 0) if p == LAYER else p for p in position)
            name = _dotted(keys) + "".join(f"[{i}]" for i in layer)
            ranked.append(((at, index, layer), Entry(name, keys, layer, shape[scanned:])))
    return [e for _, e in sorted(ranked, key=lambda t: t[0])]


# --- the watch ---------------------------------------------------------------------------------


def _one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


class Watch:
    """Measures a user's NNX model inside the user's jitted step; see the module docstring."""

    def __init__(
        self,
        model: nnx.Module,
        loss_fn: Callable,
        points: str | tuple[str, ...] = "all",
        tier: str = "standard",
        has_aux: bool = False,
    ):
        if not isinstance(model, nnx.Module):
            raise ConfigError(f"model: expected a flax.nnx.Module, got {type(model).__name__}")
        if not jax.tree.leaves(nnx.state(model, nnx.Param)):
            raise ConfigError(f"model: {type(model).__name__} has no nnx.Param variables, so it has no gradients to watch")
        if tier not in instruments.TIERS:
            raise ConfigError(f"tier: {tier!r} is not one of {', '.join(instruments.TIERS)}")
        if isinstance(points, str) and points not in POINTS:
            raise ConfigError(f"points: {points!r} is not one of {', '.join(POINTS)} or a tuple of point names")
        self.loss_fn = loss_fn
        self.points = points
        self.tier = tier
        self.has_aux = has_aux
        self.model_class = f"{type(model).__module__}.{type(model).__qualname__}"
        self.layout: Layout | None = None
        self._layouts: dict[Any, Layout] = {}

    # names known after the first trace
    @property
    def point_names(self) -> list[str]:
        return self._require_layout().point_names

    @property
    def param_names(self) -> list[str]:
        return self._require_layout().param_names

    def _require_layout(self) -> Layout:
        if self.layout is None:
            raise ConfigError("watch: the step has not been traced yet; call it once on a batch first")
        return self.layout

    def _loss(self, model, batch):
        out = self.loss_fn(model, batch)
        loss, aux = out if self.has_aux else (out, None)
        if not hasattr(loss, "shape") or loss.shape != ():
            shape = getattr(loss, "shape", type(loss).__name__)
            raise ConfigError(f"loss_fn: returned shape {shape}, not a scalar loss (reduce it, e.g. with .mean())")
        return loss, aux

    def _captured(self, model, batch, perturbations=None):
        """loss_fn under nnx.capture: ((loss, aux), perturbation state, value state)."""
        kinds = (nnx.Perturbation, _Value)
        fn = nnx.capture(self._loss, *kinds, init=perturbations) if perturbations is not None else nnx.capture(self._loss, *kinds)
        with _probing(self.points in ("all", "linear") or isinstance(self.points, tuple)):
            out, perts, values = fn(model, batch)
        return out, perts, values

    def _discover(self, model, batch) -> tuple[Layout, Any]:
        """The layout (cached per batch structure) and zero perturbations of the selected points."""
        key = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), batch)
        key = (jax.tree.structure(batch), tuple(jax.tree.leaves(key)))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        try:
            _, perts, _ = nnx.eval_shape(lambda m, b: self._captured(m, b), model, batch)
        except ConfigError:
            raise
        except (TypeError, ValueError, IndexError) as e:
            shapes = jax.tree.map(lambda a: tuple(jnp.shape(a)), batch)
            raise ConfigError(f"batch: shapes {shapes} do not fit {type(model).__name__} ({_one_line(e)})") from None
        perts = self._select(perts)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), perts)
        if key not in self._layouts:

            def pure(p, z):
                m = nnx.merge(graphdef, p, rest, copy=True)
                (loss, _), _, _ = self._captured(m, batch, z)
                return loss

            order = _order(pure, params, zeros)
            n = len(jax.tree.leaves(params))
            self._layouts[key] = Layout(tuple(_entries(zeros, order[n:])), tuple(_entries(params, order[:n])))
        self.layout = self._layouts[key]
        return self.layout, zeros

    def _select(self, perts):
        """The perturbations of the chosen points (a State), keeping the user's marked names."""
        flat = dict(nnx.to_flat_state(perts))
        names = {_dotted(k): k for k in flat}
        if isinstance(self.points, tuple):
            unknown = [p for p in self.points if p not in names]
            if unknown:
                raise ConfigError(
                    f"points: {unknown[0]!r} is not a probe point; the model has: {', '.join(sorted(names)) or 'none'}"
                )
            keep = {names[p] for p in self.points}
        elif self.points == "marked":
            keep = {k for k in flat if k[-1] != AUTO_NAME}
        else:
            keep = set(flat)
        if not keep:
            raise ConfigError(
                "points: the model marks no point (h = self.perturb('name', h)) and uses no nnx.Linear/Conv/Einsum; "
                "nothing to measure the backprop signal at"
            )
        return nnx.from_flat_state({k: v for k, v in flat.items() if k in keep})

    def value_and_grad(self, model: nnx.Module, batch: Any):
        """(loss or (loss, aux), grads, stats): `nnx.value_and_grad(loss_fn)(model, batch)` plus statistics."""
        layout, zeros = self._discover(model, batch)
        weights = nnx.to_pure_dict(nnx.state(model, nnx.Param))

        def loss(m, z, b):
            out, _, values = self._captured(m, b, z)
            return out[0], (out, values)

        (_, (out, values)), (grads, pgrads) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(model, zeros, batch)
        stats = self._stats(layout, out[0], grads, pgrads, values, weights)
        return (out if self.has_aux else out[0]), grads, stats

    def step(self, model: nnx.Module, optimizer: nnx.Optimizer, batch: Any):
        """One training step: value_and_grad, `optimizer.update(model, grads)`; returns (loss or (loss, aux), stats)."""
        before = nnx.to_pure_dict(nnx.state(model, nnx.Param))  # arrays, not the Variables the update changes
        out, grads, stats = self.value_and_grad(model, batch)
        optimizer.update(model, grads)
        delta = jax.tree.map(lambda a, b: a - b, nnx.to_pure_dict(nnx.state(model, nnx.Param)), before)
        stats["update_ratio"] = _param_norms(self.layout, delta) / stats["weight_norms"]
        return out, stats

    def _stats(self, layout, loss, grads, pgrads, values, weights) -> dict[str, jax.Array]:
        signal = _point_values(layout, pgrads)
        value = _point_values(layout, values, prefix=_VALUE)
        grad_norms = _param_norms(layout, grads)
        stats = {
            "loss": loss,
            "signal_norms": jnp.stack([jnp.sqrt(jnp.sum(jnp.square(s.astype(jnp.float32)))) for s in signal]),
            "act_rms": jnp.stack([jnp.sqrt(jnp.mean(jnp.square(v.astype(jnp.float32)))) for v in value]),
            "grad_norms": grad_norms,
            "weight_norms": _param_norms(layout, weights),
        }
        finite = jnp.isfinite(loss)
        for g in jax.tree.leaves(grads):
            finite &= jnp.all(jnp.isfinite(g))
        stats["finite"] = finite
        if instruments.tier_at_least(self.tier, "standard"):
            per = [_value_stats(v) for v in value]
            for k in ("q", "c", "dead_fraction"):
                stats[k] = jnp.stack([p[k] for p in per])
        return stats

    def curvature(self, model: nnx.Module, batch: Any, key: jax.Array) -> dict[str, jax.Array]:
        """Top Hessian eigenvalue and Hutchinson trace of the loss at `model`'s parameters, and per parameter entry
        the trace of its block; the model is not changed (batch statistics and RNG streams are left as they are)."""
        layout, _ = self._discover(model, batch)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)
            return self._loss(m, batch)[0]

        def block_dot(v, hv):
            return _param_reduce(layout, jax.tree.map(lambda a, b: a * b, v, hv), jnp.sum)

        k_power, k_trace = jax.random.split(key)
        trace, per = instruments.hutchinson(loss, params, k_trace, layer_dot=block_dot)
        return {
            "hessian_top": instruments.top_eigenvalue(loss, params, k_power),
            "hessian_trace": trace,
            "hessian_trace_layers": per,
        }


def _leaf(state: Any, path: tuple, prefix: str = "") -> jax.Array:
    node = state
    for k in path[:-1]:
        node = node[k]
    v = node[prefix + path[-1]] if prefix else node[path[-1]]
    return v[...] if isinstance(v, nnx.Variable) else v


def _point_values(layout: Layout, state: Any, prefix: str = "") -> list[jax.Array]:
    return [_leaf(state, e.path, prefix)[e.layer] for e in layout.points]


def _param_reduce(layout: Layout, state: Any, reduce) -> jax.Array:
    return jnp.stack([reduce(_leaf(state, e.path)[e.layer].astype(jnp.float32)) for e in layout.params])


def _param_norms(layout: Layout, state: Any) -> jax.Array:
    return jnp.sqrt(_param_reduce(layout, state, lambda a: jnp.sum(jnp.square(a))))


def _value_stats(h: jax.Array) -> dict[str, jax.Array]:
    """q, c and dead fraction at a point whose value has the batch on its leading axis."""
    hf = h.astype(jnp.float32)
    if hf.ndim == 0 or hf.shape[0] < 2:
        nan = jnp.array(jnp.nan, jnp.float32)
        return {"q": jnp.mean(jnp.square(hf)), "c": nan, "dead_fraction": nan}
    out = instruments.layer_stats(hf, hf, hf if hf.ndim > 1 else hf[:, None], relu_like=True)
    return {k: out[k] for k in ("q", "c", "dead_fraction")}


def watch(
    model: nnx.Module, loss_fn: Callable, points: str | tuple[str, ...] = "all", tier: str = "standard", has_aux: bool = False
) -> Watch:
    """A `Watch` of `model` trained on `loss_fn(model, batch)` (a scalar, or (scalar, aux) with `has_aux`)."""
    return Watch(model, loss_fn, points, tier, has_aux)


def pattern(name: str) -> str:
    """A point's kind: its name with layer indices ("[3]") and numeric path parts (".3.") replaced by "*"."""
    parts = re.sub(r"\[\d+\]", "[*]", name).split(".")
    return ".".join("*" if p.isdigit() else p for p in parts)


def main_stack(names: list[str]) -> tuple[str, list[int]]:
    """The kind of point the chi fit runs along, and its indices: the most numerous kind, marked points
    (the user's `perturb` names) before automatic ones, the first in forward order on a tie; all points when
    no kind repeats."""
    kinds: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        kinds.setdefault(pattern(n), []).append(i)
    auto = lambda kind: kind.replace("[*]", "").endswith("." + AUTO_NAME)  # noqa: E731
    ranked = sorted(kinds.items(), key=lambda kv: (-len(kv[1]), auto(kv[0]), kv[1][0]))
    if not ranked or len(ranked[0][1]) < 2:
        return "all points", list(range(len(names)))
    return ranked[0]
