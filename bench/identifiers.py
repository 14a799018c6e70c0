"""Benchmark the identifier layer on a real catalogue: CID build (rq_kmeans vs rq_vae) and TID extraction.

    python -m bench.identifiers --dataset=amazon --data_path=../shared/datasets

Both quantizers read the same text embeddings; writes `bench/results/identifiers.md`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from time import perf_counter

from recbole.data import create_dataset

import recbole_navigen  # noqa: F401  (RecBole compatibility shims)
from bench.machine import machine, write_table
from recbole_navigen.config import Config
from recbole_navigen.identifiers.build import CID_KEYS, identifier_settings, load_or_build_embeddings
from recbole_navigen.identifiers.item_text import build_item_texts
from recbole_navigen.identifiers.quantize import build_cids
from recbole_navigen.identifiers.tid_keyphrase import extract_terms_keyphrase

RESULTS = Path(__file__).parent / "results" / "identifiers.md"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon")
    args, cmd_args = parser.parse_known_args(argv)
    config = Config("SASRec", args.dataset, cmd_args=cmd_args)
    items = build_item_texts(create_dataset(config), config["item_text_fields"], config["item_text_missing"])
    n_items = len(items.texts) - 1

    # Through the identifier cache: a later `identifiers` command reuses these embeddings.
    cache = Path(config["identifiers_dir"]) / config["dataset_name"]
    cache.mkdir(parents=True, exist_ok=True)
    embeddings, embedding_stats = load_or_build_embeddings(config, items, identifier_settings(config, items)["embedding"], cache)
    embed_note = f"{embedding_stats.get('seconds', float('nan')):.1f} s" + (
        " (when built; read from the identifier cache here)" if embedding_stats["cached"] else "")

    rows = []
    for method in ("rq_kmeans", "rq_vae"):
        options = {key: config[key] for key in CID_KEYS[method]}
        result = build_cids(embeddings, method, config["cid_levels"], config["cid_codebook_size"], config["seed"],
                            **options)
        stats = result.stats
        rows.append(
            f"| {method} | {stats['build_seconds']:.1f} | {stats['collision_rate']:.4f} | "
            f"{stats['max_collision_group']} | {'yes' if stats['extra_level'] else 'no'} | "
            + " / ".join(f"{u:.3f}" for u in stats["utilisation"]) + " | "
            + " / ".join(f"{p:.1f}" for p in stats["perplexity"]) + " |"
        )

    start = perf_counter()
    extract_terms_keyphrase(items, config["tid_max_terms"], config["tid_phrase_fields"],
                            config["tid_category_field"], config["tid_brand_field"])
    tid_seconds = perf_counter() - start

    table = "\n".join([
        f"# Identifier build on `{args.dataset}` ({n_items:,} items)", "",
        f"Machine: {machine()}. "
        f"Command: `python -m bench.identifiers --dataset={args.dataset} {' '.join(cmd_args)}`.", "",
        f"Text embeddings (`{config['text_encoder']}`, dim {embeddings.shape[1]}): {embed_note}, shared by "
        f"both quantizers. CID: {config['cid_levels']} levels x {config['cid_codebook_size']} codes; rq_vae: "
        f"{config['rqvae_epochs']} epochs, hidden {config['rqvae_hidden_sizes']}, latent {config['rqvae_latent_dim']}.",
        "",
        "| CID method | build s | collision rate before de-dup | max items per code | extra level | "
        "utilisation a / b / c | perplexity a / b / c |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
        f"TID `keyphrase`: {tid_seconds:.2f} s for {n_items:,} items = "
        f"{1000 * tid_seconds / n_items:.3f} s per 1,000 items.", "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_table(RESULTS, table)


if __name__ == "__main__":
    main(sys.argv[1:])
