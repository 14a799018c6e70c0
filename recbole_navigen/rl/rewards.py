"""GRPO rewards of NaviGen as pure functions: format, think gate, structural penalty, the hierarchical CID
reward (cid2cid) and the self-consistent instruction reward (cid2ins). Formulas and defaults follow the
public release:

    cid2cid: R = (0.9 * R_cid * gate + 0.1 * fmt) * pf
    cid2ins: R = (0.9 * R_sem * gate + 0.1 * fmt) * pf,
             R_sem = 0.25 * R_qual + 0.25 * ins_vs_true + 0.25 * ins_vs_pred + 0.25 * pred_vs_true

with `gate = 0.2 + 0.8 * think_ok` and `pf = 0.3 + 0.7 * max(0, 1 - p)` for the structural penalty `p`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from statistics import mean

from recbole_navigen.teacher.jsonparse import balanced_end

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
_TARGET_KEY = re.compile(r'"(target_[a-z]+)"\s*:')
# The keys each task's answer holds; a key written again earns the repeated-key penalty.
ANSWER_KEYS = {"cid2cid": ("target_cid",), "cid2ins": ("target_tid", "target_ins")}
# Structural penalty table (release values): each violation's share of the penalty p, p capped at 1.
PENALTIES = {
    "unbalanced_think": 0.35,
    "several_think_blocks": 0.20,
    "think_not_at_start": 0.10,
    "text_before_json": 0.20,
    "text_after_json": 0.45,
    "several_json_objects": 0.20,
}
REPEATED_KEY_PENALTY, REPEATED_KEY_CAP = 0.1, 0.3


# ----- gates and penalties -----


def think_ok(text: str, min_chars: int = 10) -> bool:
    """`<think>` then `</think>`, in that order, with more than `min_chars` non-space characters between."""
    start = text.find(THINK_OPEN)
    end = text.find(THINK_CLOSE, start + len(THINK_OPEN)) if start >= 0 else -1
    if end < 0:
        return False
    return len("".join(text[start + len(THINK_OPEN):end].split())) > min_chars


def think_gate(text: str, floor: float = 0.2) -> float:
    """`floor + (1 - floor) * think_ok`: a reply that did not reason keeps only `floor` of its task reward."""
    return floor + (1.0 - floor) * float(think_ok(text))


def json_objects(text: str) -> list[tuple[int, int]]:
    """(start, end) of each top-level balanced `{...}` in `text`, braces inside strings ignored; an
    unclosed `{` ends the search."""
    spans, position = [], 0
    while (start := text.find("{", position)) >= 0:
        end = balanced_end(text, start)
        if end is None:
            break
        spans.append((start, end))
        position = end
    return spans


def _answer_part(text: str) -> str:
    """`text` without its think blocks; an unclosed block runs to the first `{` after it (it is penalised
    once, as unbalanced, not again as text before the JSON)."""
    body = _THINK_BLOCK.sub("", text)
    start = body.find(THINK_OPEN)
    if start >= 0:
        brace = body.find("{", start)
        body = body[:start] + (body[brace:] if brace >= 0 else "")
    return body


def structural_violations(text: str, task: str) -> dict[str, float]:
    """Each structural violation of a raw completion with its penalty share (empty for a clean reply)."""
    found: dict[str, float] = {}
    opens, closes = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if opens != closes:
        found["unbalanced_think"] = PENALTIES["unbalanced_think"]
    if opens > 1:
        found["several_think_blocks"] = PENALTIES["several_think_blocks"]
    if opens and not text.lstrip().startswith(THINK_OPEN):
        found["think_not_at_start"] = PENALTIES["think_not_at_start"]
    body = _answer_part(text)
    spans = json_objects(body)
    if spans:
        if body[: spans[0][0]].strip():
            found["text_before_json"] = PENALTIES["text_before_json"]
        between_and_after = "".join(body[end:next_start] for (_, end), (next_start, _) in
                                    zip(spans, spans[1:] + [(len(body), len(body))]))
        if between_and_after.strip():
            found["text_after_json"] = PENALTIES["text_after_json"]
        if len(spans) > 1:
            found["several_json_objects"] = PENALTIES["several_json_objects"]
    extra = len(_TARGET_KEY.findall(body)) - len(ANSWER_KEYS[task])
    if extra > 0:
        found["repeated_target_keys"] = min(REPEATED_KEY_CAP, REPEATED_KEY_PENALTY * extra)
    return found


def structural_penalty(text: str, task: str) -> float:
    """p = min(1, sum of the violations' shares)."""
    return min(1.0, sum(structural_violations(text, task).values()))


def penalty_factor(penalty: float, floor: float = 0.3) -> float:
    """`floor + (1 - floor) * max(0, 1 - p)`: the multiplier a structurally broken reply keeps."""
    return floor + (1.0 - floor) * max(0.0, 1.0 - penalty)


# ----- format -----


def parse_answer(text: str) -> dict | None:
    """The single JSON object after the think block, or None when there is not exactly one that parses."""
    body = _answer_part(text)
    spans = json_objects(body)
    if len(spans) != 1:
        return None
    try:
        value = json.loads(body[spans[0][0]:spans[0][1]])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def format_reward(text: str, task: str, is_cid=lambda text: False) -> float:
    """1 for a reply with no structural violation and exactly one JSON object holding exactly the task's
    keys, well typed (cid2cid: a `target_cid` string that `is_cid` accepts; cid2ins: a non-empty list of
    terms and a non-empty instruction); else 0."""
    answer = parse_answer(text)
    if answer is None or structural_violations(text, task) or set(answer) != set(ANSWER_KEYS[task]):
        return 0.0
    if task == "cid2cid":
        return float(isinstance(answer["target_cid"], str) and is_cid(answer["target_cid"]))
    terms, instruction = answer["target_tid"], answer["target_ins"]
    terms_ok = isinstance(terms, list) and bool(terms) and all(isinstance(t, str) and t.strip() for t in terms)
    return float(terms_ok and isinstance(instruction, str) and bool(instruction.strip()))


# ----- cid2cid -----


def cid_reward(
    predicted: tuple[int, ...] | None,
    true: tuple[int, ...],
    in_catalogue: bool,
    level_weights: tuple[float, ...] = (0.5, 0.3, 0.2),
    prefix_conditioned: bool = True,
    in_range_ratio: float = 0.3,
) -> float:
    """Hierarchical CID reward R_cid in [0, 1].

    Level l earns `level_weights[l]` when it matches. `prefix_conditioned=True` counts a level only if every
    coarser level matched too (a code is a path: a right fine level under a wrong coarse one names another
    item); `False` is the release's independent matching. The last weight covers the rest of the code (a
    de-duplication level included), so 1.0 means the exact item. A reply matching nothing but naming a
    catalogue item gets `level_weights[0] * in_range_ratio` (0.15); a malformed or unknown code gets 0.
    """
    if predicted is None:
        return 0.0
    depth = len(level_weights)
    levels = [predicted[l] == true[l] for l in range(depth - 1)]
    levels.append(tuple(predicted[depth - 1:]) == tuple(true[depth - 1:]))
    if prefix_conditioned:
        first_miss = levels.index(False) if False in levels else depth
        levels = [l < first_miss for l in range(depth)]
    reward = min(1.0, sum(weight for weight, hit in zip(level_weights, levels) if hit))
    if reward == 0.0 and in_catalogue:
        return level_weights[0] * in_range_ratio
    return reward


# ----- cid2ins -----


@dataclass(frozen=True)
class JudgeScores:
    """A judge's scores in [0, 1]: four of instruction quality and three consistency edges between the
    instruction, the predicted terms and the true terms."""

    specificity: float
    creativity: float
    content_quality: float
    visual_generatability: float
    ins_vs_true: float
    ins_vs_pred: float
    pred_vs_true: float

    @property
    def quality(self) -> float:
        return mean((self.specificity, self.creativity, self.content_quality, self.visual_generatability))

    def semantic(self) -> float:
        """R_sem: quality and the three edges, a quarter each."""
        return 0.25 * (self.quality + self.ins_vs_true + self.ins_vs_pred + self.pred_vs_true)


@dataclass(frozen=True)
class RewardBreakdown:
    """One completion's reward and the parts it came from (logged as mean and std per step)."""

    task: str
    reward: float
    task_reward: float  # R_cid or R_sem
    gate: float
    format: float
    penalty: float


def combine(task: str, task_reward: float, text: str, fmt: float, task_weight: float = 0.9,
            format_weight: float = 0.1, gate_floor: float = 0.2, penalty_floor: float = 0.3,
            think_required: bool = True) -> RewardBreakdown:
    """`(task_weight * R_task * gate + format_weight * fmt) * pf`. A task trained to answer without a think
    block (`think_required=False`, NaviGen's cid2cid) is not gated."""
    gate = think_gate(text, gate_floor) if think_required else 1.0
    penalty = structural_penalty(text, task)
    reward = (task_weight * task_reward * gate + format_weight * fmt) * penalty_factor(penalty, penalty_floor)
    return RewardBreakdown(task, reward, task_reward, gate, fmt, penalty)
