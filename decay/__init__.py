"""decay: measure and explain vanishing and exploding gradients in deep networks (JAX/Flax)."""

from decay import analysis
from decay.analysis import LoadedRun, load_run
from decay.config import ConfigError, RunConfig, SweepConfig
from decay.sweep import run_sweep
from decay.train import gradients, train_run

__all__ = [
    "ConfigError",
    "LoadedRun",
    "RunConfig",
    "SweepConfig",
    "analysis",
    "gradients",
    "load_run",
    "run_sweep",
    "train_run",
]
