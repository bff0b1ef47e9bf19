"""The doctor: what goes wrong with one configuration's gradients, the fixes theory proposes, each verified by measuring.

    python -m experiments.doctor --activation=tanh --norm=none --depth=64
    python -m experiments.doctor --activation=relu --norm=batchnorm --depth=64 --seeds=3

Takes the run flags of a sweep for one configuration. Prints the diagnosis (theory and a
measurement at initialization, in words), the proposals ranked by theory with the exact flags,
and the before/after table: each proposal and the original trained side by side (--seeds x
--learning_rates, each side at its rate chosen on the validation split). Writes doctor.md,
doctor.json, doctor.png and runs.jsonl to --workdir; rerunning the same command resumes.
"""

from __future__ import annotations

import datetime
import shlex
import sys

from absl import flags

from decay.config import DoctorConfig
from experiments._cli import define_run_flags, fail, fmt_time, parse_list, run, run_config

_D = DoctorConfig()
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/doctor-<timestamp>.")
_SEEDS = flags.DEFINE_integer("seeds", _D.seeds, "Seeds per side (0..seeds-1); intervals need at least 2.")
_LRS = flags.DEFINE_list(
    "learning_rates", [f"{v:g}" for v in _D.learning_rates], "Learning rates; each side is tuned over them on validation."
)
_RUN = define_run_flags(skip=("seed", "learning_rate"), defaults={"depth": _D.base.depth, "steps": _D.base.steps})


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; all settings are --flags (see --helpshort)")
    from decay import ConfigError
    from decay.studies import doctor

    lrs = parse_list("learning_rates", _LRS.value, float, "numbers > 0, e.g. 0.01,0.1")
    base = run_config(_RUN, learning_rate=lrs[0] if lrs else 0.01)
    cfg = DoctorConfig(base=base, seeds=_SEEDS.value, learning_rates=tuple(lrs))
    try:
        doctor.validate(cfg)
    except ConfigError as e:
        fail(str(e))
    workdir = _WORKDIR.value or f"runs/doctor-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    command = " ".join(["python -m experiments.doctor", *(shlex.quote(a) for a in sys.argv[1:])])
    print(f"doctor: {base.activation}, norm {base.norm}, depth {base.depth} -> {workdir}", flush=True)

    def on_event(e) -> None:
        if e.kind == "note":  # the disk estimate, what was written, a lock taken over
            print(f"  {e.name}", flush=True)
        if e.kind == "done":
            print(f"  [{e.index}/{e.total}] trained, elapsed {fmt_time(e.elapsed_s)}, left ~{fmt_time(e.eta_s)}", flush=True)

    try:
        doc = doctor.doctor(cfg, workdir, on_event, command)
    except ConfigError as e:
        fail(str(e))
    print("\nDiagnosis")
    for line in doc["diagnosis"]["words"]:
        print(f"  - {line}")
    if doc["nothing_to_fix"]:
        print("  Nothing to fix in the gradient: the measured gain chi^(L-1) lies within [1e-1, 1e1].")
    print("\nProposals, ranked by theory")
    for i, e in enumerate(doc["proposals"], 1):
        print(f"  {i}. {e['kind']}: {e['flags']}\n     {e['reason']}")
    for e in doc["not_verified_here"]:
        print(f"  (not run) {e['kind']}: {e['flags']}")
    print("\n" + doctor.table(doc))
    none = "No proposal to recommend: none fixes the gradient with a validation accuracy at least the original's."
    print(f"\nBest: {doc['best']}" if doc["best"] else f"\n{none}")
    print(f"Wrote {workdir}/doctor.md, doctor.json, doctor.png")


if __name__ == "__main__":
    run(main)
