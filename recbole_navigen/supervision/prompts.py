"""The teacher prompts of the three supervision steps, written for this project: step 1 (reasoning from the
history TIDs to the target TID), step 2 (founders, children, scoring) and step 3 (distillation), plus the
re-ask sent after an unusable answer. Changing any text here must bump PROMPT_VERSION (it keys the output)."""

from __future__ import annotations

from collections.abc import Sequence

PROMPT_VERSION = 1

STEP1_SYSTEM = """\
You teach a recommender model to think. The model reads the textual identifiers (TIDs) of the items a user \
chose, oldest first; each TID is a short list of descriptive terms. You also know the TID of the item the \
user actually chose next (the target). Write the reasoning the model should learn to produce on its own.

Requirements:
- One paragraph in the first person, in the model's own voice ("I notice...", "I should...").
- Build on concrete clues from the history: themes that recur, attributes that repeat, where the most \
recent items are heading.
- Narrow those clues down step by step toward the target and say why it is a natural next choice.
- End with a sentence that names the target TID terms explicitly as the conclusion.
- No lists, headings, markdown or metadata, and never say that the target was given to you.

Reply with JSON only: {"reasoning": "<the paragraph>"}"""

STEP1_USER = """\
History TIDs, oldest first:
{history}

Target TID:
{target}

Write the paragraph and reply with the JSON object."""

_INSTRUCTION_RULES = """\
Rules for every instruction:
1. The target item is the goal; the history only supports it.
2. The instruction must steer clearly toward what the target is, but must never state, copy or quote the \
target's TID terms or its name: evoke it through form, material, use, setting and feeling instead.
3. Prefer instructions that specify the subject, the scene, the style, the camera language, the lighting, \
the mood and the key details, in one to three sentences a generator can follow as they are.
4. Each instruction comes with a rationale of at most 200 characters."""

FOUNDERS_SYSTEM = f"""\
You write instructions (prompts) for image and video generators that turn what a recommender predicts \
into a picture the user would want to see. You are given the user's history TIDs and the target TID.

{_INSTRUCTION_RULES}

Write three different first instructions, one per strategy:
- "conservative": keep very close to what the target is, with little invention;
- "balanced": centred on the target, weighing fidelity, creativity and reliability evenly;
- "exploratory": still anchored on the target, but take bolder choices of scene, camera, lighting or emotion.

Reply with JSON only: {{"candidates": [{{"strategy": "conservative", "prompt": "...", "reasoning": "..."}}, \
{{"strategy": "balanced", ...}}, {{"strategy": "exploratory", ...}}]}}"""

CHILDREN_SYSTEM = f"""\
You improve instructions (prompts) for image and video generators that show a user the item a recommender \
predicts. You are given the user's history TIDs, the target TID, the strongest instruction so far (A) and \
the runner-up (B).

{_INSTRUCTION_RULES}

Write two new instructions:
- "crossover": keep the part of A that points most clearly at the target, then take the better scene \
organisation, visual richness, camera language or emotional tension from A and B together;
- "mutation": keep that same target-facing core of A unchanged and make exactly one controlled change to \
its scene details, composition, camera language, lighting or emotional expression.

Reply with JSON only: {{"crossover": {{"prompt": "...", "reasoning": "..."}}, \
"mutation": {{"prompt": "...", "reasoning": "..."}}}}"""

SCORE_SYSTEM = """\
You are a strict judge of instructions (prompts) for image and video generators. Each instruction should \
evoke a user's next item (the target) without naming it. Judge every candidate on its own, with scores from \
0 to 10 (decimals allowed):
- consistency: centred on what the target is, history used only as support, no drift; naming the target's \
terms or name outright lowers it;
- novelty: sensible invention that does not lose the direction;
- aesthetic: a layered visual composition: subject, scene, style, camera language, lighting, mood, key details;
- executability: specific, clear, free of contradictions, usable by a generator as it is; naming the \
target outright lowers it too.
Give each candidate a reason of at most 200 characters.

Reply with JSON only: {"scores": [{"id": 1, "consistency": 0.0, "novelty": 0.0, "aesthetic": 0.0, \
"executability": 0.0, "reasoning": "..."}, ...]} with one entry per candidate id, nothing else."""

STEP2_USER = """\
History TIDs, oldest first:
{history}

Target TID:
{target}

{task}"""

STEP3_SYSTEM = """\
You prepare the thinking that a recommender model writes before it gives an instruction for an image or \
video generator. From the user's history TIDs, an earlier reasoning from the history to the next item, the \
target TID and a summary of how the instruction was revised, write ONE paragraph of that thinking.

Requirements:
1. First person ("I") throughout, as the model's own thoughts.
2. Start by inferring where the user's interest is heading from the history and the earlier reasoning, \
without naming the target too early.
3. Then explain how the instruction took shape: compare the drafts, keep what worked, rewrite what was weak.
4. Never use the words selection, crossover, mutation, founder, elite or mate, nor other search or \
optimisation vocabulary.
5. The target TID may be named near the end.
6. No tags, markdown, lists or line breaks.
7. End by saying how I would write the final instruction around the target direction, with the history as \
support rather than the main objective.

Reply with JSON only: {"reasoning": "<the paragraph>"}"""

STEP3_USER = """\
User historical TIDs, oldest first:
{history}

Earlier reasoning from the history to the next item:
{reasoning}

Target TID:
{target}

Instruction revision summary:
{summary}

Write the paragraph and reply with the JSON object."""

REASK = """\
That answer could not be used: {reason}. Answer again with the complete JSON object in exactly the format \
asked for, and nothing else."""

STEPS = {STEP1_SYSTEM: "step1", FOUNDERS_SYSTEM: "founders", CHILDREN_SYSTEM: "children",
         SCORE_SYSTEM: "score", STEP3_SYSTEM: "step3"}


def step_of(system_prompt: str) -> str | None:
    """Which request a system prompt belongs to (`step1`, `founders`, `children`, `score`, `step3`)."""
    return STEPS.get(system_prompt)


def history_text(tids: Sequence[Sequence[str]]) -> str:
    """The history TIDs as a numbered list, one item a line."""
    return "\n".join(f"{number}. {', '.join(terms)}" for number, terms in enumerate(tids, start=1))


def _chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def step1_messages(history: Sequence[Sequence[str]], target: Sequence[str]) -> list[dict[str, str]]:
    return _chat(STEP1_SYSTEM, STEP1_USER.format(history=history_text(history), target=", ".join(target)))


def founders_messages(history: Sequence[Sequence[str]], target: Sequence[str]) -> list[dict[str, str]]:
    task = "Write the three instructions and reply with the JSON object."
    return _chat(FOUNDERS_SYSTEM, STEP2_USER.format(history=history_text(history), target=", ".join(target),
                                                    task=task))


def children_messages(history: Sequence[Sequence[str]], target: Sequence[str], elite: str,
                      mate: str) -> list[dict[str, str]]:
    task = f"A:\n{elite}\n\nB:\n{mate}\n\nWrite the two new instructions and reply with the JSON object."
    return _chat(CHILDREN_SYSTEM, STEP2_USER.format(history=history_text(history), target=", ".join(target),
                                                    task=task))


def score_messages(history: Sequence[Sequence[str]], target: Sequence[str],
                   prompts: Sequence[str]) -> list[dict[str, str]]:
    listed = "\n\n".join(f"Candidate {number}:\n{prompt}" for number, prompt in enumerate(prompts, start=1))
    task = f"{listed}\n\nScore every candidate and reply with the JSON object."
    return _chat(SCORE_SYSTEM, STEP2_USER.format(history=history_text(history), target=", ".join(target),
                                                 task=task))


def step3_messages(history: Sequence[Sequence[str]], reasoning: str, target: Sequence[str],
                   summary: str) -> list[dict[str, str]]:
    return _chat(STEP3_SYSTEM, STEP3_USER.format(history=history_text(history), reasoning=reasoning,
                                                 target=", ".join(target), summary=summary))


def reask_messages(messages: Sequence[dict[str, str]], answer: str, reason: str) -> list[dict[str, str]]:
    """The conversation again with the unusable answer and a request to answer properly."""
    return [*messages, {"role": "assistant", "content": answer},
            {"role": "user", "content": REASK.format(reason=reason)}]
