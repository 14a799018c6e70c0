"""Build or load a dataset's identifiers: texts -> embeddings -> CIDs, texts -> TIDs -> ItemTokenizer.

Everything is cached under `identifiers_dir/<dataset>/`, keyed by a hash of what it depends on:
- `embeddings-<hash>.safetensors`: the item embeddings (reused when only the quantizer changes);
- `tid-<hash>.jsonl`: LLM terms, one line per item as it finishes (an interrupted run resumes);
- `<hash>/`: the finished identifiers (`item_tokenizer.json`, `stats.json`, `config.json`), written to a
  temporary folder and renamed, so a folder that exists is complete. A matching hash is reused, any
  change to the data or to an identifier setting builds anew.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from recbole_navigen.fileio import settings_hash, write_text_atomic
from recbole_navigen.identifiers.item_text import ItemTexts, build_item_texts
from recbole_navigen.identifiers.item_tokenizer import FILE_NAME, ItemTokenizer

logger = logging.getLogger(__name__)

TEXT_KEYS = ("item_text_fields", "item_text_missing")
EMBEDDING_KEYS = {
    "text": ("text_encoder", "text_encoder_max_length"),
    "collaborative": ("collab_model", "collab_epochs", "seed"),
}
CID_KEYS = {
    "rq_kmeans": ("kmeans_niter",),
    "rq_vae": ("kmeans_niter", "rqvae_hidden_sizes", "rqvae_latent_dim", "rqvae_epochs", "rqvae_batch_size",
               "rqvae_lr", "rqvae_beta"),
}
# Bumped whenever an extractor's output changes for the same settings, so cached terms are rebuilt.
TID_VERSION = 2
TID_KEYS = {
    "keyphrase": ("tid_phrase_fields", "tid_category_field", "tid_brand_field"),
    "llm": ("teacher_backend", "teacher_base_url", "teacher_model", "teacher_max_new_tokens", "teacher_temperature"),
}


@dataclass
class Identifiers:
    """A dataset's identifiers: the tokenizer (CIDs, TIDs, trie), build stats and where they are stored."""

    tokenizer: ItemTokenizer
    stats: dict
    folder: Path
    texts: list[str]


def _choice(config, key: str, table: dict) -> tuple[str, ...]:
    if config[key] not in table:
        raise ValueError(f"{key} must be one of {sorted(table)}, not {config[key]!r}")
    return table[config[key]]


def identifier_settings(config, items: ItemTexts) -> dict[str, dict]:
    """The settings each cached stage depends on, data fingerprint included."""
    data = settings_hash({"ids": items.item_ids, "texts": items.texts})
    source = config["item_embedding"]
    embed_keys = ("item_embedding", *EMBEDDING_KEYS.get(source, ()))
    if source == "fused":
        embed_keys = (*embed_keys, *EMBEDDING_KEYS["text"], *EMBEDDING_KEYS["collaborative"], "fused_text_weight")
    elif source not in EMBEDDING_KEYS:
        raise ValueError(f"item_embedding must be one of text, collaborative, fused, not {source!r}")
    embedding = {"data": data, **{key: config[key] for key in (*TEXT_KEYS, *embed_keys)}}
    cid = {"embedding": embedding, **{key: config[key] for key in
           ("cid_method", "cid_levels", "cid_codebook_size", "seed", *_choice(config, "cid_method", CID_KEYS))}}
    tid = {"data": data, "version": TID_VERSION, **{key: config[key] for key in
           ("tid_method", "tid_max_terms", *_choice(config, "tid_method", TID_KEYS))}}
    return {"embedding": embedding, "cid": cid, "tid": tid}


def load_or_build_embeddings(config, items: ItemTexts, settings: dict, folder: Path) -> tuple[np.ndarray, dict]:
    """The item embeddings for `settings`, from the cache or computed and cached (with what they cost)."""
    from recbole_navigen.identifiers.embeddings import item_embeddings

    path = folder / f"embeddings-{settings_hash(settings)}.safetensors"
    if path.is_file():
        with safe_open(path, framework="numpy") as stored:
            stats = {key: json.loads(value) for key, value in (stored.metadata() or {}).items()}
            return stored.get_tensor("embeddings"), {**stats, "cached": True}
    start = perf_counter()
    matrix = np.ascontiguousarray(item_embeddings(config, items.texts[1:], items.item_ids))
    stats = {"source": config["item_embedding"], "dim": int(matrix.shape[1]),
             "seconds": round(perf_counter() - start, 2)}
    partial = path.with_name(path.name + ".partial")
    save_file({"embeddings": matrix}, partial, metadata={key: json.dumps(value) for key, value in stats.items()})
    os.replace(partial, path)
    return matrix, {**stats, "cached": False}


def build_terms(config, items: ItemTexts, settings: dict, folder: Path) -> tuple[list[list[str]], dict]:
    """TIDs for every internal item id, by `tid_method`, with what it cost."""
    start = perf_counter()
    max_terms = config["tid_max_terms"]
    if config["tid_method"] == "keyphrase":
        from recbole_navigen.identifiers.tid_keyphrase import extract_terms_keyphrase

        terms = extract_terms_keyphrase(items, max_terms, config["tid_phrase_fields"],
                                        config["tid_category_field"], config["tid_brand_field"])
        extra = {}
    else:
        from recbole_navigen.identifiers.tid_llm import extract_terms_llm
        from recbole_navigen.teacher.client import TeacherClient

        client = TeacherClient.from_config(config)
        by_id = extract_terms_llm(dict(zip(items.item_ids[1:], items.texts[1:])), client,
                                  folder / f"tid-{settings_hash(settings)}.jsonl", max_terms)
        terms = [[]] + [by_id[item] for item in items.item_ids[1:]]
        extra = {"teacher": client.stats}
    seconds = perf_counter() - start
    counts = [len(t) for t in terms[1:]]
    return terms, {"method": config["tid_method"], "seconds": round(seconds, 2),
                   "seconds_per_1000_items": round(1000 * seconds / max(len(counts), 1), 3),
                   "mean_terms": round(float(np.mean(counts)), 2), "items_without_terms": counts.count(0), **extra}


def build_identifiers(config, dataset) -> Identifiers:
    """Load the identifiers for `dataset` under `config` from the cache, or build and cache them."""
    items = build_item_texts(dataset, config["item_text_fields"], config["item_text_missing"])
    settings = identifier_settings(config, items)
    root = Path(config["identifiers_dir"]) / config["dataset_name"]
    folder = root / settings_hash(settings)
    if (folder / FILE_NAME).is_file():
        logger.info("identifiers: reusing %s", folder)
        stats = json.loads((folder / "stats.json").read_text())
        return Identifiers(ItemTokenizer.load(folder), stats, folder, items.texts)

    from recbole_navigen.identifiers.quantize import build_cids  # faiss: only needed to build

    root.mkdir(parents=True, exist_ok=True)
    embeddings, embedding_stats = load_or_build_embeddings(config, items, settings["embedding"], root)
    options = {key: config[key] for key in CID_KEYS[config["cid_method"]]}
    cids = build_cids(embeddings, config["cid_method"], config["cid_levels"], config["cid_codebook_size"],
                      config["seed"], **options)
    terms, tid_stats = build_terms(config, items, settings["tid"], root)
    codes = np.vstack([np.full((1, cids.codes.shape[1]), -1, dtype=np.int64), cids.codes])
    level_sizes = [config["cid_codebook_size"]] * config["cid_levels"]
    if cids.stats["extra_level"]:
        level_sizes.append(int(cids.codes[:, -1].max()) + 1)
    tokenizer = ItemTokenizer(items.item_ids, codes, terms, level_sizes)
    stats = {"dataset": config["dataset_name"], "texts": items.report(), "embedding": embedding_stats,
             "cid": cids.stats, "tid": tid_stats}

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    tokenizer.save(partial)
    write_text_atomic(partial / "stats.json", json.dumps(stats, indent=2, default=str))
    write_text_atomic(partial / "config.json", json.dumps(settings, indent=2, default=str))
    os.replace(partial, folder)
    logger.info("identifiers: built %s", folder)
    return Identifiers(tokenizer, stats, folder, items.texts)
