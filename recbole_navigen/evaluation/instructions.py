"""Measures of written instructions, per user, for any writer (NaviGen, the references): the lines of a
`generate` JSONL (or any rows with `target` {title, text, tid}, `predicted_tid`, `instruction`, `parse_status`).

- `parsed`: the reply parsed (`ok` or `ok after retry`); `has_terms`, `has_instruction`: fields present;
- `term_precision`, `term_recall`, `term_f1`: predicted vs true TID terms (lower-cased exact matches);
- `relevance`: cosine between the instruction and the target item's text (sentence embeddings, >= 0);
- `leak`: the instruction names the target's title (4+ characters) or a distinctive target term (one that
  at most `distinctive_share` of the catalogue's items carry);
- `specificity`: share of the five visual slots (scene, style, camera, lighting, mood) the instruction shows;
- `length`: words.

A row without an instruction scores 0 on the instruction measures and counts as not leaking, so a writer is
never flattered by failing to write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import mean

import numpy as np

from recbole_navigen.supervision.heuristic import VISUAL_SLOTS, visual_slots, words_of

MEASURES = ("parsed", "has_terms", "has_instruction", "term_precision", "term_recall", "term_f1", "relevance",
            "leak", "specificity", "length")
PARSED = {"ok", "ok after retry"}


def term_scores(predicted: Sequence[str] | None, true: Sequence[str]) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted terms against the true ones (lower-cased, as sets)."""
    guess = {term.strip().lower() for term in predicted or [] if term.strip()}
    gold = {term.strip().lower() for term in true if term.strip()}
    hits = len(guess & gold)
    precision = hits / len(guess) if guess else 0.0
    recall = hits / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return precision, recall, f1


def term_shares(catalogue_tids: Iterable[Sequence[str]]) -> dict[str, float]:
    """The share of items whose TID holds each (lower-cased) term."""
    tids = [{term.lower() for term in tid} for tid in catalogue_tids]
    counts = Counter(term for tid in tids for term in tid)
    return {term: count / max(len(tids), 1) for term, count in counts.items()}


def leaks(instruction: str, title: str, true_terms: Sequence[str], shares: dict[str, float],
          distinctive_share: float) -> bool:
    """Whether `instruction` names the title or a distinctive true term (substring, lower-cased)."""
    text = instruction.lower()
    if len(title.strip()) >= 4 and title.strip().lower() in text:
        return True
    return any(len(term) >= 2 and shares.get(term.lower(), 0.0) <= distinctive_share and term.lower() in text
               for term in true_terms)


def instruction_measures(rows: list[dict], encoder, shares: dict[str, float],
                         distinctive_share: float = 0.01) -> dict[str, list[float]]:
    """Each measure of `MEASURES` for every row, in row order (for means and paired tests)."""
    instructions = [row.get("instruction") or "" for row in rows]
    written = [i for i, text in enumerate(instructions) if text]
    relevance = np.zeros(len(rows))
    if written:
        vectors = encoder.encode([instructions[i] for i in written] + [rows[i]["target"]["text"] for i in written])
        pairs = (vectors[: len(written)] * vectors[len(written):]).sum(axis=1)
        relevance[written] = np.clip(pairs, 0.0, 1.0)
    measures: dict[str, list[float]] = {name: [] for name in MEASURES}
    for row, text, rel in zip(rows, instructions, relevance.tolist()):
        target = row["target"]
        precision, recall, f1 = term_scores(row.get("predicted_tid"), target["tid"])
        values = {
            "parsed": float(row.get("parse_status") in PARSED),
            "has_terms": float(bool(row.get("predicted_tid"))),
            "has_instruction": float(bool(text)),
            "term_precision": precision, "term_recall": recall, "term_f1": f1,
            "relevance": rel,
            "leak": float(bool(text) and leaks(text, target["title"], target["tid"], shares, distinctive_share)),
            "specificity": len(visual_slots(text)) / len(VISUAL_SLOTS) if text else 0.0,
            "length": float(len(words_of(text))),
        }
        for name in MEASURES:
            measures[name].append(values[name])
    return measures


def summarise(measures: dict[str, list[float]]) -> dict[str, float]:
    """The mean of each measure over users."""
    return {name: mean(values) if values else float("nan") for name, values in measures.items()}
