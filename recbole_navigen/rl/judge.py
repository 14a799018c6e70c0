"""Judges of cid2ins replies for the self-consistent reward: seven scores in [0, 1] per reply.

- `OfflineJudge` (`rl_judge: offline`), labelled `judge=offline` in the RL log: the three consistency edges
  are cosine similarities (clipped at 0) of sentence embeddings (`text_encoder`, all-MiniLM-L6-v2 by
  default) between the instruction, the predicted terms and the true terms; the four quality scores are
  the heuristic teacher's measurable proxies (`supervision.heuristic.score_prompt`): visual generatability
  = slot coverage (subject, scene, style, camera, lighting, mood), content quality = executability (length,
  repetition, vague words, contradictions), creativity = share of new but related words, specificity =
  content-word count (20 earns full marks) times the share of words that are not vague.
- `TeacherJudge` (`rl_judge: teacher`), labelled `judge=teacher:<model>`: the teacher LLM scores each reply
  through the project's teacher client (cache, retries); an answer that is not the seven scores is a
  failure, counted and given `rl_judge_failure_reward`, never replaced by the offline judge.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from recbole_navigen.rl.rewards import JudgeScores
from recbole_navigen.teacher.jsonparse import unit_scores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeInput:
    """One reply to judge: the user's history terms, the target's true terms, and what the model wrote."""

    history_terms: list[list[str]]
    true_terms: list[str]
    predicted_terms: list[str]
    instruction: str


class Judge(Protocol):
    label: str

    def score(self, requests: list[JudgeInput]) -> list[JudgeScores | None]:
        """Scores per request, None where the judge failed."""


def _terms_text(terms: list[str]) -> str:
    return ", ".join(terms)


class OfflineJudge:
    """Sentence-embedding similarities and heuristic quality proxies (see the module docstring)."""

    label = "offline"

    def __init__(self, encoder: str, cache_dir: str, max_length: int = 128) -> None:
        from recbole_navigen.identifiers.embeddings import SentenceEncoder

        self.encoder = SentenceEncoder(encoder, cache_dir, max_length)

    def score(self, requests: list[JudgeInput]) -> list[JudgeScores | None]:
        from recbole_navigen.supervision.heuristic import VAGUE, content_words, score_prompt, words_of
        from recbole_navigen.supervision.samples import Sample

        if not requests:
            return []
        texts = [text for r in requests
                 for text in (r.instruction, _terms_text(r.predicted_terms), _terms_text(r.true_terms))]
        vectors = self.encoder.encode(texts).reshape(len(requests), 3, -1)
        scores = []
        for request, (instruction, predicted, true) in zip(requests, vectors):
            sample = Sample("judge", "judge", [], "", request.history_terms, request.true_terms,
                            len(request.history_terms))
            proxies = score_prompt(request.instruction, sample)
            words = words_of(request.instruction)
            not_vague = 1 - sum(word in VAGUE for word in words) / max(len(words), 1)
            scores.append(JudgeScores(
                specificity=min(1.0, len(content_words(request.instruction)) / 20) * not_vague,
                creativity=proxies["novelty"] / 10,
                content_quality=proxies["executability"] / 10,
                visual_generatability=proxies["aesthetic"] / 10,
                ins_vs_true=_cosine(instruction, true),
                ins_vs_pred=_cosine(instruction, predicted),
                pred_vs_true=_cosine(predicted, true),
            ))
        return scores


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two L2-normalised vectors, clipped to [0, 1]."""
    return float(np.clip(np.dot(a, b), 0.0, 1.0))


_SCORE_NAMES = [field.name for field in fields(JudgeScores)]
JUDGE_SYSTEM = (
    "You judge instructions written for an image or video generator on behalf of a recommender. Each request "
    "gives the user's history (TID terms per item), the true next item's terms, the terms the model predicted "
    "and the model's instruction. Score in [0, 1]: specificity (concrete and informative, no vague or hollow "
    "narration), creativity (fresh, not templated), content_quality (coherent, clear, complete), "
    "visual_generatability (directly usable to generate an image), ins_vs_true (the instruction fits the true "
    "item), ins_vs_pred (the instruction fits the predicted terms), pred_vs_true (the predicted terms match "
    "the true terms). Use 1.0 exact, 0.85 high, 0.6 medium, 0.3 low, 0.0 unrelated. Reply with one JSON "
    "object holding exactly these seven numbers."
)


class TeacherJudge:
    """The teacher LLM as judge, one chat per reply (cached by the teacher client)."""

    def __init__(self, client) -> None:
        self.client = client
        self.label = f"teacher:{client.model}"

    @staticmethod
    def messages(request: JudgeInput) -> list[dict[str, str]]:
        user = json.dumps({"history_tids": request.history_terms, "true_tid": request.true_terms,
                           "predicted_tid": request.predicted_terms, "instruction": request.instruction},
                          ensure_ascii=False)
        return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]

    def score(self, requests: list[JudgeInput]) -> list[JudgeScores | None]:
        results = self.client.chat_many([self.messages(r) for r in requests], desc="judge")
        return [None if isinstance(result, Exception) else parse_scores(result.text) for result in results]


def parse_scores(text: str) -> JudgeScores | None:
    """The seven scores of a judge's answer, or None when it is not exactly them, as numbers in [0, 1]."""
    scores = unit_scores(text, _SCORE_NAMES)
    return None if scores is None else JudgeScores(**scores)


def make_judge(config) -> Judge:
    """The judge `rl_judge` names: offline or teacher."""
    kind = config["rl_judge"]
    if kind == "offline":
        return OfflineJudge(config["text_encoder"], config["pretrained_cache_dir"])
    if kind == "teacher":
        from recbole_navigen.teacher.client import TeacherClient

        return TeacherJudge(TeacherClient.from_config(config))
    raise ValueError(f"rl_judge must be offline or teacher, not {kind!r}")
