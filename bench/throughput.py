"""Training and evaluation throughput of SASRec, TIGER and NaviGen on the same data and users.

    python -m bench.throughput --dataset=amazon --data_path=../shared/datasets --models=SASRec,TIGER,NaviGen

Per model: training examples/s over `--train_batches` optimizer steps (Adam, the model's own batch size,
after one warm-up step) and, for NaviGen, training tokens/s; evaluated users/s of `full_sort_predict`
(beam search for TIGER and NaviGen) over the same `--eval_users` test users; on CUDA, peak GPU memory. A
model may carry its own settings after `@` (`NaviGen@precision=bf16@train_batch_size=64`), so variants of
one model are rows of one run. Untrained weights: this measures cost, not quality. Writes
`bench/results/throughput.md`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from time import perf_counter

import torch
from recbole.data import create_dataset, data_preparation

import recbole_navigen  # noqa: F401  (RecBole compatibility shims)
from bench.beam_search import first_users
from bench.machine import machine, write_table
from recbole_navigen.config import Config

RESULTS = Path(__file__).parent / "results" / "throughput.md"


def measure(spec: str, dataset: str, train_batches: int, eval_users: int, cmd_args: list[str]) -> str:
    name, *settings = spec.split("@")
    config = Config(name, dataset, config_dict={"show_progress": False},
                    cmd_args=cmd_args + [f"--{setting}" for setting in settings])
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(config["seed"])
    model = config.model_class(config, train._dataset).to(config["device"])
    cuda = config["device"].type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config["learning_rate"])
    batches = iter(train)
    examples = 0
    start = None
    for step in range(train_batches + 1):
        if step == 1:  # the first step warms up allocators and caches
            _synchronize(cuda)
            start, examples = perf_counter(), 0
            tokens_before = getattr(model, "trained_tokens", 0)
        interaction = next(batches).to(config["device"])
        optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        optimizer.step()
        examples += len(interaction)
    _synchronize(cuda)
    train_seconds = perf_counter() - start
    tokens = getattr(model, "trained_tokens", 0) - tokens_before  # NaviGen counts its chats' tokens
    model.eval()
    users = first_users(test, eval_users).to(config["device"])
    start = perf_counter()
    with torch.no_grad():
        for first in range(0, eval_users, config["eval_batch_size"]):
            model.full_sort_predict(users[torch.arange(first, min(first + config["eval_batch_size"], eval_users))])
    _synchronize(cuda)
    eval_seconds = perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    token_rate = f"{tokens / train_seconds:,.0f}" if tokens else "n/a"
    memory = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if cuda else "n/a"
    return (f"| {spec} | {params:,} | {config['train_batch_size']} | {examples / train_seconds:,.1f} | "
            f"{token_rate} | {eval_users / eval_seconds:,.1f} | {memory} |")


def _synchronize(cuda: bool) -> None:
    if cuda:  # kernels run asynchronously: time them finished
        torch.cuda.synchronize()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--models", default="SASRec,TIGER,NaviGen")
    parser.add_argument("--train_batches", type=int, default=10)
    parser.add_argument("--eval_users", type=int, default=64)
    parser.add_argument("--output", type=Path, default=RESULTS, help="the markdown table to write")
    args, cmd_args = parser.parse_known_args(argv)
    rows = [measure(name, args.dataset, args.train_batches, args.eval_users, cmd_args)
            for name in args.models.split(",")]
    table = "\n".join([
        f"# Throughput on `{args.dataset}`", "",
        f"Machine: {machine()}. Command: `python -m bench.throughput {' '.join(argv)}`"
        + (f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})." if "OMP_NUM_THREADS" in os.environ else "."), "",
        "Each model with its own defaults (`properties/<Model>.yaml`); untrained weights; one process, "
        "models one after another. NaviGen's backbone is `llm_path` (default `tiny`: a random 4-layer, "
        "128-wide Llama, with LoRA); its chats are padded per task.", "",
        "| model | parameters | batch | training examples/s | training tokens/s | evaluated users/s | peak GPU GiB |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
    ])
    write_table(args.output, table)


if __name__ == "__main__":
    main(sys.argv[1:])
