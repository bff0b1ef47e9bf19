"""Optimizers by name, from optax: the learning rate a run-time value, optional L2 weight decay and gradient clipping.

The learning rate is injected (`optax.inject_hyperparams`): it lives in the optimizer state,
not in the compiled code, so every learning rate of a grid shares one compiled program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

from decay.registry import Registry

# name -> factory(learning_rate, adam_eps)
OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")
OPTIMIZERS.add("sgd", lambda lr, eps: optax.sgd(lr))
OPTIMIZERS.add("momentum", lambda lr, eps: optax.sgd(lr, momentum=0.9))  # heavy-ball, beta 0.9
OPTIMIZERS.add("adam", lambda lr, eps: optax.adam(lr, eps=eps))
OPTIMIZERS.add("adamw", lambda lr, eps: optax.adamw(lr, eps=eps, weight_decay=1e-4))


def build(
    name: str,
    learning_rate: float,
    clip_norm: float | None = None,
    adam_eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """The named optimizer at `learning_rate` (a hyperparameter in its state), after L2 weight decay
    (`weight_decay` * params added to the gradient) and clipping to the global norm `clip_norm`, when set;
    with `warmup_steps`, every update is scaled by min(1, (step + 1) / warmup_steps) (linear warm-up)."""
    factory = OPTIMIZERS.get(name)

    def make(learning_rate):
        tx = factory(learning_rate, adam_eps)
        if weight_decay:
            tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
        if clip_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
        if warmup_steps:
            tx = optax.chain(tx, optax.scale_by_schedule(lambda n: jnp.minimum(1.0, (n + 1.0) / warmup_steps)))
        return tx

    return optax.inject_hyperparams(make)(learning_rate=learning_rate)


def of(cfg) -> optax.GradientTransformation:
    """The optimizer of a RunConfig."""
    return build(cfg.optimizer, cfg.learning_rate, cfg.clip_norm, cfg.adam_eps, cfg.weight_decay, cfg.warmup_steps)
