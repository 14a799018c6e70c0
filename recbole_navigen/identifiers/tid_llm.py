"""The LLM term extractor for textual item codes (TID): the prompts, the tolerant parsing of answers, and a
resumable JSONL log of one record per item."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from recbole_navigen.fileio import read_jsonl_log
from recbole_navigen.identifiers.terms import clean_terms
from recbole_navigen.teacher.client import ChatResult, TeacherClient
from recbole_navigen.teacher.jsonparse import extract_json, strip_think

logger = logging.getLogger(__name__)

SOURCE_LLM = "llm"
SOURCE_FALLBACK = "llm-fallback-split"
# Longer pieces read as sentences, not terms.
_MAX_PIECE_CHARS = 40

SYSTEM_PROMPT = """\
You generate item identifiers for a recommender system. Given the text describing one item, compress it \
into a few standardized, information-dense English terms that together capture what the item essentially is.

Rules:
- Prefer stable signals: what the item is (its subject or category), its main use or setting, and its key \
attributes or distinguishing features. Mention style or intended audience only when it matters for this item.
- Each term is a compact noun phrase of one to three words, never a sentence or clause.
- Never repeat an idea: no synonyms or near-duplicates of a term already listed.
- Decide how many terms the item needs, but give at most {max_terms}.
- Order the terms from most to least important.
- Write English only, whatever the language of the item text.
- Reply with JSON only: an object with the single key "terms" holding a flat list of strings, and nothing \
else."""

USER_PROMPT = """\
Item text:
{text}

Return at most {max_terms} terms as JSON."""

# A complete JSON string and, when it is a key, its colon (matched so scanning stays in step with the quotes).
_JSON_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:)?')
_JSON_START = re.compile(r"[\[{]")
_ANSWER_SPLIT = re.compile(r"[,;\n]+")
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_TEXT_SPLIT = re.compile(r"[.,;:!?|()\[\]{}\"\n\t]+")


def build_messages(text: str, max_terms: int) -> list[dict[str, str]]:
    """The chat asking the teacher for the terms of one item."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT.format(max_terms=max_terms)},
        {"role": "user", "content": USER_PROMPT.format(text=text.strip(), max_terms=max_terms)},
    ]


def _short_pieces(pieces: list[str]) -> list[str]:
    return [piece for piece in pieces if len(piece.strip()) <= _MAX_PIECE_CHARS]


def _json_string_values(answer: str) -> list[str]:
    """The complete string values from the first `[` or `{` on: salvages JSON cut off by the token limit."""
    start = _JSON_START.search(answer)
    if start is None:
        return []
    return [value for value, colon in _JSON_STRING.findall(answer, start.start()) if not colon]


def _flatten(values: list) -> list[object]:
    """The items of a list, those of nested lists and objects inlined in order (small models nest terms)."""
    flat: list[object] = []
    for value in values:
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            flat.extend(_flatten(value))
        else:
            flat.append(value)
    return flat


def _candidate_terms(answer: str) -> list[object]:
    """The answer's terms before cleaning: its JSON `terms`, else the string values of broken JSON in it, else
    its comma/line pieces of at most 40 characters."""
    answer = strip_think(answer)
    try:
        parsed = extract_json(answer)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        # Small models sometimes rename the key: take the first list they gave.
        parsed = parsed.get("terms", next((v for v in parsed.values() if isinstance(v, list)), None))
    if isinstance(parsed, list):
        return _flatten(parsed)
    if isinstance(parsed, str):  # {"terms": "a, b, c"}: split the string instead of the whole answer
        answer = parsed
    salvaged = _json_string_values(answer)
    if salvaged:
        return salvaged
    pieces = [_LIST_MARKER.sub("", piece) for piece in _ANSWER_SPLIT.split(answer)]
    return _short_pieces(pieces)


def split_text_terms(text: str, max_terms: int) -> list[str]:
    """Fallback terms: the item text cut at punctuation, pieces of at most 40 characters, cleaned."""
    return clean_terms(_short_pieces(_TEXT_SPLIT.split(text)), max_terms)


def terms_from_answer(answer: str, text: str, max_terms: int) -> tuple[list[str], str]:
    """The cleaned terms of one answer and their source; the item text's pieces when nothing survives."""
    terms = clean_terms(_candidate_terms(answer), max_terms)
    if terms:
        return terms, SOURCE_LLM
    return split_text_terms(text, max_terms), SOURCE_FALLBACK


def _record(item_id: str, text: str, result: ChatResult | Exception, max_terms: int) -> dict:
    """The JSONL record of one finished item; a failed request keeps its error and falls back to the text."""
    if isinstance(result, Exception):
        return {
            "item_id": item_id,
            "terms": split_text_terms(text, max_terms),
            "source": SOURCE_FALLBACK,
            "error": f"{type(result).__name__}: {result}",
            "raw": None,
        }
    terms, source = terms_from_answer(result.text, text, max_terms)
    return {"item_id": item_id, "terms": terms, "source": source, "error": None, "raw": result.text}


def load_records(path: Path) -> dict[str, dict]:
    """Records already in the log, last one per item (a torn last line is cut off the file)."""
    return read_jsonl_log(path, "item_id", "JSON record")


def extract_terms_llm(
    texts: dict[str, str], client: TeacherClient, out_path: Path, max_terms: int
) -> dict[str, list[str]]:
    """At most `max_terms` terms per item from the teacher, ordered by importance, logged to `out_path`.

    Resumable: items already logged without an error are skipped; failed items are asked again on a rerun.
    """
    out_path = Path(out_path)
    records = load_records(out_path)
    todo = [item for item in texts if item not in records or records[item]["error"] is not None]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a", encoding="utf-8") as log:

        def save(index: int, result: ChatResult | Exception) -> None:
            item = todo[index]
            records[item] = _record(item, texts[item], result, max_terms)
            log.write(json.dumps(records[item], ensure_ascii=False) + "\n")
            log.flush()  # a kill loses at most the line being written

        client.chat_many([build_messages(texts[item], max_terms) for item in todo], desc="TID terms", on_result=save)
    sources = Counter(records[item]["source"] for item in texts)
    failed = sum(records[item]["error"] is not None for item in texts)
    logger.info("TID terms for %d items: %s, %d failed requests", len(texts), dict(sources), failed)
    return {item: records[item]["terms"] for item in texts}
