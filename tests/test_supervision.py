"""Supervision units: the fitness formula and leak penalty, the evolutionary loop, the heuristic teacher, the
answer schemas, and the LLM teacher's re-ask and failure handling against the fake OpenAI server."""

from __future__ import annotations

import json

import pytest
from fake_openai import make_client, supervision_answer

from recbole_navigen.supervision import schemas
from recbole_navigen.supervision.evolution import evolve
from recbole_navigen.supervision.fitness import fitness, leaked_terms
from recbole_navigen.supervision.heuristic import HeuristicTeacher, score_prompt
from recbole_navigen.supervision.llm_teacher import LLMTeacher
from recbole_navigen.supervision.pipeline import supervise_sample
from recbole_navigen.supervision.prompts import step_of
from recbole_navigen.supervision.samples import Sample
from recbole_navigen.supervision.teacher import CallLog, Candidate

SAMPLE = Sample(
    sample_id="test:7", user="7", history=["a", "b", "c"], target="d",
    history_tids=[["Acoustic Guitars", "Yamaha", "spruce top"], ["Guitar Strings", "D'Addario", "phosphor bronze"],
                  ["Guitar Straps", "Levy's", "leather strap", "vintage look"]],
    target_tid=["Electric Guitars", "Fender", "maple neck", "solid body", "vintage tone"], shown=10)
OTHER = Sample(
    sample_id="test:8", user="8", history=["e", "f"], target="g",
    history_tids=[["Drum Sticks", "Vater", "hickory"], ["Snare Drums", "Ludwig", "steel shell", "brass hoops"]],
    target_tid=["Cymbals", "Zildjian", "crash cymbal", "bright shimmer"], shown=10)
SCORES = {"consistency": 8.0, "novelty": 6.0, "aesthetic": 7.0, "executability": 9.0}


def scores(**changes: float) -> dict[str, float]:
    return {**SCORES, **changes}


# ----- fitness -----


@pytest.mark.parametrize(
    ("given", "prompt", "overall", "adjusted", "leaked"),
    [
        (SCORES, "a glossy six-string on a stage", 7.55, SCORES, []),  # .35*8 + .2*6 + .25*7 + .2*9
        (scores(consistency=4.9), "a glossy six-string", -1.0, scores(consistency=4.9), []),
        (scores(executability=4.0), "a glossy six-string", -1.0, scores(executability=4.0), []),
        # names "Fender": consistency 8 -> 5.5, executability 9 -> 7, then 0.5 off the formula's 6.275
        (SCORES, "A FENDER on a stage", 5.775, scores(consistency=5.5, executability=7.0), ["fender"]),
        # the penalty can gate: consistency 6 -> 3.5 < 5, so -1, and the leak's -0.5 on top
        (scores(consistency=6.0), "a maple neck guitar", -1.5, scores(consistency=3.5, executability=7.0),
         ["maple neck"]),
        # floored at 0
        (scores(consistency=1.0, executability=1.5), "fender", -1.5, scores(consistency=0.0, executability=0.0),
         ["fender"]),
    ],
)
def test_fitness_formula_gate_and_leak_penalty(given, prompt, overall, adjusted, leaked):
    result = fitness(given, prompt, SAMPLE.target_tid)
    assert result.overall == pytest.approx(overall)
    assert result.scores == pytest.approx(adjusted)
    assert result.leaked == leaked


def test_leak_is_a_lowercase_substring_of_terms_of_two_characters_or_more():
    assert leaked_terms("Shiny DC jack", ["dc", "x", "Jack Plug"]) == ["dc"]  # "x" is too short to count
    assert leaked_terms("a crash-cymbal", ["crash cymbal"]) == []  # not the same string
    assert leaked_terms("handmade", ["DE"]) == ["de"]  # a plain substring, as specified


# ----- the evolutionary loop -----


class ScriptedTeacher:
    """Fixed prompts and scores (every dimension = the prompt's value, so overall = value)."""

    label = "scripted"

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.calls: list[str] = []

    def founders(self, sample, log):
        self.calls.append("founders")
        return [Candidate(name, "", name, 0) for name in ("conservative", "balanced", "exploratory")]

    def score(self, sample, candidates, log):
        self.calls.append("score")
        return [{name: self.values[c.prompt] for name in SCORES} | {"reasoning": "r"} for c in candidates]

    def children(self, sample, elite, mate, round_, log):
        self.calls.append(f"children {round_}: {elite.prompt} x {mate.prompt}")
        return Candidate(f"x{round_}", "", "crossover", round_), Candidate(f"m{round_}", "", "mutation", round_)


def test_population_stays_three_and_the_elite_is_never_lost():
    values = {"conservative": 6, "balanced": 8, "exploratory": 7, "x1": 7.5, "m1": 9, "x2": 5, "m2": 6, "x3": 5.5,
              "m3": 5.2}
    teacher = ScriptedTeacher(values)
    trace: dict = {}
    evolve(teacher, SAMPLE, 3, CallLog(), trace)
    populations = [[c["prompt"] for c in step["population"]] for step in trace["rounds"]]
    assert populations == [["conservative", "balanced", "exploratory"], ["balanced", "x1", "m1"], ["m1", "x2", "m2"]]
    assert [c["prompt"] for c in trace["final"]] == ["m1", "x3", "m3"]
    for step, following in zip(trace["rounds"], [*populations[1:], ["m1", "x3", "m3"]]):
        elite, mate = step["population"][step["elite"]], step["population"][step["mate"]]
        assert elite["overall"] == max(c["overall"] for c in step["population"])
        assert mate["overall"] == sorted(c["overall"] for c in step["population"])[-2]
        assert following == [elite["prompt"], step["children"]["crossover"]["prompt"],
                             step["children"]["mutation"]["prompt"]]
    assert trace["best"]["prompt"] == "m1" and trace["best"]["overall"] == 9  # worse children did not replace it
    assert teacher.calls == ["founders", "score", "children 1: balanced x exploratory", "score",
                             "children 2: m1 x balanced", "score", "children 3: m1 x m2", "score"]


def test_zero_rounds_scores_the_founders_once():
    teacher = ScriptedTeacher({"conservative": 6, "balanced": 8, "exploratory": 7})
    trace: dict = {}
    evolve(teacher, SAMPLE, 0, CallLog(), trace)
    assert trace["rounds"] == [] and trace["best"]["prompt"] == "balanced" and teacher.calls == ["founders", "score"]


def test_summary_speaks_plainly():
    trace: dict = {}
    evolve(ScriptedTeacher({"conservative": 6, "balanced": 8, "exploratory": 7, "x1": 9, "m1": 5}), SAMPLE, 1,
           CallLog(), trace)
    summary = trace["summary"]
    heads = [line for line in summary.splitlines() if line.endswith(":")]
    assert heads == ["Initial drafts:", "Revision path:", "Final result (scores):"]
    for name in ("cautious draft", "balanced draft", "bold draft", "blended draft", "refined draft"):
        assert name in summary
    assert "The blended draft from round 1 came out on top" in summary and "overall 9.00" in summary
    assert not schemas.JARGON.search(summary)


# ----- the heuristic teacher -----


def test_heuristic_teacher_is_deterministic_under_a_seed():
    first = [supervise_sample(HeuristicTeacher(2020), sample, 2) for sample in (SAMPLE, OTHER)]
    again = [supervise_sample(HeuristicTeacher(2020), sample, 2) for sample in (OTHER, SAMPLE)][::-1]
    assert json.dumps(first) == json.dumps(again)  # same seed, any order of samples: the same rows
    other_seed = [supervise_sample(HeuristicTeacher(7), sample, 2) for sample in (SAMPLE, OTHER)]
    assert json.dumps(first) != json.dumps(other_seed)
    assert all(row["teacher"] == "heuristic" and row["status"] == "ok" for row in first)


def test_heuristic_rows_read_as_the_student_and_never_name_the_target_in_the_instruction():
    for sample in (SAMPLE, OTHER):
        row = supervise_sample(HeuristicTeacher(2020), sample, 2)
        # step 1 and step 3 pass the same checks as an LLM teacher's answers
        assert schemas.parse_step1(json.dumps({"reasoning": row["step1"]["reasoning"]}), sample.target_tid)
        assert schemas.parse_step3(json.dumps({"reasoning": row["reasoning"]})) == row["reasoning"]
        assert row["reasoning"].endswith("rather than lead.") and ", ".join(sample.target_tid) in row["reasoning"]
        assert leaked_terms(row["instruction"], sample.target_tid) == []
        assert row["step2"]["best"]["overall"] >= max(c["overall"] for c in row["step2"]["rounds"][0]["population"])
        assert row["calls"]["requests"] == 8  # step 1, founders, 2 x (score + children), final score, step 3


def test_heuristic_copes_with_items_without_terms():
    bare = Sample("test:9", "9", ["a"], "b", [[]], [], 10)
    row = supervise_sample(HeuristicTeacher(2020), bare, 1)
    assert row["status"] == "ok" and row["instruction"] and row["step1"]["reasoning"].endswith("is b.")
    assert schemas.parse_step1(json.dumps({"reasoning": "I pick b."}), []) == "I pick b."  # nothing to name


def test_heuristic_children_work_on_slots():
    teacher, log = HeuristicTeacher(2020), CallLog()
    conservative, balanced, _ = teacher.founders(SAMPLE, log)
    crossover, mutation = teacher.children(SAMPLE, balanced, conservative, 1, log)
    assert crossover.slots["subject"] == balanced.slots["subject"]
    assert crossover.origin == "crossover" and mutation.origin == "mutation" and mutation.born == 1
    changed = [slot for slot in {**balanced.slots, **mutation.slots} if balanced.slots.get(slot) != mutation.slots.get(slot)]
    assert len(changed) == 1  # one controlled change
    # the conservative draft lacks camera and mood: its mutation adds one of them
    _, added = teacher.children(SAMPLE, conservative, balanced, 1, log)
    assert [slot for slot in added.slots if slot not in conservative.slots] in (["camera"], ["mood"])


def test_heuristic_scores_are_measurable_proxies():
    evoking = "Photorealistic image of an electric guitar body in maple, on a stage. Low-angle shot, neon rim light."
    naming = "Photorealistic image of a Fender with a maple neck, on a stage. Low-angle shot, neon rim light."
    assert score_prompt(evoking, SAMPLE)["consistency"] > score_prompt(naming, SAMPLE)["consistency"]
    bare = score_prompt("An electric guitar with a solid maple body and a vintage finish, shown clearly.", SAMPLE)
    rich = score_prompt(evoking + " The mood is calm and focused.", SAMPLE)
    assert rich["aesthetic"] > bare["aesthetic"]
    clash = score_prompt(evoking + " Soft morning light under a moonlit night sky.", SAMPLE)
    assert clash["executability"] <= rich["executability"] - 2.5 and "morning/moonlit" in clash["reasoning"]
    all_target = score_prompt("electric guitar maple body vintage", SAMPLE)
    assert all_target["novelty"] == 0 and rich["novelty"] > 0
    assert all(0 <= rich[name] <= 10 for name in SCORES)


# ----- answer schemas -----


@pytest.mark.parametrize(
    ("parse", "answer", "reason"),
    [
        (lambda a: schemas.parse_step1(a, SAMPLE.target_tid), "Sure! I think it is a guitar.", "no complete JSON"),
        (lambda a: schemas.parse_step1(a, SAMPLE.target_tid), '{"reasoning": "I like it. I conclude: a drum."}',
         "naming the target"),
        (lambda a: schemas.parse_step1(a, SAMPLE.target_tid), '{"reasoning": "It is the Fender."}', "first person"),
        (lambda a: schemas.parse_step1(a, SAMPLE.target_tid), '["I", "Fender"]', "expected a JSON object"),
        (schemas.parse_founders, '{"candidates": [{"strategy": "conservative", "prompt": "a", "reasoning": "b"}, '
                                 '{"strategy": "balanced", "prompt": "a", "reas', "cut off"),
        (schemas.parse_founders, '{"candidates": [{"strategy": "bold", "prompt": "a", "reasoning": "b"}]}',
         "exactly the strategies"),
        (lambda a: schemas.parse_scores(a, 2), '{"scores": [{"id": 1, "consistency": 11, "novelty": 1, '
                                               '"aesthetic": 1, "executability": 1}, {"id": 2}]}', "in [0, 10]"),
        (lambda a: schemas.parse_scores(a, 2), '{"scores": [{"id": 1, "consistency": "8", "novelty": 1, '
                                               '"aesthetic": 1, "executability": 1}, {"id": 2}]}', "a number"),
        (lambda a: schemas.parse_scores(a, 2), '{"scores": [{"id": 1}]}', "one entry for each id"),
        (schemas.parse_children, '{"crossover": {"prompt": "a", "reasoning": "b"}}', '"mutation" must be'),
        (schemas.parse_children, '{"crossover": {"prompt": "", "reasoning": "b"}, "mutation": {}}', "non-empty"),
        (schemas.parse_step3, '{"reasoning": "I kept the elite draft after the crossover."}', "['crossover', 'elite']"),
        (schemas.parse_step3, '{"reasoning": "I think:\\n- a list item"}', "plain prose"),
    ],
)
def test_schemas_reject_unusable_answers(parse, answer, reason):
    with pytest.raises(schemas.AnswerError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse(answer)


def test_schemas_accept_wrapped_answers():
    answer = '<think>hmm {"x": 1}</think>Here:\n```json\n{"reasoning": "I see guitars. So: Electric Guitars."}\n```'
    assert schemas.parse_step1(answer, SAMPLE.target_tid) == "I see guitars. So: Electric Guitars."
    answer = json.dumps({"scores": [{"id": 2, **SCORES}, {"id": 1, **scores(novelty=1)}]})
    assert [entry["novelty"] for entry in schemas.parse_scores(answer, 2)] == [1.0, 6.0]


# ----- the LLM teacher against the fake server -----


def _step(body: dict) -> str:
    return step_of(body["messages"][0]["content"])


def test_unusable_answer_is_asked_again_once_and_counted(fake_server):
    answers = iter(["Sure! The next item is clearly a guitar."])  # the first step-1 answer is not JSON
    fake_server.responder = lambda body: (next(answers, None) if _step(body) == "step1" else None) or \
        supervision_answer(body)
    row = supervise_sample(LLMTeacher(make_client(fake_server, None), 512), SAMPLE, 1)
    assert row["status"] == "ok" and row["teacher"] == "openai:fake-teacher"
    assert row["calls"]["reasks"] == 1 and row["calls"]["requests"] == 7  # 6 requests + 1 re-ask
    assert row["calls"]["problems"] == ["step1 reasoning: no complete JSON object (no JSON object found in the "
                                        "answer: 'Sure! The next item is clearly a guitar.')"]
    reask = fake_server.requests[1]["body"]["messages"]
    assert [m["role"] for m in reask] == ["system", "user", "assistant", "user"]
    assert "could not be used: no complete JSON object" in reask[-1]["content"]
    assert all(len(request["body"]["messages"]) == 2 for request in fake_server.requests[2:])


@pytest.mark.parametrize(
    ("bad_answer", "reason"),
    [
        ('{"candidates": [{"strategy": "conservative", "prompt": "A stage', "the JSON object is cut off"),
        ('{"candidates": []}', '"candidates" must hold exactly the strategies'),  # malformed
        ("I would rather describe it in words.", "no complete JSON object"),  # not JSON
    ],
)
def test_answer_unusable_twice_fails_the_sample_with_its_reason(fake_server, bad_answer, reason):
    fake_server.responder = lambda body: bad_answer if _step(body) == "founders" else supervision_answer(body)
    row = supervise_sample(LLMTeacher(make_client(fake_server, None), 512), SAMPLE, 1)
    assert row["status"] == "failed" and row["error"].startswith(f"step2: founders: {reason}")
    assert row["error"].endswith("(still unusable after one re-ask)")
    assert row["reasoning"] is None and row["instruction"] is None and row["step3"] is None  # nothing stands in
    assert row["step1"]["reasoning"].startswith("I see") and row["step2"] == {}  # the trace so far is kept
    assert row["calls"]["reasks"] == 1 and [_step(r["body"]) for r in fake_server.requests] == \
        ["step1", "founders", "founders"]


def test_failed_request_fails_the_sample(fake_server):
    fake_server.responder = lambda body: 503 if _step(body) == "score" else supervision_answer(body)
    row = supervise_sample(LLMTeacher(make_client(fake_server, None, max_retries=1), 512), SAMPLE, 1)
    assert row["status"] == "failed" and row["error"].startswith("step2: scores: teacher request failed after 2")
    assert row["step2"]["founders"] and row["calls"]["reasks"] == 0
