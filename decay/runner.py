"""The one resumable runner that every study uses: a workdir, data loaded once, runs grouped by program, rows appended atomically.

A study (the depth sweep, the phase diagram, the seed's claims, ...) describes its runs as
`RunConfig`s and hands them to a `Runner`. The runner
  - opens the workdir: writes `config.json` of the study's settings, or, when one is there,
    refuses other settings with one line naming the flags that differ;
  - loads the dataset once and uploads it to the devices once;
  - skips runs whose rows are already in the rows file, and trains the others in groups that
    share one compiled program (seeds, inits, learning rates and, for the mlp and cnn, activations
    and norms), in batches that fill every device (`decay.devices.plan`), side by side
    (`decay.loop.train_runs`), each run's numbers the same as alone;
  - appends each row as its group finishes (the file is replaced atomically), so an
    interrupted study resumes where it stopped; with `run_folders`, runs also keep TensorBoard
    events and Orbax checkpoints and resume mid-run.
It holds the workdir's lock (`decay.workdir.Lock`) from opening until `close` (or exit), so a second
study into the same workdir is refused; before training it estimates what the runs will write and
refuses when the disk has less free (`decay.workdir.check_space`); SIGINT and SIGTERM stop it at
the next chunk boundary (`decay.interrupts`); rows of another schema, a damaged rows or config file,
are one-line errors. In a multi-process job (`decay.distributed`) process 0 alone locks and writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from decay import data as data_lib
from decay import devices, distributed, interrupts, loop, program, results
from decay import workdir as workdir_lib
from decay.config import RunConfig, dumps
from decay.errors import ConfigError, Interrupted
from decay.row import SCHEMA, Row


class Event(NamedTuple):
    """Progress of a study, for the caller to show: a run started ('start'), was skipped ('skip') or finished ('done'),
    or a line for the user ('note': the disk estimate, what was written, a lock taken over; the text in `name`)."""

    kind: str
    index: int  # 1-based run index
    total: int
    name: str
    elapsed_s: float  # since the runner started
    eta_s: float | None  # estimated time left
    row: Row | None
    config: RunConfig | None = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def settings_diff(old: dict[str, Any], new: dict[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """`--flag (old -> new)` for every setting that differs; nested settings are named by their last part."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b), key=lambda k: (k.count("."), k)):
        if key not in ignore and a.get(key) != b.get(key):
            diffs.append(f"--{key.rsplit('.', 1)[-1]} ({a.get(key)} -> {b.get(key)})")
    return diffs


# Settings a study may change when it is resumed: they change which files are kept, never a number.
RESUMABLE = ("base.checkpoints", "checkpoints")


def _cost(cfg: RunConfig, compiles: bool) -> float:
    # Relative cost of a run for the ETA, in units of one layer x 300 steps (~0.07 s on a
    # 2-core CPU at width 128): the first run of a program also pays for compilation (~25 units).
    return (25.0 if compiles else 1.0) + cfg.depth * max(cfg.steps, 1) / 300.0


class Runner:
    """A study's workdir and dataset; `run` trains what is missing and returns rows."""

    def __init__(
        self,
        workdir: str,
        settings: dict[str, Any],
        base: RunConfig,
        rows_file: str = "results.jsonl",
        key: Callable[[RunConfig], str] = lambda cfg: cfg.name,
        row_key: Callable[[Row], str] = lambda row: row["name"],
        run_folders: bool = False,
        command: str | None = None,
        ignore: Sequence[str] = (),
    ):
        """Opens `workdir` for a study of `settings` (JSON) whose runs share `base`'s dataset.

        `key` names a run and `row_key` the run of a stored row (equal for the same run);
        `ignore` lists flattened settings (e.g. "base.depth") not compared on resume.
        Raises ConfigError when the workdir holds a study with other settings.
        """
        self.workdir, self.key, self.run_folders = workdir, key, run_folders
        self.dataset = data_lib.load_for(base)
        n_train = self.dataset.x_train.shape[0]
        if base.batch_size > n_train:
            raise ConfigError(
                f"--batch_size={base.batch_size} exceeds the {n_train} training examples of --dataset={base.dataset}"
            )
        self.notes: list[str] = []  # lines for the user, shown by the next `run` as 'note' events
        self._lock: workdir_lib.Lock | None = None
        self.path = os.path.join(workdir, rows_file)
        try:  # process 0 of a multi-process job opens the workdir; the others read it
            distributed.writer_first(lambda: self._open(settings, command, ignore), f"--workdir={workdir}")
            self.rows: dict[str, Row] = {row_key(r): r for r in results.read_jsonl(self.path, schema=SCHEMA)}
        except KeyError as e:
            self.close()
            raise ConfigError(f"{self.path}: a row lacks {e}; delete that line to retrain its run, or restore the file") from None
        except BaseException:
            self.close()
            raise
        self.device_data = loop.upload(self.dataset)
        self._datasets = {base.seq_len: (self.dataset, self.device_data)}  # seq_len -> (dataset, its device arrays)
        self.t0 = time.perf_counter()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Releases the workdir's lock (also released when the process exits, however it exits)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _open(self, settings: dict[str, Any], command: str | None, ignore: Sequence[str]) -> None:
        workdir = self.workdir
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as e:
            shown = workdir.replace("\n", "\\n")  # one line, whatever the path holds
            raise ConfigError(f"--workdir={shown} cannot be created: {e.strerror}") from None
        except RecursionError:
            raise ConfigError(f"--workdir has {workdir.count(os.sep)} folder levels; give a shorter path") from None
        self._lock, note = workdir_lib.lock(workdir, command)
        if note:
            self.notes.append(note)
        config_path = os.path.join(workdir, "config.json")
        settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
        if os.path.exists(config_path):
            self._check_config(config_path, settings, ignore)
            return
        text = dumps({**settings, "schema": SCHEMA, **({"command": command} if command is not None else {})})
        results.write_atomic(config_path, text)

    def _check_config(self, config_path: str, settings: dict[str, Any], ignore: Sequence[str]) -> None:
        """Refuses a workdir whose config.json is damaged, of another schema, or of a study with other settings."""
        stored = results.read_json(config_path)
        if not isinstance(stored, dict):
            raise ConfigError(f"{config_path} is not a study's settings (a JSON {type(stored).__name__}); give a new --workdir")
        found = stored.get("schema", 0)
        if found != SCHEMA:
            older = "an older" if isinstance(found, int) and found < SCHEMA else "another"
            raise ConfigError(
                f"{config_path} is of schema {found!r} (written by {older} decay; this one writes schema {SCHEMA}):"
                " finish that study with the decay that wrote it, or give a new --workdir"
            )
        old = {k: v for k, v in stored.items() if k not in ("command", "schema")}
        ignore = (*ignore, *RESUMABLE)
        missing = sorted(set(_flatten(settings)) - set(_flatten(old)) - set(ignore))
        if missing:
            raise ConfigError(
                f"{config_path} lacks the settings {', '.join(m.rsplit('.', 1)[-1] for m in missing[:5])}: damaged or edited"
                " by hand; restore it, or give a new --workdir"
            )
        diffs = settings_diff(old, settings, ignore)
        if diffs:
            raise ConfigError(f"--workdir={self.workdir} holds a study with other flags: {', '.join(diffs)}; use a new --workdir")

    def data_for(self, cfg: RunConfig) -> tuple[data_lib.Dataset, tuple]:
        """The dataset of `cfg` and its device arrays: the study's, or for another sequence length its own (loaded once).

        A study's runs share the base's dataset settings; only a sequence task's length may vary (a time sweep).
        """
        if cfg.seq_len not in self._datasets:
            ds = data_lib.load_for(cfg)
            self._datasets[cfg.seq_len] = (ds, loop.upload(ds))
        return self._datasets[cfg.seq_len]

    def run(
        self,
        cfgs: Sequence[RunConfig],
        on_event: Callable[[Event], None] | None = None,
        on_progress: Callable[[loop.RunProgress], None] | None = None,
        transform: Callable[[RunConfig, Row], Row] | None = None,
    ) -> list[Row]:
        """Rows of `cfgs`, in order: stored ones as they are, the others trained now and appended.

        `transform(cfg, row)` may add or drop keys before a row is stored.
        """
        with interrupts.graceful():  # from here on SIGINT/SIGTERM stop at the next chunk boundary, files kept
            return self._run(cfgs, on_event, on_progress, transform)

    def _run(self, cfgs, on_event, on_progress, transform) -> list[Row]:
        emit = on_event or (lambda e: None)
        total = len(cfgs)
        index = {self.key(c): i for i, c in enumerate(cfgs, 1)}
        todo = list({self.key(c): c for c in cfgs if self.key(c) not in self.rows}.values())
        # Runs that share a compiled program train together, groups in the order of their first run. The
        # activations and norms a shared program serves are the study's (every run given, done or not).
        choices = program.study_choices(cfgs)
        groups: dict[Any, list[RunConfig]] = {}
        for c in todo:
            groups.setdefault(program.program_key(c, choices[program.base_key(c)]), []).append(c)
        cost = {self.key(c): _cost(c, i == 0) for group in groups.values() for i, c in enumerate(group)}
        total_cost, done_cost = sum(cost.values()), 0.0

        def eta() -> tuple[float, float | None]:
            elapsed = time.perf_counter() - self.t0
            return elapsed, (elapsed / done_cost * (total_cost - done_cost) if done_cost else None)

        def note(text: str) -> None:
            emit(Event("note", 0, total, text, *eta(), None))

        for text in self.notes:
            note(text)
        self.notes = []
        before = workdir_lib.usage(self.workdir) if todo else 0
        if todo:
            note(self._check_disk(todo))
        for c in cfgs:
            if self.key(c) in self.rows:
                emit(Event("skip", index[self.key(c)], total, self.key(c), *eta(), None, c))
        n_devices = devices.run_mesh().size
        for group in groups.values():
            # A program's runs in batches that fill every device (`devices.plan`), one executable for all of them.
            slots = devices.slots_per_device(len(group), n_devices)
            for start in range(0, len(group), slots * n_devices):
                batch = group[start : start + slots * n_devices]
                first = min(index[self.key(c)] for c in batch)
                for c in batch:
                    emit(Event("start", index[self.key(c)], total, self.key(c), *eta(), None, c))
                try:
                    rows = self._train(batch, on_progress, slots, choices[program.base_key(batch[0])])
                except Interrupted as e:
                    more = f" (and {len(batch) - 1} more trained alongside)" if len(batch) > 1 else ""
                    runs = f"run {first}/{total}{more}"
                    raise Interrupted(e.signum, str(e).replace("interrupted at ", f"interrupted at {runs}, ", 1)) from None
                for c, r in zip(batch, rows, strict=True):
                    if transform is not None:
                        r = transform(c, r)
                    results.append_jsonl(self.path, r)
                    self.rows[self.key(c)] = r
                    done_cost += cost[self.key(c)]
                    emit(Event("done", index[self.key(c)], total, self.key(c), *eta(), r, c))
        if todo:
            note(f"disk: wrote {workdir_lib.human(max(workdir_lib.usage(self.workdir) - before, 0))} to {self.workdir}")
        signum = interrupts.requested()  # a signal during the last chunk or the rows' writing: stop here, every row kept
        if signum:
            raise Interrupted(signum, f"interrupted after run {total}/{total}, every row kept; rerun the same command to go on")
        return [self.rows[self.key(c)] for c in cfgs]

    def _train(self, batch: list[RunConfig], on_progress, slots: int, choices) -> list[Row]:
        folders = [os.path.join(self.workdir, d) for d in ("tb", "runs")] if self.run_folders else None
        # TensorBoard events from process 0 alone; every process keeps the run folders (checkpoints).
        log_dirs = [os.path.join(folders[0], c.name) for c in batch] if folders and distributed.is_writer() else None
        run_dirs = [os.path.join(folders[1], c.name) for c in batch] if folders else None
        dataset, device_data = self.data_for(batch[0])
        return loop.train_runs(
            batch, dataset, device_data, on_progress, log_dirs=log_dirs, run_dirs=run_dirs, slots=slots, choices=choices
        )

    def _check_disk(self, todo: list[RunConfig]) -> str:
        """The line that says what `todo` will write; ConfigError when it exceeds the disk's free space, or when one
        run would not fit in a device's memory (before anything is allocated)."""
        shapes = {}
        for c in todo:
            ds, _ = self.data_for(c)
            shapes[c.seq_len] = (tuple(ds.x_train.shape[1:]), ds.num_classes)
        distributed.writer_first(lambda: workdir_lib.check_memory(todo, shapes), "a run's memory")
        parts = workdir_lib.estimate(todo, shapes, self.run_folders)
        needed = sum(parts.values())
        distributed.writer_first(lambda: workdir_lib.check_space(self.workdir, needed), f"--workdir={self.workdir}")
        free = workdir_lib.free_bytes(self.workdir)
        what = ", ".join(f"{name} {workdir_lib.human(v)}" for name, v in parts.items() if v)
        runs = f"{len(todo)} run{'s' if len(todo) != 1 else ''}"
        return f"disk: {runs} will write about {workdir_lib.human(needed)} ({what}); {workdir_lib.human(free)} free"
