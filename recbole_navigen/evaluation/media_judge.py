"""An AIM-judge-style scorer of what an instruction produced, through the teacher client (optional; cached
there). With an image, an OpenAI-compatible vision-language model sees it beside the instruction and the
user's history and scores novelty, aesthetics, instruction following and personalisation in [0, 1]; with
no image, the instruction alone is scored on novelty, aesthetics (of the scene it describes) and
personalisation, and `instruction_following` is null. An answer that is not exactly these numbers is a
failure (None), counted by the caller, never replaced.
"""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path

from recbole_navigen.teacher.jsonparse import unit_scores

IMAGE_SCORES = ("novelty", "aesthetics", "instruction_following", "personalization")
TEXT_SCORES = ("novelty", "aesthetics", "personalization")
_SYSTEM = (
    "You evaluate personalised generated content for a recommender. You see the user's recent items, the "
    "creative instruction written for the user{image}. Score each of {names} in [0, 1]: novelty (fresh, not "
    "a copy of what the user already has), aesthetics (composition, light, visual appeal{of_scene}), "
    "{following}personalization (fits the taste the history shows). Reply with one JSON object holding "
    "exactly these numbers."
)


def judge_messages(instruction: str, history_titles: list[str], image: Path | None) -> list[dict]:
    """The chat for one judgement; the image travels as a base64 data URL in an OpenAI `image_url` part."""
    names = IMAGE_SCORES if image else TEXT_SCORES
    system = _SYSTEM.format(image=" and the image generated from it" if image else "", names=", ".join(names),
                            of_scene="" if image else " of the scene it describes",
                            following="instruction_following (the image shows what the instruction asks), "
                            if image else "")
    text = json.dumps({"history": history_titles, "instruction": instruction}, ensure_ascii=False)
    content: str | list[dict] = text
    if image:
        encoded = base64.b64encode(Path(image).read_bytes()).decode("ascii")
        mime = mimetypes.guess_type(str(image))[0] or "image/png"  # a video's frames come as a GIF
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{encoded}"}}]
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def parse_judgement(text: str, with_image: bool) -> dict[str, float | None] | None:
    """The scores of a judge's answer, or None when they are not exactly the expected numbers in [0, 1]."""
    scores: dict[str, float | None] | None = unit_scores(text, IMAGE_SCORES if with_image else TEXT_SCORES)
    if scores is not None:
        scores.setdefault("instruction_following", None)
    return scores


def judge_media(client, rows: list[dict], images: dict[str, Path]) -> list[dict[str, float | None] | None]:
    """Scores per row (rows of a `generate` file; `images` maps users to rendered images, when any)."""
    requests = [(row, images.get(row["user"])) for row in rows if row.get("instruction")]
    conversations = [judge_messages(row["instruction"], [item["title"] for item in row["history"]], image)
                     for row, image in requests]
    answers = client.chat_many(conversations, desc="media judge") if conversations else []
    by_user = {row["user"]: (None if isinstance(answer, Exception) else parse_judgement(answer.text, image is not None))
               for (row, image), answer in zip(requests, answers)}
    return [by_user.get(row["user"]) for row in rows]
