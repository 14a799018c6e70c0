"""The fitness of a candidate instruction: four 0-10 judge scores weighted into one number, a gate on the
two that make an instruction usable, and a penalty when it names the target outright."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DIMENSIONS = ("consistency", "novelty", "aesthetic", "executability")
WEIGHTS = {"consistency": 0.35, "novelty": 0.20, "aesthetic": 0.25, "executability": 0.20}
# Below this on consistency or executability an instruction is unusable, whatever else it does well.
GATE = 5.0
GATED_OVERALL = -1.0
# Naming a target term is what the instruction must not do: the judge's scores drop, and so does the total.
LEAK_SCORE_PENALTY = {"consistency": 2.5, "executability": 2.0}
LEAK_OVERALL_PENALTY = 0.5
MIN_TERM_CHARS = 2


@dataclass(frozen=True)
class Fitness:
    """Scores after the leak penalty, the weighted overall, and the target terms the prompt names."""

    scores: dict[str, float]
    overall: float
    leaked: list[str]


def leaked_terms(prompt: str, target_tid: Sequence[str]) -> list[str]:
    """The target terms (lower-cased, at least two characters) that occur in the lower-cased prompt."""
    text = prompt.lower()
    terms = (term.strip().lower() for term in target_tid)
    return [term for term in terms if len(term) >= MIN_TERM_CHARS and term in text]


def fitness(scores: Mapping[str, float], prompt: str, target_tid: Sequence[str]) -> Fitness:
    """`overall` = 0.35 consistency + 0.20 novelty + 0.25 aesthetic + 0.20 executability; -1 when consistency
    or executability is under 5. A prompt naming a target term first loses 2.5 consistency and 2.0
    executability (floored at 0), then 0.5 more off the overall."""
    adjusted = {name: float(scores[name]) for name in DIMENSIONS}
    leaked = leaked_terms(prompt, target_tid)
    if leaked:
        for name, penalty in LEAK_SCORE_PENALTY.items():
            adjusted[name] = max(0.0, adjusted[name] - penalty)
    overall = sum(WEIGHTS[name] * adjusted[name] for name in DIMENSIONS)
    if adjusted["consistency"] < GATE or adjusted["executability"] < GATE:
        overall = GATED_OVERALL
    if leaked:
        overall -= LEAK_OVERALL_PENALTY
    return Fitness({name: round(value, 4) for name, value in adjusted.items()}, round(overall, 4), leaked)
