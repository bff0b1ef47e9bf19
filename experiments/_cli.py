"""What every entry point shares: one-line errors and absl flag parsing without usage dumps."""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from absl import app, flags, logging
from tqdm import tqdm

from decay.config import RunConfig  # light: imports no JAX

_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "JAX devices on a CPU host: runs of a sweep train side by side, one per device; default one per core."
)
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.path.join(os.path.expanduser("~"), ".cache", "decay", "jax"),
    "Folder of JAX's persistent compilation cache (compiled programs reused by later runs); empty: off.",
)
_DISK_CHECK = flags.DEFINE_bool(
    "disk_check",
    True,
    "Refuse to start a study whose estimated writes (checkpoints, events, rows) exceed the workdir disk's free space;"
    " --nodisk_check starts anyway.",
)
# JAX's multi-controller runtime: one process per host (or per GPU), every one given the same command and its own id.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "host:port of process 0 in a multi-process job (default $JAX_COORDINATOR_ADDRESS); every process gives the same.",
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes",
    int(os.environ["JAX_NUM_PROCESSES"]) if os.environ.get("JAX_NUM_PROCESSES", "").isdigit() else None,
    "Processes of a multi-process job (default $JAX_NUM_PROCESSES; none: one process).",
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id",
    int(os.environ["JAX_PROCESS_ID"]) if os.environ.get("JAX_PROCESS_ID", "").isdigit() else None,
    "This process's index, 0..num_processes-1 (default $JAX_PROCESS_ID); process 0 writes the study's files.",
)
_SHARED = ("cpu_devices", "compilation_cache", "disk_check", "coordinator_address", "num_processes", "process_id")


def fail(message: str) -> NoReturn:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _flag_error(text: str) -> str:
    """absl's parse error as one line that names the flag."""
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    unknown = re.match(r"Unknown command line flag '([^']*)'", text)
    if unknown:
        return f"--{unknown.group(1)} is not a flag of this command (see --helpshort)"
    if "flagfile" in text.lower() and "--" not in text:
        return f"--flagfile: {text.replace('ERROR::', '').strip()}"
    return text if "--" in text else f"a flag: {text}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag value is one line on stderr; JAX's info logs stay quiet."""
    try:
        rest = flags.FLAGS(argv)
    except (flags.Error, ValueError) as e:  # absl raises ValueError for some values (e.g. --noquiet=1)
        fail(_flag_error(str(e)))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'" on a CPU machine
    if _CPU_DEVICES.value is not None and _CPU_DEVICES.value < 1:
        fail(f"--cpu_devices={_CPU_DEVICES.value}; give an integer >= 1")
    cache = _COMPILATION_CACHE.value
    if cache:
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as e:
            fail(f"--compilation_cache={cache} is not a usable folder ({e.strerror}); give a writable folder, or empty for none")
    n, pid, where = _NUM_PROCESSES.value, _PROCESS_ID.value, _COORDINATOR.value
    if n is not None and n > 1:
        if not where or ":" not in where:
            fail(f"--num_processes={n} needs --coordinator_address=host:port (process 0's host and a free port)")
        if pid is None or not 0 <= pid < n:
            fail(f"--process_id={pid}; give this process's index, 0..{n - 1}")
    elif n is not None and n < 1:
        fail(f"--num_processes={n}; give an integer >= 1")
    from decay import devices, distributed, workdir  # imports JAX; it must be configured before its first computation

    devices.configure(_CPU_DEVICES.value, _COMPILATION_CACHE.value or None)
    workdir.configure(_DISK_CHECK.value)
    try:
        distributed.initialize(where, n, pid)
    except Exception as e:  # the coordinator unreachable, a timeout: one line
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        fail(f"--coordinator_address={where}: could not join the {n}-process job as process {pid} ({why})")
    return rest


def guard(main):
    """`main` whose stopped study, or file that cannot be written, ends in one line and an exit status:
    2 bad flags or files (`fail`), 1 a write failed (`decay.errors.WriteError`), 130 / 143 stopped by SIGINT /
    SIGTERM (`decay.errors.Interrupted`: finished rows and checkpoints kept; rerun to resume). In a multi-process
    job an error leaves at once (os._exit): JAX's shutdown would wait for the other processes, which wait for this one.
    """

    def guarded(argv: list[str]) -> None:
        from decay import distributed
        from decay.errors import Interrupted, WriteError

        code, line = None, None
        try:
            main(argv)
        except Interrupted as e:
            code, line = e.exit_code, f"\n{e}"
        except KeyboardInterrupt:  # before or after training: nothing half-written
            code, line = 130, "\ninterrupted before training started or after it ended; rerun the same command"
        except WriteError as e:
            code, line = 1, f"error: {e}"
        except SystemExit as e:
            if not distributed.joined():
                raise
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code is None:
            return
        if line is not None:
            print(line, file=sys.stderr, flush=True)
        if distributed.joined() and code != 0:
            sys.stdout.flush()
            os._exit(code)
        sys.exit(code)

    return guarded


def run(main) -> None:
    """`absl.app.run(main)` with decay's flag parsing and `guard`."""
    app.run(guard(main), flags_parser=parse_flags)


_DEFINE = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer, "float": flags.DEFINE_float, "bool": flags.DEFINE_bool}


def define_run_flags(
    only: Sequence[str] | None = None, skip: Sequence[str] = (), defaults: dict[str, Any] | None = None
) -> dict[str, flags.FlagHolder]:
    """absl flags for RunConfig's fields (all, or `only`, less `skip`): names, types, defaults and help from the dataclass.

    `defaults` overrides a field's default (a study's own, e.g. None for "chosen by --quick").
    Returns the flag holders by field name; `run_config` turns them into a RunConfig.
    """
    caller = sys._getframe(1).f_globals.get("__name__", "")
    module = sys.argv[0] if caller == "__main__" else caller  # so that --helpshort lists them with the entry point's own
    holders = {}
    for f in dataclasses.fields(RunConfig):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        kind = str(f.type).replace(" | None", "")
        default = (defaults or {}).get(f.name, f.default)
        holders[f.name] = _DEFINE[kind](f.name, default, f.metadata["help"], module_name=module)
    for name in _SHARED:  # shared here, listed by the entry point's --help too
        flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])
    return holders


def run_config(holders: dict[str, flags.FlagHolder], **overrides: Any) -> RunConfig:
    """The RunConfig of the parsed flags in `holders` (flags left at None take the field's default), with `overrides`."""
    values = {name: h.value for name, h in holders.items()}
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in values.items() if v is not None or fields[k].default is None}
    return dataclasses.replace(RunConfig(), **{**values, **overrides})


def check_benchmark_config(cfg, **counts: int) -> None:
    """One-line exit for a benchmark's bad flags: the run config as a sweep would check it, and counts >= 1."""
    from decay.errors import ConfigError
    from decay.layers import ACTIVATIONS, NORMS
    from decay.validation import validate_run

    for name, value in {"depth": cfg.depth, **counts}.items():
        if value < 1:
            fail(f"--{name}={value}; must be an integer >= 1")
    for flag, value, registry in (("activation", cfg.activation, ACTIVATIONS), ("norm", cfg.norm, NORMS)):
        if value not in registry:
            fail(f"--{flag}={value!r} is unknown; allowed: {', '.join(registry.names())}")
    try:
        validate_run(cfg)
    except ConfigError as e:
        fail(str(e))


def parse_list(flag: str, values: list[str], kind: type, what: str) -> list:
    """The comma-list flag's values as `kind`; one line naming the flag for a value that is not one."""
    out = []
    for v in values:
        try:
            out.append(kind(v))
        except ValueError:
            fail(f"--{flag} contains {v!r}; give a comma list of {what}")
    return out


def fmt_time(seconds: float | None) -> str:
    """m:ss, or ? when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Progress of a sweep: live bars on a terminal, one line per run otherwise (CI, pipes)."""

    def __init__(self, total: int, quiet: bool):
        from decay import distributed

        self.quiet = quiet or not distributed.is_writer()  # one process of a multi-process job speaks
        self.live = not quiet and sys.stderr.isatty()
        self.runs = None
        self.steps = None
        if self.live:
            fmt = "{l_bar}{bar}| {n_fmt}/{total_fmt} runs [{elapsed}{postfix}]"
            self.runs = tqdm(total=total, bar_format=fmt, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.live:
            tqdm.write(text)
        else:
            print(text, flush=True)

    def on_event(self, e) -> None:
        if self.quiet:
            return
        if e.kind == "note":
            self.line(e.name)
        elif e.kind == "start" and self.live:
            self.runs.set_description(e.name)
            self.runs.set_postfix_str(f"left ~{fmt_time(e.eta_s)}")
        elif e.kind == "skip":
            self.line(f"[{e.index}/{e.total}] {e.name}: already in results.jsonl, skipped")
            if self.live:
                self.runs.update(1)
        elif e.kind == "done":
            if self.steps is not None:
                self.steps.close()
                self.steps = None
            r = e.row
            if r.get("task") == "regression":
                score = "test MSE " + ("-" if r["test_loss"] is None else f"{r['test_loss']:.4f}")
            else:
                score = "test acc " + ("-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.1f}%")
            chi = "-" if r["chi"] is None else f"{r['chi']:.3f}"
            div = f" DIVERGED at step {r['diverged_at_step']}" if r["diverged"] else ""
            self.line(
                f"[{e.index}/{e.total}] {e.name}: chi {chi} ({r['verdict']}), {score}{div}"
                f" | {r['wall_time_s']:.1f}s, elapsed {fmt_time(e.elapsed_s)}, left ~{fmt_time(e.eta_s)}"
            )
            if self.live:
                self.runs.set_postfix_str(f"left ~{fmt_time(e.eta_s)}")
                self.runs.update(1)

    def on_step(self, p) -> None:
        if not self.live:
            return
        if self.steps is None:
            self.steps = tqdm(total=p.total, desc="  steps", leave=False, dynamic_ncols=True)
        self.steps.update(p.step - self.steps.n)
        self.steps.set_postfix_str(f"loss {p.loss:.3f}")

    def close(self) -> None:
        if self.steps is not None:
            self.steps.close()
        if self.runs is not None:
            self.runs.close()
