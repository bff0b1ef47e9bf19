"""Regenerate a sweep's report and figures from its results.jsonl.

    python -m experiments.report --workdir=runs/depth_sweep-20261126-071300

Writes <workdir>/report.md and <workdir>/plots/*.png.
"""

from __future__ import annotations

import os

from absl import flags

from experiments._cli import fail, run

_WORKDIR = flags.DEFINE_string("workdir", None, "A sweep folder holding results.jsonl.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments {' '.join(argv[1:])}; use --workdir=...")
    if not _WORKDIR.value:
        fail("--workdir is required: a sweep folder holding results.jsonl")
    results_path = os.path.join(_WORKDIR.value, "results.jsonl")
    if not os.path.isfile(results_path):
        fail(f"--workdir={_WORKDIR.value} has no results.jsonl (run python -m experiments.depth_sweep first)")

    from decay import ConfigError
    from decay.report import write_report

    try:
        path = write_report(_WORKDIR.value)
    except ConfigError as e:
        fail(str(e))
    print(f"report: {path}")


if __name__ == "__main__":
    run(main)
