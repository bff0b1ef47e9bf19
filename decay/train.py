"""One pure, jit-compiled train step that returns per-layer gradient statistics, and the run loop.

Per hidden layer l (0 nearest the input) the step computes, inside the jit:
  grad_norms[l]    ||dL/dW_l||_F, the kernel's gradient
  signal_norms[l]  ||dL/dh_l||_F over batch and units, h_l the layer's linear output,
                   taken through zero probes added to h_l (d loss / d probe = d loss / d h_l)
  act_rms[l]       RMS of the layer's post-activation output
  weight_norms[l]  ||W_l||_F before the update
  update_ratio[l]  ||delta W_l||_F / ||W_l||_F of this step's update
Steps run in chunks under `jax.lax.scan`, so a chunk of steps is one device call and
its per-layer arrays reach the host in one transfer.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from decay import devices, histograms, instruments, models, optim, theory
from decay import metrics as metrics_lib
from decay.config import RunConfig
from decay.data import Dataset
from decay.layers import resolve_init
from decay.tensorboard_writer import RunWriter

EVAL_BATCH = 1000  # test examples per evaluation call


class TrainState(NamedTuple):
    """Everything that changes during training; a pytree."""

    step: jax.Array  # int32 scalar: steps taken
    params: nnx.State  # nnx.Param variables
    batch_stats: nnx.State  # nnx.BatchStat variables (empty without batchnorm)
    opt_state: Any  # optax state
    halted: jax.Array  # bool scalar: a non-finite loss or gradient was seen; updates stop
    anchor: tuple = ()  # the hidden kernels at step 0 (instruments >= standard: distance from init), else ()


class Program(NamedTuple):
    """The compiled functions of one configuration (all seeds share them)."""

    graphdef: Any
    tx: optax.GradientTransformation
    train_chunk: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    bare_chunk: Callable[..., tuple[TrainState, jax.Array]]  # no per-layer statistics: the benchmark baseline
    measure: Callable[..., dict[str, jax.Array]]
    eval_batch: Callable[..., tuple[jax.Array, jax.Array]]
    group_chunk: Callable[..., Callable[..., tuple[TrainState, dict[str, jax.Array]]]]  # (n_steps, mesh) -> run-sharded chunk


def _apply(graphdef, params, batch_stats, x, probes, train: bool, stats: bool = False):
    model = nnx.merge(graphdef, params, batch_stats, copy=True)  # fresh Variables in this trace
    logits, aux = model(x, probes, train, stats)
    return logits, aux, nnx.state(model, nnx.BatchStat)


def _loss(graphdef, params, probes, batch_stats, x, y, stats: bool = False):
    logits, aux, new_bs = _apply(graphdef, params, batch_stats, x, probes, True, stats)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (aux, new_bs)


def _grads_and_stats(graphdef, depth: int, hidden: tuple[int, ...], params, batch_stats, x, y, tier="basic", anchor=()):
    """Loss, parameter gradients, new batch stats and per-layer statistics at `params`.

    `tier` (see `decay.instruments`) adds the standard instruments (q, c, dead units, distance
    from `anchor`, the step-0 kernels) and, for dense layers, the full tier's per-sample ones.
    """
    probes = jnp.zeros((depth, x.shape[0], *hidden), x.dtype)
    more = instruments.tier_at_least(tier, "standard")
    # batch_stats is an argument, not a closure, so that batchnorm may update it inside the trace.
    grad_fn = jax.value_and_grad(functools.partial(_loss, graphdef, stats=more), argnums=(0, 1), has_aux=True)
    (loss, (aux, new_bs)), (grads, probe_grads) = grad_fn(params, probes, batch_stats, x, y)
    pure_grads = nnx.to_pure_dict(grads)
    axes = tuple(range(1, probe_grads.ndim))
    plain = (models.kernel_norms(pure_grads), models.frobenius(probe_grads, axes))
    # One pass each; only if a sum of squares overflowed (entries beyond ~1e19, a diverging run)
    # are the norms recomputed scaled, so that a huge but finite gradient is not mistaken for Inf.
    grad_norms, signal_norms = jax.lax.cond(
        jnp.all(jnp.isfinite(plain[0])) & jnp.all(jnp.isfinite(plain[1])),
        lambda: plain,
        lambda: (models.kernel_norms(pure_grads, True), models.frobenius(probe_grads, axes, True)),
    )
    # Diverged: a non-finite loss or any non-finite gradient entry, every parameter included. The
    # hidden kernels (nearly all entries) are covered by their overflow-safe norms; the rest is small.
    finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(grad_norms)) & jnp.all(jnp.isfinite(signal_norms))
    for path, g in jax.tree_util.tree_leaves_with_path(pure_grads):
        keys = [getattr(k, "key", None) for k in path]
        if keys[-2:] != ["linear", "kernel"] or keys[0] not in ("stem", "blocks"):
            finite &= jnp.all(jnp.isfinite(g))
    stats = {
        "loss": loss,
        "grad_norms": grad_norms,
        "signal_norms": signal_norms,
        "act_rms": aux["act_rms"],
        "weight_norms": models.kernel_norms(nnx.to_pure_dict(params)),
        "finite": finite,
    }
    if more:
        stats.update({k: aux[k] for k in ("q", "c", "dead_fraction")})
        kernels = models.layer_kernels(nnx.to_pure_dict(params))
        stats["distance"] = jnp.concatenate([instruments.distance(k, a) for k, a in zip(kernels, anchor, strict=True)])
    if instruments.tier_at_least(tier, "full") and len(hidden) == 1:  # dense layers: per-sample statistics
        stats.update(instruments.per_sample(aux["in_norm2"], probe_grads, grad_norms))
    return grads, new_bs, stats


def batch_loss(graphdef, batch_stats, x, y) -> Callable[[Any], jax.Array]:
    """params -> the training loss on (x, y), batchnorm in training mode: the function the curvature instruments differentiate."""
    return lambda params: _loss(graphdef, params, None, batch_stats, x, y)[0]


def curvature(graphdef, params, batch_stats, x, y, key) -> dict[str, jax.Array]:
    """Top Hessian eigenvalue, Hutchinson trace and per-layer kernel-block traces of the batch loss.

    Batchnorm in training mode (the loss that is trained), batch statistics held as they come.
    """
    loss = batch_loss(graphdef, batch_stats, x, y)
    k_power, k_trace = jax.random.split(key)
    top = instruments.top_eigenvalue(loss, params, k_power)
    trace, per_layer = curvature_trace(loss, params, k_trace)
    return {"hessian_top": top, "hessian_trace": trace, "hessian_trace_layers": per_layer}


def curvature_trace(loss, params, key, probes: int = instruments.HUTCHINSON_PROBES):
    """Hutchinson trace of the Hessian of `loss` at `params`, and per hidden layer the trace of its kernel block."""

    def layer_dot(v, hv):
        pairs = zip(models.layer_kernels(nnx.to_pure_dict(v)), models.layer_kernels(nnx.to_pure_dict(hv)), strict=True)
        return jnp.concatenate([jnp.sum((a * b).reshape(a.shape[0], -1), axis=1) for a, b in pairs])

    return instruments.hutchinson(loss, params, key, probes, layer_dot=layer_dot)


def _grad_histograms(grads) -> dict[str, jax.Array]:
    """Per-layer log-magnitude histograms of the kernel gradients: counts [depth, bins], zero/nan/inf [depth]."""
    per_layer = [jax.vmap(histograms.log_histogram)(k) for k in models.layer_kernels(nnx.to_pure_dict(grads))]
    return {f"grad_hist_{k}": jnp.concatenate([h[k] for h in per_layer]) for k in ("counts", "zero", "nan", "inf")}


def train_step(
    graphdef, tx, depth, hidden, state: TrainState, x, y, log_every: int | None = None, tier: str = "basic"
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step and its per-layer statistics; a pure function of its inputs.

    With `log_every`, per-layer gradient histograms are added, computed on steps divisible
    by it (zeros elsewhere).
    """
    grads, new_bs, stats = _grads_and_stats(graphdef, depth, hidden, state.params, state.batch_stats, x, y, tier, state.anchor)
    if log_every is not None:
        empty = jax.tree.map(jnp.zeros_like, jax.eval_shape(_grad_histograms, grads))
        stats.update(jax.lax.cond(state.step % log_every == 0, _grad_histograms, lambda g: empty, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    stats["update_ratio"] = models.kernel_norms(nnx.to_pure_dict(updates)) / stats["weight_norms"]
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


def batch_indices(data_key: jax.Array, step: jax.Array, n_train: int, batch_size: int) -> jax.Array:
    """Indices of step `step`'s minibatch: a fresh permutation per epoch, last partial batch dropped."""
    per_epoch = n_train // batch_size
    perm = jax.random.permutation(jax.random.fold_in(data_key, step // per_epoch), n_train)
    return jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch_size,), (batch_size,))


def _make_program(cfg: RunConfig, graphdef, hidden: tuple[int, ...]) -> Program:
    tx = optim.build(cfg.optimizer, cfg.learning_rate, cfg.clip_norm)
    depth, bsz = cfg.depth, cfg.batch_size

    hist_every = cfg.log_every if cfg.histograms else None

    def train_chunk(state, x_train, y_train, data_key, n_steps):
        def body(state, _):
            idx = batch_indices(data_key, state.step, x_train.shape[0], bsz)
            return train_step(graphdef, tx, depth, hidden, state, x_train[idx], y_train[idx], hist_every, cfg.instruments)

        return jax.lax.scan(body, state, None, length=n_steps)

    def bare_chunk(state, x_train, y_train, data_key, n_steps):
        def body(state, _):
            idx = batch_indices(data_key, state.step, x_train.shape[0], bsz)
            (loss, (_, new_bs)), grads = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)(
                state.params, None, state.batch_stats, x_train[idx], y_train[idx]
            )
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return state._replace(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state), loss

        return jax.lax.scan(body, state, None, length=n_steps)

    def next_batch_curvature(state, x_train, y_train, data_key):
        # The full tier's curvature on the batch the next step trains on, its random probes keyed by the step.
        idx = batch_indices(data_key, state.step, x_train.shape[0], bsz)
        key = jax.random.fold_in(jax.random.fold_in(data_key, 7), state.step)
        return curvature(graphdef, state.params, state.batch_stats, x_train[idx], y_train[idx], key)

    def measure(state, x_train, y_train, data_key):
        idx = batch_indices(data_key, state.step, x_train.shape[0], bsz)
        x, y = x_train[idx], y_train[idx]
        _, _, stats = _grads_and_stats(
            graphdef, depth, hidden, state.params, state.batch_stats, x, y, cfg.instruments, state.anchor
        )
        if instruments.tier_at_least(cfg.instruments, "full"):
            stats.update(next_batch_curvature(state, x_train, y_train, data_key))
        return stats

    def eval_batch(params, batch_stats, x, y, mask):
        logits, _, _ = _apply(graphdef, params, batch_stats, x, None, False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        # Per example: the sums are taken on the host in float64, so that they do not depend on
        # how XLA vectorizes a reduction (which differed between runs mapped in one executable).
        return jnp.where(mask, losses, 0.0), correct * mask

    def eval_batches(state, x_batches, y_batches, masks):
        # Per-batch (loss sum, correct count) of the test set, batchnorm in evaluation mode.
        return jax.lax.map(lambda b: eval_batch(state.params, state.batch_stats, *b), (x_batches, y_batches, masks))

    full = instruments.tier_at_least(cfg.instruments, "full")

    def curvatures(states, x_train, y_train, data_key, when):
        # The full tier's curvature of each of the stacked states (a leading axis of 2: the chunk's
        # start and end) on its next training batch where `when`, else NaN; one compiled copy for both.
        if not full:
            return {}
        nan = {"hessian_top": jnp.nan, "hessian_trace": jnp.nan, "hessian_trace_layers": jnp.full((depth,), jnp.nan)}
        nan = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), nan)

        def one(args):
            state, w = args
            return jax.lax.cond(w, lambda: next_batch_curvature(state, x_train, y_train, data_key), lambda: nan)

        return jax.lax.map(one, (states, when))

    def run_chunk(state, x_train, y_train, data_key, test, n_steps):
        # One run's chunk with its evaluations (and, full tier, curvature): at the start (only at
        # step 0, else zeros/NaN) and at the end (curvature on instrument_every multiples and the last step).
        skipped = jax.tree.map(jnp.zeros_like, jax.eval_shape(eval_batches, state, *test))
        first = jax.lax.cond(state.step == 0, lambda: eval_batches(state, *test), lambda: skipped)
        start = state
        state, stats = train_chunk(state, x_train, y_train, data_key, n_steps)
        at = (state.step % cfg.instrument_every == 0) | (state.step == cfg.steps)
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), start, state)
        curv = curvatures(both, x_train, y_train, data_key, jnp.stack([start.step == 0, at & ~state.halted]))
        first_curv = jax.tree.map(lambda a: a[0], curv)
        last_curv = jax.tree.map(lambda a: a[1], curv)
        return state, stats, (first, first_curv), (eval_batches(state, *test), last_curv)

    @functools.lru_cache(maxsize=16)
    def group_chunk(n_steps: int, mesh):
        # Each device maps the single-run chunk over its share of the stacked runs, one run after
        # another: the same computation as one run alone, so the numbers do not depend on the grouping.
        def local(states, x_train, y_train, data_keys, test):
            return jax.lax.map(lambda sk: run_chunk(sk[0], x_train, y_train, sk[1], test, n_steps), (states, data_keys))

        runs, rep = P(devices.RUN_AXIS), P()
        # check_vma=False: with it, gradients with respect to values created inside (the zero
        # probes) are summed over the devices, mixing the runs' signal norms.
        sharded = jax.shard_map(local, mesh=mesh, in_specs=(runs, rep, rep, runs, rep), out_specs=runs, check_vma=False)
        return jax.jit(sharded, donate_argnums=0)

    return Program(
        graphdef,
        tx,
        jax.jit(train_chunk, static_argnames="n_steps"),
        jax.jit(bare_chunk, static_argnames="n_steps"),
        jax.jit(measure),
        jax.jit(eval_batch),
        group_chunk,
    )


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()


def program(cfg: RunConfig, graphdef, hidden: tuple[int, ...]) -> Program:
    """Compiled functions for `cfg`, reused across seeds (a small LRU cache keyed by the config)."""
    key = (_program_key(cfg), hidden)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _make_program(cfg, graphdef, hidden)
        while len(_PROGRAMS) > 8:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]


def init_state(
    cfg: RunConfig, dataset: Dataset | None = None, input_shape: tuple[int, ...] | None = None, num_classes: int = 0
) -> tuple[Program, TrainState]:
    """Builds the model of `cfg` and its compiled program; returns (program, state at step 0).

    Shapes come from `dataset`, or from `input_shape` and `num_classes` when there is none.
    """
    if dataset is not None:
        input_shape, num_classes = tuple(dataset.x_train.shape[1:]), dataset.num_classes
    model = models.build(cfg, input_shape, num_classes)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    prog = program(cfg, graphdef, models.hidden_shape(cfg, input_shape))
    anchor = ()
    if instruments.tier_at_least(cfg.instruments, "standard"):
        anchor = tuple(jnp.array(k) for k in models.layer_kernels(nnx.to_pure_dict(params)))
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, prog.tx.init(params), jnp.zeros((), bool), anchor)
    return prog, state


def test_batches(x_test, y_test) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test set as [batches, EVAL_BATCH] arrays on the host, the last batch padded and masked out."""
    n = x_test.shape[0]
    size = min(EVAL_BATCH, n)
    nb = -(-n // size)
    pad = nb * size - n
    x = np.concatenate([np.asarray(x_test), np.zeros((pad, *x_test.shape[1:]), x_test.dtype)])
    y = np.concatenate([np.asarray(y_test), np.zeros((pad,), y_test.dtype)])
    mask = np.arange(nb * size) < n
    return x.reshape(nb, size, *x_test.shape[1:]), y.reshape(nb, size), mask.reshape(nb, size)


def _eval_result(losses, correct, n: int) -> tuple[float, float]:
    """(mean loss, accuracy) from per-example masked losses and hits, summed in float64."""
    return float(np.sum(np.asarray(losses, np.float64))) / n, float(np.sum(np.asarray(correct, np.float64))) / n


def evaluate(prog: Program, state: TrainState, x_test, y_test) -> tuple[float, float]:
    """(mean loss, accuracy) on the test set, batchnorm in evaluation mode."""
    xb, yb, mb = test_batches(np.asarray(x_test), np.asarray(y_test))
    out = [prog.eval_batch(state.params, state.batch_stats, x, y, m) for x, y, m in zip(xb, yb, mb, strict=True)]
    return _eval_result([o[0] for o in out], [o[1] for o in out], x_test.shape[0])


def gradients(model: nnx.Module, x: jax.Array, y: jax.Array, train: bool = True) -> nnx.State:
    """The gradient of the mean cross-entropy w.r.t. every parameter: a pytree shaped like the params."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    @jax.jit
    def grad_fn(params, batch_stats, x, y):
        def loss(p, bs):
            logits, _, _ = _apply(graphdef, p, bs, x, None, train)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return jax.grad(loss)(params, batch_stats)

    return grad_fn(params, batch_stats, x, y)


def _to_list(a) -> list[float | None]:
    return [metrics_lib.clean(v) for v in np.asarray(a, np.float64).ravel()]


class RunProgress(NamedTuple):
    """Reported after every chunk of a run."""

    step: int
    total: int
    loss: float


def chunk_end(done: int, cfg: RunConfig) -> int:
    """End of the chunk starting at step `done`: the next multiple of eval_every or
    checkpoint_every, or the last step. Boundaries are absolute, so a resumed run cuts its
    steps exactly where an uninterrupted one does."""
    ends = [cfg.steps, (done // cfg.eval_every + 1) * cfg.eval_every]
    if instruments.tier_at_least(cfg.instruments, "full"):
        ends.append((done // cfg.instrument_every + 1) * cfg.instrument_every)
    if cfg.checkpoint_every:
        ends.append((done // cfg.checkpoint_every + 1) * cfg.checkpoint_every)
    return min(ends)


def _stats_to_json(stats: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {k: [metrics_lib.clean(v) for v in np.asarray(a, np.float64).ravel()] for k, a in stats.items()}


def _stats_from_json(data: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    if data is None:
        return None
    return {k: np.array([np.nan if v is None else v for v in a], np.float64) for k, a in data.items()}


@functools.lru_cache(maxsize=64)
def _theory_cached(cfg: RunConfig, q_in: tuple[float, ...], fan_in: int) -> dict[str, Any]:
    return theory.predict(cfg, np.asarray(q_in), fan_in)


def _theory(cfg: RunConfig, dataset: Dataset) -> dict[str, Any]:
    """Mean-field prediction for `cfg` (`chi_theory`, `signal_profile_theory`, `theory`); seeds share it."""
    q_in, fan_in = theory.input_q(dataset.x_train)
    return dict(_theory_cached(dataclasses.replace(cfg, seed=0), tuple(q_in.tolist()), fan_in))


def _row(cfg: RunConfig, dataset: Dataset, p: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    """The results.jsonl row of a finished run from its host-side record `p`."""
    init_stats = _stats_from_json(p["init_stats"])
    last_stats = _stats_from_json(p["last_stats"])
    chi = metrics_lib.fit_chi(init_stats["signal_norms"])
    final_loss = float(np.mean(p["recent_losses"])) if p["recent_losses"] else math.nan
    return {
        "name": cfg.name,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "depth": cfg.depth,
        "width": cfg.width,
        "activation": cfg.activation,
        "norm": cfg.norm,
        "init": "mean_field" if cfg.weight_var is not None else resolve_init(cfg.init, cfg.activation),
        "weight_var": cfg.weight_var,
        "bias_var": cfg.bias_var,
        "residual": cfg.residual,
        "residual_scale": cfg.residual_scale,
        "optimizer": cfg.optimizer,
        "learning_rate": cfg.learning_rate,
        "clip_norm": cfg.clip_norm,
        "batch_size": cfg.batch_size,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "final_loss": metrics_lib.clean(final_loss),
        # A diverged run has no test score: its parameters are where training blew up.
        "test_loss": None if p["diverged_at"] is not None else p["test_loss"],
        "test_accuracy": None if p["diverged_at"] is not None else metrics_lib.clean(p["test_accuracy"]),
        "diverged": p["diverged_at"] is not None,
        "diverged_at_step": p["diverged_at"],
        "chi": metrics_lib.clean(chi),
        "verdict": metrics_lib.verdict(chi, cfg.depth, init_stats["signal_norms"]),
        "grad_norms_init": _to_list(init_stats["grad_norms"]),
        "signal_norms_init": _to_list(init_stats["signal_norms"]),
        "act_rms_init": _to_list(init_stats["act_rms"]),
        "weight_norms_init": _to_list(init_stats["weight_norms"]),
        "grad_norms_final": _to_list(last_stats["grad_norms"]),
        "signal_norms_final": _to_list(last_stats["signal_norms"]),
        "act_rms_final": _to_list(last_stats["act_rms"]),
        "weight_norms_final": _to_list(last_stats["weight_norms"]),
        "update_ratio_final": _to_list(last_stats.get("update_ratio", np.full(cfg.depth, np.nan))),
        **_theory(cfg, dataset),
        **_instrument_fields(cfg, dataset, init_stats, last_stats, p.get("curvature", [])),
        "history": p["history"],
        "loss_history": p["loss_history"],
        "num_classes": dataset.num_classes,
        "wall_time_s": round(wall_time_s, 3),
    }


def fixed_point_theory(cfg: RunConfig, fan_in: int) -> tuple[float | None, float | None]:
    """The mean-field q* and c* of `cfg`'s hidden layers: a plain mlp only (no norm, no residual), else (None, None)."""
    if cfg.model != "mlp" or cfg.norm != "none" or cfg.residual:
        return None, None
    _, wv, bv = theory.config_variances(cfg, fan_in)
    fp = _fixed_point_cached(cfg.activation, wv, bv or 0.0)
    return metrics_lib.clean(fp.q_star), metrics_lib.clean(fp.c_star)


def _instrument_fields(cfg: RunConfig, dataset: Dataset, init_stats, last_stats, curvature) -> dict[str, Any]:
    """The instruments of `cfg.instruments` at initialization and at the end (see `decay.instruments`)."""
    out: dict[str, Any] = {"instruments": cfg.instruments}
    if not instruments.tier_at_least(cfg.instruments, "standard"):
        return out
    for key in (*instruments.STANDARD_KEYS, *instruments.PER_SAMPLE_KEYS):
        for suffix, stats in (("init", init_stats), ("final", last_stats)):
            if key in stats:  # per-layer lists; b_simple, over all layers, a number
                out[f"{key}_{suffix}"] = metrics_lib.clean(stats[key].item()) if key == "b_simple" else _to_list(stats[key])
    fan_in = int(np.prod(dataset.x_train.shape[1:]))
    out["q_star_theory"], out["c_star_theory"] = fixed_point_theory(cfg, fan_in)
    if instruments.tier_at_least(cfg.instruments, "full"):
        out["curvature"] = curvature
        at_init = curvature[0] if curvature and curvature[0]["step"] == 0 else None
        at_end = curvature[-1] if curvature else None
        for key in instruments.CURVATURE_KEYS:  # entries are lists: one value, or one per layer
            layers = key == "hessian_trace_layers"
            out[f"{key}_init"] = None if at_init is None else at_init[key] if layers else at_init[key][0]
            out[f"{key}_final"] = None if at_end is None else at_end[key] if layers else at_end[key][0]
        # SGD is stable on a quadratic while lr * lambda_max < 2; heavy-ball momentum beta: < 2 + 2 beta.
        threshold = {"sgd": 2.0, "momentum": 3.8}.get(cfg.optimizer)
        out["edge_of_stability"] = None if threshold is None else threshold / cfg.learning_rate
    return out


@functools.lru_cache(maxsize=256)
def _fixed_point_cached(activation: str, weight_var: float, bias_var: float):
    return theory.fixed_point(activation, weight_var, bias_var)


class _Run:
    """The host side of one run: checkpoints, TensorBoard writer and the record `p` of its progress."""

    def __init__(self, cfg, dataset, prog, state, log_dir, run_dir):
        from decay import checkpoints  # Orbax is imported only by runs that checkpoint

        self.t0 = time.perf_counter()
        self.cfg, self.dataset, self.prog, self.state = cfg, dataset, prog, state
        self.data_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints") if run_dir else None
        self.checkpoints = checkpoints
        # Everything the host accumulates; saved with each checkpoint so that a resumed run ends identically.
        self.p: dict[str, Any] = {
            "done": 0,
            "history": [],
            "loss_history": [],
            "recent_losses": [],
            "interval_losses": [],
            "init_stats": None,
            "last_stats": None,
            "diverged_at": None,
            "test_loss": None,
            "test_accuracy": None,
        }
        self.resumed = False
        if self.ckpt_dir and checkpoints.steps(self.ckpt_dir):
            self.state, self.data_key, self.p, _ = checkpoints.restore(self.ckpt_dir, self.state)
            self.resumed = True
        elif run_dir:
            checkpoints.write_config(run_dir, cfg, tuple(dataset.x_train.shape[1:]), dataset.num_classes)
        self.writer = RunWriter(log_dir, cfg.depth) if log_dir else None

    @property
    def active(self) -> bool:
        return self.p["done"] < self.cfg.steps and self.p["diverged_at"] is None

    def save_checkpoint(self, state) -> None:
        if self.ckpt_dir:
            self.checkpoints.save(self.ckpt_dir, self.p["done"], state, self.data_key, self.p, self.cfg.keep_checkpoints)

    def record_eval(self, test_loss: float, test_acc: float) -> None:
        self.p["test_loss"], self.p["test_accuracy"] = metrics_lib.clean(test_loss), test_acc
        if self.writer:
            self.writer.write_eval(self.p["done"], test_loss, test_acc)

    def measure_only(self, device_data) -> None:
        """steps=0: the evaluation and the per-layer measurement at initialization."""
        p = self.p
        x_train, y_train, x_test, y_test = device_data
        self.record_eval(*evaluate(self.prog, self.state, x_test, y_test))
        p["history"] = [{"step": 0, "train_loss": None, "test_loss": p["test_loss"], "test_accuracy": p["test_accuracy"]}]
        init = jax.device_get(self.prog.measure(self.state, x_train, y_train, self.data_key))
        curv = {k: init.pop(k) for k in instruments.CURVATURE_KEYS if k in init}
        self.record_curvature(0, curv)
        p["init_stats"] = p["last_stats"] = _stats_to_json(init)
        p["recent_losses"] = [float(init["loss"])]
        p["loss_history"] = [[0, metrics_lib.clean(init["loss"])]]
        p["diverged_at"] = None if init["finite"] else 0
        if self.writer:
            self.writer.write_steps(np.array([0]), {k: np.asarray(v)[None] for k, v in init.items()})
        self.save_checkpoint(self.state)

    def record_curvature(self, step: int, curv: dict[str, np.ndarray]) -> None:
        """Keeps the full tier's curvature measured at `step` (NaN where it was not measured)."""
        if not curv or not np.isfinite(curv["hessian_top"]):
            return
        entry = {"step": step, **_stats_to_json({k: np.asarray(v) for k, v in curv.items()})}
        self.p.setdefault("curvature", []).append(entry)
        if self.writer:
            self.writer.write_scalars(
                step, {"hessian/top_eigenvalue": curv["hessian_top"], "hessian/trace": curv["hessian_trace"]}
            )
            self.writer.write_steps(np.array([step]), {"hessian_trace_layers": np.asarray(curv["hessian_trace_layers"])[None]})

    def absorb(self, chunk: dict[str, np.ndarray], n: int, first, last, n_test: int, state_now) -> float:
        """Takes in a chunk of `n` steps, its evaluations and curvature; returns its last finite loss.

        `first`, `last`: (per-example test losses and hits, curvature) at the chunk's start and end.
        `state_now()` gives this run's state at the chunk's end, fetched only to checkpoint.
        """
        p, cfg = self.p, self.cfg
        done = p["done"]
        (first_eval, first_curv), (last_eval, last_curv) = first, last
        if done == 0:  # step 0: the initial evaluation, and the initial state's checkpoint
            self.record_curvature(0, first_curv)
            self.record_eval(*_eval_result(*first_eval, n_test))
            p["history"] = [{"step": 0, "train_loss": None, "test_loss": p["test_loss"], "test_accuracy": p["test_accuracy"]}]
            self.save_checkpoint(self.state)
        if p["init_stats"] is None:
            p["init_stats"] = _stats_to_json({k: v[0] for k, v in chunk.items()})
        bad = np.flatnonzero(~chunk["finite"])
        good = int(bad[0]) if bad.size else n
        if good or p["last_stats"] is None:  # a first step that is already non-finite is kept as is
            p["last_stats"] = _stats_to_json({k: v[max(good - 1, 0)] for k, v in chunk.items()})
        losses = [float(v) for v in chunk["loss"][:good]]
        p["recent_losses"] = (p["recent_losses"] + losses)[-10:]
        p["interval_losses"] += losses
        # Logged steps: every log_every-th, the run's last, and the step that diverged.
        steps = done + np.arange(min(good + 1, n))
        keep = (steps % cfg.log_every == 0) | (steps == cfg.steps - 1) | (steps == done + good)
        p["loss_history"] += [[int(t), metrics_lib.clean(chunk["loss"][t - done])] for t in steps[keep]]
        if self.writer:
            self.writer.write_steps(steps[keep], {k: v[steps[keep] - done] for k, v in chunk.items()})
        p["done"] = done + n
        if not bad.size:
            self.record_curvature(p["done"], last_curv)
        if bad.size:
            p["diverged_at"] = done + good
            self.save_checkpoint(state_now())
            return losses[-1] if losses else math.nan
        if p["done"] % cfg.eval_every == 0 or p["done"] == cfg.steps:
            self.record_eval(*_eval_result(*last_eval, n_test))
            train_loss = metrics_lib.clean(float(np.mean(p["interval_losses"]))) if p["interval_losses"] else None
            p["interval_losses"] = []
            p["history"].append(
                {"step": p["done"], "train_loss": train_loss, "test_loss": p["test_loss"], "test_accuracy": p["test_accuracy"]}
            )
        if p["done"] == cfg.steps or (cfg.checkpoint_every and p["done"] % cfg.checkpoint_every == 0):
            self.save_checkpoint(state_now())
        return losses[-1] if losses else math.nan

    def finish(self) -> dict[str, Any]:
        if self.writer:
            self.writer.close()
        return _row(self.cfg, self.dataset, self.p, time.perf_counter() - self.t0)


def _index(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], tree)


class _HostStates:
    """The stacked states of a group, fetched to the host at most once, and only if a run asks."""

    def __init__(self, states: Any):
        self.states, self.host = states, None

    def run(self, i: int) -> Any:
        if self.host is None:
            self.host = jax.device_get(self.states)
        return _index(self.host, i)


def _program_key(cfg: RunConfig) -> RunConfig:
    # The init (seed, init, weight_var, bias_var) changes parameter values only, never the compiled program.
    return dataclasses.replace(cfg, seed=0, init="auto", weight_var=None, bias_var=None)


def same_program(a: RunConfig, b: RunConfig) -> bool:
    """Whether two runs share one compiled program, and so can train side by side in `train_runs`."""
    return _program_key(a) == _program_key(b)


def train_runs(
    cfgs: list[RunConfig],
    dataset: Dataset,
    device_data: tuple[jax.Array, ...] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    log_dirs: list[str | None] | None = None,
    run_dirs: list[str | None] | None = None,
) -> list[dict[str, Any]]:
    """Trains runs that share one compiled program (they differ only in seed or init) side by side.

    The runs' states are stacked on a leading run axis that is sharded over every device
    (`devices.run_mesh`); each device steps its share of the runs one after another with the
    same single-run program, so every run's numbers are bitwise those of `train_run` alone,
    on one device or many. Runs resumed from checkpoints at different steps are trained in
    separate groups. Returns one `results.jsonl` row per config, in order.
    """
    if not cfgs:
        return []
    if len({_program_key(c) for c in cfgs}) > 1:
        raise ValueError("train_runs needs configs that differ only in seed, init, weight_var or bias_var")
    if device_data is None:
        device_data = tuple(jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))
    log_dirs = log_dirs or [None] * len(cfgs)
    run_dirs = run_dirs or [None] * len(cfgs)
    runs = []
    for cfg, log_dir, run_dir in zip(cfgs, log_dirs, run_dirs, strict=True):
        prog, state = init_state(cfg, dataset)
        runs.append(_Run(cfg, dataset, prog, jax.device_get(state), log_dir, run_dir))
        if cfg.steps == 0 and not runs[-1].resumed:
            runs[-1].measure_only(device_data)
    prog = runs[0].prog
    mesh = devices.run_mesh()
    x_train, y_train = (devices.replicate(a, mesh) for a in device_data[:2])
    n_test = dataset.x_test.shape[0]
    test = devices.replicate(test_batches(dataset.x_test, dataset.y_test), mesh)
    for done in sorted({r.p["done"] for r in runs}):
        group = [r for r in runs if r.p["done"] == done and r.active]
        if not group:
            continue
        # Pad the run axis to a multiple of the device count with copies of the first run (discarded).
        padded = group + [group[0]] * (-len(group) % mesh.size)
        states = devices.stack_runs([r.state for r in padded], mesh)
        data_keys = devices.shard_runs(jnp.stack([r.data_key for r in padded]), mesh)
        while any(r.active for r in group):
            cfg = group[0].cfg
            now = next(r for r in group if r.active).p["done"]  # a diverged run's step no longer moves
            n = chunk_end(now, cfg) - now
            states, chunk, first, last_ = prog.group_chunk(n, mesh)(states, x_train, y_train, data_keys, test)
            # One transfer for every per-layer value and evaluation of every run of the chunk.
            chunk, first, last_ = jax.device_get((chunk, first, last_))
            host = _HostStates(states)
            last = math.nan
            for i, run in enumerate(group):
                if run.active:
                    pick = functools.partial(_index, i=i)
                    last = run.absorb(pick(chunk), n, pick(first), pick(last_), n_test, functools.partial(host.run, i))
            if on_progress is not None:
                on_progress(RunProgress(now + n, cfg.steps, last))
    return [r.finish() for r in runs]


def train_run(
    cfg: RunConfig,
    dataset: Dataset,
    device_data: tuple[jax.Array, ...] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    log_dir: str | None = None,
    run_dir: str | None = None,
) -> dict[str, Any]:
    """Trains one configuration and returns its `results.jsonl` row.

    `device_data` (x_train, y_train, x_test, y_test as device arrays) avoids re-uploading
    the dataset for every run of a sweep. With `log_dir`, TensorBoard events go there. With
    `run_dir`, the run writes `config.json` and Orbax checkpoints there (step 0, every
    `checkpoint_every` steps, the end) and, if checkpoints exist, resumes from the latest:
    the returned row is then the same as an uninterrupted run's (but for `wall_time_s`).
    """
    return train_runs([cfg], dataset, device_data, on_progress, [log_dir], [run_dir])[0]
