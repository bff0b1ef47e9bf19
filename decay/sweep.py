"""The depth sweep: every run of a grid, one `results.jsonl` row each, finished runs skipped."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp

from decay import data as data_lib
from decay import report, results, train
from decay.config import ConfigError, SweepConfig, dumps, validate_sweep


class Event(NamedTuple):
    """Progress of a sweep, for the caller to show: a run started ('start'), was skipped ('skip') or finished ('done')."""

    kind: str
    index: int  # 1-based run index
    total: int
    name: str
    elapsed_s: float  # since the sweep started
    eta_s: float | None  # estimated time left
    row: dict[str, Any] | None


def _flag_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key == "base":
            continue
        if old.get(key) != new.get(key):
            diffs.append(f"--{key} ({old.get(key)} -> {new.get(key)})")
    for key in sorted(set(old.get("base", {})) | set(new.get("base", {}))):
        a, b = old.get("base", {}).get(key), new.get("base", {}).get(key)
        if a != b and key not in ("depth", "activation", "norm", "seed"):
            diffs.append(f"--{key} ({a} -> {b})")
    return diffs


def _cost(cfg) -> float:
    # Relative cost of a run for the ETA, in units of one layer x 300 steps (~0.07 s on a
    # 2-core CPU at width 128): the first seed of a config also pays for compilation (~25 units).
    return (25.0 if cfg.seed == 0 else 1.0) + cfg.depth * max(cfg.steps, 1) / 300.0


def run_sweep(
    cfg: SweepConfig,
    workdir: str,
    on_event: Callable[[Event], None] | None = None,
    on_progress: Callable[[train.RunProgress], None] | None = None,
    command: str | None = None,
    write_report: bool = True,
) -> list[dict[str, Any]]:
    """Runs every configuration of `cfg` not yet in `<workdir>/results.jsonl`; returns all rows.

    Each run logs TensorBoard events to `<workdir>/tb/<run name>/` and keeps its config and
    Orbax checkpoints in `<workdir>/runs/<run name>/`; an unfinished run (one with checkpoints
    but no results row, e.g. after the machine was lost) resumes from its latest checkpoint. At the end
    `<workdir>/report.md` and `<workdir>/plots/` are (re)written unless `write_report` is False.

    Raises ConfigError for invalid settings, or when `workdir` holds a different sweep.
    """
    validate_sweep(cfg)
    b = cfg.base
    dataset = data_lib.load(b.dataset, b.data_dir, b.data_seed)
    n_train = dataset.x_train.shape[0]
    if b.batch_size > n_train:
        raise ConfigError(f"--batch_size={b.batch_size} exceeds the {n_train} training examples of --dataset={b.dataset}")
    device_data = tuple(jnp.asarray(a) for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test))

    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} cannot be created: {e.strerror}") from None
    config_path = os.path.join(workdir, "config.json")
    new = cfg.to_json()
    if os.path.exists(config_path):
        try:
            with open(config_path) as f:
                old = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{config_path} is not valid JSON ({e.msg}); use a new --workdir") from None
        old = {k: v for k, v in old.items() if k != "command"}
        diffs = _flag_diff(old, new)
        if diffs:
            raise ConfigError(f"--workdir={workdir} holds a sweep with other flags: {', '.join(diffs)}; use a new --workdir")
    else:
        try:
            results.write_atomic(config_path, dumps({**new, "command": command}))
        except OSError as e:
            raise ConfigError(f"--workdir={workdir} is not writable: {e.strerror}") from None

    results_path = os.path.join(workdir, "results.jsonl")
    rows = results.read_jsonl(results_path)
    finished = {r["name"] for r in rows}
    runs = cfg.runs()
    total_cost = sum(_cost(r) for r in runs if r.name not in finished)
    done_cost = 0.0
    t0 = time.perf_counter()
    emit = on_event or (lambda e: None)
    index = {r.name: i for i, r in enumerate(runs, 1)}

    def eta() -> tuple[float, float | None]:
        elapsed = time.perf_counter() - t0
        return elapsed, (elapsed / done_cost * (total_cost - done_cost) if done_cost else None)

    # Unfinished runs that share a compiled program (the seeds of a grid point) train together,
    # spread over the devices (train.train_runs); groups follow the grid's order.
    groups: list[list] = []
    for run_cfg in runs:
        if run_cfg.name in finished:
            emit(Event("skip", index[run_cfg.name], len(runs), run_cfg.name, *eta(), None))
        elif groups and train.same_program(groups[-1][0], run_cfg):
            groups[-1].append(run_cfg)
        else:
            groups.append([run_cfg])
    for group in groups:
        for run_cfg in group:
            emit(Event("start", index[run_cfg.name], len(runs), run_cfg.name, *eta(), None))
        log_dirs = [os.path.join(workdir, "tb", c.name) for c in group]
        run_dirs = [os.path.join(workdir, "runs", c.name) for c in group]
        group_rows = train.train_runs(group, dataset, device_data, on_progress, log_dirs=log_dirs, run_dirs=run_dirs)
        for run_cfg, row in zip(group, group_rows, strict=True):
            results.append_jsonl(results_path, row)
            rows.append(row)
            done_cost += _cost(run_cfg)
            emit(Event("done", index[run_cfg.name], len(runs), run_cfg.name, *eta(), row))
    order = {r.name: k for k, r in enumerate(runs)}
    if write_report:
        report.write_report(workdir)
    return sorted((r for r in rows if r["name"] in order), key=lambda r: order[r["name"]])
