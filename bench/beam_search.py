"""Benchmark TIGER's batched trie-constrained beam search against one-user-at-a-time HF `generate`.

    python -m bench.beam_search --dataset=amazon --data_path=../shared/datasets

Same model (TIGER after `--train_steps` training batches), same users, same beam size. The
reference is what public generative recommenders do: `generate(num_beams=B, prefix_allowed_tokens_fn=...)`
per user with a Python dict trie. Both must return identical ranked items (asserted). Writes
`bench/results/beam_search.md`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from time import perf_counter

import torch
from recbole.data import create_dataset, data_preparation
from recbole.data.interaction import Interaction, cat_interactions
from recbole.trainer import Trainer

import recbole_navigen  # noqa: F401  (RecBole compatibility shims)
from bench.machine import machine, write_table
from recbole_navigen.config import Config
from recbole_navigen.decoding.hf_reference import dict_trie, generate_one_by_one
from recbole_navigen.model.tiger import END, TIGER
from recbole_navigen.trainer import StepLimited

RESULTS = Path(__file__).parent / "results" / "beam_search.md"


def first_users(test_data, count: int) -> Interaction:
    batches, total = [], 0
    for interaction, *_ in test_data:
        batches.append(interaction)
        total += len(interaction)
        if total >= count:
            break
    return cat_interactions(batches)[torch.arange(count)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--batch_sizes", default="1,8,32,64")
    parser.add_argument("--train_steps", type=int, default=30)
    args, cmd_args = parser.parse_known_args(argv)
    config = Config("TIGER", args.dataset, config_dict={"epochs": 1, "show_progress": False}, cmd_args=cmd_args)
    train, _, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(config["seed"])
    model = TIGER(config, train._dataset)
    start = perf_counter()
    Trainer(config, model).fit(StepLimited(train, args.train_steps), None, saved=False, show_progress=False)
    train_seconds = perf_counter() - start
    model.eval()
    users = first_users(test, args.users)
    input_ids, attention_mask = model.encoder_inputs(users)

    start = perf_counter()
    trie = dict_trie(model.item_tokens[1:], END)
    reference = generate_one_by_one(model.t5, input_ids, attention_mask, trie, model.levels, model.beam_size)
    reference_seconds = perf_counter() - start
    rows = [f"| HF `generate` + prefix_allowed_tokens_fn, one user at a time | 1 | "
            f"{args.users / reference_seconds:.1f} | 1.00 | n/a |"]

    for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
        timings: dict[str, float] = {}
        ranked = []
        start = perf_counter()
        for first in range(0, args.users, batch_size):
            result = model.beam_search(users[torch.arange(first, min(first + batch_size, args.users))], timings)
            ranked += [[tuple(model.item_tokens[item].tolist()) for item in row] for row in result.items]
        seconds = perf_counter() - start
        assert ranked == reference, f"batch {batch_size}: ranking differs from HF generate"
        trie_share = timings["trie"] / (timings["trie"] + timings["model"])
        rows.append(f"| batched constrained beam search | {batch_size} | {args.users / seconds:.1f} | "
                    f"{reference_seconds / seconds:.2f} | {trie_share:.1%} |")

    table = "\n".join([
        f"# Constrained beam search on `{args.dataset}`", "",
        f"Machine: {machine()}. Command: `python -m bench.beam_search {' '.join(argv)}`.", "",
        f"TIGER ({sum(p.numel() for p in model.parameters()):,} parameters, trained {args.train_steps} batches in "
        f"{train_seconds:.0f} s), "
        f"{model.levels} code levels, beam size {model.beam_size}, {args.users} test users, "
        f"{model.n_items - 1:,} items. Every row returned the same ranked items for every user as the reference.",
        "",
        "| method | users per call | users/s | speed-up | time in trie + masks |",
        "|---|---|---|---|---|",
        *rows, "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_table(RESULTS, table)


if __name__ == "__main__":
    main(sys.argv[1:])
