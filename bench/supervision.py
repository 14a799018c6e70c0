"""Throughput of the supervision pipeline with an LLM teacher: samples/s against a local OpenAI-compatible
server (bench/latency_server.py, started here on 127.0.0.1) that answers every request after a fixed
artificial latency, at several teacher concurrencies, with the offline heuristic teacher for reference.

    python -m bench.supervision --dataset=amazon --data_path=../shared/datasets

Each run writes to a fresh temporary folder with the response cache off, so every request reaches the server.
Writes `bench/results/supervision.md`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from recbole.data import create_dataset, data_preparation

import recbole_navigen  # noqa: F401  (RecBole compatibility shims)
from bench.latency_server import start_server, supervision_answer
from bench.machine import machine, write_table
from recbole_navigen.config import Config
from recbole_navigen.supervision.pipeline import run_supervision

RESULTS = Path(__file__).parent / "results" / "supervision.md"


def measure(dataset: str, teacher: str, concurrency: int, users: int, rounds: int, base_url: str,
            cmd_args: list[str], folder: Path) -> dict:
    """One supervision run from scratch; its summary."""
    settings = {"supervision_teacher": teacher, "teacher_backend": "openai", "teacher_base_url": base_url,
                "teacher_model": "fake-teacher", "teacher_api_key_env": None, "teacher_cache_dir": None,
                "teacher_concurrency": concurrency, "supervision_max_users": users, "supervision_rounds": rounds,
                "supervision_dir": str(folder / f"{teacher}-{concurrency}"), "show_progress": False,
                "state": "WARNING"}
    config = Config("SASRec", dataset, config_dict=settings, cmd_args=cmd_args)
    data = create_dataset(config)
    train, _, _ = data_preparation(config, data)
    return run_supervision(config, data, train._dataset).summary


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--users", type=int, default=48, help="samples per run")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the server waits before each answer")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the markdown table to write")
    args, cmd_args = parser.parse_known_args(argv)
    fake, stop = start_server(latency=args.latency)
    fake.responder = supervision_answer
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in [int(value) for value in args.concurrency.split(",")]:
                fake.requests.clear()
                summary = measure(args.dataset, "openai", concurrency, args.users, args.rounds, fake.base_url,
                                  cmd_args, Path(tmp))
                rows.append((f"openai (fake, {args.latency * 1000:.0f} ms)", concurrency, summary, len(fake.requests)))
            summary = measure(args.dataset, "heuristic", 1, args.users, args.rounds, fake.base_url, cmd_args, Path(tmp))
            rows.append(("heuristic (offline)", 1, summary, 0))
    finally:
        stop()
    sequential = rows[0][2]["seconds"]
    lines = []
    for teacher, concurrency, summary, requests in rows:
        speedup = f"{sequential / summary['seconds']:.2f}" if teacher.startswith("openai") else "n/a"
        lines.append(f"| {teacher} | {concurrency} | {summary['done']} / {summary['samples']} | {summary['seconds']:.2f} | "
                     f"{summary['samples_per_second']:,.2f} | {speedup} | "
                     f"{summary['teacher_calls'] / summary['samples']:.1f} | {requests} |")
    table = "\n".join([
        f"# Supervision throughput on `{args.dataset}`", "",
        f"Machine: {machine()}. Command: `python -m bench.supervision {' '.join(argv)}`.", "",
        f"{args.users} samples per run (users drawn with `supervision_seed`), {args.rounds} search rounds. The LLM "
        f"teacher talks to a local OpenAI-compatible server that waits {args.latency * 1000:.0f} ms before each "
        "answer and answers every step with valid JSON; response cache off. Time is the supervision loop only "
        "(data and identifiers loaded before). Speed-up is against concurrency 1.", "",
        "| teacher | concurrency | samples ok | seconds | samples/s | speed-up | teacher calls per sample | "
        "server requests |",
        "|---|---|---|---|---|---|---|---|",
        *lines, "",
    ])
    write_table(args.output, table)


if __name__ == "__main__":
    main(sys.argv[1:])
