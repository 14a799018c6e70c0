"""The instruction supervision that NaviGen's cid2ins task trains on: the JSONL rows the supervision pipeline
(`recbole_navigen.supervision`) writes, read, checked and mapped to this dataset's item ids."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from recbole_navigen.identifiers.item_tokenizer import ItemTokenizer

logger = logging.getLogger(__name__)

_REQUIRED = ("history", "target", "status", "teacher")
_REQUIRED_WHEN_OK = ("reasoning", "instruction")


@dataclass(frozen=True)
class InstructionExample:
    """One supervised cid2ins example: the history (oldest first), its target and the teacher's texts."""

    history: list[int]
    target: int
    reasoning: str
    instruction: str


@dataclass(frozen=True)
class Supervision:
    """The usable examples of a supervision file, who wrote them, and how many rows were left out (why)."""

    path: Path
    examples: list[InstructionExample]
    teachers: list[str]
    skipped: dict[str, int]

    @property
    def teacher(self) -> str:
        """The teacher label(s) of the examples, e.g. `heuristic`: shown wherever instructions appear."""
        return ",".join(self.teachers) or "none"


SUPERVISION_MODES = ("evolved", "plain")


def plain_instruction(terms: list[str]) -> str:
    """The ablation's instruction: the target's terms in one plain sentence, no search behind it."""
    return f"An image of {', '.join(terms)}." if terms else "An image of the item."


def read_supervision(path: str | Path, tokenizer: ItemTokenizer, max_history: int,
                     min_fitness: float | None = None, mode: str = "evolved") -> Supervision:
    """The `status: ok` rows of the supervision JSONL at `path`, each history cut to its last `max_history`
    items (what NaviGen sees in its prompts); with `min_fitness`, rows whose best instruction scored below it
    in the search (`step2.best.overall`) are left out too. A malformed row or an item unknown to `tokenizer`
    is an error naming the file and line: the file belongs to another dataset or identifier build.

    `mode: plain` is the ablation without the evolutionary supervision: the step-1 reasoning (history to
    target) and `plain_instruction` of the target's terms instead of the distilled reasoning and the
    searched instruction."""
    if mode not in SUPERVISION_MODES:
        raise ValueError(f"cid2ins_supervision must be one of {list(SUPERVISION_MODES)}, not {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"supervision_path {path} does not exist: run `python run_recbole_navigen.py "
                                "supervise` first, or set supervise: true")
    examples, teachers, skipped = [], Counter(), Counter()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = _row(line, where)
            if row["status"] != "ok":
                skipped[f"status {row['status']}"] += 1
                continue
            fitness = ((row.get("step2") or {}).get("best") or {}).get("overall")
            if min_fitness is not None and isinstance(fitness, (int, float)) and fitness < min_fitness:
                skipped[f"fitness below {min_fitness}"] += 1
                continue
            missing = [key for key in _REQUIRED_WHEN_OK if not isinstance(row.get(key), str) or not row[key].strip()]
            if missing:
                raise ValueError(f"{where}: a row with status ok needs non-empty text in {missing}")
            history = [_item(tokenizer, raw, where) for raw in row["history"]][-max_history:]
            if not history:
                skipped["empty history"] += 1
                continue
            target = _item(tokenizer, row["target"], where)
            reasoning, instruction = row["reasoning"], row["instruction"]
            if mode == "plain":
                reasoning = ((row.get("step1") or {}).get("reasoning") or "").strip()
                if not reasoning:
                    raise ValueError(f"{where}: cid2ins_supervision plain needs the step-1 reasoning (step1.reasoning)")
                instruction = plain_instruction(tokenizer.tid(target))
            examples.append(InstructionExample(history, target, reasoning, instruction))
            teachers[row["teacher"]] += 1
    if skipped:
        logger.info(f"supervision {path}: {len(examples)} examples used, rows left out: {dict(skipped)}")
    return Supervision(path, examples, sorted(teachers), dict(skipped))


def _row(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not a JSON line ({error.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a supervision row must be a JSON object")
    missing = [key for key in _REQUIRED if key not in row]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
    if not isinstance(row["history"], list):
        raise ValueError(f"{where}: history must be a list of item ids")
    return row


def _item(tokenizer: ItemTokenizer, raw_id, where: str) -> int:
    try:
        return tokenizer.index_of_item(str(raw_id))
    except KeyError:
        raise ValueError(f"{where}: item {raw_id!r} is not in this dataset's catalogue (another dataset's "
                         "supervision?)") from None
