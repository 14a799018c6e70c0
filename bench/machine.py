"""What a benchmark ran on, for the header of its table."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def machine() -> str:
    """CPU model (or GPU name), torch threads and version."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
        device = names[0] if names else platform.processor() or "unknown CPU"
    return f"{device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def write_table(path: Path, table: str) -> None:
    """Write a benchmark's markdown to `path` (folders made as needed) and print it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)
    print(table)
