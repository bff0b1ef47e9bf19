"""The run loop: the host side of training, from a state at step 0 (or a checkpoint) to a results row.

`train_runs` trains runs that share one compiled program side by side: their states are
stacked on a leading run axis sharded over every device (`decay.devices`), each chunk of
steps is one call of `Program.group_chunk`, and each run's host record (`decay.row.RunRecord`)
takes in its share of the chunk: logged losses, evaluations, curvature, checkpoints,
TensorBoard events. A finished run's record becomes its row (`decay.row.build`).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from decay import devices, distributed, instruments, interrupts, metrics, row
from decay.config import RunConfig
from decay.data import Dataset
from decay.errors import Interrupted
from decay.layers import Choices
from decay.program import (
    Program,
    chunk_end,
    eval_sets,
    eval_sizes,
    evaluate_splits,
    init_state,
    program_key,
    saved_keys,
    split_results,
    study_choices,
)
from decay.row import RunRecord, stats_to_json
from decay.tensorboard_writer import PER_LAYER, PER_POINT, RunWriter


class RunProgress(NamedTuple):
    """Reported after every chunk of a run."""

    step: int
    total: int
    loss: float


class _RunHost:
    """The host side of one run: its record, checkpoints and TensorBoard writer."""

    def __init__(self, cfg: RunConfig, dataset: Dataset, prog: Program, state, log_dir: str | None, run_dir: str | None):
        from decay import checkpoints  # Orbax is imported only by runs that checkpoint

        self.t0 = time.perf_counter()
        self.cfg, self.dataset, self.prog, self.state = cfg, dataset, prog, state
        self.data_key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
        self.ckpt_dir = os.path.join(run_dir, "checkpoints") if run_dir and cfg.checkpoints != "none" else None
        self.saved_at: int | None = None  # the step of the checkpoint saved last by this process
        self.checkpoints = checkpoints
        self.record = RunRecord()
        self.resumed = False
        # What checkpoints hold: the plain model's variables (a shared program's state holds every norm's).
        self.saved = saved_keys(cfg, tuple(dataset.x_train.shape[1:]), dataset.num_classes) if run_dir else None
        if self.ckpt_dir and checkpoints.steps(self.ckpt_dir):
            self.state, self.data_key, progress, self.saved_at = checkpoints.restore(self.ckpt_dir, self.state, saved=self.saved)
            self.record = RunRecord.from_json(progress)
            self.resumed = True
        elif run_dir:
            checkpoints.write_config(run_dir, cfg, tuple(dataset.x_train.shape[1:]), dataset.num_classes)
        self.writer = self._writer(log_dir, cfg, prog, tuple(dataset.x_train.shape[1:])) if log_dir else None

    @staticmethod
    def _writer(log_dir: str, cfg: RunConfig, prog: Program, shape: tuple[int, ...]) -> RunWriter:
        """The run's TensorBoard writer, its per-point and per-kernel tags named as the family says."""
        fam = prog.net.family
        tags = {}
        if fam.point_names is not None:
            tags.update({k: fam.point_names(cfg, shape) for k in PER_POINT})
        if fam.kernel_names is not None:
            tags.update({k: fam.kernel_names(cfg) for k in PER_LAYER if k not in PER_POINT})
        prefixed = {k: [f"{PER_LAYER[k]}/{name}" for name in v] for k, v in tags.items()}
        time_steps = shape[0] if fam.sequence and fam.point_names is None else 0
        return RunWriter(log_dir, fam.kernels(cfg), tags=prefixed, points=prog.net.points, time_steps=time_steps)

    @property
    def active(self) -> bool:
        return self.record.done < self.cfg.steps and self.record.diverged_at is None

    def save_checkpoint(self, state) -> None:
        """Checkpoints `state` at the record's step (policy `cfg.checkpoints`: `every` keeps the newest
        `keep_checkpoints` besides step 0, `ends` only step 0 and the newest, `none` writes nothing)."""
        if self.writer:
            self.writer.flush()
        if self.ckpt_dir and self.saved_at != self.record.done:
            keep = self.cfg.keep_checkpoints if self.cfg.checkpoints == "every" else 1
            self.checkpoints.save(self.ckpt_dir, self.record.done, state, self.data_key, self.record.to_json(), keep, self.saved)
            self.saved_at = self.record.done

    def record_eval(self, results: dict[str, tuple[float, float]]) -> None:
        """Keeps an evaluation of every split (`program.SPLITS`: split -> (mean loss, accuracy)) and its history entry."""
        r = self.record
        r.val_loss, r.val_accuracy = metrics.clean(results["val"][0]), results["val"][1]
        r.test_loss, r.test_accuracy = metrics.clean(results["test"][0]), results["test"][1]
        r.train_eval_loss, r.train_eval_accuracy = metrics.clean(results["train"][0]), results["train"][1]
        if r.done == 0:
            r.train_loss_init = r.train_eval_loss
            r.history = []
        train_loss = metrics.clean(float(np.mean(r.interval_losses))) if r.interval_losses else None
        r.interval_losses = []
        r.history.append(
            {
                "step": r.done,
                "train_loss": train_loss,
                "train_eval_loss": r.train_eval_loss,
                "val_loss": r.val_loss,
                "val_accuracy": r.val_accuracy,
                "test_loss": r.test_loss,
                "test_accuracy": r.test_accuracy,
            }
        )
        if self.writer:
            self.writer.write_eval(r.done, results)

    def _results(self, evals, sizes) -> dict[str, tuple[float, float]]:
        return split_results(*evals, sizes)

    def measure_only(self, device_data) -> None:
        """steps=0: the evaluation and the per-layer measurement at initialization."""
        r = self.record
        x_train, y_train = device_data[:2]
        self.record_eval(evaluate_splits(self.prog, self.state, self.dataset))
        init = jax.device_get(self.prog.measure(self.state, x_train, y_train, self.data_key))
        curv = {k: init.pop(k) for k in instruments.CURVATURE_KEYS if k in init}
        self.record_curvature(0, curv)
        r.init_stats = r.last_stats = stats_to_json(init)
        r.recent_losses = [float(init["loss"])]
        r.loss_history = [[0, metrics.clean(init["loss"])]]
        r.diverged_at = None if init["finite"] else 0
        if self.writer:
            self.writer.write_steps(np.array([0]), {k: np.asarray(v)[None] for k, v in init.items()})
        self.save_checkpoint(self.state)

    def record_curvature(self, step: int, curv: dict[str, np.ndarray]) -> None:
        """Keeps the full tier's curvature measured at `step` (NaN where it was not measured)."""
        if not curv or not np.isfinite(curv["hessian_top"]):
            return
        self.record.curvature.append({"step": step, **stats_to_json({k: np.asarray(v) for k, v in curv.items()})})
        if self.writer:
            self.writer.write_scalars(
                step, {"hessian/top_eigenvalue": curv["hessian_top"], "hessian/trace": curv["hessian_trace"]}
            )
            self.writer.write_steps(np.array([step]), {"hessian_trace_layers": np.asarray(curv["hessian_trace_layers"])[None]})

    def absorb(self, chunk: dict[str, np.ndarray], n: int, first, last, sizes: tuple[int, ...], state_now) -> float:
        """Takes in a chunk of `n` steps, its evaluations and curvature; returns its last finite loss.

        `first`, `last`: (per-example losses and hits of every split in `program.SPLITS`, curvature)
        at the chunk's start and end; `sizes`: examples per split.
        `state_now()` gives this run's state at the chunk's end, fetched only to checkpoint.
        """
        r, cfg = self.record, self.cfg
        done = r.done
        (first_eval, first_curv), (last_eval, last_curv) = first, last
        if done == 0:  # step 0: the initial evaluation, and the initial state's checkpoint
            self.record_curvature(0, first_curv)
            self.record_eval(self._results(first_eval, sizes))
            self.save_checkpoint(self.state)
        if r.init_stats is None:
            r.init_stats = stats_to_json({k: v[0] for k, v in chunk.items()})
        bad = np.flatnonzero(~chunk["finite"])
        good = int(bad[0]) if bad.size else n
        if good or r.last_stats is None:  # a first step that is already non-finite is kept as is
            r.last_stats = stats_to_json({k: v[max(good - 1, 0)] for k, v in chunk.items()})
        losses = [float(v) for v in chunk["loss"][:good]]
        r.recent_losses = (r.recent_losses + losses)[-10:]
        r.interval_losses += losses
        # Logged steps: every log_every-th, the run's last, and the step that diverged.
        steps = done + np.arange(min(good + 1, n))
        keep = (steps % cfg.log_every == 0) | (steps == cfg.steps - 1) | (steps == done + good)
        r.loss_history += [[int(t), metrics.clean(chunk["loss"][t - done])] for t in steps[keep]]
        if self.writer:
            self.writer.write_steps(steps[keep], {k: v[steps[keep] - done] for k, v in chunk.items()})
        r.done = done + n
        if not bad.size:
            self.record_curvature(r.done, last_curv)
        if bad.size:
            r.diverged_at = done + good
            self.save_checkpoint(state_now())
            return losses[-1] if losses else math.nan
        if r.done % cfg.eval_every == 0 or r.done == cfg.steps:
            self.record_eval(self._results(last_eval, sizes))
        scheduled = cfg.checkpoints == "every" and cfg.checkpoint_every and r.done % cfg.checkpoint_every == 0
        if r.done == cfg.steps or scheduled:
            self.save_checkpoint(state_now())
        return losses[-1] if losses else math.nan

    def finish(self) -> row.Row:
        if self.writer:
            self.writer.close()
        return row.build(self.cfg, self.dataset, self.record, time.perf_counter() - self.t0)


def _index(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda a: a[i], tree)


class _HostStates:
    """The stacked states of a group, fetched to the host at most once, and only if a run asks (to checkpoint it).

    In a multi-process job every process fetches every run's state (`distributed.gather`): each run's checkpoint
    is one Orbax save that every process takes part in.
    """

    def __init__(self, states: Any):
        self.states, self.host = states, None

    def run(self, i: int) -> Any:
        if self.host is None:
            self.host = distributed.gather(self.states)
        return _index(self.host, i)


def upload(dataset: Dataset) -> tuple[jax.Array, ...]:
    """(x_train, y_train, x_test, y_test) as device arrays, uploaded once for every run of a study."""
    return tuple(jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))


def train_runs(
    cfgs: list[RunConfig],
    dataset: Dataset,
    device_data: tuple[jax.Array, ...] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    log_dirs: list[str | None] | None = None,
    run_dirs: list[str | None] | None = None,
    slots: int | None = None,
    choices: Choices | None = None,
) -> list[row.Row]:
    """Trains runs that share one compiled program (`program.same_program`) side by side.

    The runs' states are stacked on a leading run axis that is sharded over every device
    (`devices.run_mesh`), `slots` per device (default: `devices.slots_per_device`; more runs
    train in batches); each device steps its runs one after another with the same single-run
    program, so every run's numbers are bitwise those of `train_run` alone, on one device or
    many. Runs resumed from checkpoints at different steps are trained in separate batches.
    `choices`: the activations and norms of the shared program (`program.study_choices` of the
    study the runs belong to; default: those of `cfgs`). Returns one `results.jsonl` row per config, in order.
    """
    if not cfgs:
        return []
    if choices is None:
        found = study_choices(cfgs)
        choices = next(iter(found.values())) if len(found) == 1 else None
    if len({program_key(c, choices) for c in cfgs}) > 1:
        raise ValueError(
            "train_runs needs configs of one program: they may differ only in seed, init, learning rate and,"
            " for a family with a shared program, activation and norm"
        )
    if device_data is None:
        device_data = upload(dataset)
    log_dirs = log_dirs or [None] * len(cfgs)
    run_dirs = run_dirs or [None] * len(cfgs)
    runs = []
    for cfg, log_dir, run_dir in zip(cfgs, log_dirs, run_dirs, strict=True):
        prog, state = init_state(cfg, dataset, choices=choices)
        runs.append(_RunHost(cfg, dataset, prog, jax.device_get(state), log_dir, run_dir))
        if cfg.steps == 0 and not runs[-1].resumed:
            runs[-1].measure_only(device_data)
    prog = runs[0].prog
    mesh = devices.run_mesh()
    x_train, y_train = (devices.replicate(a, mesh) for a in device_data[:2])
    sizes = eval_sizes(dataset)
    sets = devices.replicate(eval_sets(dataset), mesh)
    for done in sorted({r.record.done for r in runs}):
        group = [r for r in runs if r.record.done == done and r.active]
        if not group:
            continue
        slots = slots or devices.slots_per_device(len(group), mesh.size)
        for start in range(0, len(group), slots * mesh.size):
            _train_batch(
                group[start : start + slots * mesh.size], prog, mesh, slots, (x_train, y_train), sets, sizes, on_progress
            )
    return [r.finish() for r in runs]


def _train_batch(batch: list[_RunHost], prog: Program, mesh, slots: int, train_data, sets, sizes, on_progress) -> None:
    """Trains a batch of runs at the same step to their end: `slots` run slots per device (`devices.place`)."""
    states, count = devices.place([r.state for r in batch], mesh, slots)
    keys = np.stack([np.asarray(jax.random.key_data(k)) for k in devices.fill([r.data_key for r in batch], mesh.size, slots)])
    data_keys = jax.random.wrap_key_data(devices.shard_runs(keys, mesh))
    at = devices.positions(len(batch), mesh.size, slots)
    cfg = batch[0].cfg
    host = _HostStates(states)
    while any(r.active for r in batch):
        now = next(r for r in batch if r.active).record.done  # a diverged run's step no longer moves
        signum = interrupts.requested()  # SIGINT or SIGTERM: every unfinished run checkpoints this step, then stop
        if signum:
            for i, run in zip(at, batch, strict=True):
                if run.active:
                    run.save_checkpoint(host.run(i))
            raise Interrupted(signum, f"interrupted at step {now} of {cfg.steps}; rerun the same command to resume")
        n = chunk_end(now, cfg) - now
        states, chunk, first, last_ = prog.group_chunk(n, mesh)(states, *train_data, data_keys, sets, count)
        # One transfer for every per-layer value and evaluation of every run of the chunk (to every process).
        chunk, first, last_ = distributed.gather((chunk, first, last_))
        host = _HostStates(states)
        last = math.nan
        for i, run in zip(at, batch, strict=True):
            if run.active:
                pick = functools.partial(_index, i=i)
                last = run.absorb(pick(chunk), n, pick(first), pick(last_), sizes, functools.partial(host.run, i))
        if on_progress is not None:
            on_progress(RunProgress(now + n, cfg.steps, last))


def train_run(
    cfg: RunConfig,
    dataset: Dataset,
    device_data: tuple[jax.Array, ...] | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
    log_dir: str | None = None,
    run_dir: str | None = None,
) -> row.Row:
    """Trains one configuration and returns its `results.jsonl` row.

    `device_data` (x_train, y_train, x_test, y_test as device arrays) avoids re-uploading
    the dataset for every run of a sweep. With `log_dir`, TensorBoard events go there. With
    `run_dir`, the run writes `config.json` and Orbax checkpoints there (step 0, every
    `checkpoint_every` steps, the end) and, if checkpoints exist, resumes from the latest:
    the returned row is then the same as an uninterrupted run's (but for `wall_time_s`).
    """
    return train_runs([cfg], dataset, device_data, on_progress, [log_dir], [run_dir])[0]
