"""Checkpoints of a run with Orbax (the only module that imports orbax).

A run folder `<workdir>/runs/<run name>/` holds `config.json` (the RunConfig) and
`checkpoints/<step>/`, each with two Orbax items: `state` (every array of the TrainState
and the data RNG key, as a flat dict keyed by pytree path, so the files name what they hold)
and `progress` (JSON: what the host has accumulated so far, so a resumed run ends with the
same results row). Orbax writes a checkpoint to a temporary folder and renames it when
complete: a run killed mid-save leaves the previous checkpoints intact. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from decay.config import RunConfig
from decay.errors import ConfigError


def keys(tree: Any) -> list[str]:
    """The flat keys a checkpoint stores `tree`'s leaves under (pytree paths), in leaf order."""
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return dict(zip(keys(tree), (np.asarray(leaf) for leaf in jax.tree.leaves(tree)), strict=True))


_DISK_ERRORS = ("No space left", "Permission denied", "Read-only file system", "Disk quota", "Not a directory")


def _write_failed(e: Exception) -> bool:
    """Whether `e`, raised by Orbax or TensorStore while saving, is the filesystem refusing a write."""
    return isinstance(e, OSError) or any(text in str(e) for text in _DISK_ERRORS)


def _manager(ckpt_dir: str, read_only: bool = False) -> ocp.CheckpointManager:
    # `read_only` only means "do not create the folder": Orbax's own read-only mode logs warnings.
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=not read_only, enable_async_checkpointing=False)
    handlers = {"state": ocp.StandardCheckpointHandler(), "progress": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=options, item_handlers=handlers)


def save(
    ckpt_dir: str,
    step: int,
    state: Any,
    data_key: jax.Array | None,
    progress: dict[str, Any],
    keep: int,
    saved: frozenset[str] | None = None,
) -> None:
    """Saves `state` (a pytree), the data key (None: a watched model's, which has none) and `progress` as checkpoint `step`.

    `saved`: only these flat keys of `state` (a shared program's state: the plain model's variables,
    `decay.program.saved_keys`). Keeps the newest `keep` checkpoints and step 0 (initialization), deletes the rest.
    """
    arrays = _flat(state)
    if saved is not None:
        arrays = {k: v for k, v in arrays.items() if k in saved}
    if data_key is not None:
        arrays["['data_key']"] = np.asarray(jax.random.key_data(data_key))
    try:
        with _manager(ckpt_dir) as mngr:
            if step in mngr.all_steps():
                mngr.delete(step)
            mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), progress=ocp.args.JsonSave(progress)))
            mngr.wait_until_finished()
            steps = sorted(mngr.all_steps())
            for old in steps[:-keep] if keep > 0 else steps:
                if old != 0 and old != step:
                    mngr.delete(old)
    except Exception as e:
        # A full disk, no permission: one line; Orbax completes a checkpoint by renaming, so earlier ones are whole.
        if not _write_failed(e):
            raise
        from decay.results import write_error

        err = e if isinstance(e, OSError) else OSError(None, str(e).strip().splitlines()[0][:200])
        raise write_error(os.path.join(ckpt_dir, str(step)), err) from None


def steps(ckpt_dir: str) -> list[int]:
    """Steps with a complete checkpoint in `ckpt_dir` ([] when there is none)."""
    if not os.path.isdir(ckpt_dir):
        return []
    with _manager(ckpt_dir, read_only=True) as mngr:
        return sorted(mngr.all_steps())


def restore(
    ckpt_dir: str, template: Any, step: int | None = None, saved: frozenset[str] | None = None
) -> tuple[Any, jax.Array, dict[str, Any], int]:
    """Restores checkpoint `step` (default: the latest) into the structure of `template`.

    `saved`: the flat keys the checkpoint holds (as given to `save`); the template's other leaves are kept.

    Returns (state, data_key or None, progress, step). Raises ConfigError, one line naming the path,
    when the checkpoint is missing, incomplete, corrupt or does not match the template.
    """
    available = steps(ckpt_dir)
    if not available:
        raise ConfigError(f"{ckpt_dir}: no complete checkpoint found")
    if step is None:
        step = available[-1]
    if step not in available:
        raise ConfigError(f"{ckpt_dir}: no checkpoint at step {step}; available steps: {', '.join(map(str, available))}")
    whole = _flat(template)
    expected = whole if saved is None else {k: v for k, v in whole.items() if k in saved}
    path = os.path.join(ckpt_dir, str(step))
    try:
        with _manager(ckpt_dir, read_only=True) as mngr:
            meta = mngr.item_metadata(step)
            saved = meta["state"] if meta is not None else None
            if saved is not None:
                keys = set(saved.keys()) - {"['data_key']"}
                if keys != set(expected):
                    missing, extra = sorted(set(expected) - keys), sorted(keys - set(expected))
                    if all("opt_state" in k for k in missing + extra):
                        raise ConfigError(
                            f"{path}: the optimizer state has an older layout (before decay injected the learning "
                            "rate into it); retrain the run with this version, or read it with the decay that wrote it"
                        )
                    raise ConfigError(
                        f"{path}: checkpoint does not match the run's model (missing {missing[:3]}, unexpected {extra[:3]})"
                    )
                for k, v in expected.items():
                    if tuple(saved[k].shape) != v.shape:
                        raise ConfigError(f"{path}: {k} has shape {tuple(saved[k].shape)}, the config's model needs {v.shape}")
            target = dict(expected)
            if saved is None or "['data_key']" in saved:
                target["['data_key']"] = np.zeros((2,), np.uint32)
            out = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore())
            )
    except ConfigError:
        raise
    except Exception as e:  # Orbax/TensorStore errors on damaged files: keep one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        others = [s for s in available if s != step]
        hint = (
            f"delete that folder to resume from step {others[-1]}" if others else "delete the run's folder to retrain it"
        ) + ", or restore the files"
        raise ConfigError(
            f"{path}: unreadable checkpoint, files missing or damaged ({type(e).__name__}: {first[:160]}); {hint}"
        ) from None
    arrays = out["state"]
    restored = [np.asarray(arrays[k]).astype(v.dtype) if k in expected else v for k, v in whole.items()]
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), restored)
    data_key = jax.random.wrap_key_data(np.asarray(arrays["['data_key']"], np.uint32)) if "['data_key']" in arrays else None
    return state, data_key, out["progress"], step


def write_config(run_dir: str, cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Writes `<run_dir>/config.json` (atomically): the RunConfig plus the data shapes the model needs."""
    from decay.config import dumps
    from decay.results import write_atomic

    data = {**cfg.to_json(), "input_shape": list(input_shape), "num_classes": num_classes}
    write_atomic(os.path.join(run_dir, "config.json"), dumps(data))


def read_config(run_dir: str) -> tuple[RunConfig, tuple[int, ...], int]:
    """Reads `<run_dir>/config.json`: (RunConfig, input shape, number of classes); one-line error when bad."""
    path = os.path.join(run_dir, "config.json")
    runs = os.path.join(run_dir, "runs")
    if os.path.isdir(runs) or os.path.isfile(os.path.join(run_dir, "results.jsonl")):
        names = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
        example = f" (e.g. --run_dir={os.path.join(runs, names[0])}; {len(names)} in all)" if names else ""
        raise ConfigError(f"{run_dir} is a sweep folder, not a run folder: pass one of the run folders under {runs}/{example}")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: not a run folder (expected config.json and checkpoints/)")
    try:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "input_shape" not in data and ("base" in data or "seeds" in data):
            # a study's settings (e.g. the seed claims, the phase diagram), not one run's
            raise ConfigError(
                f"{run_dir} holds a study's config.json, not a run's: pass a run folder (config.json and checkpoints/)"
            )
        shape, classes = tuple(data.pop("input_shape")), int(data.pop("num_classes"))
        return RunConfig(**data), shape, classes
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ConfigError(f"{path}: not a valid run config ({type(e).__name__}: {str(e)[:120]})") from None
