"""The supervision rows: what one JSONL line holds, the append-only progress file that an interrupted run
resumes from, and the final file written at once in sample order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from recbole_navigen.fileio import atomic_open, read_jsonl_log
from recbole_navigen.supervision.samples import Sample

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def new_row(sample: Sample, teacher: str) -> dict[str, Any]:
    """A row for `sample` before any step has run (status failed until all three steps succeed)."""
    return {"sample_id": sample.sample_id, "user": sample.user, "history": sample.history, "target": sample.target,
            "history_tids": sample.history_tids, "target_tid": sample.target_tid, "teacher": teacher,
            "status": STATUS_FAILED, "error": None, "reasoning": None, "instruction": None,
            "step1": None, "step2": None, "step3": None, "calls": None}


def load_progress(path: Path) -> dict[str, dict[str, Any]]:
    """Rows already in the progress file, the last one per sample (a torn last line is cut off)."""
    return read_jsonl_log(path, "sample_id", "supervision row")


def append_row(stream: IO[str], row: dict[str, Any]) -> None:
    """One finished row, flushed, so a kill loses at most the line being written."""
    stream.write(json.dumps(row, ensure_ascii=False) + "\n")
    stream.flush()


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """All rows as JSONL, atomically: the file exists only once complete."""
    with atomic_open(path) as stream:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
