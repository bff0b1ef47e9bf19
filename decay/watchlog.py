"""The host side of a watched model: TensorBoard, the results row, the figure, checkpoints, diagnosis.

    log = decay.WatchLog("runs/my_model", watch, every=100)
    for step, batch in enumerate(batches):
        loss, stats = train_step(model, optimizer, batch)
        log.record(step, stats)              # device arrays kept; one transfer per `every` steps
        if step % 1000 == 0:
            log.save(model, step)            # Orbax: the model's parameters and batch statistics
    row = log.close(model)                   # results.jsonl, gradient_flow.png, config.json, last checkpoint

A watched run's folder: `config.json` (kind "watch", the model's class, points, parameters),
`checkpoints/<step>/`, `events` (TensorBoard: per point `signal_norm/`, `act_rms/`, `q/`, `c/`,
`dead_fraction/layer_XX` as for a sweep's layers, per parameter entry `grad_norm/`, `weight_norm/`,
`update_ratio/<entry>`), `results.jsonl` (one row, `decay.row.WATCH_FIELDS`) and `gradient_flow.png`.
`decay.load_run(folder, model=MyModel(...))` reopens it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from decay import checkpoints, metrics, plots, results, row
from decay.config import dumps
from decay.errors import ConfigError
from decay.tensorboard_writer import RunWriter
from decay.watcher import Watch, main_stack, pattern, watch

PER_POINT = ("signal_norms", "act_rms", "q", "c", "dead_fraction")
PER_PARAM = {"grad_norms": "grad_norm", "weight_norms": "weight_norm", "update_ratio": "update_ratio"}
SAVED = (nnx.Param, nnx.BatchStat)  # what a checkpoint holds of the model


def _meta(w: Watch, name: str) -> dict[str, Any]:
    return {"name": name, "model": w.model_class, "points": w.point_names, "params": w.param_names, "instruments": w.tier}


class WatchLog:
    """Collects a watched step's statistics on the host and writes a sweep run's outputs for them."""

    def __init__(
        self, workdir: str, w: Watch, every: int = 100, name: str | None = None, tensorboard: bool = True, keep: int = 2
    ):
        if every < 1:
            raise ConfigError(f"every: must be at least 1, got {every}")
        self.workdir, self.watch, self.every, self.keep = workdir, w, every, keep
        self.name = name or os.path.basename(os.path.normpath(workdir))
        self.run_record = row.RunRecord()  # what the row is built from; saved with every checkpoint
        self._pending: list[tuple[int, dict]] = []
        self._writer: RunWriter | None = None
        self._tensorboard = tensorboard
        self._steps = 0
        self._t0: float | None = None
        self.row: dict[str, Any] | None = None
        os.makedirs(workdir, exist_ok=True)

    def record(self, step: int, stats: dict[str, jax.Array]) -> None:
        """Keeps one step's stats (still on the device); every `every` steps they come to the host in one transfer."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self._pending.append((int(step), stats))
        if len(self._pending) >= self.every:
            self.flush()

    def curvature(self, step: int, values: dict[str, jax.Array]) -> None:
        """Adds a `Watch.curvature` measurement made at `step`."""
        v = jax.device_get(values)
        self.run_record.curvature.append(
            {"step": int(step), **{k: [metrics.clean(x) for x in np.ravel(np.asarray(a, np.float64))] for k, a in v.items()}}
        )

    def flush(self) -> None:
        """Brings the pending steps to the host (one transfer) and logs them."""
        if not self._pending:
            return
        steps = np.array([s for s, _ in self._pending])
        host = jax.device_get([st for _, st in self._pending])
        self._pending = []
        stacked = {k: np.stack([np.asarray(h[k]) for h in host]) for k in host[0]}
        rec = self.run_record
        for i, s in enumerate(steps):
            one = {k: v[i] for k, v in stacked.items()}
            finite = bool(one.pop("finite"))
            loss = float(one["loss"])
            per = {k: v for k, v in one.items() if k != "loss"}
            rec.loss_history.append([int(s), metrics.clean(loss)])
            if rec.init_stats is None:
                rec.init_stats = row.stats_to_json(per)
            if finite and rec.diverged_at is None:
                rec.last_stats = row.stats_to_json(per)
                rec.recent_losses = (rec.recent_losses + [loss])[-10:]
            elif not finite and rec.diverged_at is None:
                rec.diverged_at = int(s)
            self._steps += 1
        if self._tensorboard:
            self._tb().write_steps(steps, {k: v for k, v in stacked.items() if k != "finite"})

    def _tb(self) -> RunWriter:
        if self._writer is None:
            w = self.watch
            tags = {k: [f"{tag}/{n}" for n in w.param_names] for k, tag in PER_PARAM.items()}
            self._writer = RunWriter(self.workdir, len(w.point_names), tags)
        return self._writer

    def save(self, model: nnx.Module, step: int) -> None:
        """Writes an Orbax checkpoint of the model's parameters and batch statistics at `step` (after flushing)."""
        self.flush()
        self._write_config()
        state = nnx.to_pure_dict(nnx.state(model, SAVED))
        checkpoints.save(os.path.join(self.workdir, "checkpoints"), int(step), state, None, self.run_record.to_json(), self.keep)

    def _write_config(self) -> None:
        meta = {"kind": "watch", **_meta(self.watch, self.name), "saved": [t.__name__ for t in SAVED]}
        results.write_atomic(os.path.join(self.workdir, "config.json"), dumps(meta))

    def close(self, model: nnx.Module | None = None, step: int | None = None) -> dict[str, Any]:
        """Flushes, writes the row (`results.jsonl`), `gradient_flow.png`, `config.json` and, with `model`, a last
        checkpoint at `step` (default: the last recorded step + 1); returns the row."""
        self.flush()
        if self._steps == 0:
            raise ConfigError("WatchLog.close: no step was recorded (call log.record(step, stats) in the training loop)")
        wall = 0.0 if self._t0 is None else time.perf_counter() - self._t0
        last = self.run_record.loss_history[-1][0]
        if model is not None:
            self.save(model, last + 1 if step is None else step)
        self._write_config()
        self.row = row.build_watch(_meta(self.watch, self.name), self.run_record, self._steps, wall)
        path = os.path.join(self.workdir, "results.jsonl")
        if os.path.exists(path):
            os.remove(path)  # a watched folder holds its run's one row
        results.append_jsonl(path, self.row)
        plots.save(plots.watch_figure(self.row), os.path.join(self.workdir, "gradient_flow.png"))
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.row


# --- reopening -------------------------------------------------------------------------------------


@dataclasses.dataclass
class WatchedRun:
    """A watched run reopened at one checkpoint: the user's model with the saved state put back."""

    run_dir: str
    config: dict[str, Any]
    step: int
    model: nnx.Module
    row: dict[str, Any] | None
    available_steps: list[int]


def is_watched(run_dir: str) -> bool:
    """Whether `run_dir` holds a watched model's run (config.json of kind 'watch')."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return False
    try:
        data = results.read_json(path)
    except ConfigError:
        return False  # not valid JSON: the sweep run's reader says so, naming the file
    return isinstance(data, dict) and data.get("kind") == "watch"


def load(run_dir: str, model: nnx.Module | None, step: int | None = None) -> WatchedRun:
    """Reopens a watched run into `model` (an instance of the user's class); reads JSON and Orbax only."""
    cfg = results.read_json(os.path.join(run_dir, "config.json"))
    if model is None:
        raise ConfigError(f"{run_dir}: a watched run of {cfg['model']}; pass model=<an instance of it> to rebuild it")
    got = f"{type(model).__module__}.{type(model).__qualname__}"
    if got.split(".")[-1] != cfg["model"].split(".")[-1]:
        raise ConfigError(f"{run_dir}: saved from {cfg['model']}, but model is a {got}")
    template = nnx.to_pure_dict(nnx.state(model, SAVED))
    template = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), template)
    state, _, _, at = checkpoints.restore(os.path.join(run_dir, "checkpoints"), template, step)
    current = nnx.state(model, SAVED)
    nnx.replace_by_pure_dict(current, jax.tree.map(jnp.asarray, state))
    nnx.update(model, current)
    rows = results.read_jsonl(os.path.join(run_dir, "results.jsonl"))
    return WatchedRun(
        run_dir, cfg, at, model, rows[-1] if rows else None, checkpoints.steps(os.path.join(run_dir, "checkpoints"))
    )


# --- diagnosis -------------------------------------------------------------------------------------

JUMP = 10.0  # a point where the signal changes by this factor or more from its neighbour is named


@dataclasses.dataclass
class Diagnosis:
    """Gradient flow of a model at its current parameters, from one batch."""

    model: str
    points: list[str]
    signal_norms: list[float]
    act_rms: list[float]
    chi_along: str  # the kind of point chi is fitted along (decay.watcher.main_stack)
    chi: float | None
    verdict: str
    gain: float | None  # chi^(n - 1) along those n points: the squared signal's gain from the last back to the first
    collapses: list[str]  # points where ||dL/dh|| is JUMP or more below the next point of the same kind (backward)
    blowups: list[str]  # points where it is JUMP or more above it
    forward_collapses: list[str]  # points whose value RMS is JUMP or more below the previous point of the same kind
    c_last: float | None  # mean cosine between examples at the last point (1: every input looks alike)
    loss: float

    def __str__(self) -> str:
        lines = [f"decay.diagnose: {self.model}, {len(self.points)} probe points, loss {self.loss:.4g}"]
        width = max(len(p) for p in self.points)
        lines.append(f"  {'point':<{width}}  {'||dL/dh||':>10}  {'rms(h)':>10}")
        for p, s, a in zip(self.points, self.signal_norms, self.act_rms, strict=True):
            lines.append(f"  {p:<{width}}  {_sci(s):>10}  {_sci(a):>10}")
        chi = "n/a" if self.chi is None else f"{self.chi:.4g}"
        gain = "n/a" if self.gain is None else _sci(self.gain)
        lines.append(f"chi {chi} per point along {self.chi_along}, chi^(n-1) = {gain}: {self.verdict}")
        for label, pts in (
            ("backprop signal collapses (x1/10 or more) at", self.collapses),
            ("backprop signal blows up (x10 or more) at", self.blowups),
            ("forward signal collapses (x1/10 or more) at", self.forward_collapses),
        ):
            if pts:
                lines.append(f"{label}: {', '.join(pts)}")
        if self.c_last is not None:
            note = " (inputs nearly indistinguishable there)" if self.c_last > 0.99 else ""
            lines.append(f"c at the last point {self.c_last:.4f}{note}")
        return "\n".join(lines)


def _sci(x: float | None) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3e}"


def diagnose(
    model: nnx.Module,
    loss_fn: Callable,
    batch: Any,
    points: str | tuple[str, ...] = "all",
    has_aux: bool = False,
    show: bool = True,
) -> Diagnosis:
    """Measures `model` on one batch at its current parameters (the model is not changed) and prints the diagnosis."""
    w = watch(model, loss_fn, points=points, tier="standard", has_aux=has_aux)
    copy = nnx.clone(model)
    stats = nnx.jit(lambda m, b: w.value_and_grad(m, b)[2])(copy, batch)
    s = {k: np.asarray(v, np.float64) for k, v in jax.device_get(stats).items()}
    names = w.point_names
    signal, rms = s["signal_norms"], s["act_rms"]
    along, idx = main_stack(names)
    chi = metrics.fit_chi(signal[idx].tolist())
    collapses, blowups, forward = [], [], []
    kinds: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        kinds.setdefault(pattern(n), []).append(i)
    for members in kinds.values():  # neighbours of one kind only: a query projection's signal is not the residual's
        for a, b in zip(members, members[1:], strict=False):
            if signal[b] > 0 and signal[a] / signal[b] <= 1 / JUMP:
                collapses.append(names[a])
            if signal[b] > 0 and signal[a] / signal[b] >= JUMP:
                blowups.append(names[a])
            if rms[a] > 0 and rms[b] / rms[a] <= 1 / JUMP:
                forward.append(names[b])
    order = {n: i for i, n in enumerate(names)}
    d = Diagnosis(
        model=w.model_class,
        points=names,
        signal_norms=[metrics.clean(v) for v in signal],
        act_rms=[metrics.clean(v) for v in rms],
        chi_along=along,
        chi=metrics.clean(chi),
        verdict=metrics.verdict(chi, len(idx), signal[idx].tolist()),
        gain=None if chi is None or chi <= 0 or len(idx) < 2 else metrics.clean(chi ** (len(idx) - 1)),
        collapses=sorted(collapses, key=order.get),
        blowups=sorted(blowups, key=order.get),
        forward_collapses=sorted(forward, key=order.get),
        c_last=metrics.clean(s["c"][-1]),
        loss=float(s["loss"]),
    )
    if show:
        print(d)
    return d
