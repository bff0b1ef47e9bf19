"""What a model is trained to do: the loss and the score of each task, per example.

A dataset names its task (`decay.data.TASK_OF`); a family lists the tasks its head can serve
(`decay.family.Family.tasks`). Each task maps the model's outputs and the targets of a batch
to per-example losses (their mean is the training loss) and per-example scores (their mean is
the reported accuracy):
  classification  outputs [B, classes], integer labels [B]: cross-entropy; score 1 if the argmax is right
  regression      outputs [B, 1], float targets [B]: squared error; score 1 if |error| < REGRESSION_HIT
  per_position    outputs [B, T, classes], labels [B, T]: cross-entropy averaged over the T positions;
                  score the fraction of positions whose argmax is right
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from decay.registry import Registry

REGRESSION_HIT = 0.1  # a regression example counts as right within this absolute error


class Task(NamedTuple):
    """Per-example loss and score of one task."""

    name: str
    loss: Callable[[jax.Array, jax.Array], jax.Array]  # (outputs, targets) -> [B]
    score: Callable[[jax.Array, jax.Array], jax.Array]  # (outputs, targets) -> [B] in [0, 1]
    outputs: Callable[[int], int]  # classes of the dataset -> the head's width


def _ce(out, y):
    return optax.softmax_cross_entropy_with_integer_labels(out, y)


def _hit(out, y):
    return (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)


TASKS: Registry[Task] = Registry("task")
TASKS.add("classification", Task("classification", _ce, _hit, lambda classes: classes))
TASKS.add(
    "regression",
    Task(
        "regression",
        lambda out, y: jnp.square(out[..., 0] - y),
        lambda out, y: (jnp.abs(out[..., 0] - y) < REGRESSION_HIT).astype(jnp.float32),
        lambda classes: 1,
    ),
)
TASKS.add(
    "per_position",
    Task(
        "per_position", lambda out, y: jnp.mean(_ce(out, y), axis=-1), lambda out, y: jnp.mean(_hit(out, y), axis=-1), lambda c: c
    ),
)


def mean_loss(task: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """The batch's training loss under `task`."""
    return jnp.mean(TASKS.get(task).loss(outputs, targets))
