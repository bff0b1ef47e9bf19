"""Reading and atomically writing `results.jsonl` and `config.json` (plain JSON, never pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from decay.errors import ConfigError


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` via a temp file in the same folder and os.replace: all or nothing."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path: str) -> Any:
    """One JSON document; one-line ConfigError when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg})") from None


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; [] when it does not exist; one-line error on a bad line."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{i} is not valid JSON ({e.msg}); fix or remove that line") from None
    return rows


def append_jsonl(path: str, row: dict[str, Any]) -> None:
    """Appends one row; the file is replaced atomically, so a crash never leaves half a line."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if old and not old.endswith("\n"):
            old += "\n"
    write_atomic(path, old + json.dumps(row, allow_nan=False) + "\n")
