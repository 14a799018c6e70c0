"""Human-readable summaries of built identifiers: the stats table and sample items."""

from __future__ import annotations

import torch

from recbole_navigen.identifiers.build import Identifiers


def collisions_after(identifiers: Identifiers) -> int:
    """Items whose final code another item also has (0 once de-duplicated)."""
    codes = identifiers.tokenizer.codes_tensor[1:]
    return int(codes.shape[0] - torch.unique(codes, dim=0).shape[0])


def stats_table(identifiers: Identifiers) -> str:
    """Per-level codebook use, collisions and costs, as markdown."""
    stats = identifiers.stats
    cid, tid, embedding = stats["cid"], stats["tid"], stats["embedding"]
    lines = [
        f"Identifiers of `{stats['dataset']}` ({stats['texts']['items']} items, "
        f"{stats['texts']['missing_text']} without text), stored in `{identifiers.folder}`", "",
        "| level | codebook size | codes used | utilisation | perplexity |", "|---|---|---|---|---|",
    ]
    for level, (use, perplexity) in enumerate(zip(cid["utilisation"], cid["perplexity"])):
        size = identifiers.tokenizer.level_sizes[level]
        lines.append(f"| {'abcdefgh'[level]} | {size} | {round(use * size)} | {use:.3f} | {perplexity:.1f} |")
    lines += [
        "",
        f"- CID: `{cid['method']}`, {cid['levels']} levels; collision rate before de-duplication "
        f"{cid['collision_rate']:.4f} ({cid['collision_groups']} groups, at most {cid['max_collision_group']} items); "
        f"extra level: {'yes' if cid['extra_level'] else 'no'}; "
        f"collisions after: {collisions_after(identifiers)}; built in {cid['build_seconds']:.1f} s",
        f"- embeddings: `{embedding['source']}`, dim {embedding.get('dim', '?')}, computed in "
        f"{embedding.get('seconds', float('nan')):.1f} s{' (read from the cache)' if embedding['cached'] else ''}",
        f"- TID: `{tid['method']}`, {tid['mean_terms']} terms per item on average, "
        f"{tid['seconds_per_1000_items']:.2f} s per 1,000 items",
    ]
    return "\n".join(lines) + "\n"


def sample_items(identifiers: Identifiers, count: int = 10, text_chars: int = 90) -> str:
    """`count` items spread over the catalogue: id, CID, TID and the start of the text."""
    tokenizer = identifiers.tokenizer
    n = len(tokenizer.item_ids) - 1
    picks = sorted({1 + round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    lines = ["| item | CID | TID | text |", "|---|---|---|---|"]
    for item in picks:
        text = identifiers.texts[item].replace("|", "/")
        text = text if len(text) <= text_chars else text[: text_chars - 1] + "…"
        lines.append(f"| {tokenizer.item_ids[item]} | `{tokenizer.cid(item)}` | {', '.join(tokenizer.tid(item))} | {text} |")
    return "\n".join(lines) + "\n"
