"""Nothing lost, whatever happens: each fault a sweep meets, injected, and what is left afterwards.

Two writers on one workdir (the lock), SIGINT and SIGTERM (a chunk boundary, a checkpoint, exit 130 /
143, a second signal at once), a disk too small (the estimate), a write that fails at each write site
(rows, TensorBoard events, checkpoints), damaged or foreign files (rows, configs, checkpoints), and a
sweep over two processes (jax.distributed on the loopback interface). After each: the rows written
before are intact, and rerunning gives the rows of an uninterrupted sweep.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from decay import checkpoints, workdir
from decay.analysis import load_run
from decay.config import RunConfig, SweepConfig
from decay.errors import ConfigError, Interrupted, WriteError
from decay.results import read_jsonl
from decay.studies.depth_sweep import run_sweep
from tests.conftest import ROOT, tiny_config, without_wall_time
from tests.shell import call, scratch

# Two runs of two programs (depths 2 and 3): the first finishes before the second starts.
SWEEP = SweepConfig(
    base=tiny_config(steps=6, eval_every=2, checkpoint_every=2, dataset="synthetic"),
    depths=(2, 3),
    activations=("tanh",),
    norms=("none",),
    seeds=1,
)
NAMES = [c.name for c in SWEEP.runs()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, list[dict]]:
    """The sweep run whole, undisturbed: (its workdir, its rows without wall times). Read only."""
    path = str(tmp_path_factory.mktemp("reference") / "sweep")
    return path, without_wall_time(run_sweep(SWEEP, path, write_report=False))


def _rows(path: str) -> list[dict]:
    return without_wall_time(read_jsonl(os.path.join(path, "results.jsonl")))


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text, text
    return text


# -- two writers -----------------------------------------------------------------------------------

_HOLDER = "import sys,time; from decay import workdir; workdir.lock(sys.argv[1], 'x'); print('locked', flush=True);time.sleep(99)"


def test_a_second_study_is_refused_while_the_first_runs_and_takes_over_a_killed_ones_lock(tmp_path, reference):
    path = str(tmp_path / "sweep")
    os.makedirs(path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, path], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError) as refused:
            run_sweep(SWEEP, path, write_report=False)
        text = _one_line(refused.value)
        assert f"is in use by process {holder.pid} on {socket.gethostname()} (started " in text and ": x)" in text
        assert not os.path.exists(os.path.join(path, "config.json"))  # refused before writing anything
    finally:
        holder.kill()  # kill -9: no chance to release the lock
        holder.wait(timeout=30)
    notes = []
    rows = run_sweep(SWEEP, path, on_event=lambda e: notes.append(e.name) if e.kind == "note" else None, write_report=False)
    assert any(f"took over the lock of process {holder.pid}" in n and "no longer running" in n for n in notes), notes
    assert without_wall_time(rows) == reference[1]
    with open(os.path.join(path, workdir.LOCK_FILE)) as f:
        assert f.read() == ""  # released: the next study starts without a note


# -- interrupts ------------------------------------------------------------------------------------


def test_sigterm_stops_at_the_next_chunk_with_a_checkpoint_and_the_rerun_gives_the_same_rows(tmp_path, reference):
    path = str(tmp_path / "sweep")
    chunks = []

    def on_progress(p):  # the first run has 3 chunks (steps 2, 4, 6); the signal arrives in the second run's first
        chunks.append(p.step)
        if len(chunks) == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        run_sweep(SWEEP, path, on_progress=on_progress, write_report=False)
    assert _one_line(stopped.value) == "interrupted at run 2/2, step 2 of 6; rerun the same command to resume"
    assert stopped.value.exit_code == 143 and chunks == [2, 4, 6, 2]
    assert signal.getsignal(signal.SIGTERM) is before  # the study's handler is gone with it
    assert _rows(path) == reference[1][:1]
    assert checkpoints.steps(os.path.join(path, "runs", NAMES[1], "checkpoints")) == [0, 2]
    assert without_wall_time(run_sweep(SWEEP, path, write_report=False)) == reference[1]


def test_a_signal_in_the_last_chunk_stops_the_study_after_its_rows_are_written(tmp_path, reference):
    path = str(tmp_path / "sweep")
    chunks = []

    def on_progress(p):  # the last of the six chunks: nothing is left to checkpoint, the rows are written, then stop
        chunks.append(p.step)
        if len(chunks) == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        run_sweep(SWEEP, path, on_progress=on_progress, write_report=False)
    assert _one_line(stopped.value) == "interrupted after run 2/2, every row kept; rerun the same command to go on"
    assert stopped.value.exit_code == 130 and _rows(path) == reference[1]


_CLI = [
    "--depths=2,3",
    "--activations=tanh",
    "--norms=none",
    "--learning_rates=0.1",
    "--seeds=1",
    "--width=8",
    "--batch_size=16",
    "--steps=50",
    "--eval_every=10",
    "--dataset=synthetic",
    "--compilation_cache=",
    "--instruments=basic",
]


def test_ctrl_c_on_the_command_line_exits_130_with_one_line_and_a_checkpoint(tmp_path):
    """(SIGTERM, exit 143, takes the same path: `test_sigterm_stops_at_the_next_chunk...` and `decay.errors.Interrupted`.)"""
    path = str(tmp_path / "sweep")
    cmd = [sys.executable, "-m", "experiments.depth_sweep", f"--workdir={path}", *_CLI]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # the study has started (the disk line): the signal arrives as it compiles
            if line.startswith("disk:"):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "interrupted at run 1/2, step 0 of 50; rerun the same command to resume", err
    assert (
        lines[-2] == "Ctrl-C (SIGINT): stopping after this chunk of steps, checkpoints and rows kept; Ctrl-C again stops at once"
    )
    assert "Traceback" not in err and not os.path.exists(os.path.join(path, "results.jsonl"))
    assert checkpoints.steps(os.path.join(path, "runs", "mlp-d0002-tanh-none-lr0.1-s0", "checkpoints")) == [0]


_WRITER = """
import os, signal, sys
from decay import interrupts, results
path = sys.argv[1]
with interrupts.graceful():
    i = 0
    while True:
        i += 1
        results.write_atomic(path, str(i) * 200000 + "\\n")
        if i == 1:
            print("ready", flush=True)
"""


def test_a_second_signal_stops_at_once_and_leaves_no_file_half_written(tmp_path):
    path = str(tmp_path / "file.txt")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, path], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # noted: the loop has no chunk boundary, so it goes on writing
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)  # the default action: stopped at once, wherever it was
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode in (-signal.SIGINT, 130)  # the default action, or the watcher thread's exit
    assert b"Ctrl-C again stops at once" in proc.stderr.read()
    with open(path) as f:
        text = f.read()
    n = text[: (len(text) - 1) // 200000]
    assert n.isdigit() and text == n * 200000 + "\n"  # the whole file of one write, never a part or a mix of two


_BUSY = """
import jax
from decay import interrupts
spin = jax.jit(lambda x: jax.lax.while_loop(lambda v: v[0] < 1e30, lambda v: (v[0] + 1.0, v[1] * 1.0000001), x))
with interrupts.graceful():
    print("ready", flush=True)
    jax.block_until_ready(spin((0.0, 1.0)))  # a compiled call of hours: the main thread waits in XLA
"""


def test_a_second_signal_stops_at_once_while_the_main_thread_is_busy_in_a_long_call():
    proc = subprocess.Popen([sys.executable, "-c", _BUSY], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(0.5)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)  # noted; the call goes on (it has no chunk boundary)
    time.sleep(0.05)  # (sent closer, the kernel merges two of one signal into one)
    proc.send_signal(signal.SIGTERM)  # the two may arrive before Python runs the handler once
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()  # never left spinning
    # Stopped at once either way: by the watcher thread that counts the signals as they arrive (exit 143), or,
    # when the handler ran between the two, by the default action it restored (killed by SIGTERM).
    assert proc.returncode in (143, -signal.SIGTERM) and time.perf_counter() - t0 < 10
    last = proc.stderr.read().decode().strip().splitlines()[-1]
    assert last == (
        "SIGTERM again: stopped at once"
        if proc.returncode == 143
        else "SIGTERM: stopping after this chunk of steps, checkpoints and rows kept; the signal again stops at once"
    )


# -- disk ------------------------------------------------------------------------------------------


def test_the_disk_estimate_is_near_what_the_sweep_writes(reference):
    from decay.data import load_for

    ds = load_for(SWEEP.base)
    parts = workdir.estimate(SWEEP.runs(), {SWEEP.base.seq_len: (tuple(ds.x_train.shape[1:]), ds.num_classes)}, True)
    written = {
        "checkpoints": workdir.usage(os.path.join(reference[0], "runs")),
        "TensorBoard": workdir.usage(os.path.join(reference[0], "tb")),
        "rows": os.path.getsize(os.path.join(reference[0], "results.jsonl")),
    }
    for part, bytes_ in written.items():
        assert 0.5 < parts[part] / bytes_ < 2.0, (part, parts[part], bytes_)


def test_a_sweep_larger_than_the_free_space_is_refused_before_it_starts(tmp_path, monkeypatch):
    path = str(tmp_path / "sweep")
    monkeypatch.setattr(workdir, "free_bytes", lambda p: 1000)
    with pytest.raises(ConfigError) as refused:
        run_sweep(SWEEP, path, write_report=False)
    text = _one_line(refused.value)
    assert "will write about" in text and "1 kB free" in text and "--nodisk_check" in text
    assert not os.path.exists(os.path.join(path, "results.jsonl")) and not os.path.exists(os.path.join(path, "runs"))


@pytest.mark.parametrize("policy, kept", [("ends", [0, 6]), ("none", None)])
def test_checkpoint_policies_keep_less_and_change_no_number(tmp_path, reference, monkeypatch, policy, kept):
    import dataclasses

    monkeypatch.setattr(workdir, "free_bytes", lambda p: 1000)  # too small: --nodisk_check starts anyway
    workdir.configure(disk_check=False)
    try:
        cfg = dataclasses.replace(SWEEP, base=dataclasses.replace(SWEEP.base, checkpoints=policy))
        rows = run_sweep(cfg, str(tmp_path / "sweep"), write_report=False)
    finally:
        workdir.configure(disk_check=True)
    assert without_wall_time(rows) == reference[1]
    for name in NAMES:
        ckpt = tmp_path / "sweep" / "runs" / name / "checkpoints"
        assert (checkpoints.steps(str(ckpt)) if kept is not None else os.path.exists(ckpt)) == (kept or False)


# -- write errors ----------------------------------------------------------------------------------

_ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _inject(site: str, monkeypatch, path: str) -> str:
    """Makes the second run's write at `site` fail; returns the text the error must name."""
    second = NAMES[1]
    if site == "rows":
        real, count = os.replace, []

        def replace(src, dst, *a, **k):
            if str(dst).endswith("results.jsonl"):
                count.append(dst)
                if len(count) == 2:
                    raise _ENOSPC
            return real(src, dst, *a, **k)

        monkeypatch.setattr(os, "replace", replace)
        return os.path.join(path, "results.jsonl")
    if site == "events":
        from tensorboardX.event_file_writer import EventsWriter

        real_write = EventsWriter.write_event

        def write_event(self, event):
            if second in self._file_name and event.step > 0:
                raise _ENOSPC
            return real_write(self, event)

        monkeypatch.setattr(EventsWriter, "write_event", write_event)
        return os.path.join(path, "tb", second, "events.out.tfevents.")
    if site == "checkpoint":
        import orbax.checkpoint as ocp

        real_save = ocp.CheckpointManager.save

        def save(self, step, *a, **k):
            if second in str(self.directory) and step == 4:
                raise _ENOSPC
            return real_save(self, step, *a, **k)

        monkeypatch.setattr(ocp.CheckpointManager, "save", save)
        return os.path.join(path, "runs", second, "checkpoints", "4")
    # a real fault: the checkpoints folder is a file (ENOTDIR from Orbax itself)
    os.makedirs(os.path.join(path, "runs", second))
    with open(os.path.join(path, "runs", second, "checkpoints"), "w") as f:
        f.write("in the way")
    return os.path.join(path, "runs", second, "checkpoints", "0")


@pytest.mark.parametrize("site", ["rows", "events", "checkpoint", "checkpoint_folder"])
def test_a_failed_write_is_one_line_naming_the_file_and_the_rerun_gives_the_same_rows(tmp_path, reference, monkeypatch, site):
    path = str(tmp_path / "sweep")
    named = _inject(site, monkeypatch, path)
    with pytest.raises(WriteError) as failed:
        run_sweep(SWEEP, path, write_report=False)
    text = _one_line(failed.value)
    assert text.startswith(f"cannot write {named}"), text
    assert ("No space left on device (ENOSPC)" if site != "checkpoint_folder" else "Not a directory") in text
    assert "rerun the same command to resume" in text
    assert _rows(path) == reference[1][:1]  # the first run's row, whole
    monkeypatch.undo()
    if site == "checkpoint_folder":
        os.remove(os.path.join(path, "runs", NAMES[1], "checkpoints"))
    assert without_wall_time(run_sweep(SWEEP, path, write_report=False)) == reference[1]


# -- damaged or foreign files ----------------------------------------------------------------------


def _damage(path: str, reference: str, what: str) -> None:
    shutil.copytree(reference, path)
    rows_path, config_path = os.path.join(path, "results.jsonl"), os.path.join(path, "config.json")
    with open(rows_path) as f:
        lines = f.read().splitlines()
    with open(config_path) as f:
        config = json.load(f)
    if what == "truncated row":
        lines[1] = lines[1][: len(lines[1]) // 2]
    elif what == "not json":
        lines[0] = "<<<<<<< HEAD"
    elif what == "older row":
        lines[0] = json.dumps({k: v for k, v in json.loads(lines[0]).items() if k != "schema"})
    elif what == "config not json":
        config = "{"
    elif what == "config lacks fields":
        del config["seeds"]
    elif what == "older config":
        del config["schema"]
    with open(rows_path, "w") as f:
        f.write("\n".join(lines) + ("\n" if what != "truncated row" else ""))
    with open(config_path, "w") as f:
        f.write(config if isinstance(config, str) else json.dumps(config))


_DAMAGED = {
    "truncated row": ["results.jsonl:2 is not valid JSON", "truncated", "delete that line to retrain its run"],
    "not json": ["results.jsonl:1 is not valid JSON", "delete that line"],
    "older row": ["results.jsonl:1 is a row of schema 0 (an older decay; this one writes schema 1)", "give a new --workdir"],
    "config not json": ["config.json is not valid JSON", "restore it, or give a new --workdir"],
    "config lacks fields": ["config.json lacks the settings seeds", "damaged or edited by hand"],
    "older config": ["config.json is of schema 0 (written by an older decay", "give a new --workdir"],
}


@pytest.mark.parametrize("what", list(_DAMAGED))
def test_a_damaged_or_older_file_is_one_line_naming_file_line_and_remedy(tmp_path, reference, what):
    path = str(tmp_path / "sweep")
    _damage(path, reference[0], what)
    with pytest.raises(ConfigError) as refused:
        run_sweep(SWEEP, path, write_report=False)
    text = _one_line(refused.value)
    assert text.startswith(path) or text.startswith(f"--workdir={path}") or os.path.join(path, "") in text
    for part in _DAMAGED[what]:
        assert part in text, text


def test_a_checkpoint_missing_files_is_named_with_the_way_to_resume(tmp_path, reference):
    path = str(tmp_path / "sweep")
    shutil.copytree(reference[0], path)
    with open(os.path.join(path, "results.jsonl")) as f:
        first = f.readline()
    with open(os.path.join(path, "results.jsonl"), "w") as f:
        f.write(first)  # the second run unfinished, its latest checkpoint damaged
    latest = os.path.join(path, "runs", NAMES[1], "checkpoints", "6")
    for root, _, files in os.walk(os.path.join(latest, "state")):  # the arrays' data files lost, the metadata kept
        for name in files:
            if os.sep + "d" in root:
                os.remove(os.path.join(root, name))
    with pytest.raises(ConfigError) as refused:
        run_sweep(SWEEP, path, write_report=False)
    text = _one_line(refused.value)
    assert (
        text.startswith(f"{latest}: unreadable checkpoint, files missing or damaged")
        and "delete that folder to resume from step 4" in text
    )
    shutil.rmtree(latest)  # as the line says
    assert without_wall_time(run_sweep(SWEEP, path, write_report=False)) == reference[1]


# -- more than one process -------------------------------------------------------------------------

_MULTI = [
    "--depths=2",
    "--activations=tanh,relu",
    "--norms=none",
    "--learning_rates=0.1",
    "--seeds=1",
    "--width=8",
    "--steps=6",
    "--eval_every=3",
    "--checkpoint_every=3",
    "--batch_size=32",
    "--dataset=synthetic",
    "--compilation_cache=",
    "--quiet",
]
# The same sweep as a SweepConfig, for the one-process reference trained in this process.
MULTI_SWEEP = SweepConfig(
    base=RunConfig(width=8, steps=6, eval_every=3, checkpoint_every=3, batch_size=32, dataset="synthetic", learning_rate=0.1),
    depths=(2,),
    activations=("tanh", "relu"),
    norms=("none",),
    seeds=1,
    learning_rates=(0.1,),
)


def two_processes_in_background(out_dir: str) -> None:
    """Background work: the sweep of `_MULTI` as a job of two processes (one CPU device each) joined over
    127.0.0.1; writes each process's exit status, stderr and wall time to `<out_dir>/processes.json`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "experiments.depth_sweep",
                f"--workdir={os.path.join(out_dir, 'sweep')}",
                *_MULTI,
                "--cpu_devices=1",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            stdout, stderr = p.communicate()
        out.append({"code": p.returncode, "stdout": stdout, "stderr": stderr[-3000:]})
    with open(os.path.join(out_dir, "processes.json"), "w") as f:
        json.dump({"processes": out, "wall_s": time.perf_counter() - t0}, f)


_TWO_PROCESSES = call("tests.test_reliability:two_processes_in_background", scratch("two_processes", make=True))


@pytest.mark.background
def test_a_sweep_over_two_processes_gives_the_rows_and_checkpoints_of_one_process(tmp_path):
    one = str(tmp_path / "one_process")
    run_sweep(MULTI_SWEEP, one, write_report=False)
    assert _TWO_PROCESSES().returncode == 0, _TWO_PROCESSES().stderr
    job = json.loads((scratch("two_processes") / "processes.json").read_text())
    for i, p in enumerate(job["processes"]):
        assert p["code"] == 0, f"process {i}: {p['stderr']}"
    outs = [p["stdout"] for p in job["processes"]]
    assert "| depth |" in outs[0] and "| depth |" not in outs[1] and "results:" not in outs[1]  # process 0 speaks
    two = str(scratch("two_processes") / "sweep")
    assert _rows(two) == _rows(one) and len(_rows(two)) == 2

    # Every process took part in each checkpoint's save (Orbax's multi-process protocol): the same checkpoints.
    for name in os.listdir(os.path.join(two, "runs")):
        ckpts = [os.path.join(w, "runs", name, "checkpoints") for w in (two, one)]
        assert checkpoints.steps(ckpts[0]) == checkpoints.steps(ckpts[1]) == [0, 3, 6]
        states = [load_run(os.path.dirname(c), step=6).state for c in ckpts]
        assert all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(s) for s in states), strict=True)), name
    assert sorted(os.listdir(os.path.join(two, "tb"))) == sorted(os.listdir(os.path.join(two, "runs")))  # by process 0
