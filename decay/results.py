"""Reading and atomically writing `results.jsonl` and `config.json` (plain JSON, never pickle).

Every write goes to a temporary file in the same folder, which replaces the target when complete: a
full disk, a kill or a power cut leaves the previous file whole. A write that fails raises
`WriteError`, one line naming the file and the error. In a multi-process job only process 0 writes
(`decay.distributed.is_writer`); the others skip writes and read what it wrote.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from decay.errors import ConfigError, WriteError


def write_error(path: str, e: OSError) -> WriteError:
    """The one-line error of a failed write to `path`: the file, the error, and that what was written before is kept."""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    reason = f"{e.strerror or e} ({name})" if name else f"{e.strerror or e}"
    return WriteError(
        f"cannot write {path}: {reason}; files written before are intact: free space or fix the folder's permissions,"
        " then rerun the same command to resume"
    )


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a temporary file's path beside `path` to write; when the block ends it replaces `path`: all or nothing.

    The temporary file is removed when the block fails; an OSError (in the block too) raises WriteError, one line.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be shared
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise write_error(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` via a temp file in the same folder and os.replace (`replacing`): all or nothing.

    Raises WriteError (one line) when the file cannot be written; nothing in a multi-process job's other processes.
    """
    from decay import distributed

    if not distributed.is_writer():
        return
    with replacing(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        try:
            os.remove(tmp)
        except OSError:
            pass


def read_json(path: str) -> Any:
    """One JSON document; one-line ConfigError when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({getattr(e, 'msg', e)}); restore it, or give a new --workdir") from None
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror})") from None


def read_jsonl(path: str, schema: int | None = None) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; [] when it does not exist.

    One-line ConfigError naming the file and line for a line that is not a JSON object (damaged, truncated or
    edited by hand) and, with `schema` (a study resuming its rows, `decay.row.SCHEMA`), for a row of another schema.
    """
    if not os.path.exists(path):
        return []
    rows = []
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file of JSON lines; restore it, or give a new --workdir") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            cut = " (the file ends in the middle of it: truncated)" if i == len(lines) and line.strip() else ""
            raise ConfigError(
                f"{path}:{i} is not valid JSON ({e.msg}){cut}; delete that line to retrain its run, or restore the file"
            ) from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{i} is a JSON {type(row).__name__}, not a row; delete that line to retrain its run")
        found = row.get("schema", 0)
        if schema is not None and found != schema:
            older = "an older" if isinstance(found, int) and found < schema else "another"
            raise ConfigError(
                f"{path}:{i} is a row of schema {found!r} ({older} decay; this one writes schema {schema}): finish that"
                " study with the decay that wrote it, or give a new --workdir"
            )
        rows.append(row)
    return rows


def append_jsonl(path: str, row: dict[str, Any]) -> None:
    """Appends one row; the file is replaced atomically, so a crash never leaves half a line."""
    from decay import distributed

    if not distributed.is_writer():
        return
    old = ""
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = f.read()
        except OSError as e:
            raise write_error(path, e) from None
        if old and not old.endswith("\n"):
            old += "\n"
    write_atomic(path, old + json.dumps(row, allow_nan=False) + "\n")
