"""A study's workdir as a shared resource: one writer at a time (`Lock`), and its disk (`estimate`, `check_space`, `usage`).

The lock is `<workdir>/.decay.lock`, held with `fcntl.flock` while a study writes there: the
operating system releases it when the holder exits, however it exits (kill -9 included), so a lock
is never left held by a process that is gone. The file names its holder (process id, host, start
time, command) for the one-line refusal a second study gets; a holder that exits normally empties
it, so a file with a holder that is not locked was left by a killed process: the next study takes it
over and says so. Within one process, studies on the same workdir share the lock. Without `fcntl`
(Windows) there is no lock. On a network filesystem the lock is as good as its `flock`
(NFSv4 implements it; some older mounts do not).
"""

from __future__ import annotations

import atexit
import datetime
import errno
import json
import os
import shutil
import socket
from collections.abc import Iterable

try:
    import fcntl
except ImportError:  # Windows: no lock
    fcntl = None  # type: ignore[assignment]

from decay.errors import ConfigError

LOCK_FILE = ".decay.lock"


class Lock:
    """The workdir's writer lock, held by this process (`acquire`) until `release` or exit."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self.fd: int | None = None
        self.users = 0  # studies of this process that hold it

    def acquire(self, command: str | None = None) -> str | None:
        """Takes the lock; returns a line to show when it took over one left by a killed process, else None.

        Raises ConfigError (one line naming the holder) when another process holds it.
        """
        if self.fd is not None:
            self.users += 1
            return None
        if fcntl is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"--workdir={self.workdir}: cannot create its lock file {self.path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a filesystem without flock (Lustre, ...)
                os.close(fd)
                why = e.strerror
                return f"--workdir={self.workdir}: its filesystem has no file locks ({why}); nothing stops a second sweep here"
            holder = _describe(_read(fd))
            os.close(fd)
            raise ConfigError(
                f"--workdir={self.workdir} is in use by {holder}; wait for it to finish, stop it, or give another --workdir"
            ) from None
        note = None
        old = _read(fd)
        if old:
            note = f"--workdir={self.workdir}: took over the lock of {_describe(old)}, which is no longer running"
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as e:  # a full disk or quota: give the lock back, one line
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            from decay.results import write_error

            raise write_error(self.path, e) from None
        self.fd, self.users = fd, 1
        return note

    def release(self) -> None:
        """Gives the lock up (the last study of this process that holds it): empties the file, unlocks it."""
        if self.fd is None:
            return
        self.users -= 1
        if self.users > 0:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> dict | None:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "started": "?"}


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    out = f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')}"
    command = holder.get("command")
    return out + (f": {command})" if command else ")")


_HELD: dict[str, Lock] = {}  # realpath of a workdir -> this process's lock of it


def lock(workdir: str, command: str | None = None) -> tuple[Lock, str | None]:
    """This process's lock of `workdir`, acquired (shared by the studies of this process); (lock, takeover line or None)."""
    key = os.path.realpath(workdir)
    held = _HELD.setdefault(key, Lock(workdir))
    return held, held.acquire(command)


@atexit.register
def _release_all() -> None:  # a normal exit (sys.exit included) leaves no holder named in the file
    for held in _HELD.values():
        while held.fd is not None:
            held.release()


# -- disk ----------------------------------------------------------------------------------------

# Measured on this project's runs (docs/reliability.md): what each part costs on disk.
CHECKPOINT_OVERHEAD = 10_000  # bytes of Orbax metadata per checkpoint
EVENT_BYTES = 25.0  # bytes per scalar value in a TensorBoard event (tag, value, framing)
EVENT_HISTOGRAM = 1_500.0  # bytes per layer and logged step of a gradient histogram (edges and counts)
ROW_BYTES, ROW_VALUE, ROW_LOGGED = 1_000.0, 50.0, 30.0  # a results row: fixed, per per-layer value, per logged step


def free_bytes(path: str) -> int:
    """Free bytes on the filesystem of `path` (of its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def usage(path: str) -> int:
    """Bytes of the files under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def human(n: float) -> str:
    """Bytes for a person: 812 kB, 79.1 MB, 1.2 GB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


_DISK_CHECK = [True]  # set by `configure` (an entry point's --disk_check)


def configure(disk_check: bool) -> None:
    """Whether studies refuse to start when their estimated writes exceed the free space (--disk_check)."""
    _DISK_CHECK[0] = disk_check


def check_space(workdir: str, needed: int) -> None:
    """Raises ConfigError (one line) when `needed` bytes exceed the free space of `workdir`'s disk (unless configured off)."""
    free = free_bytes(workdir)
    if _DISK_CHECK[0] and needed > free:
        raise ConfigError(
            f"--workdir={workdir}: this study will write about {human(needed)} but its disk has {human(free)} free;"
            " free space, keep fewer checkpoints (--checkpoints=ends or none where the command has it), or pass --nodisk_check"
            " to start anyway"
        )


def checkpoints_kept(steps: int, every: int, keep: int, policy: str) -> int:
    """Checkpoints a run of `steps` leaves on disk under `policy` (`decay.config.CHECKPOINT_POLICIES`); the most it holds."""
    if policy == "none":
        return 0
    if steps == 0:
        return 1
    scheduled = len(range(every, steps, every)) if (every and policy == "every") else 0
    return 1 + min(scheduled + 1, keep + 1 if policy == "every" else 1)


def _values_per_step(cfg, shape: tuple[int, ...]) -> tuple[int, int]:
    """(scalars, histograms) of one logged step's TensorBoard event (`decay.tensorboard_writer`)."""
    from decay import families, instruments

    fam = families.of(cfg)
    points, kernels = fam.points(cfg, shape), fam.kernels(cfg)
    per_point, per_kernel = 2, 3  # signal_norm, act_rms; grad_norm, update_ratio, weight_norm
    if instruments.tier_at_least(cfg.instruments, "standard"):
        per_point, per_kernel = per_point + 3, per_kernel + 1  # q, c, dead_fraction; distance_from_init
    if instruments.tier_at_least(cfg.instruments, "full"):
        per_kernel += 3  # per_sample_grad_norm, grad_snr, b_simple
    scalars = 1 + points * per_point + kernels * (per_kernel + (3 if cfg.histograms else 0))
    return scalars, kernels if cfg.histograms else 0


_STATE_BYTES: dict = {}  # (base key, norm, input shape, classes) -> state_bytes: the activation changes no shape


def state_bytes(cfg, shape: tuple[int, ...], classes: int) -> tuple[int, int]:
    """(every array of a run's state, all but the optimizer's) in bytes, from its structure alone (nothing allocated)."""
    import jax

    from decay import program

    key = (program.base_key(cfg), cfg.norm, tuple(shape), classes)
    if key not in _STATE_BYTES:
        template = program._plain_template(cfg, shape, classes)
        whole = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(template))
        _STATE_BYTES[key] = whole, whole - sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(template.opt_state))
    return _STATE_BYTES[key]


def memory_bytes() -> int:
    """Memory of one device: an accelerator's limit, or the host's RAM for a CPU device."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return 2**62


def check_memory(cfgs: Iterable, shapes: dict[int, tuple[tuple[int, ...], int]]) -> None:
    """Raises ConfigError (one line) when one run's state, twice over (it and its gradients), exceeds a device's memory."""
    biggest, worst = 0, None
    for c in cfgs:
        whole = state_bytes(c, *shapes[c.seq_len])[0]
        if whole > biggest:
            biggest, worst = whole, c
    memory = memory_bytes()
    if worst is not None and 2 * biggest > memory:
        raise ConfigError(
            f"--width={worst.width} --depth={worst.depth}: one run's parameters and optimizer state take {human(biggest)};"
            f" training needs at least twice that, more than a device's {human(memory)}; give a smaller --width or --depths"
        )


def estimate(cfgs: Iterable, shapes: dict[int, tuple[tuple[int, ...], int]], run_folders: bool) -> dict[str, int]:
    """Bytes the runs `cfgs` will write: {"checkpoints", "TensorBoard", "rows"} (the first two only with run folders).

    `shapes`: a run's (input shape, classes) by its seq_len. Checkpoints: the arrays of the run's plain state
    (parameters, optimizer state, batch statistics, the step-0 kernels of `distance`) times the checkpoints its
    policy keeps (`checkpoints_kept`), plus Orbax's metadata; events: the scalars of every logged step
    (`_values_per_step`) and the evaluations; rows: the per-layer lists and the loss history.
    """
    out = {"checkpoints": 0.0, "TensorBoard": 0.0, "rows": 0.0}
    for c in cfgs:
        shape, classes = shapes[c.seq_len]
        logged = c.steps // c.log_every + 2
        scalars, hists = _values_per_step(c, shape)
        out["rows"] += ROW_BYTES + ROW_VALUE * scalars + ROW_LOGGED * logged
        if not run_folders:
            continue
        kept = checkpoints_kept(c.steps, c.checkpoint_every, c.keep_checkpoints, c.checkpoints)
        whole, first = state_bytes(c, shape, classes)  # step 0's optimizer state is zeros, which the files compress away
        out["checkpoints"] += (first + max(kept - 1, 0) * whole + kept * CHECKPOINT_OVERHEAD) if kept else 0
        evals = c.steps // c.eval_every + 2
        out["TensorBoard"] += logged * (scalars * EVENT_BYTES + hists * EVENT_HISTOGRAM) + evals * 6 * EVENT_BYTES
    return {k: int(v) for k, v in out.items()}
