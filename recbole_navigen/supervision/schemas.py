"""Strict checks of the teacher's answers, one per request kind: the JSON object is pulled out of the
answer (reasoning blocks and code fences allowed), then every field is checked; an unusable answer raises
`AnswerError` with a reason short enough to send back in the re-ask and to record."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from recbole_navigen.supervision.fitness import DIMENSIONS
from recbole_navigen.supervision.teacher import CHILD_KINDS, FOUNDER_STRATEGIES
from recbole_navigen.teacher.jsonparse import extract_json, strip_think

# Step 3 must read like the student's own thinking, not like a report of the search.
JARGON = re.compile(r"\b(selection|crossover|cross-over|mutation|mutate[ds]?|founders?|elites?|mates?)\b",
                    re.IGNORECASE)
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|I'll|my|me)\b")
_MARKUP = re.compile(r"(^|\n)\s*([-*•#]|\d+[.)])\s|<[a-z/][^>]*>|\*\*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SCORE_RANGE = (0.0, 10.0)


class AnswerError(ValueError):
    """A teacher answer that does not follow the requested format."""


def _cut_off(text: str) -> bool:
    """Whether the answer's first JSON object runs to the end of the text unfinished (max_new_tokens hit)."""
    body = strip_think(text)
    start = body.find("{")
    if start < 0:
        return False
    rest = body[start:].rstrip()
    try:
        json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as error:
        return error.msg.startswith("Unterminated string") or error.pos >= len(rest)
    return False


def json_object(text: str) -> dict[str, Any]:
    """The JSON object of an answer, or AnswerError (not JSON, cut off, or a list)."""
    if _cut_off(text):
        raise AnswerError("the JSON object is cut off before its end (answer too long?)")
    try:
        value = extract_json(text)
    except ValueError as error:
        raise AnswerError(f"no complete JSON object ({error})") from None
    if not isinstance(value, dict):
        raise AnswerError(f"expected a JSON object, got a {type(value).__name__}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AnswerError(f"{where} must be a non-empty string")
    return " ".join(value.split())


def _first_person(text: str, where: str) -> None:
    if not _FIRST_PERSON.search(text):
        raise AnswerError(f"{where} must be written in the first person (I, my)")


def parse_step1(answer: str, target_tid: Sequence[str]) -> str:
    """`{"reasoning": str}`: first person, naming a target term (if the target has any) in its last two
    sentences."""
    reasoning = _text(json_object(answer).get("reasoning"), '"reasoning"')
    _first_person(reasoning, '"reasoning"')
    terms = [term.strip().lower() for term in target_tid if term.strip()]
    ending = " ".join(_SENTENCE_END.split(reasoning)[-2:]).lower()
    if terms and not any(term in ending for term in terms):
        raise AnswerError('"reasoning" must end by naming the target TID terms')
    return reasoning


def parse_founders(answer: str) -> list[tuple[str, str, str]]:
    """`{"candidates": [{"strategy", "prompt", "reasoning"}]}` with each strategy exactly once; returned as
    (strategy, prompt, reasoning) in FOUNDER_STRATEGIES order."""
    candidates = json_object(answer).get("candidates")
    if not isinstance(candidates, list) or not all(isinstance(entry, dict) for entry in candidates):
        raise AnswerError('"candidates" must be a list of objects')
    by_strategy = {str(entry.get("strategy", "")).strip().lower(): entry for entry in candidates}
    if sorted(by_strategy) != sorted(FOUNDER_STRATEGIES) or len(candidates) != len(FOUNDER_STRATEGIES):
        raise AnswerError(f'"candidates" must hold exactly the strategies {list(FOUNDER_STRATEGIES)}, '
                          f"got {[entry.get('strategy') for entry in candidates]}")
    return [(name, _text(by_strategy[name].get("prompt"), f'{name} "prompt"'),
             _text(by_strategy[name].get("reasoning"), f'{name} "reasoning"')) for name in FOUNDER_STRATEGIES]


def _score(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnswerError(f"{where} must be a number")
    if not SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
        raise AnswerError(f"{where} must lie in [0, 10], got {value}")
    return float(value)


def parse_scores(answer: str, count: int) -> list[dict[str, Any]]:
    """`{"scores": [{"id", four dimensions, "reasoning"}]}` for ids 1..count, returned in id order."""
    entries = json_object(answer).get("scores")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise AnswerError('"scores" must be a list of objects')
    ids = [entry.get("id") for entry in entries]
    expected = list(range(1, count + 1))
    if len(ids) != count or set(ids) != set(expected) or any(isinstance(i, bool) for i in ids):
        raise AnswerError(f'"scores" must hold one entry for each id {expected}, got ids {ids}')
    by_id = dict(zip(ids, entries))
    scores = []
    for number in expected:
        entry = by_id[number]
        values = {name: _score(entry.get(name), f'candidate {number} "{name}"') for name in DIMENSIONS}
        reasoning = entry.get("reasoning", "")
        scores.append({**values, "reasoning": reasoning if isinstance(reasoning, str) else str(reasoning)})
    return scores


def parse_children(answer: str) -> dict[str, tuple[str, str]]:
    """`{"crossover": {"prompt", "reasoning"}, "mutation": {...}}` as kind -> (prompt, reasoning)."""
    value = json_object(answer)
    children = {}
    for kind in CHILD_KINDS:
        child = value.get(kind)
        if not isinstance(child, dict):
            raise AnswerError(f'"{kind}" must be an object with "prompt" and "reasoning"')
        children[kind] = (_text(child.get("prompt"), f'{kind} "prompt"'),
                          _text(child.get("reasoning"), f'{kind} "reasoning"'))
    return children


def parse_step3(answer: str) -> str:
    """`{"reasoning": str}`: one first-person paragraph without search vocabulary, markup or lists."""
    value = json_object(answer).get("reasoning")
    if isinstance(value, str) and _MARKUP.search(value):
        raise AnswerError('"reasoning" must be plain prose: no tags, markdown or list items')
    reasoning = _text(value, '"reasoning"')
    _first_person(reasoning, '"reasoning"')
    jargon = sorted({word.lower() for word in JARGON.findall(reasoning)})
    if jargon:
        raise AnswerError(f'"reasoning" must not use the words {jargon}')
    return reasoning
