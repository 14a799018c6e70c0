"""Reference instruction writers, run on the users of a NaviGen `generate` file so that its instruction
measures mean something. Each returns rows shaped like NaviGen's (same users, histories and targets) with
its own `predicted_tid`, `instruction`, `reasoning` and `parse_status`, labelled by `writer`.

- `history_keywords` (in the spirit of PMG): the history's keywords, TID terms weighted by recency
  (the i-th of n items counts (i + 1) / n), the top `k` turned into a prompt through the heuristic
  teacher's visual grammar (style, scene and lighting drawn per user with a fixed seed). It never sees the
  target: what a recommender-free prompt writer gets from the history alone.
- `teacher`: the supervision teacher (heuristic or LLM, `supervision_teacher`) run on the user's history
  AND the true target, exactly as the supervision pipeline runs on training targets. It knows the answer,
  so it is an upper reference, not a competitor.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

from recbole_navigen.supervision.heuristic import BANKS, render
from recbole_navigen.supervision.samples import Sample


def _copy(row: dict, writer: str, **fields) -> dict:
    kept = {key: row[key] for key in ("user", "history", "target", "predicted") if key in row}
    return {**kept, "writer": writer, "parse_error": None, **fields}


def history_keywords(history_tids: list[list[str]], k: int) -> list[str]:
    """The `k` terms with the highest recency-weighted count over the history (oldest first)."""
    weights: Counter[str] = Counter()
    for index, terms in enumerate(history_tids):
        for term in terms:
            weights[term] += (index + 1) / len(history_tids)
    return [term for term, _ in sorted(weights.items(), key=lambda item: (-item[1], item[0]))[:k]]


def history_keyword_rows(rows: list[dict], k: int = 4, seed: int = 2020) -> list[dict]:
    """The PMG-style writer's row for each row (see the module docstring)."""
    written = []
    for row in rows:
        keywords = history_keywords([item["tid"] for item in row["history"]], k)
        digest = hashlib.sha256(f"{seed}:{row['user']}".encode()).hexdigest()
        rng = random.Random(int(digest[:16], 16))
        slots = {"subject": ", ".join(keywords) or "the user's favourite things",
                 **{slot: rng.choice(BANKS[slot]) for slot in ("style", "scene", "lighting")}}
        written.append(_copy(row, "history_keywords", predicted_tid=keywords, instruction=render(slots),
                             reasoning=None, parse_status="ok"))
    return written


def teacher_rows(rows: list[dict], teacher, rounds: int, shown: int) -> list[dict]:
    """The supervision teacher's instruction for each row's true target (see the module docstring)."""
    from recbole_navigen.supervision.pipeline import supervise_sample

    written = []
    for row in rows:
        sample = Sample(f"eval:{row['user']}", row["user"], [item["item"] for item in row["history"]],
                        row["target"]["item"], [item["tid"] for item in row["history"]], row["target"]["tid"],
                        shown)
        result = supervise_sample(teacher, sample, rounds)
        ok = result["status"] == "ok"
        written.append(_copy(row, f"teacher:{teacher.label}", predicted_tid=row["target"]["tid"] if ok else None,
                             instruction=result["instruction"], reasoning=result["reasoning"],
                             parse_status="ok" if ok else "failed", parse_error=result["error"]))
    return written
