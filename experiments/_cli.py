"""What every entry point shares: one-line errors and absl flag parsing without usage dumps."""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags, logging


def fail(message: str) -> NoReturn:
    """Prints `error: message` on stderr and exits with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag value is one line on stderr; JAX's info logs stay quiet."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # e.g. "Unable to initialize backend 'tpu'" on a CPU machine
    return rest


def fmt_time(seconds: float | None) -> str:
    """m:ss, or ? when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
