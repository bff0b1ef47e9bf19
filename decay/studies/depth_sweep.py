"""The depth sweep: every run of a grid of depths x activations x norms x learning rates x seeds, one `results.jsonl` row each.

Finished runs are skipped and unfinished ones resume from their latest checkpoint (the study
runner, `decay.runner.Runner`, with run folders); at the end `report.md` and `plots/` are written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from decay import families, loop, report
from decay.config import SweepConfig
from decay.errors import ConfigError
from decay.runner import Event, Runner
from decay.validation import validate_sweep

__all__ = ["Event", "check_sweep", "run_sweep"]

SWEPT = tuple(f"base.{k}" for k in report.SWEPT)  # set per run, not compared on resume


def check_sweep(cfg: SweepConfig) -> None:
    """ConfigError (one line) for invalid settings, or a family the depth sweep does not serve."""
    validate_sweep(cfg)
    if families.of(cfg.base).sequence:  # its report reads per-layer arrays; a recurrent net's points are time steps
        raise ConfigError(
            f"--model={cfg.base.model} is recurrent: sweep it along time with python -m experiments.time_sweep"
            " (--depths stacks recurrent layers there)"
        )


def run_sweep(
    cfg: SweepConfig,
    workdir: str,
    on_event: Callable[[Event], None] | None = None,
    on_progress: Callable[[loop.RunProgress], None] | None = None,
    command: str | None = None,
    write_report: bool = True,
) -> list[dict[str, Any]]:
    """Runs every configuration of `cfg` not yet in `<workdir>/results.jsonl`; returns all rows, in grid order.

    Each run logs TensorBoard events to `<workdir>/tb/<run name>/` and keeps its config and
    Orbax checkpoints in `<workdir>/runs/<run name>/`; an unfinished run (one with checkpoints
    but no results row, e.g. after the machine was lost) resumes from its latest checkpoint. At the end
    `<workdir>/report.md` and `<workdir>/plots/` are (re)written unless `write_report` is False.

    Raises ConfigError for invalid settings, or when `workdir` holds a different sweep.
    """
    check_sweep(cfg)
    with Runner(workdir, cfg.to_json(), cfg.base, run_folders=True, command=command, ignore=SWEPT) as runner:
        rows = runner.run(cfg.runs(), on_event, on_progress)
        if write_report:
            report.write_report(workdir)
    return rows
