"""The fake OpenAI-compatible server for tests (it lives in bench/latency_server.py, shared with the
benchmarks), and a teacher client wired to it."""

from __future__ import annotations

import sys
from pathlib import Path

# `bench` is a folder of the checkout, not an installed package: importable whatever the working directory.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.latency_server import Delay, FakeOpenAI, start_server, supervision_answer  # noqa: E402
from recbole_navigen.teacher.client import TeacherClient  # noqa: E402

__all__ = ["Delay", "FakeOpenAI", "make_client", "start_server", "supervision_answer"]


def make_client(fake: FakeOpenAI, cache_dir: Path | None, **overrides) -> TeacherClient:
    """An openai-backend client on the fake server, fast retries, sleeps recorded in `client.sleeps`."""
    sleeps: list[float] = []
    settings = {
        "backend": "openai",
        "model": "fake-teacher",
        "base_url": fake.base_url,
        "api_key_env": None,
        "timeout": 5.0,
        "max_retries": 2,
        "retry_base_delay": 0.01,
        "concurrency": 2,
        "cache_dir": cache_dir,
        "max_new_tokens": 32,
        "temperature": 0.0,
        "sleep": sleeps.append,
    }
    client = TeacherClient(**{**settings, **overrides})
    client.sleeps = sleeps
    return client
