"""The offline heuristic teacher: the `Teacher` interface without any LLM, deterministic under a seed, so
that supervision runs end to end anywhere. Every row it writes is labelled `teacher=heuristic`.

Instructions follow one visual-description grammar of slots:

    "<Style> image of <subject>, <scene>. <Camera>, <lighting>. The mood is <mood>. Key details: <details>."

- subject: one phrase per target TID term (its content words), never a term itself: a word that names a
  term is cut to its stem or left out, a phrase that spells out a term loses its leading words; the
  rendered prompt is checked and thinned until it names no term. Bolder strategies add history words;
- scene, style, camera, lighting, mood: phrases from the fixed banks below, drawn with the seeded generator
  among those that name no target term;
- details: the history's most frequent words that are not target words.

Founders differ in how close they stay: conservative = 4 target phrases, no history, no camera or mood;
balanced = 3 target phrases, 1 history word, every slot; exploratory = 2 target phrases, 2 history words,
every slot. The crossover keeps the elite's subject and takes each other slot from the elite or the mate
(the mate's where the elite has none); the mutation redraws one slot of the elite (a missing one first).

The scorer's four dimensions are measurable proxies on 0-10:
- consistency: the share of target terms the prompt evokes (a word with the stem of one of the term's words)
  without naming them verbatim, terms weighted by rank (1, 1/2, 1/3, ...); evoking FULL_COVERAGE of the
  weight earns 10;
- novelty: the share of the prompt's content words that are new (no target stem) but related (a history
  word or visual vocabulary);
- aesthetic: the share of the six slots (subject, scene, style, camera, lighting, mood) the text shows;
- executability: 10 minus penalties for a length outside 15-70 words, repeated words, vague words, question
  marks and contradictions (day and night, close-up and wide shot, ...).

Step 1 and step 3 are templates filled from the sample (recurring history words, what links the history to
the target, the search's best draft), in the first person and concluding on the target.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from recbole_navigen.supervision.evolution import draft_name
from recbole_navigen.supervision.fitness import DIMENSIONS, leaked_terms
from recbole_navigen.supervision.samples import Sample
from recbole_navigen.supervision.teacher import FOUNDER_STRATEGIES, CallLog, Candidate

HEURISTIC_LABEL = "heuristic"
# Bumped whenever the heuristic's output changes for the same input (it keys the supervision output).
HEURISTIC_VERSION = 1

BANKS = {
    "scene": ["on a weathered wooden workbench", "in a sunlit loft studio", "on a small stage before a quiet crowd",
              "in a cozy living room corner", "on a rooftop at dusk", "in a cluttered rehearsal space",
              "on a minimalist white tabletop", "in a rain-streaked city street at night"],
    "style": ["photorealistic", "cinematic film still", "editorial product photography", "warm analog film",
              "minimalist graphic", "vibrant pop-art", "soft watercolor", "high-contrast monochrome"],
    "camera": ["shallow depth-of-field close-up", "slow dolly-in at eye level", "overhead flat-lay framing",
               "low-angle hero shot", "wide establishing shot", "macro detail shot", "handheld tracking shot",
               "three-quarter view through an 85mm lens"],
    "lighting": ["soft morning window light", "golden-hour backlight", "moody low-key lighting", "neon rim light",
                 "diffused softbox light", "warm tungsten glow", "cool moonlit ambience",
                 "dappled daylight through leaves"],
    "mood": ["calm and focused", "nostalgic warmth", "quiet anticipation", "playful energy",
             "an intimate late-night feeling", "confident and aspirational", "serene craftsmanship",
             "electric excitement"],
}
VISUAL_SLOTS = ("scene", "style", "camera", "lighting", "mood")
SLOTS = ("subject", *VISUAL_SLOTS)
# Words that show a slot is there, beyond the banks' own words.
CUES = {
    "scene": {"room", "studio", "stage", "street", "table", "tabletop", "workbench", "background", "setting",
              "landscape", "interior", "outdoors", "indoors", "kitchen", "garden", "city", "rooftop", "space"},
    "style": {"photorealistic", "cinematic", "editorial", "illustration", "painting", "watercolor", "film",
              "graphic", "monochrome", "pop-art", "render", "photography", "style", "vintage", "realistic"},
    "camera": {"shot", "close-up", "closeup", "lens", "angle", "framing", "dolly", "macro", "overhead", "pan",
               "tracking", "view", "zoom", "wide", "depth-of-field", "bokeh", "85mm", "35mm", "camera"},
    "lighting": {"light", "lighting", "lit", "glow", "backlight", "shadow", "shadows", "sunlight", "daylight",
                 "neon", "softbox", "ambience", "golden-hour", "illuminated", "rim"},
    "mood": {"mood", "feeling", "atmosphere", "calm", "nostalgic", "serene", "playful", "energy", "excitement",
             "warmth", "anticipation", "intimate", "tense", "joyful", "melancholic", "dreamy", "focused"},
}
CONTRADICTIONS = [
    ({"morning", "daylight", "sunlit", "noon", "golden-hour"}, {"night", "nocturnal", "moonlit", "midnight",
                                                                "late-night"}),
    ({"close-up", "macro"}, {"wide", "establishing", "panoramic"}),
    ({"minimalist", "sparse"}, {"cluttered", "busy", "maximalist"}),
    ({"monochrome", "black-and-white"}, {"vibrant", "colorful", "pop-art", "neon"}),
    ({"calm", "serene", "quiet"}, {"excitement", "frantic", "playful", "rowdy"}),
]
VAGUE = {"something", "stuff", "things", "maybe", "etc", "whatever", "somehow", "various", "nice"}
STOPWORDS = {"a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "by", "from", "into",
             "through", "before", "its", "is", "it", "as", "that", "this", "be", "are", "all", "not", "but", "new"}
# The grammar's own words: neither target, history nor visual content.
GRAMMAR_WORDS = {"image", "central", "subject", "evoking", "hints", "key", "details", "mood"}
# How step 3 speaks of the four scores.
PLAIN = {"consistency": "how clearly it points at the item", "novelty": "freshness",
         "aesthetic": "visual richness", "executability": "how easy it is to follow"}
FULL_COVERAGE = 0.6
LENGTH_RANGE = (15, 70)
STRATEGIES = {  # target words, history words, visual slots
    "conservative": (4, 0, ("scene", "style", "lighting")),
    "balanced": (3, 1, VISUAL_SLOTS),
    "exploratory": (2, 2, VISUAL_SLOTS),
}
DETAIL_WORDS = {"conservative": 1, "balanced": 2, "exploratory": 3}
MAX_DETAILS = 4

_WORD = re.compile(r"[a-z0-9][a-z0-9'&+-]*")


def words_of(text: str) -> list[str]:
    """Lower-cased words of `text` (hyphenated words kept whole)."""
    return [word.strip("'-") for word in _WORD.findall(text.lower()) if word.strip("'-")]


def stem(word: str) -> str:
    """A crude stem: lower case, no possessive, no plural `s`/`ies`."""
    word = word.lower().removesuffix("'s")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """Words of at least three characters that are neither stopwords nor the grammar's own."""
    return [word for word in words_of(text) if len(word) >= 3 and word not in STOPWORDS | GRAMMAR_WORDS]


VISUAL_STEMS = {stem(word) for bank in BANKS.values() for phrase in bank for word in content_words(phrase)} | {
    stem(word) for cues in CUES.values() for word in cues}


def _rng(seed: int, *parts: Any) -> random.Random:
    """A generator that depends only on the seed and `parts`, in any process and any order of samples."""
    digest = hashlib.sha256(json.dumps([seed, *parts], ensure_ascii=False).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _join(words: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    words = list(words)
    if len(words) < 2:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _unique(words: Iterable[str]) -> list[str]:
    seen, kept = set(), []
    for word in words:
        if stem(word) not in seen:
            seen.add(stem(word))
            kept.append(word)
    return kept


def _names_target(text: str, sample: Sample) -> bool:
    return bool(leaked_terms(text, sample.target_tid))


def target_phrases(sample: Sample) -> list[str]:
    """One phrase per target term in rank order that names no term: the term's content words, each cut to
    its stem or left out where it names a term, then leading words dropped while the phrase still names one
    (it may spell out a whole term); terms adding no new stem are skipped."""
    phrases, used = [], set()
    for term in sample.target_tid:
        words = [next((form for form in (word, stem(word)) if not _names_target(form, sample)), None)
                 for word in content_words(term)]
        words = [word for word in words if word]
        while words and _names_target(" ".join(words), sample):
            words.pop(0)  # keep the head noun, usually last
        stems = {stem(word) for word in words}
        if words and not stems <= used:
            phrases.append(" ".join(words))
            used |= stems
    return phrases


def history_words(sample: Sample) -> list[str]:
    """The shown history's words that share no stem with the target, most frequent (then most recent) first."""
    target_stems = {stem(word) for term in sample.target_tid for word in content_words(term)}
    counts: Counter[str] = Counter()
    last_seen: dict[str, int] = {}
    surface: dict[str, str] = {}
    for position, terms in enumerate(sample.shown_tids):
        for word in content_words(" ".join(terms)):
            key = stem(word)
            if key in target_stems or _names_target(word, sample):
                continue
            counts[key] += 1
            last_seen[key] = position
            surface.setdefault(key, word)
    ranked = sorted(counts, key=lambda key: (-counts[key], -last_seen[key], key))
    return [surface[key] for key in ranked]


def render(slots: dict[str, str]) -> str:
    """The instruction text of a slot assignment (missing slots are left out)."""
    first = f"{slots.get('style', 'detailed')} image of {slots['subject']}"
    sentences = [first[0].upper() + first[1:] + (f", {slots['scene']}" if slots.get("scene") else "")]
    shot = ", ".join(slots[name] for name in ("camera", "lighting") if slots.get(name))
    if shot:
        sentences.append(shot[0].upper() + shot[1:])
    if slots.get("mood"):
        sentences.append(f"The mood is {slots['mood']}")
    if slots.get("details"):
        sentences.append(f"Key details: {slots['details']}")
    return ". ".join(sentences) + "."


def _subject(anchor: Sequence[str], support: Sequence[str]) -> str:
    subject = f"a central subject evoking {_join(anchor) or 'its defining features'}"
    return subject + (f", with hints of {_join(support)}" if support else "")


def _draw(rng: random.Random, slot: str, sample: Sample, avoid: str | None = None) -> str:
    """A bank phrase for `slot` that names no target term (and differs from `avoid`)."""
    options = [phrase for phrase in BANKS[slot] if phrase != avoid and not _names_target(phrase, sample)]
    return rng.choice(options or BANKS[slot])


def _compose(slots: dict[str, str], anchor: list[str], support: list[str], sample: Sample) -> dict[str, str]:
    """`slots` with its subject; subject words are dropped, last first, until the subject names no term
    (a very short term can hide in the grammar's own words: that leak is left to the scorer)."""
    anchor, support = list(anchor), list(support)
    unavoidable = set(leaked_terms(render({**slots, "subject": _subject([], [])}), sample.target_tid))
    while True:
        slots = {**slots, "subject": _subject(anchor, support)}
        if set(leaked_terms(render(slots), sample.target_tid)) <= unavoidable or not (anchor or support):
            return slots
        (support if support else anchor).pop()


SLOT_CUE_STEMS = {slot: {stem(word) for phrase in BANKS[slot] for word in content_words(phrase)}
                  | {stem(cue) for cue in CUES[slot]} for slot in VISUAL_SLOTS}


def visual_slots(text: str) -> set[str]:
    """The visual slots (scene, style, camera, lighting, mood) that `text` shows by at least one cue word."""
    stems = {stem(word) for word in content_words(text)}
    return {slot for slot, cues in SLOT_CUE_STEMS.items() if stems & cues}


def score_prompt(prompt: str, sample: Sample) -> dict[str, Any]:
    """The four proxy scores (0-10) of `prompt` for `sample`, and a one-line reason."""
    words = words_of(prompt)
    content = content_words(prompt)
    stems = {stem(word) for word in content}

    weights = evoked = 0.0
    target_stems: set[str] = set()
    for rank, term in enumerate(sample.target_tid):
        term_stems = {stem(word) for word in content_words(term)}
        if not term_stems:
            continue
        target_stems |= term_stems
        weights += 1 / (rank + 1)
        named = bool(leaked_terms(prompt, [term]))
        if term_stems & stems and not named:
            evoked += 1 / (rank + 1)
    consistency = 10 * min(1.0, evoked / weights / FULL_COVERAGE) if weights else 0.0

    history_stems = {stem(word) for terms in sample.shown_tids for word in content_words(" ".join(terms))}
    related = (history_stems | VISUAL_STEMS) - target_stems
    novelty = 10 * sum(stem(word) in related for word in content) / len(content) if content else 0.0

    shown = visual_slots(prompt)
    present = {"subject": bool(stems & (target_stems | history_stems)), **{slot: slot in shown for slot in VISUAL_SLOTS}}
    aesthetic = 10 * sum(present.values()) / len(SLOTS)

    short, long_ = LENGTH_RANGE
    repeats = sum(count - 1 for count in Counter(content).values())
    vague = sum(word in VAGUE for word in words)
    word_set = set(words)
    clashes = [f"{sorted(a & word_set)[0]}/{sorted(b & word_set)[0]}" for a, b in CONTRADICTIONS
               if a & word_set and b & word_set]
    penalty = (0.3 * max(0, short - len(words), len(words) - long_) + 0.5 * min(repeats, 6) + vague
               + prompt.count("?") + 2.5 * len(clashes))
    executability = max(0.0, 10.0 - penalty)

    missing = [slot for slot in SLOTS if not present[slot]]
    reasoning = (f"evokes {evoked / weights if weights else 0:.0%} of the target weight; {len(content)} content "
                 f"words; slots missing: {', '.join(missing) or 'none'}; clashes: {', '.join(clashes) or 'none'}")
    scores = {"consistency": consistency, "novelty": novelty, "aesthetic": aesthetic, "executability": executability}
    return {**{name: round(scores[name], 2) for name in DIMENSIONS}, "reasoning": reasoning}


class HeuristicTeacher:
    """The `Teacher` interface from templates, slot banks and proxy scores; deterministic under `seed`."""

    label = HEURISTIC_LABEL

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def reason(self, sample: Sample, log: CallLog) -> str:
        log.requests += 1
        rng = _rng(self.seed, sample.sample_id, "step1")
        history = history_words(sample)
        recurring = _recurring(sample)
        if recurring:
            opening = rng.choice(["Looking back at what I chose, I keep coming back to {}.",
                                  "When I go through my history, {} come up again and again."])
            sentences = [opening.format(_join(recurring))]
        elif history:
            sentences = [f"My picks so far range across {_join(history[:3])}, without one theme dominating."]
        else:
            sentences = ["I have very little history to go on, so I have to read it closely."]
        if sample.shown_tids:
            sentences.append(f"My most recent item was about {_join(sample.shown_tids[-1][:2])}, which tells me "
                             "where my attention is right now.")
        linked, new = _link(sample)
        if linked:
            sentences.append(f"What connects my history to the next step is {_join(linked[:3])}"
                             + (f", and I also expect something new: {_join(new[:3])}." if new else "."))
        elif new:
            sentences.append("Nothing in my history names it directly, so I lean on the overall pattern and "
                             f"expect something new built around {_join(new[:3])}.")
        closing = rng.choice(["Putting these clues together, I conclude that the next item I want is {}.",
                              "So I should settle on the item whose terms are {}."])
        sentences.append(closing.format(", ".join(sample.target_tid) or sample.target))
        return " ".join(sentences)

    def founders(self, sample: Sample, log: CallLog) -> list[Candidate]:
        log.requests += 1
        rng = _rng(self.seed, sample.sample_id, "founders")
        anchor_pool, support_pool = target_phrases(sample), history_words(sample)
        founders = []
        for strategy in FOUNDER_STRATEGIES:
            n_anchor, n_support, visual = STRATEGIES[strategy]
            slots = {slot: _draw(rng, slot, sample) for slot in visual}
            details = support_pool[n_support:n_support + DETAIL_WORDS[strategy]]
            if details:
                slots["details"] = ", ".join(details)
            slots = _compose(slots, anchor_pool[:n_anchor], support_pool[:n_support], sample)
            reasoning = (f"{n_anchor} target cues, {n_support} history cues; slots: "
                         f"{', '.join(slot for slot in SLOTS if slot in slots)}")
            founders.append(Candidate(render(slots), reasoning, strategy, 0, slots))
        return founders

    def score(self, sample: Sample, candidates: list[Candidate], log: CallLog) -> list[dict[str, Any]]:
        log.requests += 1
        return [score_prompt(candidate.prompt, sample) for candidate in candidates]

    def children(self, sample: Sample, elite: Candidate, mate: Candidate, round_: int,
                 log: CallLog) -> tuple[Candidate, Candidate]:
        log.requests += 1
        rng = _rng(self.seed, sample.sample_id, "children", round_)
        own, other = dict(elite.slots or {}), dict(mate.slots or {})
        blended = {"subject": own["subject"]}
        taken = []
        for slot in VISUAL_SLOTS:
            if other.get(slot) and (slot not in own or rng.random() < 0.5):
                blended[slot] = other[slot]
                taken.append(slot)
            elif own.get(slot):
                blended[slot] = own[slot]
        details = _unique(word for slots in (own, other) for word in slots.get("details", "").split(", ") if word)
        if details:
            blended["details"] = ", ".join(details[:MAX_DETAILS])
        crossover = Candidate(render(blended), f"kept the stronger draft's subject; took {', '.join(taken) or 'nothing'}"
                              " from the other draft and pooled the details", "crossover", round_, blended)

        missing = [slot for slot in VISUAL_SLOTS if slot not in own]
        slot = rng.choice(missing or list(VISUAL_SLOTS))
        changed = {**own, slot: _draw(rng, slot, sample, avoid=own.get(slot))}
        verb = "added" if slot in missing else "changed"
        mutation = Candidate(render(changed), f"{verb} the {slot} only", "mutation", round_, changed)
        return crossover, mutation

    def distil(self, sample: Sample, reasoning: str, search: dict[str, Any], log: CallLog) -> str:
        log.requests += 1
        rng = _rng(self.seed, sample.sample_id, "step3")
        best = search["best"]
        ranked = sorted(DIMENSIONS, key=lambda name: -best["scores"][name])
        recurring = _recurring(sample) or history_words(sample)[:3]
        linked, new = _link(sample)
        direction = f"more of {_join(linked[:3])}" if linked else "something that continues the same thread"
        sentences = [
            f"Reading my history, I notice {_join(recurring) or 'only a few clues'} and where my latest choices "
            f"are heading, which points me toward {direction}.",
            rng.choice(["Before naming anything, I asked myself what picture would speak to me here",
                        "Before settling on words, I pictured what image would make me want it"])
            + ", so I sketched a cautious version close to the item, a balanced one and a bolder one.",
        ]
        revisions = len(search.get("rounds", []))
        path = f" after {revisions} rounds of revision" if revisions > 1 else " after one revision" if revisions else ""
        sentences.append(
            f"The {draft_name(best)} held up best{path}, strongest in {PLAIN[ranked[0]]} and {PLAIN[ranked[1]]}, so I "
            f"kept its core and reworked what was weakest, {PLAIN[ranked[-1]]}.")
        slots = best.get("slots") or {}
        look = _join([slots[name] for name in ("style", "scene", "lighting") if slots.get(name)][:2])
        support = history_words(sample)[:2]
        sentences.append(
            f"The item I am heading for is {', '.join(sample.target_tid) or sample.target}, so I would write the "
            f"final instruction around it" + (f" as a {look} picture" if look else "")
            + (f", letting {_join(support)} support it rather than lead." if support else ", with my history only "
               "as support."))
        return " ".join(sentences)


def _recurring(sample: Sample) -> list[str]:
    """Up to three history words that occur in at least two shown items."""
    counts = Counter(stem(word) for terms in sample.shown_tids for word in set(content_words(" ".join(terms))))
    return [word for word in history_words(sample) if counts[stem(word)] >= 2][:3]


def _link(sample: Sample) -> tuple[list[str], list[str]]:
    """Target words the shown history already has (by stem), and those it does not."""
    history_stems = {stem(word) for terms in sample.shown_tids for word in content_words(" ".join(terms))}
    words = _unique(word for term in sample.target_tid for word in content_words(term))
    return ([word for word in words if stem(word) in history_stems],
            [word for word in words if stem(word) not in history_stems])
