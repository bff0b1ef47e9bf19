"""JAX's multi-controller runtime (the only module that calls `jax.distributed`): one study over several processes.

Every process runs the same command with its own `--process_id` (`experiments._cli`): the same runs in
the same order, the run mesh over every process's devices (`decay.devices.run_mesh`), each process
stepping the runs on its own devices. Each chunk's per-layer values are gathered to every process
(`gather`), so every process keeps the same host records and takes the same decisions (divergence,
chunk lengths, interrupts: `agree_max`); exactly one process (`is_writer`: process 0) writes rows,
reports, configs and TensorBoard events; every process takes part in each checkpoint's Orbax save
(Orbax's multi-process protocol: barriers, one commit), whose arrays, gathered to every process, process 0
writes. (Orbax 0.12.8 writes a jax.Array only where every process holds a shard of it, and a run lives on
one device, so a run's arrays are saved as host arrays.) The workdir must be on a filesystem every
process sees. On a CPU the processes' collectives go over gloo (TCP).

With one process (the default) every function here is a no-op or the plain single-process path.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: int = 120) -> None:
    """Joins a multi-process job before JAX's first computation; nothing when `num_processes` is None or 1.

    `coordinator` is `host:port` of process 0 (any free port); every process gives the same one.
    """
    if not num_processes or num_processes == 1:
        return
    # CPU arrays' collectives over TCP (the default has none across processes); accelerators keep their own (NCCL, ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout_s)


def joined() -> bool:
    """Whether this process belongs to a multi-process job (`initialize` ran), known without starting JAX's backend."""
    try:
        from jax._src.distributed import global_state

        return global_state.client is not None
    except (ImportError, AttributeError):
        return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the study's files (rows, configs, reports, TensorBoard): process 0 alone.

    Known without starting JAX's backend, so that writing a file never starts it.
    """
    try:
        from jax._src.distributed import global_state

        return global_state.client is None or global_state.process_id == 0
    except (ImportError, AttributeError):  # another JAX: ask it
        return jax.process_index() == 0


def agree_max(value: int) -> int:
    """The largest of every process's `value` (each process must call it at the same point); `value` with one process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.array(value, np.int32))))


def writer_first(fn, what: str) -> None:
    """Runs `fn` on process 0 alone; if it raises, every process raises (process 0 its error, the others a ConfigError
    naming `what`), so that none waits in a collective for a process that left."""
    from decay.errors import ConfigError

    failed = None
    if is_writer():
        try:
            fn()
        except BaseException as e:  # whatever it is, the others must not wait for process 0 for ever
            failed = e
    if agree_max(int(failed is not None)):
        raise failed or ConfigError(f"{what}: process 0 stopped (its error line says why)")


def gather(tree: Any) -> Any:
    """A pytree of (possibly sharded over processes) arrays as NumPy arrays, whole, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def to_global(x: Any) -> Any:
    """A host value to place on a mesh over every process: NumPy (a device array of this process alone cannot be)."""
    if jax.process_count() == 1 or not isinstance(x, jax.Array):
        return x
    return np.asarray(x)
