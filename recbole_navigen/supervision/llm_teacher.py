"""The LLM teacher: the supervision prompts sent through the teacher client (cache, retries, accounting),
every answer checked by its schema. An unusable answer is asked for once more, with the reason; a second
unusable answer, or a request that fails for good, fails the step (recorded, never replaced)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from recbole_navigen.supervision import prompts, schemas
from recbole_navigen.supervision.samples import Sample
from recbole_navigen.supervision.teacher import CallLog, Candidate, StepFailed
from recbole_navigen.teacher.client import TeacherClient, TeacherError

Parsed = TypeVar("Parsed")


class LLMTeacher:
    """The `Teacher` interface over a `TeacherClient`; answers of at most `max_new_tokens` tokens."""

    def __init__(self, client: TeacherClient, max_new_tokens: int) -> None:
        self.client = client
        self.max_new_tokens = max_new_tokens
        self.label = f"{client.backend_name}:{client.model}"

    def _chat(self, step: str, request: str, messages: list[dict[str, str]], log: CallLog) -> str:
        """The answer text, counted in `log`; a request that fails for good fails the step."""
        try:
            result = self.client.chat(messages, max_new_tokens=self.max_new_tokens)
        except TeacherError as error:
            raise StepFailed(step, f"{request}: {error}") from None
        log.requests += 1
        log.cache_hits += result.cached
        log.prompt_tokens += result.usage.get("prompt_tokens", 0)
        log.completion_tokens += result.usage.get("completion_tokens", 0)
        return result.text

    def _ask(self, step: str, request: str, messages: list[dict[str, str]], parse: Callable[[str], Parsed],
             log: CallLog) -> Parsed:
        """`parse` of the answer to `messages`, with one re-ask (saying what was wrong) after an unusable one."""
        answer = self._chat(step, request, messages, log)
        try:
            return parse(answer)
        except schemas.AnswerError as error:
            problem = str(error)
        log.reasks += 1
        log.problems.append(f"{step} {request}: {problem}")
        answer = self._chat(step, request, prompts.reask_messages(messages, answer, problem), log)
        try:
            return parse(answer)
        except schemas.AnswerError as error:
            raise StepFailed(step, f"{request}: {error} (still unusable after one re-ask)") from None

    def reason(self, sample: Sample, log: CallLog) -> str:
        messages = prompts.step1_messages(sample.shown_tids, sample.target_tid)
        return self._ask("step1", "reasoning", messages, lambda text: schemas.parse_step1(text, sample.target_tid),
                         log)

    def founders(self, sample: Sample, log: CallLog) -> list[Candidate]:
        messages = prompts.founders_messages(sample.shown_tids, sample.target_tid)
        drafts = self._ask("step2", "founders", messages, schemas.parse_founders, log)
        return [Candidate(prompt, reasoning, strategy, 0) for strategy, prompt, reasoning in drafts]

    def score(self, sample: Sample, candidates: list[Candidate], log: CallLog) -> list[dict[str, Any]]:
        messages = prompts.score_messages(sample.shown_tids, sample.target_tid, [c.prompt for c in candidates])
        return self._ask("step2", "scores", messages, lambda text: schemas.parse_scores(text, len(candidates)),
                         log)

    def children(self, sample: Sample, elite: Candidate, mate: Candidate, round_: int,
                 log: CallLog) -> tuple[Candidate, Candidate]:
        messages = prompts.children_messages(sample.shown_tids, sample.target_tid, elite.prompt, mate.prompt)
        made = self._ask("step2", f"round {round_} children", messages, schemas.parse_children, log)
        return (Candidate(*made["crossover"], "crossover", round_), Candidate(*made["mutation"], "mutation", round_))

    def distil(self, sample: Sample, reasoning: str, search: dict[str, Any], log: CallLog) -> str:
        messages = prompts.step3_messages(sample.shown_tids, reasoning, sample.target_tid, search["summary"])
        return self._ask("step3", "distillation", messages, schemas.parse_step3, log)
