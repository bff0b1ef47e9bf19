"""decay: measure and explain vanishing and exploding gradients in deep networks (JAX/Flax)."""

from decay.config import ConfigError, RunConfig, SweepConfig
from decay.sweep import run_sweep
from decay.train import gradients, train_run

__all__ = ["ConfigError", "RunConfig", "SweepConfig", "gradients", "run_sweep", "train_run"]
