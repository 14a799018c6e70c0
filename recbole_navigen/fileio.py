"""Atomic file writing (a reader never sees half a file, a killed job never leaves one), the append-only
JSONL logs that resumable jobs read back, and the settings hashes that name cache folders."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)


@contextmanager
def atomic_open(path: str | os.PathLike, newline: str | None = None) -> Iterator[IO[str]]:
    """Open `<path>.partial` for writing text and move it onto `path` only once the block succeeds."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8", newline=newline) as stream:
            yield stream
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_open(path) as stream:
        stream.write(text)


def read_jsonl_log(path: str | os.PathLike, key: str, what: str = "record") -> dict[str, dict]:
    """The rows of an append-only JSONL log, the last one per `row[key]`. A torn last line (a kill mid-write)
    is cut off the file, so appending continues on a clean line; any other bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        logger.warning("dropping a truncated last line from %s", path)
        with open(path, "r+b") as stream:
            stream.truncate(len(complete))
    rows = {}
    for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            rows[row[key]] = row
        except (json.JSONDecodeError, TypeError, KeyError) as error:
            raise ValueError(f"{path}:{number} is not a {what} ({error}); only the last line may be torn: "
                             "delete the file to start over") from None
    return rows


def read_jsonl(path: str | os.PathLike, what: str = "JSONL file") -> list[dict]:
    """Every JSON line of `path` (blank lines skipped); a missing file or a bad line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
    return rows


def settings_hash(settings, length: int = 12) -> str:
    """A short, stable hash of `settings` (JSON-like; other values by their str) naming a cache folder.
    Mapping keys count as strings, so YAML's `1:` beside `rl:` hashes as JSON would write it."""
    text = json.dumps(_string_keys(settings), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _string_keys(value):
    if isinstance(value, dict):
        return {str(key): _string_keys(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_string_keys(item) for item in value]
    return value
