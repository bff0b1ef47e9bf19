"""Faults injected into a real depth sweep, one by one, and what is left afterwards; a sweep over two processes.

    python -m benchmarks.reliability                                  # ~6 min on a 2-core CPU
    python -m benchmarks.reliability --parts=processes --repeats=3 --json=docs/reliability/reliability.json

Parts:
  faults     each fault on the sweep of `SWEEP` (depths 2 and 8, tanh, 1 seed, width 64, 300 steps, the
             embedded digits), as a user meets it: the command killed (-9), Ctrl-C once and twice, SIGTERM,
             a second sweep into the same workdir, a disk too small, a write that fails (ENOSPC) at the
             rows, the TensorBoard events and a checkpoint, a damaged row, a row of an older schema, a
             config.json that is not JSON, a checkpoint with its data files lost. For each: what the
             user saw (exit status, the last line), the rows finished before the fault, the rows on disk
             after it (rows lost = the difference), and, after the remedy the line names and a rerun of
             the same command, whether every row equals the undisturbed sweep's (all but wall_time_s).
  processes  the sweep of `MULTI` (depth 8, 4 activations, 2 seeds, width 64, 300 steps) on 1 process x
             2 CPU devices and on 2 processes x 1 device joined over 127.0.0.1 (jax.distributed, gloo):
             wall time of each (median of --repeats), rows equal.

Writes a JSON of every figure (--json) and prints the table the README shows.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_PARTS = flags.DEFINE_list("parts", ["faults", "processes"], "Parts to run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Repetitions of the multi-process timing (medians reported).")
_JSON = flags.DEFINE_string("json", None, "Write every figure to this JSON file.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = [
    "--depths=2,8",
    "--activations=tanh",
    "--norms=none",
    "--learning_rates=0.1",
    "--seeds=1",
    "--width=64",
    "--steps=300",
    "--eval_every=50",
    "--checkpoint_every=100",
    "--compilation_cache=",
]
MULTI = [
    "--depths=8",
    "--activations=tanh,relu,gelu,sigmoid",
    "--norms=none",
    "--learning_rates=0.1",
    "--seeds=2",
    "--width=64",
    "--steps=300",
    "--compilation_cache=",
    "--quiet",
]
SECOND = "mlp-d0008-tanh-none-lr0.1-s0"  # the sweep's second run


def _cmd(workdir: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "experiments.depth_sweep", f"--workdir={workdir}", *SWEEP, *extra]


def _rows(workdir: str) -> list[dict]:
    """The whole rows of `workdir`'s results.jsonl (a damaged line is not a row), less wall_time_s."""
    path = os.path.join(workdir, "results.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append({k: v for k, v in json.loads(line).items() if k != "wall_time_s"})
            except ValueError:
                pass
    return rows


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith(("I1", "W1", "[Gloo]"))]
    return lines[-1] if lines else ""


def _start(workdir: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(_cmd(workdir, *extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise RuntimeError(f"the sweep ended before printing {prefix!r}")


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=900)
    return proc.returncode, _last_line(err)


def _rerun(workdir: str) -> tuple[int, str]:
    out = subprocess.run(_cmd(workdir), cwd=ROOT, capture_output=True, text=True, timeout=900)
    return out.returncode, _last_line(out.stderr) or _last_line(out.stdout)


class Faults:
    """Each fault on a fresh workdir; `reference` is the undisturbed sweep's rows."""

    def __init__(self, tmp: str):
        self.tmp = tmp
        ref = os.path.join(tmp, "reference")
        subprocess.run(_cmd(ref), cwd=ROOT, check=True, capture_output=True, timeout=900)
        self.reference = _rows(ref)
        self.results: list[dict] = []

    def record(self, fault: str, workdir: str, before: int, code: int, line: str, remedy: str | None = None) -> None:
        after = len(_rows(workdir))
        if remedy is not None:
            remedy_fn = getattr(self, f"_remedy_{remedy}")
            remedy_fn(workdir)
        rerun_code, _ = _rerun(workdir)
        equal = rerun_code == 0 and _rows(workdir) == self.reference
        self.results.append(
            {
                "fault": fault,
                "exit": code,
                "line": line,
                "rows_before": before,
                "rows_after": after,
                "rows_lost": max(before - after, 0),
                "remedy": remedy,
                "equal_after_rerun": equal,
            }
        )
        print(f"{fault}: exit {code}, rows {before} -> {after}, equal after rerun: {equal}\n    {line}", flush=True)

    def signal_during_second_run(self, name: str, sig: int, twice: bool = False) -> None:
        w = os.path.join(self.tmp, name)
        proc = _start(w)
        _wait_for(proc, "[1/2]")
        time.sleep(2.0)  # the second run compiles and trains
        proc.send_signal(sig)
        if twice:
            time.sleep(0.05)
            proc.send_signal(sig)
        code, line = _finish(proc)
        self.record(name, w, 1, code, line)

    def second_writer(self) -> None:
        w = os.path.join(self.tmp, "second_sweep_same_workdir")
        first = _start(w)
        _wait_for(first, "disk:")
        second = subprocess.run(_cmd(w), cwd=ROOT, capture_output=True, text=True, timeout=900)
        code, _ = _finish(first)
        self.results_line = _last_line(second.stderr)
        self.record("second sweep into the same workdir", w, 2, second.returncode, _last_line(second.stderr))

    def killed_then_lock(self) -> None:
        w = os.path.join(self.tmp, "killed")
        proc = _start(w)
        _wait_for(proc, "[1/2]")
        time.sleep(2.0)
        proc.kill()
        proc.wait()
        after = len(_rows(w))
        rerun = subprocess.run(_cmd(w), cwd=ROOT, capture_output=True, text=True, timeout=900)
        took_over = next((line for line in rerun.stdout.splitlines() if "took over the lock" in line), "")
        self.results.append(
            {
                "fault": "kill -9 during the second run",
                "exit": -9,
                "line": took_over,
                "rows_before": 1,
                "rows_after": after,
                "rows_lost": max(1 - after, 0),
                "remedy": None,
                "equal_after_rerun": rerun.returncode == 0 and _rows(w) == self.reference,
            }
        )
        print(f"kill -9: rerun says {took_over!r}; equal: {self.results[-1]['equal_after_rerun']}", flush=True)

    def refused_before_training(self, fault: str, name: str, flags: list[str]) -> None:
        """A sweep refused before it trains: `flags` replace the sweep's own of the same name."""
        w = os.path.join(self.tmp, name)
        names = {f.split("=")[0] for f in flags}
        args = [a for a in SWEEP if a.split("=")[0] not in names] + flags
        out = subprocess.run(
            [sys.executable, "-m", "experiments.depth_sweep", f"--workdir={w}", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        written = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(w) for f in fs)
        self.results.append(
            {
                "fault": fault,
                "exit": out.returncode,
                "line": _last_line(out.stderr),
                "rows_before": 0,
                "rows_after": len(_rows(w)),
                "rows_lost": 0,
                "remedy": None,
                "equal_after_rerun": None,
                "bytes_written": written,
            }
        )
        print(f"{fault}: exit {out.returncode}: {_last_line(out.stderr)}; {written} bytes written", flush=True)

    def write_error(self, site: str) -> None:
        """ENOSPC at the second run's write of `site`, injected in a child that runs the sweep's command."""
        w = os.path.join(self.tmp, f"enospc_{site.split()[0].lower()}")
        code = _INJECT.format(site=site, second=SECOND, workdir=w, argv=json.dumps(SWEEP))
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=900)
        self.record(f"ENOSPC writing the {site}", w, 1, out.returncode, _last_line(out.stderr))

    def damaged(self, what: str) -> None:
        w = os.path.join(self.tmp, what.replace(" ", "_"))
        shutil.copytree(os.path.join(self.tmp, "reference"), w)
        rows, config = os.path.join(w, "results.jsonl"), os.path.join(w, "config.json")
        with open(rows) as f:
            lines = f.read().splitlines()
        remedy = None
        if what == "truncated last row":
            with open(rows, "w") as f:
                f.write(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
            remedy, before = "delete_last_line", 2
        elif what == "row of an older schema":
            old = {k: v for k, v in json.loads(lines[0]).items() if k != "schema"}
            with open(rows, "w") as f:
                f.write(json.dumps(old) + "\n" + lines[1] + "\n")
            remedy, before = "new_workdir", 2
        elif what == "config.json not JSON":
            with open(config, "w") as f:
                f.write("{ edited by hand")
            remedy, before = "restore_config", 2
        elif what == "checkpoint data files lost":
            with open(rows, "w") as f:
                f.write(lines[0] + "\n")
            state = os.path.join(w, "runs", SECOND, "checkpoints", "300", "state")
            for root, _, files in os.walk(state):
                for name in files:
                    if os.sep + "d" in root:
                        os.remove(os.path.join(root, name))
            remedy, before = "delete_checkpoint", 1
        code, line = _rerun(w)
        self.record(what, w, before, code, line, remedy)

    def _remedy_delete_last_line(self, w: str) -> None:
        path = os.path.join(w, "results.jsonl")
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:
            f.write("\n".join(lines[:-1]) + "\n")

    def _remedy_new_workdir(self, w: str) -> None:
        shutil.rmtree(w)  # "give a new --workdir": the same path, emptied

    def _remedy_restore_config(self, w: str) -> None:
        shutil.copy(os.path.join(self.tmp, "reference", "config.json"), os.path.join(w, "config.json"))

    def _remedy_delete_checkpoint(self, w: str) -> None:
        shutil.rmtree(os.path.join(w, "runs", SECOND, "checkpoints", "300"))


_INJECT = """
import errno, json, os, sys
site, second = {site!r}, {second!r}
err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
if site == "rows":
    real, seen = os.replace, []
    def replace(src, dst, *a, **k):
        if str(dst).endswith("results.jsonl"):
            seen.append(dst)
            if len(seen) == 2:
                raise err
        return real(src, dst, *a, **k)
    os.replace = replace
elif site == "TensorBoard events":
    from tensorboardX.event_file_writer import EventsWriter
    real_write = EventsWriter.write_event
    def write_event(self, event):
        if second in self._file_name and event.step >= 100:
            raise err
        return real_write(self, event)
    EventsWriter.write_event = write_event
else:
    import orbax.checkpoint as ocp
    real_save = ocp.CheckpointManager.save
    def save(self, step, *a, **k):
        if second in str(self.directory) and step == 200:
            raise err
        return real_save(self, step, *a, **k)
    ocp.CheckpointManager.save = save
import runpy
sys.argv = ["experiments.depth_sweep", "--workdir={workdir}", *json.loads({argv!r})]
runpy.run_module("experiments.depth_sweep", run_name="__main__", alter_sys=True)
"""


def faults(out: dict) -> None:
    tmp = tempfile.mkdtemp(prefix="decay-faults-")
    try:
        f = Faults(tmp)
        out["workdirs"] = tmp
        f.killed_then_lock()
        f.signal_during_second_run("Ctrl-C once", signal.SIGINT)
        f.signal_during_second_run("SIGTERM (a batch scheduler)", signal.SIGTERM)
        f.signal_during_second_run("Ctrl-C twice", signal.SIGINT, twice=True)
        f.second_writer()
        f.refused_before_training(
            "a sweep larger than the free disk (width 4096, depth 32, 6 seeds)",
            "disk",
            ["--width=4096", "--depths=32", "--seeds=6"],
        )
        big = ["--width=60000", "--depths=32"]
        f.refused_before_training("one run larger than memory (width 60000, depth 32)", "memory", big)
        for site in ("rows", "TensorBoard events", "checkpoint"):
            f.write_error(site)
        for what in ("truncated last row", "row of an older schema", "config.json not JSON", "checkpoint data files lost"):
            f.damaged(what)
        for r in f.results:  # the folders as W: the temporary prefix is this run's
            r["line"] = r["line"].replace(tmp + os.sep, "W/").replace(tmp, "W")
        out["faults"] = f.results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def processes(out: dict) -> None:
    tmp = tempfile.mkdtemp(prefix="decay-processes-")
    one_s, two_s, equal = [], [], []
    try:
        for r in range(_REPEATS.value):
            w1, w2 = os.path.join(tmp, f"one{r}"), os.path.join(tmp, f"two{r}")
            t0 = time.perf_counter()
            base = [sys.executable, "-m", "experiments.depth_sweep", *MULTI]
            subprocess.run([*base, f"--workdir={w1}", "--cpu_devices=2"], cwd=ROOT, check=True, capture_output=True)
            one_s.append(time.perf_counter() - t0)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            t0 = time.perf_counter()
            job = [
                subprocess.Popen(
                    [
                        *base,
                        f"--workdir={w2}",
                        "--cpu_devices=1",
                        f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2",
                        f"--process_id={i}",
                    ],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i in range(2)
            ]
            codes = [p.wait(timeout=900) for p in job]
            two_s.append(time.perf_counter() - t0)
            equal.append(codes == [0, 0] and _rows(w1) == _rows(w2) and len(_rows(w1)) == 8)
            print(f"repeat {r}: 1 process x 2 devices {one_s[-1]:.1f} s, 2 x 1 {two_s[-1]:.1f} s, rows equal {equal[-1]}")
        out["processes"] = {
            "runs": 8,
            "one_process_two_devices_s": statistics.median(one_s),
            "two_processes_one_device_s": statistics.median(two_s),
            "all_s": {"one": one_s, "two": two_s},
            "rows_equal": all(equal),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table(out: dict) -> str:
    lines = ["| fault | what happened | rows lost | equal after rerun |", "|---|---|---:|---|"]
    for f in out.get("faults", []):
        eq = "-" if f["equal_after_rerun"] is None else ("yes" if f["equal_after_rerun"] else "NO")
        code = "killed by the signal" if f["exit"] < 0 else f"exit {f['exit']}"
        what = f"{code}: `{f['line']}`".replace("|", "\\|")
        lines.append(f"| {f['fault']} | {what} | {f['rows_lost']} | {eq} |")
    p = out.get("processes")
    if p:
        lines.append(
            f"\n{p['runs']} runs: 1 process x 2 devices {p['one_process_two_devices_s']:.1f} s, 2 processes x 1 device"
            f" {p['two_processes_one_device_s']:.1f} s (medians of {len(p['all_s']['one'])}), rows equal: {p['rows_equal']}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    out: dict = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores", "errno": errno.ENOSPC}
    for part in _PARTS.value:
        {"faults": faults, "processes": processes}[part](out)
    print(table(out))
    if _JSON.value:
        os.makedirs(os.path.dirname(_JSON.value) or ".", exist_ok=True)
        with open(_JSON.value, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    app.run(main)
