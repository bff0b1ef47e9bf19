"""Optimizers by name, from optax, with optional global-norm gradient clipping."""

from __future__ import annotations

from collections.abc import Callable

import optax

from decay.registry import Registry

OPTIMIZERS: Registry[Callable[[float], optax.GradientTransformation]] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda lr: optax.sgd(lr))
OPTIMIZERS.add("momentum", lambda lr: optax.sgd(lr, momentum=0.9))  # heavy-ball, beta 0.9
OPTIMIZERS.add("adam", lambda lr: optax.adam(lr))
OPTIMIZERS.add("adamw", lambda lr: optax.adamw(lr, weight_decay=1e-4))


def build(name: str, learning_rate: float, clip_norm: float | None = None) -> optax.GradientTransformation:
    """The named optimizer at `learning_rate`, after clipping to `clip_norm` when it is set."""
    tx = OPTIMIZERS.get(name)(learning_rate)
    if clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return tx
