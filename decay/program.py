"""The compiled programs of a configuration: chunks of train steps with their evaluations, the measure, the init.

One `Program` per configuration, shared by every run that differs only in seed, init or learning
rate: those change values, never the compiled code. For the mlp and cnn a study's activations and
norms are values too (`study_choices`): one shared program per depth serves all of them. A chunk of
steps runs under `jax.lax.scan`, so it is one device call whose per-layer arrays reach the
host in one transfer; `group_chunk` maps that single-run chunk over runs stacked on a leading
axis sharded over the devices, so every run's numbers are those of the run alone.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.extend.core import jaxpr_as_fun
from jax.sharding import PartitionSpec as P

from decay import data, devices, families, instruments, optim, tasks
from decay.config import RunConfig
from decay.data import Dataset
from decay.layers import Choices, choices_of
from decay.step import Net, TrainState, apply, bare_step, batch_indices, curvature, grads_and_stats, train_step

EVAL_BATCH = 1000  # test examples per evaluation call


class CompileLog:
    """What JAX traced, lowered and compiled while it is open (a context manager), from `jax.monitoring` events:
    `events` lists (phase, function name, seconds), phase one of "trace", "lower", "compile"."""

    _open: list[CompileLog] = []
    _PHASES = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "compile",
    }
    _listening = False

    def __init__(self):
        self.events: list[tuple[str, str, float]] = []

    @classmethod
    def _listen(cls, event: str, seconds: float, **kwargs) -> None:
        phase = cls._PHASES.get(event)
        if phase:
            for log in cls._open:
                log.events.append((phase, str(kwargs.get("fun_name", "?")), seconds))

    def __enter__(self) -> CompileLog:
        if not CompileLog._listening:
            jax.monitoring.register_event_duration_secs_listener(CompileLog._listen)
            CompileLog._listening = True
        CompileLog._open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        CompileLog._open.remove(self)

    def programs(self) -> int:
        """Training programs compiled (`Program.group_chunk`'s executables; a persistent-cache hit is not one)."""
        return self.count("compile", "jit(batch_chunk)")

    def summary(self) -> str:
        """One line for a study's output: programs compiled, seconds compiling, tracing and lowering."""
        n = self.programs()
        return (
            f"compiled: {n} training program{'s' if n != 1 else ''}; {self.seconds('compile'):.1f} s compiling,"
            f" {self.seconds('trace') + self.seconds('lower'):.1f} s tracing and lowering (everything JAX compiled)"
        )

    def count(self, phase: str, name: str | None = None) -> int:
        """Events of `phase` (of functions called `name`, when given)."""
        return sum(1 for p, n, _ in self.events if p == phase and (name is None or n == name))

    def seconds(self, phase: str) -> float:
        """Total seconds spent in `phase`."""
        return sum(t for p, _, t in self.events if p == phase)


class Program(NamedTuple):
    """The compiled functions of one configuration (all seeds share them)."""

    net: Net
    tx: optax.GradientTransformation
    train_chunk: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
    bare_chunk: Callable[..., tuple[TrainState, jax.Array]]  # no per-layer statistics: the benchmark baseline
    measure: Callable[..., dict[str, jax.Array]]
    eval_batch: Callable[..., tuple[jax.Array, jax.Array]]
    # (n_steps, mesh) -> the chunk of a batch of runs: (states, x, y, data keys, eval sets, runs per device), the
    # states and keys in slots on a leading axis sharded over the mesh (`decay.devices.place`)
    group_chunk: Callable[..., Callable[..., tuple[TrainState, dict[str, jax.Array]]]]

    @property
    def graphdef(self) -> Any:
        """The model's NNX graph definition."""
        return self.net.graphdef


def _make_program(cfg: RunConfig, net: Net) -> Program:
    tx = optim.of(cfg)  # the learning rate is a value in the state: the program serves every rate
    bsz = cfg.batch_size
    hist_every = cfg.log_every if cfg.histograms else None
    full = instruments.tier_at_least(cfg.instruments, "full")

    def batch(x_train, y_train, data_key, step):
        idx = batch_indices(data_key, step, x_train.shape[0], bsz)
        return x_train[idx], y_train[idx]

    def train_chunk(state, x_train, y_train, data_key, n_steps):
        def body(state, _):
            return train_step(net, tx, state, *batch(x_train, y_train, data_key, state.step), hist_every, cfg.instruments)

        return jax.lax.scan(body, state, None, length=n_steps)

    def bare_chunk(state, x_train, y_train, data_key, n_steps):
        def body(state, _):
            return bare_step(net, tx, state, *batch(x_train, y_train, data_key, state.step))

        return jax.lax.scan(body, state, None, length=n_steps)

    def next_batch_curvature(state, x_train, y_train, data_key):
        # The full tier's curvature on the batch the next step trains on, its random probes keyed by the step.
        key = jax.random.fold_in(jax.random.fold_in(data_key, 7), state.step)
        return curvature(net, state.params, state.batch_stats, *batch(x_train, y_train, data_key, state.step), key)

    def measure(state, x_train, y_train, data_key):
        x, y = batch(x_train, y_train, data_key, state.step)
        _, _, stats = grads_and_stats(net, state.params, state.batch_stats, x, y, cfg.instruments, state.anchor)
        if full:
            stats.update(next_batch_curvature(state, x_train, y_train, data_key))
        return stats

    def eval_batch(params, batch_stats, x, y):
        out, _, _ = apply(net.graphdef, params, batch_stats, x, None, False)
        task = tasks.TASKS.get(net.task)
        losses, correct = task.loss(out, y), task.score(out, y)
        # Per example: the sums are taken on the host in float64, so that they do not depend on
        # how XLA vectorizes a reduction (which differed between runs mapped in one executable);
        # there the padding of the last batch is left out (`split_results`).
        return losses, correct

    def eval_batches(state, x_batches, y_batches):
        # Per-example (loss, hit) of one evaluation set, batchnorm in evaluation mode.
        return jax.lax.map(lambda b: eval_batch(state.params, state.batch_stats, *b), (x_batches, y_batches))

    def curvatures(states, x_train, y_train, data_key, when):
        # The full tier's curvature of each of the stacked states (a leading axis of 2: the chunk's
        # start and end) on its next training batch where `when`, else NaN; one compiled copy for both.
        if not full:
            return {}
        nan = {
            "hessian_top": jnp.nan,
            "hessian_trace": jnp.nan,
            "hessian_trace_layers": jnp.full((net.family.kernels(cfg),), jnp.nan),
        }
        nan = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), nan)

        def one(args):
            state, w = args
            return jax.lax.cond(w, lambda: next_batch_curvature(state, x_train, y_train, data_key), lambda: nan)

        return jax.lax.map(one, (states, when))

    def run_chunk(state, x_train, y_train, data_key, test, n_steps):
        # One run's chunk with its evaluation of every split (`test`: `eval_sets`, all splits in one set) and,
        # full tier, curvature: at the start (only at step 0, else zeros/NaN) and at the end (curvature on
        # instrument_every multiples and the last step).
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
        # Each device holds a fixed number of run slots and steps the first `count` of them, one run after another,
        # with the single-run chunk: the same computation as one run alone, so the numbers do not depend on the
        # grouping; empty slots cost memory, not compute, and one executable serves every batch of a program.
        def batch_chunk(states, x_train, y_train, data_keys, test, count):
            at = lambda tree, i: jax.tree.map(lambda a: a[i], tree)  # noqa: E731
            # The single-run chunk traced once, for its output shapes and for the loop body (a jitted call in the
            # body instead costs ~10% of the step: it is not fused with its surroundings).
            args = (at(states, 0), x_train, y_train, data_keys[0], test)
            traced, shapes = jax.make_jaxpr(lambda *a: run_chunk(*a, n_steps), return_shape=True)(*args)
            tree = jax.tree.structure(shapes)

            def one(*a):
                return jax.tree.unflatten(tree, jaxpr_as_fun(traced)(*jax.tree.leaves(a)))

            slots = data_keys.shape[0]
            outs = jax.tree.map(lambda a: jnp.zeros((slots, *a.shape), a.dtype), shapes[1:])

            def body(i, carry):
                states, outs = carry
                state, *out = one(at(states, i), x_train, y_train, data_keys[i], test)
                put = lambda tree, new: jax.tree.map(lambda a, v: a.at[i].set(v), tree, new)  # noqa: E731
                return put(states, state), put(outs, tuple(out))

            states, outs = jax.lax.fori_loop(0, count[0], body, (states, outs))
            return (states, *outs)

        runs, rep = P(devices.RUN_AXIS), P()
        # check_vma=False: with it, gradients with respect to values created inside (the zero
        # probes) are summed over the devices, mixing the runs' signal norms.
        sharded = jax.shard_map(
            batch_chunk, mesh=mesh, in_specs=(runs, rep, rep, runs, rep, runs), out_specs=runs, check_vma=False
        )
        return jax.jit(sharded, donate_argnums=0)

    return Program(
        net,
        tx,
        jax.jit(train_chunk, static_argnames="n_steps"),
        jax.jit(bare_chunk, static_argnames="n_steps"),
        jax.jit(measure),
        jax.jit(eval_batch),
        group_chunk,
    )


def _code(cfg: RunConfig) -> RunConfig:
    # The config less what changes values only (seed, init, weight_var, bias_var, learning_rate) and what only
    # the host reads (the budget, evaluation and checkpoint schedules, the data split): one program serves them.
    key = dataclasses.replace(
        cfg,
        seed=0,
        init="auto",
        weight_var=None,
        bias_var=None,
        learning_rate=1.0,
        eval_every=1,
        checkpoint_every=0,
        keep_checkpoints=0,
        checkpoints="every",
        data_seed=0,
        val_fraction=0.0,
        data_dir=None,
    )
    if not instruments.tier_at_least(cfg.instruments, "full"):  # the curvature schedule reads them
        key = dataclasses.replace(key, steps=0, instrument_every=1)
    if not cfg.histograms:
        key = dataclasses.replace(key, log_every=1)
    return key


def base_key(cfg: RunConfig) -> RunConfig:
    """What no run-time value can change: the config less its values and host-side settings (seed, init,
    learning rate, budget, schedules) and, for a family with a shared program (`Family.shared`), less its
    activation and norm. Runs of one base key form one program in a study (`study_choices`)."""
    key = _code(cfg)
    if families.of(cfg).shared:
        key = dataclasses.replace(key, activation="", norm="")
    return key


# What a shared program saves and costs, measured on this project's 2-core CPU (docs/speed.md, width 128, batch 128):
COMPILE_S = 2.5  # compiling one plain training program (median over the reference grid's 12)
SWITCH_S = 2.4e-3 / 32  # a shared program's extra time per layer and step (14.05 vs 11.62 ms at depth 32)


def sharing_pays(cfgs: Sequence[RunConfig]) -> bool:
    """Whether one shared program for `cfgs` (one base key) is estimated faster than a plain program for each
    activation x norm: the compilations it saves against the switch's cost on every layer of every step.
    Estimated from the study alone (not the device count), so the choice, and every row, is the same on any machine."""
    combos = len({(c.activation, c.norm) for c in cfgs})
    saved = (combos - 1) * COMPILE_S
    cost = SWITCH_S * sum(c.depth * max(c.steps, 1) for c in cfgs)
    return saved > cost


def study_choices(cfgs: Iterable[RunConfig]) -> dict[RunConfig, Choices | None]:
    """For each base key of a study's runs, the activations and norms its one shared program serves, or None: a
    plain program per activation and norm (one of each, or where sharing does not pay, `sharing_pays`). Given
    every run of the study, done or not, so that a resumed study, its runs grouped and spread over any number
    of devices, trains each run with the same program."""
    runs: dict[RunConfig, list[RunConfig]] = collections.defaultdict(list)
    for c in cfgs:
        runs[base_key(c)].append(c)
    out = {}
    for k, group in runs.items():
        choices = choices_of({c.activation for c in group}, {c.norm for c in group}) if families.of(k).shared else None
        out[k] = choices if choices is not None and sharing_pays(group) else None
    return out


def program_key(cfg: RunConfig, choices: Choices | None = None) -> tuple[RunConfig, Choices | None]:
    """What a compiled program depends on: the config less its values (seed, init, learning rate) and, in a
    shared program (`choices`), its base key and the activations and norms it serves."""
    if choices is None or not families.of(cfg).shared:
        return _code(cfg), None
    if cfg.activation not in choices.activations or cfg.norm not in choices.norms:
        raise ValueError(f"{cfg.name}: its activation and norm are not among the program's {choices}")
    return base_key(cfg), choices


def same_program(a: RunConfig, b: RunConfig) -> bool:
    """Whether two runs can share one compiled program (in a study that has both), and so train side by side."""
    return base_key(a) == base_key(b)


_PROGRAMS: collections.OrderedDict = collections.OrderedDict()  # a small LRU cache: (program key, shapes) -> Program


def program(cfg: RunConfig, net: Net, choices: Choices | None = None) -> Program:
    """Compiled functions for `cfg` (with `choices`: the shared model's, for those activations and norms), reused across seeds."""
    key = (program_key(cfg, choices), net.points, net.point_shape)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = _make_program(cfg, net)
        while len(_PROGRAMS) > 64:
            _PROGRAMS.popitem(last=False)
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]


def init_state(
    cfg: RunConfig,
    dataset: Dataset | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int = 0,
    choices: Choices | None = None,
) -> tuple[Program, TrainState]:
    """Builds the model of `cfg` and its compiled program; returns (program, state at step 0).

    Shapes come from `dataset`, or from `input_shape` and `num_classes` when there is none.
    `choices` (a study's, `study_choices`): for a family with `Family.shared`, the shared model whose one
    program serves those activations and norms; None: the plain model of `cfg` (what `decay.load_run`
    gives). The two states agree on every variable of the plain one (`saved_keys`, `to_plain`).
    """
    if dataset is not None:
        input_shape, num_classes = tuple(dataset.x_train.shape[1:]), dataset.num_classes
    fam = families.of(cfg)
    model = families.build(cfg, input_shape, num_classes, choices)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    shape = tuple(input_shape)
    net = Net(graphdef, fam, fam.points(cfg, shape), fam.point_shape(cfg, shape), data.task_of(cfg.dataset))
    prog = program(cfg, net, choices)  # program_key ignores choices for a family without a shared model
    return prog, _state(cfg, fam, params, batch_stats)


def _state(cfg: RunConfig, fam, params, batch_stats) -> TrainState:
    anchor = ()
    if instruments.tier_at_least(cfg.instruments, "standard"):
        anchor = tuple(jnp.array(k) for k in fam.layer_kernels(nnx.to_pure_dict(params)))
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, optim.of(cfg).init(params), jnp.zeros((), bool), anchor)


def _plain_template(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> TrainState:
    # The structure only: the same for every seed, init and learning rate (one trace per configuration).
    return _structure(program_key(cfg)[0], tuple(input_shape), num_classes)


@functools.lru_cache(maxsize=64)
def _structure(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> TrainState:
    def plain():
        model = families.build(cfg, input_shape, num_classes)
        _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        return _state(cfg, families.of(cfg), params, batch_stats)

    return jax.eval_shape(plain)


def saved_keys(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> frozenset[str]:
    """The flat keys (`decay.checkpoints.keys`) of the plain model's TrainState of `cfg`: what a checkpoint holds.

    A shared state holds more (every norm's variables, the run-time choice); its checkpoints keep only
    these, so that a checkpoint is the same whichever program trained it.
    """
    from decay import checkpoints

    return frozenset(checkpoints.keys(_plain_template(cfg, tuple(input_shape), num_classes)))


def to_plain(state: TrainState, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> TrainState:
    """A shared program's state as the plain model's (`init_state` without choices): its variables, value for value."""
    from decay import checkpoints

    template = _plain_template(cfg, tuple(input_shape), num_classes)
    leaves = dict(zip(checkpoints.keys(state), jax.tree.leaves(state), strict=True))
    return jax.tree.unflatten(jax.tree.structure(template), [leaves[k] for k in checkpoints.keys(template)])


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


SPLITS = ("val", "test", "train")  # the evaluated splits, in the order of `eval_sets`
TRAIN_EVAL = 2048  # training examples evaluated for the training loss (the first ones of the training split)


def eval_sets(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation, test and (up to TRAIN_EVAL examples of) training examples concatenated in that order and
    batched by `test_batches`: one compiled evaluation serves every split; `split_results` separates them."""
    if dataset.x_val is None:
        raise ValueError("the dataset has no validation split: load it with decay.data.load or split_validation")
    x = np.concatenate([dataset.x_val, dataset.x_test, dataset.x_train[:TRAIN_EVAL]])
    y = np.concatenate([dataset.y_val, dataset.y_test, dataset.y_train[:TRAIN_EVAL]])
    return test_batches(x, y)


def eval_sizes(dataset: Dataset) -> tuple[int, int, int]:
    """Examples of each split in `eval_sets`, in the order of SPLITS."""
    return dataset.x_val.shape[0], dataset.x_test.shape[0], min(dataset.x_train.shape[0], TRAIN_EVAL)


def split_results(losses, correct, sizes: tuple[int, ...]) -> dict[str, tuple[float, float]]:
    """(mean loss, accuracy) of each split (SPLITS) from the per-example results of `eval_sets`."""
    flat_l = np.asarray(losses, np.float64).reshape(-1)
    flat_c = np.asarray(correct, np.float64).reshape(-1)
    out, start = {}, 0
    for split, n in zip(SPLITS, sizes, strict=True):
        out[split] = eval_result(flat_l[start : start + n], flat_c[start : start + n], n)
        start += n
    return out


def test_batches(x_test, y_test) -> tuple[np.ndarray, np.ndarray]:
    """An evaluation set as [batches, EVAL_BATCH] arrays on the host, the last batch padded with zeros (examples
    past the set's size, which `split_results` leaves out)."""
    n = x_test.shape[0]
    size = min(EVAL_BATCH, n)
    nb = -(-n // size)
    pad = nb * size - n
    x = np.concatenate([np.asarray(x_test), np.zeros((pad, *x_test.shape[1:]), x_test.dtype)])
    y = np.concatenate([np.asarray(y_test), np.zeros((pad, *y_test.shape[1:]), y_test.dtype)])
    return x.reshape(nb, size, *x_test.shape[1:]), y.reshape(nb, size, *y_test.shape[1:])


def eval_result(losses, correct, n: int) -> tuple[float, float]:
    """(mean loss, accuracy) from per-example losses and hits, summed in float64."""
    return float(np.sum(np.asarray(losses, np.float64))) / n, float(np.sum(np.asarray(correct, np.float64))) / n


def evaluate_splits(prog: Program, state: TrainState, dataset: Dataset) -> dict[str, tuple[float, float]]:
    """(mean loss, accuracy) of every split (SPLITS), from the same `eval_sets` batches a training chunk evaluates."""
    return split_results(*_eval_per_example(prog, state, eval_sets(dataset)), eval_sizes(dataset))


def _eval_per_example(prog: Program, state: TrainState, batches) -> tuple[list, list]:
    out = [prog.eval_batch(state.params, state.batch_stats, x, y) for x, y in zip(*batches, strict=True)]
    return [o[0] for o in out], [o[1] for o in out]
