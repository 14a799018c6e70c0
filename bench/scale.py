"""Scale notes: time and memory of every pipeline stage measured on this machine, per unit of data, and
extrapolated to a 10M-item catalogue with the bottleneck of each stage.

    python -m bench.scale --dataset=amazon --data_path=../shared/datasets

Stages, each through the project's own functions: data loading (RecBole `create_dataset` +
`data_preparation`), identifiers (text embeddings with `SentenceEncoder`, `build_cids` / the residual k-means
steps on the real embeddings and on synthetic ones of 100k and 1M rows, `extract_terms_keyphrase`, and
`PrefixTrie` over synthetic collision-free codes of 1M and 5M items with its batched `allowed` lookups),
supervision (the heuristic teacher's `supervise_sample` per user), SFT (tokens per training chat by task
with the tiny backbone's and SmolLM2's tokenizers, training tokens/s for a few steps) and the constrained
beam search (evaluated users/s; the full-sort score table RecBole ranks from, at 1M items). Time is
wall-clock; memory is the peak growth of this process's resident set over the stage (sampled every 5 ms)
or the size of the stage's dominant data structure. Writes `bench/results/scale.md`.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import resource
import sys
import threading
from pathlib import Path
from statistics import mean, median
from time import perf_counter

import numpy as np
import psutil
import torch
from recbole.data import create_dataset, data_preparation

import recbole_navigen  # noqa: F401  (RecBole compatibility shims)
from bench.beam_search import first_users
from bench.machine import machine, write_table
from recbole_navigen.config import Config
from recbole_navigen.decoding.beam_search import BeamResult, beams_to_scores
from recbole_navigen.identifiers.build import CID_KEYS, identifier_settings, load_or_build_embeddings
from recbole_navigen.identifiers.embeddings import SentenceEncoder
from recbole_navigen.identifiers.item_text import ItemTexts, build_item_texts
from recbole_navigen.identifiers.quantize import (
    build_cids,
    code_stats,
    deduplicate,
    encode,
    faiss,
    residual_kmeans,
)
from recbole_navigen.identifiers.tid_keyphrase import extract_terms_keyphrase
from recbole_navigen.identifiers.trie import PrefixTrie
from recbole_navigen.llm.pretrained import resolve_pretrained
from recbole_navigen.model.navigen_tasks import TASKS, cid2ins_sample, encode_for_training
from recbole_navigen.supervision.heuristic import HeuristicTeacher
from recbole_navigen.supervision.pipeline import supervise_sample
from recbole_navigen.supervision.samples import training_samples

RESULTS = Path(__file__).parent / "results" / "scale.md"
TARGET_ITEMS = 10_000_000
M = 1_000_000

# Rates measured in earlier runs, cited by file (not rerun here).
CITED = {
    # bench/results/supervision.md: 8.0 teacher calls per sample (2 rounds); a fake server answering after
    # 100 ms gives 1.21 samples/s at concurrency 1 and 14.22 samples/s at concurrency 16.
    "llm_calls": 8.0, "llm_latency": 0.1, "llm_rate_1": 1.21, "llm_rate_16": 14.22,
    # bench/results/throughput_precision_h100.md: NaviGen, ~300M backbone fully fine-tuned, fp32, H100:
    # 13,399 training tokens/s, 65.9 evaluated users/s (beam 20).
    "h100_tokens": 13_399, "h100_users": 65.9,
    # bench/results/navigen_quality_h200.md: tiny backbone on an H200: 4 epochs x 800 steps x 64 chats in
    # 155.0 s of training (validation included), 1,462 evaluated users/s.
    "h200_tiny_chats": 4 * 800 * 64 / 155.0, "h200_tiny_users": 1462,
    # bench/results/throughput_smollm2.md: SmolLM2-135M with LoRA on this CPU: 69 tokens/s, 0.6 users/s.
    "cpu_smollm2_tokens": 69, "cpu_smollm2_users": 0.6,
}


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


LIBC = _libc()


class Stage:
    """Wall time and peak resident-set growth of a block (a thread samples the RSS every 5 ms).

    Freed memory stays in the process (glibc keeps it for reuse), so a later block could grow without the RSS
    showing it: each block starts with a garbage collection and `malloc_trim`, which hands free memory back."""

    def __init__(self) -> None:
        self._process = psutil.Process()

    def __enter__(self) -> Stage:
        gc.collect()
        if LIBC is not None and hasattr(LIBC, "malloc_trim"):
            LIBC.malloc_trim(0)
        self.base = self._process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.start = perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self.seconds = perf_counter() - self.start
        self._stop.set()
        self._thread.join()
        end = self._process.memory_info().rss
        self.peak = max(self.peak, end)
        self.peak_growth = self.peak - self.base
        self.retained = end - self.base


def mib(n_bytes: float) -> str:
    if n_bytes < 2**20:
        return f"{n_bytes / 2**10:,.0f} KiB"
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:,.2f} GiB"


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:,.1f} ms"
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:,.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------ 1. data


def measure_data(config) -> dict:
    with Stage() as stage:
        dataset = create_dataset(config)
        interactions = dataset.inter_num  # before data_preparation, which leaves the dataset changed
        train, valid, test = data_preparation(config, dataset)
    splits = [loader._dataset for loader in (train, valid, test)]
    return {
        "dataset": dataset, "train": train, "test": test, "seconds": stage.seconds,
        "peak": stage.peak_growth, "retained": stage.retained,
        "interactions": interactions, "users": dataset.user_num - 1, "items": dataset.item_num - 1,
        "train_examples": len(splits[0]),
        "split_bytes": sum(tensor_bytes(split.inter_feat.interaction.values()) for split in splits),
    }


# ------------------------------------------------------------------ 2. identifiers


def measure_embeddings(config, texts: list[str], count: int) -> dict:
    with Stage() as load:
        encoder = SentenceEncoder(config["text_encoder"], config["pretrained_cache_dir"],
                                  config["text_encoder_max_length"])
    sample = texts[:count]
    encoder.encode(sample[:8], config["text_encoder_batch_size"])  # warm-up
    with Stage() as run:
        rows = encoder.encode(sample, config["text_encoder_batch_size"])
    return {"load_seconds": load.seconds, "seconds": run.seconds, "count": count, "peak": run.peak_growth,
            "model_rss": load.retained, "dim": rows.shape[1], "bytes_per_item": rows.shape[1] * rows.itemsize,
            "mean_chars": mean(len(text) for text in sample)}


def measure_kmeans_real(config, embeddings: np.ndarray) -> list[dict]:
    options = {key: config[key] for key in CID_KEYS["rq_kmeans"]}
    rows = []
    for n in (len(embeddings) // 2, len(embeddings)):
        with Stage() as stage:
            result = build_cids(embeddings[:n], "rq_kmeans", config["cid_levels"], config["cid_codebook_size"],
                                config["seed"], **options)
        rows.append({"n": n, "seconds": stage.seconds, "peak": stage.peak_growth,
                     "collision_rate": result.stats["collision_rate"],
                     "max_group": result.stats["max_collision_group"]})
    return rows


def measure_kmeans_synthetic(config, n: int, dim: int) -> dict:
    """The steps of `rq_kmeans` + `build_cids` (training incl. residuals, encoding, de-duplication) on random
    unit vectors, timed apart."""
    rng = np.random.default_rng(config["seed"])
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    levels, size, niter = config["cid_levels"], config["cid_codebook_size"], config["kmeans_niter"]
    with Stage() as stage:
        start = perf_counter()
        codebooks = residual_kmeans(x, levels, size, config["seed"], niter)
        train_seconds = perf_counter() - start
        start = perf_counter()
        codes = encode(x, codebooks)
        encode_seconds = perf_counter() - start
        start = perf_counter()
        unique = deduplicate(codes)
        stats = code_stats(codes, size)
        dedup_seconds = perf_counter() - start
    del x
    return {"n": n, "dim": dim, "seconds": stage.seconds, "train": train_seconds, "encode": encode_seconds,
            "dedup": dedup_seconds, "peak": stage.peak_growth, "collision_rate": stats["collision_rate"],
            "extra_level": unique.shape[1] > levels}


def measure_tid(config, items, n: int) -> dict:
    """`extract_terms_keyphrase` over the first `n` items of the catalogue."""
    part = ItemTexts(items.item_ids[:n + 1], {field: values[:n + 1] for field, values in items.fields.items()},
                     items.texts[:n + 1], [])
    with Stage() as stage:
        extract_terms_keyphrase(part, config["tid_max_terms"], config["tid_phrase_fields"],
                                config["tid_category_field"], config["tid_brand_field"])
    return {"seconds": stage.seconds, "peak": stage.peak_growth, "n": n}


def time_lookups(trie: PrefixTrie, codes: torch.Tensor, batch: int, repeats: int, seed: int) -> float:
    """Seconds of one round of `allowed` lookups, one batch of `batch` real prefixes at every depth 0..L (what
    one beam search asks of the trie for `batch` beams): the median of `repeats` rounds."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(codes), (batch,), generator=generator)
    prefixes = [codes[rows, :depth].contiguous() for depth in range(trie.depth + 1)]
    for prefix in prefixes:
        trie.allowed(prefix)  # warm-up
    rounds = []
    for _ in range(repeats):
        start = perf_counter()
        for prefix in prefixes:
            trie.allowed(prefix)
        rounds.append(perf_counter() - start)
    return median(rounds)  # a shared machine: the median is robust to a descheduled thread


def measure_trie(config, n: int, batch: int) -> dict:
    """PrefixTrie over `n` synthetic codes: uniform random values on `cid_levels` levels of `cid_codebook_size`
    codes, made unique by the project's `deduplicate` (extra level on collision), as the build does."""
    levels, size = config["cid_levels"], config["cid_codebook_size"]
    generator = torch.Generator().manual_seed(config["seed"])
    raw = torch.randint(size, (n, levels), generator=generator).numpy()
    collision_rate = code_stats(raw, size)["collision_rate"]
    codes = torch.from_numpy(deduplicate(raw))
    del raw
    level_sizes = [size] * levels + ([int(codes[:, -1].max()) + 1] if codes.shape[1] > levels else [])
    with Stage() as stage:
        trie = PrefixTrie(codes, level_sizes)
    structure = tensor_bytes(trie._keys) + tensor_bytes(trie._tables) + tensor_bytes([trie._items])
    tables = tensor_bytes(trie._tables)
    lookup = time_lookups(trie, codes, batch, 50, config["seed"])
    del trie, codes
    gc.collect()
    return {"n": n, "seconds": stage.seconds, "peak": stage.peak_growth, "bytes": structure, "tables": tables,
            "depth": len(level_sizes), "extra_size": level_sizes[levels] if len(level_sizes) > levels else 0,
            "collision_rate": collision_rate, "lookup": lookup}


# ------------------------------------------------------------------ 3. supervision


def measure_supervision(config, train_dataset, tokenizer, users: int) -> dict:
    samples = training_samples(config, train_dataset, tokenizer, users, config["supervision_seed"],
                               config["supervision_max_history"])
    teacher = HeuristicTeacher(config["supervision_seed"])
    with Stage() as stage:
        rows = [supervise_sample(teacher, sample, config["supervision_rounds"]) for sample in samples]
    return {"n": len(rows), "seconds": stage.seconds, "rows": rows, "ok": sum(row["status"] == "ok" for row in rows),
            "calls": mean(row["calls"]["requests"] for row in rows)}


# ------------------------------------------------------------------ 4. SFT


def chat_tokens(samples, hf_tokenizer) -> dict[str, list[int]]:
    """Whole tokens of each training chat (prompt + answer + eos, no padding, not cut to `max_length`) by task,
    as `encode_for_training` tokenizes it."""
    by_task: dict[str, list[int]] = {}
    for sample in samples:
        by_task.setdefault(sample.task, []).append(sample)
    return {task: encode_for_training(group, hf_tokenizer, 10**9)["attention_mask"].sum(1).tolist()
            for task, group in by_task.items()}


def measure_sft(config, model, train, supervision_rows: list[dict], batches: int, steps: int) -> dict:
    items = model.items
    samples = []
    for _, interaction in zip(range(batches), train):
        samples += model.samples(interaction)
    ins = [cid2ins_sample(items, [items.index_of_item(raw) for raw in row["history"]],
                          items.index_of_item(row["target"]), row["reasoning"], row["instruction"],
                          model.history_format)
           for row in supervision_rows if row["status"] == "ok"]
    tiny = chat_tokens(samples + ins, model.hf_tokenizer)

    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained(resolve_pretrained("smollm2-135m", config["pretrained_cache_dir"]))
    items.add_to_tokenizer(smol)
    smollm2 = chat_tokens(samples + ins, smol)
    mix = [sample.task for sample in samples]  # the default task mix as drawn

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config["learning_rate"])
    model.train()
    loader = iter(train)
    start, chats, tokens = perf_counter(), 0, 0
    for step in range(steps + 1):
        if step == 1:  # the first step warms up
            start, chats, tokens = perf_counter(), 0, model.trained_tokens
        interaction = next(loader)
        optimizer.zero_grad()
        model.calculate_loss(interaction).backward()
        optimizer.step()
        chats += len(interaction)
    seconds = perf_counter() - start
    return {"tiny": tiny, "smollm2": smollm2, "mix": mix, "chats": chats, "seconds": seconds,
            "tokens": model.trained_tokens - tokens, "vocab_tiny": len(model.hf_tokenizer), "vocab_smol": len(smol)}


def mix_mean(tokens: dict[str, list[int]], mix: list[str]) -> float:
    """Mean tokens per chat of the drawn task mix (each drawn chat weighs its task's mean)."""
    return mean(mean(tokens[task]) for task in mix)


# ------------------------------------------------------------------ 5. beam search


def measure_beam(model, test, users: int, batch: int) -> dict:
    model.eval()
    interaction = first_users(test, users)
    timings: dict[str, float] = {}
    with torch.no_grad():
        model.beam_search(interaction[torch.arange(min(batch, users))])  # warm-up
        start = perf_counter()
        for first in range(0, users, batch):
            result = model.beam_search(interaction[torch.arange(first, min(first + batch, users))], timings)
            beams_to_scores(result, model.n_items)
        seconds = perf_counter() - start
    return {"users": users, "batch": batch, "seconds": seconds, "trie_share": timings["trie"] / sum(timings.values())}


def measure_score_table(n_items: int, batch: int, beams: int, topk: int, seed: int) -> float:
    """Seconds per user of RecBole's full-sort path after the beams: the `[batch, n_items]` score table of
    `beams_to_scores` and its top-k."""
    generator = torch.Generator().manual_seed(seed)
    result = BeamResult(torch.randint(1, n_items, (batch, beams), generator=generator),
                        torch.randn(batch, beams, generator=generator), torch.zeros(batch, beams, 1))
    torch.topk(beams_to_scores(result, n_items), topk, dim=1)  # warm-up
    rounds = []
    for _ in range(5):
        start = perf_counter()
        torch.topk(beams_to_scores(result, n_items), topk, dim=1)
        rounds.append(perf_counter() - start)
    return median(rounds) / batch


# ------------------------------------------------------------------ report


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon")
    parser.add_argument("--embed_texts", type=int, default=512)
    parser.add_argument("--synthetic_rows", default="100000,1000000", help="rows of the synthetic k-means runs")
    parser.add_argument("--trie_sizes", default="1000000,5000000", help="items of the synthetic tries")
    parser.add_argument("--lookup_batch", type=int, default=1280, help="prefixes per lookup (64 users x 20 beams)")
    parser.add_argument("--supervision_users", type=int, default=200)
    parser.add_argument("--token_batches", type=int, default=20, help="training batches whose chats are counted")
    parser.add_argument("--train_steps", type=int, default=8)
    parser.add_argument("--beam_users", type=int, default=128)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args, cmd_args = parser.parse_known_args(argv)
    begin, load_start = perf_counter(), os.getloadavg()[0]
    config = Config("NaviGen", args.dataset, config_dict={"show_progress": False, "state": "WARNING"},
                    cmd_args=cmd_args)
    torch.manual_seed(config["seed"])

    print("1. data", flush=True)
    data = measure_data(config)
    n_inter, n_users, n_items = data["interactions"], data["users"], data["items"]
    inter_per_item, users_per_item = n_inter / n_items, n_users / n_items
    big_inter, big_users = TARGET_ITEMS * inter_per_item, TARGET_ITEMS * users_per_item
    chats_per_inter = data["train_examples"] / n_inter

    # Torch-heavy stages first, then the faiss-heavy ones: faiss brings its own OpenMP runtime.
    print("2. embeddings", flush=True)
    items = build_item_texts(data["dataset"], config["item_text_fields"], config["item_text_missing"])
    embed = measure_embeddings(config, items.texts[1:], args.embed_texts)

    print("NaviGen model", flush=True)
    with Stage() as model_stage:
        model = config.model_class(config, data["train"]._dataset)
    real_trie = model.trie
    real_lookup = time_lookups(real_trie, model.items.codes_tensor[1:], args.lookup_batch, 50, config["seed"])

    print("3. supervision", flush=True)
    supervision = measure_supervision(config, data["train"]._dataset, model.items, args.supervision_users)

    print("4. SFT", flush=True)
    sft = measure_sft(config, model, data["train"], supervision["rows"], args.token_batches, args.train_steps)

    print("5. beam search", flush=True)
    beam = measure_beam(model, data["test"], args.beam_users, config["eval_batch_size"])
    table_per_user = measure_score_table(M, config["eval_batch_size"], model.beam_size, max(config["topk"]),
                                         config["seed"])

    print("2. CID, TID, trie", flush=True)
    cache = Path(config["identifiers_dir"]) / config["dataset_name"]
    cache.mkdir(parents=True, exist_ok=True)
    embeddings, _ = load_or_build_embeddings(config, items, identifier_settings(config, items)["embedding"], cache)
    real_kmeans = measure_kmeans_real(config, embeddings)
    synthetic = [measure_kmeans_synthetic(config, int(n), embeddings.shape[1]) for n in args.synthetic_rows.split(",")]
    tids = [measure_tid(config, items, n) for n in (n_items // 2, n_items)]
    tries = [measure_trie(config, int(n), args.lookup_batch) for n in args.trie_sizes.split(",")]
    wall = perf_counter() - begin
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # ---------------------------------------------------------------- derived numbers
    load_per_m = data["seconds"] / n_inter * M
    load_mem_per_m = data["peak"] / n_inter * M
    split_per_m = data["split_bytes"] / n_inter * M
    embed_rate = embed["count"] / embed["seconds"]
    kmeans_1m = max(synthetic, key=lambda row: row["n"])
    kmeans_scale = TARGET_ITEMS / kmeans_1m["n"]
    tid = tids[-1]
    tid_per_item = tid["seconds"] / tid["n"]
    trie_big = max(tries, key=lambda row: row["n"])
    trie_bytes_per_item = trie_big["bytes"] / trie_big["n"]
    capacity = config["cid_codebook_size"] ** config["cid_levels"]
    uniform_collisions = 1 - (1 - 1 / capacity) ** (TARGET_ITEMS - 1)
    heur_per_sample = supervision["seconds"] / supervision["n"]
    llm_16 = CITED["llm_rate_16"]
    tiny_mix = mix_mean(sft["tiny"], sft["mix"])
    smol_mix = mix_mean(sft["smollm2"], sft["mix"])
    cpu_tokens = sft["tokens"] / sft["seconds"]
    cpu_chats = sft["chats"] / sft["seconds"]
    chats_per_m = chats_per_inter * M
    tokens_per_m = chats_per_m * tiny_mix
    beam_rate = beam["users"] / beam["seconds"]
    big_chats = chats_per_inter * big_inter
    real_build = next(row for row in real_kmeans if row["n"] == n_items)

    # ---------------------------------------------------------------- tables
    measured = [
        f"| 1. data | RecBole `create_dataset` + `data_preparation` | {n_inter:,} interactions, {n_users:,} users, "
        f"{n_items:,} items | {data['seconds']:.1f} | peak +{mib(data['peak'])}, retained +{mib(data['retained'])}; "
        f"split tensors {mib(data['split_bytes'])} ({data['train_examples']:,} training examples) |",
        f"| 2. embeddings | load `{config['text_encoder']}` | 1 model | {embed['load_seconds']:.1f} | "
        f"+{mib(embed['model_rss'])} |",
        f"| 2. embeddings | `SentenceEncoder.encode`, batch {config['text_encoder_batch_size']} | {embed['count']:,} "
        f"item texts (mean {embed['mean_chars']:,.0f} chars) | {embed['seconds']:.1f} | peak +{mib(embed['peak'])}; "
        f"matrix {embed['dim']} x 4 B = {embed['bytes_per_item']:,} B per item |",
    ]
    for row in real_kmeans:
        measured.append(f"| 2. CID | `build_cids` rq_kmeans, real embeddings | {row['n']:,} items | {row['seconds']:.2f} | "
                        f"peak +{mib(row['peak'])}; collision rate {row['collision_rate']:.3f}, largest group "
                        f"{row['max_group']} |")
    for row in synthetic:
        measured.append(
            f"| 2. CID | rq_kmeans steps, random unit vectors dim {row['dim']} | {row['n']:,} rows | {row['seconds']:.1f} "
            f"(train + residuals {row['train']:.1f}, encode {row['encode']:.1f}, de-dup + stats {row['dedup']:.1f}) | "
            f"peak +{mib(row['peak'])} (input matrix {mib(row['n'] * row['dim'] * 4)} not counted) |")
    for row in tids:
        measured.append(f"| 2. TID | `extract_terms_keyphrase` | {row['n']:,} items | {row['seconds']:.2f} | "
                        f"peak +{mib(row['peak'])} |")
    for row in tries:
        extra = f", extra level of {row['extra_size']}" if row["extra_size"] else ""
        measured.append(
            f"| 2. trie | `PrefixTrie` build, uniform codes {config['cid_levels']} x {config['cid_codebook_size']} "
            f"de-duplicated ({row['collision_rate']:.1%} collided{extra}) | {row['n']:,} items | {row['seconds']:.2f} | "
            f"peak +{mib(row['peak'])}; structure {mib(row['bytes'])} ({mib(row['tables'])} bool tables) |")
    for label, n, lookup in [(f"synthetic {row['n']:,}", row["n"], row["lookup"]) for row in tries] + [
            (f"amazon codes, depth {real_trie.depth}", n_items, real_lookup)]:
        measured.append(f"| 2. trie | `allowed` for {args.lookup_batch:,} prefixes at every depth (one beam search's "
                        f"lookups) | {label} | {lookup * 1000:.2f} ms | n/a |")
    measured += [
        f"| NaviGen | model init (identifiers from cache, tiny backbone) | 1 model | {model_stage.seconds:.1f} | "
        f"+{mib(model_stage.retained)} |",
        f"| 3. supervision | heuristic teacher, `supervise_sample`, {config['supervision_rounds']} rounds | "
        f"{supervision['n']:,} users ({supervision['ok']} ok) | {supervision['seconds']:.2f} | "
        f"{supervision['calls']:.1f} teacher calls per sample |",
        f"| 4. SFT | training steps, tiny backbone + LoRA, batch {config['train_batch_size']} | {args.train_steps} "
        f"steps, {sft['chats']:,} chats, {sft['tokens']:,} tokens | {sft['seconds']:.1f} | "
        f"{cpu_tokens:,.0f} tokens/s, {cpu_chats:.1f} chats/s |",
        f"| 5. beam search | `beam_search` + `beams_to_scores`, beam {model.beam_size}, batch {beam['batch']} | "
        f"{beam['users']} test users | {beam['seconds']:.2f} | {beam_rate:.1f} users/s; trie + masks "
        f"{beam['trie_share']:.1%} of the time |",
        f"| 5. beam search | full-sort score table + top-{max(config['topk'])} (`beams_to_scores`) | {M:,} items, "
        f"batch {config['eval_batch_size']} | {table_per_user * 1000:.2f} ms per user | "
        f"{mib(config['eval_batch_size'] * M * 4)} per batch |",
    ]

    token_rows = []
    for task in TASKS:
        if task in sft["tiny"]:
            drawn = sft["mix"].count(task)
            over = " / ".join(f"{mean(n > model.max_length for n in sft[name][task]):.0%}" for name in ("tiny", "smollm2"))
            token_rows.append(f"| {task} | {len(sft['tiny'][task]):,} | {mean(sft['tiny'][task]):.1f} | "
                              f"{mean(sft['smollm2'][task]):.1f} | {mean(sft['smollm2'][task]) / mean(sft['tiny'][task]):.2f} | "
                              f"{over} | {drawn / len(sft['mix']):.2f} |")
    token_rows.append(f"| drawn mix (`task_ratios` {json.dumps(config['task_ratios'], separators=(',', ':'))}) | "
                      f"{len(sft['mix']):,} | {tiny_mix:.1f} | {smol_mix:.1f} | {smol_mix / tiny_mix:.2f} | n/a | 1.00 |")

    per_unit = [
        f"| 1. data | 1M interactions | {duration(load_per_m)} | peak {mib(load_mem_per_m)}; split tensors "
        f"{mib(split_per_m)} | measured (amazon, linear) |",
        f"| 2. embeddings | 1M items | {duration(M / embed_rate)} (CPU, {embed_rate:.1f} items/s) | "
        f"{mib(embed['bytes_per_item'] * M)} float32 matrix | measured ({embed['count']} texts) |",
        f"| 2. CID rq_kmeans | 1M items | {duration(kmeans_1m['seconds'])} | peak {mib(kmeans_1m['peak'])} + the "
        f"{mib(kmeans_1m['n'] * kmeans_1m['dim'] * 4)} matrix | measured (synthetic 1M) |",
        f"| 2. TID keyphrase | 1M items | {duration(tid_per_item * M)} | peak {mib(tid['peak'] / tid['n'] * M)} | "
        f"measured ({tid['n']:,} items, linear) |",
        f"| 2. trie | 1M items | build {duration(trie_big['seconds'] / trie_big['n'] * M)}; lookups independent "
        f"of size | {trie_bytes_per_item:,.0f} B per item ({mib(trie_bytes_per_item * M)}) | measured "
        f"(synthetic {trie_big['n']:,}) |",
        f"| 3. supervision, heuristic | 1M users (one sample each) | {duration(heur_per_sample * M)} | n/a | "
        f"measured ({supervision['n']} users) |",
        f"| 3. supervision, LLM teacher | 1M users | {duration(M / CITED['llm_rate_1'])} at concurrency 1, "
        f"{duration(M / llm_16)} at 16 ({CITED['llm_calls']:.0f} calls per sample, 100 ms per call) | "
        f"{M * CITED['llm_calls']:,.0f} teacher calls | cited: supervision.md |",
        f"| 4. SFT, tiny backbone, CPU | 1M interactions = {chats_per_m:,.0f} chats = {tokens_per_m / M:,.1f}M "
        f"tokens per epoch | {duration(tokens_per_m / cpu_tokens)} per epoch | n/a | measured |",
        f"| 4. SFT, SmolLM2-135M LoRA, CPU | 1M interactions = {chats_per_m * smol_mix / M:,.1f}M tokens | "
        f"{duration(chats_per_m * smol_mix / CITED['cpu_smollm2_tokens'])} per epoch | n/a | tokens measured, "
        f"rate cited: throughput_smollm2.md ({CITED['cpu_smollm2_tokens']} tokens/s) |",
        f"| 4. SFT, ~300M backbone, H100 | 1M interactions = {tokens_per_m / M:,.1f}M tokens | "
        f"{duration(tokens_per_m / CITED['h100_tokens'])} per epoch | 26.3 GiB GPU peak (batch 32) | tokens measured, "
        f"rate cited: throughput_precision_h100.md ({CITED['h100_tokens']:,} tokens/s) |",
        f"| 4. SFT, tiny backbone, H200 | 1M interactions | {duration(chats_per_m / CITED['h200_tiny_chats'])} per "
        f"epoch | n/a | cited: navigen_quality_h200.md ({CITED['h200_tiny_chats']:,.0f} chats/s incl. validation) |",
        f"| 5. beam search, tiny, CPU | 1M users | {duration(M / beam_rate)} | score table {mib(n_items * 4)} per "
        f"user at {n_items:,} items | measured |",
        f"| 5. beam search, GPU | 1M users | {duration(M / CITED['h200_tiny_users'])} (tiny, H200); "
        f"{duration(M / CITED['h100_users'])} (~300M, H100) | n/a | cited: navigen_quality_h200.md, "
        f"throughput_precision_h100.md |",
        f"| 5. full-sort score table | 1M items, per user | {table_per_user * 1000:.2f} ms | {mib(M * 4)} per user | "
        f"measured |",
    ]

    big_embed_bytes = embed["bytes_per_item"] * TARGET_ITEMS
    extrapolated = [
        f"| 1. data | {big_inter / M:,.0f}M interactions | {duration(load_per_m * big_inter / M)} | peak "
        f"{mib(load_mem_per_m * big_inter / M)}; split tensors {mib(split_per_m * big_inter / M)} | RecBole reads the "
        f"atomic files with pandas in one process and keeps every split's augmented `item_id_list` "
        f"([examples, {config['MAX_ITEM_LIST_LENGTH']}] int64) in memory | chunked loading, int32 ids, history "
        f"windows cut per batch from one sequence per user |",
        f"| 2. embeddings | {TARGET_ITEMS / M:.0f}M item texts | {duration(TARGET_ITEMS / embed_rate)} on this CPU | "
        f"{mib(big_embed_bytes)} float32 matrix | encoder forward passes (CPU) | batched GPU encoding in shards; "
        f"float16 storage halves the matrix |",
        f"| 2. CID rq_kmeans | {TARGET_ITEMS / M:.0f}M x {kmeans_1m['dim']} | {duration(kmeans_1m['seconds'] * kmeans_scale)} "
        f"(linear from 1M) | peak {mib(kmeans_1m['peak'] * kmeans_scale)} + the {mib(big_embed_bytes)} matrix | "
        f"passes over all rows (`np.unique` of the rows, nearest-centroid search, residual copies); training is "
        f"already a sample: faiss trains each level on at most {faiss.Kmeans(8, 8).cp.max_points_per_centroid} x "
        f"{config['cid_codebook_size']} = {faiss.Kmeans(8, 8).cp.max_points_per_centroid * config['cid_codebook_size']:,} rows "
        f"| assign in batches (memory-mapped matrix), GPU faiss search |",
        f"| 2. TID keyphrase | {TARGET_ITEMS / M:.0f}M items | {duration(tid_per_item * TARGET_ITEMS)} (linear) | "
        f"peak {mib(tid['peak'] / tid['n'] * TARGET_ITEMS)} (linear) | one process fits TF-IDF over the whole "
        f"catalogue, every 1- to 3-word phrase in its vocabulary (`min_df` 1) | fit the vocabulary on a sample "
        f"(or hash it), extract in parallel shards |",
        f"| 2. trie | {TARGET_ITEMS / M:.0f}M codes | build {duration(trie_big['seconds'] * TARGET_ITEMS / trie_big['n'])} | "
        f"{mib(trie_bytes_per_item * TARGET_ITEMS)} (CPU or GPU memory in beam search) | dense bool tables of "
        f"{real_trie.k_max + 1} columns for every prefix at each deep level ({trie_big['tables'] / trie_big['bytes']:.0%} "
        f"of the structure) | bitsets (1/8 of the bytes) or keys only at the last level; lookups stay "
        f"O(log n) |",
        f"| 3. supervision | {big_users / M:,.1f}M users (one sample each) | heuristic {duration(heur_per_sample * big_users)}; "
        f"LLM teacher {duration(big_users / llm_16)} at concurrency 16 and 100 ms per call | "
        f"{big_users * CITED['llm_calls'] / M:,.0f}M teacher calls | teacher latency: a sample takes "
        f"{CITED['llm_calls']:.0f} calls, so at most concurrency / ({CITED['llm_calls']:.0f} x latency) samples/s "
        f"(20/s at 16 and 100 ms; supervision.md measured {llm_16}) | more concurrency and servers; `supervision_max_users` caps the samples |",
        f"| 4. SFT | {big_chats / M:,.0f}M chats = {big_chats * tiny_mix / 1e9:,.1f}B tokens per epoch (tiny tokenizer; "
        f"x{smol_mix / tiny_mix:.2f} with SmolLM2's) | {duration(big_chats * tiny_mix / CITED['h100_tokens'])} per epoch on "
        f"one H100 (~300M); {duration(big_chats * tiny_mix / cpu_tokens)} on this CPU (tiny) | n/a | tokens x model "
        f"size: GPU compute | multi-GPU data parallel (`nproc`, DDP/FSDP), `train_steps_per_epoch` or fewer epochs |",
        f"| 5. beam search | {big_users / M:,.1f}M users | {duration(big_users / beam_rate)} on this CPU (tiny); "
        f"{duration(big_users / CITED['h200_tiny_users'])} on an H200 (tiny) | score table {mib(TARGET_ITEMS * 4)} "
        f"per user, {mib(config['eval_batch_size'] * TARGET_ITEMS * 4)} per batch of {config['eval_batch_size']} | "
        f"the model's forward passes per user; independent of the catalogue except RecBole's full-sort table "
        f"({duration(table_per_user * TARGET_ITEMS / M)} per user at 10M, linear) | parallel over users (GPUs); "
        f"`eval_user_sample`; rank from the beams instead of a full score table |",
    ]

    table = "\n".join([
        f"# Scale notes on `{args.dataset}`", "",
        f"Machine: {machine()}. Command: `python -m bench.scale {' '.join(argv)}`"
        + (f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})" if "OMP_NUM_THREADS" in os.environ else "")
        + f". Whole run {wall:.0f} s; the process peaked at {mib(max_rss)} resident. Load average (1 min) "
        f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end: other processes share these cores, "
        "so rates are lower bounds of what an idle machine gives.", "",
        "Every number below is measured in this run unless its row names a results file it is cited from. "
        "Memory is the peak growth of this process's resident set during the step (sampled every 5 ms) or the "
        "size of the step's dominant data structure, as the row says. NaviGen runs with its defaults "
        f"(`tiny` backbone, LoRA, batch {config['train_batch_size']}, beam {model.beam_size}); untrained weights, "
        "so this measures cost, not quality.", "",
        "## Measured", "",
        "| stage | what | size | seconds | memory / notes |",
        "|---|---|---|---|---|",
        *measured, "",
        "Tokens per training chat (prompt + answer + end token, no padding), measured on "
        f"{args.token_batches} real training batches of the tiny backbone's task mix and, for cid2ins, on the "
        f"{supervision['ok']} heuristic supervision samples above; the same chats through the tiny backbone's "
        f"BPE tokenizer ({sft['vocab_tiny']:,} tokens with the code tokens) and SmolLM2-135M's "
        f"({sft['vocab_smol']:,}):", "",
        f"| task | chats | tokens, tiny | tokens, SmolLM2 | ratio | over max_length {model.max_length} (tiny / SmolLM2; "
        "NaviGen leaves such cid2ins examples out) | share of the drawn mix |",
        "|---|---|---|---|---|---|---|",
        *token_rows, "",
        "## Per unit", "",
        f"Training chats: RecBole's sequential augmentation gives one example per interaction after each user's "
        f"first, less the validation and test items: {data['train_examples']:,} of {n_inter:,} interactions = "
        f"{chats_per_inter:.3f} chats per interaction.", "",
        "| stage | unit | time | memory | source |",
        "|---|---|---|---|---|",
        *per_unit, "",
        "## Extrapolated to a 10M-item catalogue", "",
        f"Assumption (extrapolation, not measured): {TARGET_ITEMS / M:.0f}M items with amazon's ratios, "
        f"{inter_per_item:.1f} interactions and {users_per_item:.2f} users per item: {big_inter / M:,.0f}M "
        f"interactions, {big_users / M:,.1f}M users, {big_chats / M:,.0f}M training chats per epoch. Times are "
        "the per-unit rates above times the size, on this machine unless a GPU is named.", "",
        "| stage | work | time | memory | bottleneck | what removes it |",
        "|---|---|---|---|---|---|",
        *extrapolated, "",
        f"Codebook capacity: {config['cid_levels']} levels x {config['cid_codebook_size']} codes = {capacity:,} "
        f"codes for {TARGET_ITEMS:,} items ({TARGET_ITEMS / capacity:.0%} full). Even uniform codes would collide "
        f"for {uniform_collisions:.0%} of the items at 10M (expected 1 - (1 - 1/{capacity:,})^(n-1); measured "
        + ", ".join(f"{row['collision_rate']:.1%} at {row['n']:,}" for row in tries)
        + f"); real k-means codes collide far more: {real_build['collision_rate']:.1%} of amazon's {n_items:,} items "
        f"already (largest group {real_build['max_group']}). Collisions get the extra level (each item's rank in its "
        "group), whose size is the largest group: more code tokens and one more decoding step. A 10M catalogue "
        f"wants a fourth level or larger codebooks ({config['cid_codebook_size']}^4 = "
        f"{config['cid_codebook_size'] ** 4:,}), or a quantizer that spreads codes better (rq_vae collided 3.4% "
        "on amazon in identifiers.md).", "",
        f"Beam search and catalogue size: one round of trie lookups for {args.lookup_batch:,} prefixes took "
        + ", ".join(f"{row['lookup'] * 1000:.2f} ms at {row['n']:,} items" for row in tries)
        + f" and {real_lookup * 1000:.2f} ms at amazon's {n_items:,} (binary search over sorted keys); the model "
        "steps do not depend on the catalogue (the vocabulary grows by the code tokens, not by items). What "
        "grows with items is the trie's memory and RecBole's full-sort score table.", "",
    ])
    write_table(args.output, table)


if __name__ == "__main__":
    main(sys.argv[1:])
