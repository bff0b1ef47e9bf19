"""decay: measure and explain vanishing and exploding gradients in deep networks (JAX/Flax).

The names below load on first use, so that `import decay.data` (say) does not pull in JAX,
Orbax and tensorboardX.
"""

import importlib

_LAZY = {
    "analysis": ("decay.analysis", None),
    "LoadedRun": ("decay.analysis", "LoadedRun"),
    "load_run": ("decay.analysis", "load_run"),
    "ConfigError": ("decay.errors", "ConfigError"),
    "RunConfig": ("decay.config", "RunConfig"),
    "SweepConfig": ("decay.config", "SweepConfig"),
    "run_sweep": ("decay.studies.depth_sweep", "run_sweep"),
    "run_time_sweep": ("decay.studies.time_sweep", "run_time_sweep"),
    "TimeSweepConfig": ("decay.studies.time_sweep", "TimeSweepConfig"),
    "gradients": ("decay.step", "gradients"),
    "train_run": ("decay.loop", "train_run"),
    "train_runs": ("decay.loop", "train_runs"),
    "FIELDS": ("decay.row", "FIELDS"),
    "Family": ("decay.family", "Family"),
    "Runner": ("decay.runner", "Runner"),
    "doctor": ("decay.studies.doctor", "doctor"),
    "DoctorConfig": ("decay.config", "DoctorConfig"),
    "watch": ("decay.watcher", "watch"),
    "Watch": ("decay.watcher", "Watch"),
    "WatchLog": ("decay.watchlog", "WatchLog"),
    "diagnose": ("decay.watchlog", "diagnose"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'decay' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)
