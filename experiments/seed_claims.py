"""The seed's claims C1-C8, each settled by measurement: writes <workdir>/claims.md.

    python -m experiments.seed_claims --workdir=runs/claims          # under 20 minutes on a 2-core CPU
    python -m experiments.seed_claims --quick --workdir=runs/claims-quick   # under 3 minutes

Every configuration is tuned on a validation split, comparisons are Welch 95% intervals over seeds
(see decay/studies/claims.py).

Also writes claims.json (verdicts and tables), claims/C*.png and runs.jsonl (every training run;
rerunning the command reuses them, so an interrupted experiment resumes).
"""

from __future__ import annotations

import dataclasses
import datetime

from absl import flags

from decay.errors import ConfigError
from decay.studies import claims
from experiments._cli import define_run_flags, fail, run

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/seed_claims-<timestamp>.")
_QUICK = flags.DEFINE_bool("quick", False, "3 seeds, 150 steps, width 64, deep = 16, smaller grids: a smoke test.")
_RUN = define_run_flags(only=("dataset", "data_dir"))
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds per configuration and grid point; default 5 (3 with --quick).")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps; default 300 (150 with --quick).")
_CLAIMS = flags.DEFINE_list("claims", None, "Only these claims, e.g. C1,C8; default all.")
_DEEP = flags.DEFINE_integer("deep", None, "Depth at which configurations are compared; default 32 (16 with --quick).")


def main(argv: list[str]) -> None:
    cfg = claims.QUICK if _QUICK.value else claims.ClaimsConfig()
    cfg = dataclasses.replace(cfg, dataset=_RUN["dataset"].value, data_dir=_RUN["data_dir"].value)
    for name, flag in (("seeds", _SEEDS), ("steps", _STEPS), ("deep", _DEEP)):
        if flag.value is not None:
            cfg = dataclasses.replace(cfg, **{name: flag.value})
    workdir = _WORKDIR.value or f"runs/seed_claims-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    count = [0]

    def on_run(label, row):
        count[0] += 1
        what = "diverged" if row["diverged"] else f"test acc {100 * (row['test_accuracy'] or 0):.1f}%"
        print(f"run {count[0]}: {label}: {what} ({row['wall_time_s']:.1f}s)", flush=True)

    try:
        report = claims.run(cfg, workdir, on_run, _CLAIMS.value)
    except ConfigError as e:
        fail(str(e))
    from decay.results import read_json

    doc = read_json(report[: -len("claims.md")] + "claims.json")
    for c in doc:
        print(f"{c['id']}: {c['verdict']}")
    print(f"report: {report}")


if __name__ == "__main__":
    run(main)
