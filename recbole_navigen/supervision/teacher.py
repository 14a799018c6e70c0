"""What every teacher offers the pipeline (the LLM one and the offline heuristic one), the candidate
instructions they trade in, and the per-sample account of their calls."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from recbole_navigen.supervision.samples import Sample

FOUNDER_STRATEGIES = ("conservative", "balanced", "exploratory")
CHILD_KINDS = ("crossover", "mutation")


@dataclass
class Candidate:
    """One instruction in the search: its text, the teacher's short rationale, how and when it was made
    (`origin`: a founder strategy or a child kind; `born`: 0 for founders, else the round), and for the
    heuristic teacher the visual slots it was composed from."""

    prompt: str
    reasoning: str
    origin: str
    born: int
    slots: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


class StepFailed(RuntimeError):
    """A step whose teacher answer stayed unusable; the message starts with the step (`step2: ...`)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step


@dataclass
class CallLog:
    """One sample's teacher requests: how many, answered from the cache, re-asked (and why), tokens."""

    requests: int = 0
    cache_hits: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Teacher(Protocol):
    """The five things a teacher does; `label` names it in every output row (`heuristic`, `openai:<model>`)."""

    label: str

    def reason(self, sample: Sample, log: CallLog) -> str:
        """Step 1: first-person reasoning from the history TIDs that concludes on the target TID."""

    def founders(self, sample: Sample, log: CallLog) -> list[Candidate]:
        """Step 2: one instruction per strategy of FOUNDER_STRATEGIES, in that order."""

    def score(self, sample: Sample, candidates: list[Candidate], log: CallLog) -> list[dict[str, Any]]:
        """Step 2: per candidate, the four 0-10 scores of `fitness.DIMENSIONS` and a short `reasoning`."""

    def children(self, sample: Sample, elite: Candidate, mate: Candidate, round_: int,
                 log: CallLog) -> tuple[Candidate, Candidate]:
        """Step 2: the crossover of the two best and a mutation of the best."""

    def distil(self, sample: Sample, reasoning: str, search: dict[str, Any], log: CallLog) -> str:
        """Step 3: one first-person paragraph from the history, step-1 reasoning, target and search trace."""
