"""Pulling the JSON value out of an LLM answer wrapped in reasoning, code fences or prose."""

from __future__ import annotations

import json
import re

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*\s*\n?(.*?)```", re.DOTALL)
_EXCERPT_CHARS = 80


def strip_think(text: str) -> str:
    """`text` without `<think>...</think>` blocks (an unclosed one runs to the end)."""
    return _THINK.sub("", text)


def extract_json(text: str) -> dict | list:
    """The JSON in an answer: the whole answer, a fenced block, else the first balanced `{...}` that parses."""
    body = strip_think(text).strip()
    for candidate in [body, *_FENCE.findall(body)]:
        try:
            value = json.loads(candidate.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(value, (dict, list)):
            return value
    for start in (i for i, char in enumerate(body) if char == "{"):
        end = balanced_end(body, start)
        if end is None:
            continue
        try:
            return json.loads(body[start:end])
        except json.JSONDecodeError:
            continue
    excerpt = " ".join(text.split())[:_EXCERPT_CHARS]
    raise ValueError(f"no JSON object found in the answer: {excerpt!r}")


def balanced_end(text: str, start: int) -> int | None:
    """Index just past the `}` closing the `{` at `start`, skipping braces inside strings; None if unclosed."""
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def unit_scores(text: str, names) -> dict[str, float] | None:
    """A judge's answer as `{name: score}`: exactly the keys `names`, each a number in [0, 1]; None for any
    other answer (no JSON, other keys, a score out of range or not a number)."""
    try:
        value = extract_json(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != set(names):
        return None
    numbers = [value[name] for name in names]
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and 0 <= n <= 1 for n in numbers):
        return None
    return {name: float(value[name]) for name in names}
