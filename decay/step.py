"""The pure train step: loss, gradients and per-layer statistics, one optimizer update, curvature.

Per probe point l (a hidden layer, 0 nearest the input; see `decay.family`) the step computes:
  grad_norms[l]    ||dL/dW_l||_F, the layer kernel's gradient
  signal_norms[l]  ||dL/dh_l||_F over batch and units, h_l the layer's linear output,
                   taken through zero probes added to h_l (d loss / d probe = d loss / d h_l)
  act_rms[l]       RMS of the layer's post-activation output
  weight_norms[l]  ||W_l||_F before the update
  update_ratio[l]  ||delta W_l||_F / ||W_l||_F of this step's update
and, by instrument tier (`decay.instruments`), q, c, dead units, distance from init, per-sample
gradient statistics. Everything here is a pure function of its inputs, traced inside the
programs of `decay.program`; nothing here compiles, caches or touches the host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from decay import histograms, instruments, tasks
from decay.family import Family


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree."""

    step: jax.Array  # int32 scalar: steps taken
    params: nnx.State  # nnx.Param variables
    batch_stats: nnx.State  # nnx.BatchStat variables (empty without batchnorm)
    opt_state: Any  # optax state
    halted: jax.Array  # bool scalar: a non-finite loss or gradient was seen; updates stop
    anchor: tuple = ()  # the layer kernels at step 0 (instruments >= standard: distance from init), else ()


class Net(NamedTuple):
    """A model's static side: its graph, its family and its probe shape; hashable, so programs can close over it."""

    graphdef: Any
    family: Family
    points: int  # probe points (measured layers, or a recurrent net's time steps)
    point_shape: tuple[int, ...]  # per-example shape at each probe point
    task: str = "classification"  # decay.tasks: the loss and the score


def frobenius(x: jax.Array, axes: tuple[int, ...], scaled: bool = False) -> jax.Array:
    """Frobenius norm over `axes`.

    `scaled=True` computes max|x| * ||x / max|x||| (two passes), which does not overflow
    float32 for entries beyond 1e19; Inf or NaN entries still give Inf or NaN.
    """
    if not scaled:
        return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes))
    m = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    scale = jnp.where((m > 0) & jnp.isfinite(m), m, 1.0)
    return jnp.squeeze(scale, axes) * jnp.sqrt(jnp.sum(jnp.square(x / scale), axis=axes))


def kernel_norms(family: Family, tree: Any, scaled: bool = False) -> jax.Array:
    """Frobenius norm of every layer kernel of a pure-dict pytree shaped like the params, layer 0 first: [points]."""
    return jnp.concatenate([frobenius(k, tuple(range(1, k.ndim)), scaled) for k in family.layer_kernels(tree)])


def apply(graphdef, params, batch_stats, x, probes, train: bool, stats: bool = False):
    """(logits, aux, new batch stats) of the model `graphdef` with these variables."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables in this trace
    logits, aux = model(x, probes, train, stats)
    return logits, aux, nnx.state(model, nnx.BatchStat)


def loss_fn(graphdef, params, probes, batch_stats, x, y, stats: bool = False, task: str = "classification"):
    """The task's mean loss (cross-entropy, squared error, ...), batchnorm in training mode; aux: (model aux, new batch stats)."""
    out, aux, new_bs = apply(graphdef, params, batch_stats, x, probes, True, stats)
    return tasks.mean_loss(task, out, y), (aux, new_bs)


def grads_and_stats(net: Net, params, batch_stats, x, y, tier: str = "basic", anchor=()):
    """Loss, parameter gradients, new batch stats and per-layer statistics at `params`.

    `tier` (see `decay.instruments`) adds the standard instruments (q, c, dead units, distance
    from `anchor`, the step-0 kernels) and, for families with dense layers, the full tier's per-sample ones.
    """
    family = net.family
    probes = jnp.zeros((net.points, x.shape[0], *net.point_shape), x.dtype)
    more = instruments.tier_at_least(tier, "standard")
    # batch_stats is an argument, not a closure, so that batchnorm may update it inside the trace.
    grad_fn = jax.value_and_grad(
        functools.partial(loss_fn, net.graphdef, stats=more, task=net.task), argnums=(0, 1), has_aux=True
    )
    (loss, (aux, new_bs)), (grads, probe_grads) = grad_fn(params, probes, batch_stats, x, y)
    pure_grads = nnx.to_pure_dict(grads)
    axes = tuple(range(1, probe_grads.ndim))
    # The probe's last axis split into the family's parts (an LSTM's hidden and cell state), one norm each.
    parts = jnp.split(probe_grads, len(family.signal_parts), axis=-1)

    def norms(scaled):
        return kernel_norms(family, pure_grads, scaled), tuple(frobenius(p, axes, scaled) for p in parts)

    plain = norms(False)
    # One pass each; only if a sum of squares overflowed (entries beyond ~1e19, a diverging run)
    # are the norms recomputed scaled, so that a huge but finite gradient is not mistaken for Inf.
    ok = jnp.all(jnp.isfinite(plain[0]))
    for s in plain[1]:
        ok &= jnp.all(jnp.isfinite(s))
    grad_norms, signals = jax.lax.cond(
        ok,
        lambda: plain,
        lambda: norms(True),
    )
    signal_norms = signals[0]
    # Diverged: a non-finite loss or any non-finite gradient entry, every parameter included. The
    # layer kernels (nearly all entries) are covered by their overflow-safe norms; the rest is small.
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad_norms))
    for s in signals:
        finite &= jnp.all(jnp.isfinite(s))
    for path, g in jax.tree_util.tree_leaves_with_path(pure_grads):
        if not family.is_layer_kernel(tuple(getattr(k, "key", None) for k in path)):
            finite &= jnp.all(jnp.isfinite(g))
    stats = {
        "loss": loss,
        "grad_norms": grad_norms,
        "signal_norms": signal_norms,
        "act_rms": aux["act_rms"],
        "weight_norms": kernel_norms(family, nnx.to_pure_dict(params)),
        "finite": finite,
    }
    stats.update(zip(family.signal_parts[1:], signals[1:], strict=True))
    if more:
        stats.update({k: aux[k] for k in ("q", "c", "dead_fraction", "c_tokens") if k in aux})
        kernels = family.layer_kernels(nnx.to_pure_dict(params))
        stats["distance"] = jnp.concatenate([instruments.distance(k, a) for k, a in zip(kernels, anchor, strict=True)])
    if instruments.tier_at_least(tier, "full") and family.per_sample:
        stats.update(instruments.per_sample(aux["in_norm2"], probe_grads, grad_norms))
    return grads, new_bs, stats


def batch_loss(graphdef, batch_stats, x, y, task: str = "classification") -> Callable[[Any], jax.Array]:
    """params -> the training loss on (x, y), batchnorm in training mode: the function the curvature instruments differentiate."""
    return lambda params: loss_fn(graphdef, params, None, batch_stats, x, y, task=task)[0]


def curvature(net: Net, params, batch_stats, x, y, key) -> dict[str, jax.Array]:
    """Top Hessian eigenvalue, Hutchinson trace and per-layer kernel-block traces of the batch loss.

    Batchnorm in training mode (the loss that is trained), batch statistics held as they come.
    """
    loss = batch_loss(net.graphdef, batch_stats, x, y, net.task)
    k_power, k_trace = jax.random.split(key)
    top = instruments.top_eigenvalue(loss, params, k_power)
    trace, per_layer = curvature_trace(net.family, loss, params, k_trace)
    return {"hessian_top": top, "hessian_trace": trace, "hessian_trace_layers": per_layer}


def curvature_trace(family: Family, loss, params, key, probes: int = instruments.HUTCHINSON_PROBES):
    """Hutchinson trace of the Hessian of `loss` at `params`, and per layer the trace of its kernel block."""

    def layer_dot(v, hv):
        pairs = zip(family.layer_kernels(nnx.to_pure_dict(v)), family.layer_kernels(nnx.to_pure_dict(hv)), strict=True)
        return jnp.concatenate([jnp.sum((a * b).reshape(a.shape[0], -1), axis=1) for a, b in pairs])

    return instruments.hutchinson(loss, params, key, probes, layer_dot=layer_dot)


def grad_histograms(family: Family, grads) -> dict[str, jax.Array]:
    """Per-layer log-magnitude histograms of the kernel gradients: counts [points, bins], zero/nan/inf [points]."""
    per_layer = [jax.vmap(histograms.log_histogram)(k) for k in family.layer_kernels(nnx.to_pure_dict(grads))]
    return {f"grad_hist_{k}": jnp.concatenate([h[k] for h in per_layer]) for k in ("counts", "zero", "nan", "inf")}


def train_step(
    net: Net, tx, state: TrainState, x, y, log_every: int | None = None, tier: str = "basic"
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step and its per-layer statistics; a pure function of its inputs.

    With `log_every`, per-layer gradient histograms are added, computed on steps divisible
    by it (zeros elsewhere).
    """
    grads, new_bs, stats = grads_and_stats(net, state.params, state.batch_stats, x, y, tier, state.anchor)
    if log_every is not None:
        hist = functools.partial(grad_histograms, net.family)
        empty = jax.tree.map(jnp.zeros_like, jax.eval_shape(hist, grads))
        stats.update(jax.lax.cond(state.step % log_every == 0, hist, lambda g: empty, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    stats["update_ratio"] = kernel_norms(net.family, nnx.to_pure_dict(updates)) / stats["weight_norms"]
    finite = stats["finite"]
    keep = finite & ~state.halted  # once halted, the state stays at the last finite point
    pick = lambda new, old: jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=pick(params, state.params),
        batch_stats=pick(new_bs, state.batch_stats),
        opt_state=pick(opt_state, state.opt_state),
        halted=state.halted | ~finite,
        anchor=state.anchor,
    )
    return new_state, stats


def bare_step(net: Net, tx, state: TrainState, x, y) -> tuple[TrainState, jax.Array]:
    """One optimizer step without per-layer statistics (the benchmarks' baseline); returns the loss."""
    (loss, (_, new_bs)), grads = jax.value_and_grad(functools.partial(loss_fn, net.graphdef, task=net.task), has_aux=True)(
        state.params, None, state.batch_stats, x, y
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state), loss


def batch_indices(data_key: jax.Array, step: jax.Array, n_train: int, batch_size: int) -> jax.Array:
    """Indices of step `step`'s minibatch: a fresh permutation per epoch, last partial batch dropped."""
    per_epoch = n_train // batch_size
    perm = jax.random.permutation(jax.random.fold_in(data_key, step // per_epoch), n_train)
    return jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch_size,), (batch_size,))


def gradients(model: nnx.Module, x: jax.Array, y: jax.Array, train: bool = True, task: str = "classification") -> nnx.State:
    """The gradient of the task's mean loss (cross-entropy by default) w.r.t. every parameter: a pytree like the params."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @jax.jit
    def grad_fn(params, batch_stats, x, y):
        def loss(p, bs):
            out, _, _ = apply(graphdef, p, bs, x, None, train)
            return tasks.mean_loss(task, out, y)

        return jax.grad(loss)(params, batch_stats)

    return grad_fn(params, batch_stats, x, y)
