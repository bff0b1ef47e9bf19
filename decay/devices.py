"""Devices: how many the host offers, and how the runs of a sweep are spread over them.

A sweep's runs that share one compiled program (seeds, inits) are stacked on a leading run
axis, sharded over a one-axis mesh of every device (`jax.sharding`); each device trains its
share. On a CPU, JAX offers one device for all cores by default; `configure` splits the host
into one device per core before JAX starts, so that runs train side by side on separate cores
(each single-threaded, which at width 128 is also faster per step than one run on two cores).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RUN_AXIS = "runs"


def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(cpu_devices: int | None = None, compilation_cache: str | None = None) -> None:
    """Sets up JAX before its first computation: CPU devices and the persistent compilation cache.

    `cpu_devices` (default: one per core) is ignored where XLA_FLAGS already forces a host
    device count, and has no effect on GPU/TPU hosts, whose devices are the accelerators.
    `compilation_cache`, a folder, keeps compiled programs across processes.
    """
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        try:
            jax.config.update("jax_num_cpu_devices", cpu_devices or host_cores())
        except RuntimeError:  # JAX already computed something in this process: its devices are fixed
            pass
    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_mesh() -> Mesh:
    """A one-axis mesh over every device, for the run axis."""
    return Mesh(np.array(jax.devices()), (RUN_AXIS,))


def shard_runs(tree, mesh: Mesh):
    """Places a pytree whose leaves have a leading run axis with that axis split over the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(RUN_AXIS)))


PER_DEVICE = 8  # most run slots a device holds in one batch (memory: the slots' states live on the device)


def slots_per_device(runs: int, n_devices: int, per_device: int = PER_DEVICE) -> int:
    """Run slots per device for a program's `runs`: as few batches as `per_device` allows, their runs spread evenly.

    Every batch of the program has these slots (one compiled executable); a batch with fewer runs leaves
    slots empty, which costs memory but no compute (`decay.program.Program.group_chunk`).
    """
    batches = -(-runs // (per_device * n_devices))
    return max(1, -(-runs // (batches * n_devices)))


def plan(runs: int, n_devices: int, per_device: int = PER_DEVICE) -> tuple[int, list[int]]:
    """(slots per device, runs of each batch) for a program's `runs` on `n_devices`: full batches, then the rest."""
    slots = slots_per_device(runs, n_devices, per_device)
    size = slots * n_devices
    return slots, [min(size, runs - start) for start in range(0, runs, size)]


def positions(runs: int, n_devices: int, slots: int) -> list[int]:
    """The slot of each of a batch's `runs` on the leading axis (device d holds slots d*slots .. d*slots+slots-1):
    run i on device i % n_devices, so that the devices share the runs evenly."""
    if runs > n_devices * slots:
        raise ValueError(f"{runs} runs do not fit {n_devices} devices x {slots} slots")
    return [(i % n_devices) * slots + i // n_devices for i in range(runs)]


def counts(runs: int, n_devices: int) -> np.ndarray:
    """Runs each device steps in a batch of `runs` placed by `positions`: [n_devices] int32."""
    return np.array([len(range(d, runs, n_devices)) for d in range(n_devices)], np.int32)


def fill(items: list, n_devices: int, slots: int) -> list:
    """A batch's items at their `positions` in `n_devices * slots` slots; empty slots hold the first item (never stepped)."""
    filled = [items[0]] * (n_devices * slots)
    for item, p in zip(items, positions(len(items), n_devices, slots), strict=True):
        filled[p] = item
    return filled


def place(trees: list, mesh: Mesh, slots: int):
    """Stacks a batch's pytrees into `slots` per device (`fill`), on the host, sharded over the mesh; returns
    (stacked, runs per device as a sharded array)."""
    return stack_runs(fill(trees, mesh.size, slots), mesh), shard_runs(counts(len(trees), mesh.size), mesh)


def stack_runs(trees: list, mesh: Mesh):
    """Stacks runs' pytrees on a new leading run axis, on the host (no per-shape device programs), sharded over the mesh."""
    return shard_runs(jax.tree.map(lambda *a: np.stack(a), *trees), mesh)


def replicate(x, mesh: Mesh):
    """A copy of `x` on every device of the mesh (of every process: `x` the same on each)."""
    from decay import distributed

    return jax.device_put(jax.tree.map(distributed.to_global, x), NamedSharding(mesh, PartitionSpec()))
