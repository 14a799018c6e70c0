"""Step 2, the evolutionary instruction search, written once for every teacher: three founders; per round
score the population, keep the best (elite) and the runner-up (mate), breed a crossover and a mutation,
and carry [elite, crossover, mutation] forward; after the last round score again and return the best. The
plain-language summary of the search (what step 3 reads) never uses the search's own vocabulary."""

from __future__ import annotations

from typing import Any

from recbole_navigen.supervision.fitness import DIMENSIONS, fitness
from recbole_navigen.supervision.samples import Sample
from recbole_navigen.supervision.teacher import FOUNDER_STRATEGIES, CallLog, Candidate, StepFailed, Teacher

POPULATION_SIZE = 3
DRAFT_NAMES = {"conservative": "cautious draft", "balanced": "balanced draft", "exploratory": "bold draft",
               "crossover": "blended draft", "mutation": "refined draft"}


def judge(teacher: Teacher, sample: Sample, population: list[Candidate], log: CallLog) -> list[dict[str, Any]]:
    """Each candidate with its judge scores (`raw_scores`), the fitness-adjusted `scores` and `overall`."""
    judged = []
    for candidate, raw in zip(population, teacher.score(sample, population, log), strict=True):
        result = fitness(raw, candidate.prompt, sample.target_tid)
        judged.append({**candidate.to_dict(), "raw_scores": {name: raw[name] for name in DIMENSIONS},
                       "judge_reasoning": raw.get("reasoning", ""), "scores": result.scores,
                       "overall": result.overall, "leaked": result.leaked})
    return judged


def ranking(judged: list[dict[str, Any]]) -> list[int]:
    """Indices from best to worst overall; ties keep population order, so the elite wins them."""
    return sorted(range(len(judged)), key=lambda index: -judged[index]["overall"])


def evolve(teacher: Teacher, sample: Sample, rounds: int, log: CallLog, trace: dict[str, Any]) -> dict[str, Any]:
    """Run the search, filling `trace` as it goes (so a failure keeps what was done): `founders`, `rounds`
    (population with scores, `elite` and `mate` as indices into it, `children`), `final` (the last
    population scored), `best` and `summary`."""
    population = teacher.founders(sample, log)
    if [candidate.origin for candidate in population] != list(FOUNDER_STRATEGIES):
        raise StepFailed("step2", f"founders must be {list(FOUNDER_STRATEGIES)} in order")
    trace.update(founders=[candidate.to_dict() for candidate in population], rounds=[])
    for round_ in range(1, rounds + 1):
        judged = judge(teacher, sample, population, log)
        elite, mate = ranking(judged)[:2]
        crossover, mutation = teacher.children(sample, population[elite], population[mate], round_, log)
        trace["rounds"].append({"round": round_, "population": judged, "elite": elite, "mate": mate,
                                "children": {"crossover": crossover.to_dict(), "mutation": mutation.to_dict()}})
        population = [population[elite], crossover, mutation]  # POPULATION_SIZE again
    trace["final"] = judge(teacher, sample, population, log)
    best = trace["final"][ranking(trace["final"])[0]]
    trace["best"] = {key: best[key] for key in ("prompt", "scores", "overall", "origin", "born", "reasoning",
                                                "raw_scores", "leaked")}
    trace["summary"] = evolution_summary(trace)
    return trace


def draft_name(candidate: dict[str, Any]) -> str:
    """`cautious draft`, `blended draft from round 2`, ..."""
    name = DRAFT_NAMES[candidate["origin"]]
    return f"{name} from round {candidate['born']}" if candidate["born"] else name


def _scores_text(judged: dict[str, Any]) -> str:
    scores = ", ".join(f"{name} {judged['scores'][name]:.1f}" for name in DIMENSIONS)
    return f"{scores}, overall {judged['overall']:.2f}"


def evolution_summary(trace: dict[str, Any]) -> str:
    """The search told plainly: `Initial drafts:`, `Revision path:`, `Final result (scores):`."""
    first_scoring = trace["rounds"][0]["population"] if trace["rounds"] else trace["final"]
    lines = ["Initial drafts:"]
    lines += [f"The {draft_name(draft)} (overall {draft['overall']:.2f}): \"{draft['prompt']}\"" for draft in first_scoring]
    lines.append("Revision path:")
    if not trace["rounds"]:
        lines.append("No revision: the drafts were compared once.")
    for step in trace["rounds"]:
        drafts = step["population"]
        lead, second = drafts[step["elite"]], drafts[step["mate"]]
        blended, refined = step["children"]["crossover"], step["children"]["mutation"]
        lines.append(
            f"Round {step['round']}: the {draft_name(lead)} led ({lead['overall']:.2f}) ahead of the "
            f"{draft_name(second)} ({second['overall']:.2f}). Joining the strengths of both gave a blended draft: "
            f"\"{blended['prompt']}\" Changing one visual aspect of the {draft_name(lead)} gave a refined draft: "
            f"\"{refined['prompt']}\""
        )
    best = trace["final"][ranking(trace["final"])[0]]
    lines.append("Final result (scores):")
    lines.append(f"The {draft_name(best)} came out on top with {_scores_text(best)}: \"{best['prompt']}\"")
    return "\n".join(lines)
