"""The supervision job: samples from the training split, the teacher's three steps per sample (concurrently
for an LLM teacher), an append-only progress file, then the final JSONL and its summary.

Output: `<supervision_dir>/<dataset>/<hash>/supervision.jsonl` (one row per sample, in sample order) with
`summary.json`, `settings.json` and `progress.jsonl` beside it. `<hash>` covers everything that decides the
content: the identifiers, the samples, the teacher (kind, model, temperature, answer length, or the
heuristic's version), the prompts' version, rounds, max_users, seed and max_history. A finished run is read
back from disk; a killed one resumes without redoing finished samples. Failed samples stay failed (with
their reason) unless `supervision_retry_failed` asks for them again.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from time import perf_counter
from typing import Any

from tqdm import tqdm

from recbole_navigen.fileio import settings_hash, write_text_atomic
from recbole_navigen.supervision.evolution import evolve
from recbole_navigen.supervision.heuristic import HEURISTIC_LABEL, HEURISTIC_VERSION, HeuristicTeacher
from recbole_navigen.supervision.prompts import PROMPT_VERSION
from recbole_navigen.supervision.records import (
    STATUS_FAILED,
    STATUS_OK,
    append_row,
    load_progress,
    new_row,
    write_rows,
)
from recbole_navigen.supervision.samples import Sample, fingerprint, training_samples
from recbole_navigen.supervision.teacher import CallLog, StepFailed, Teacher

logger = logging.getLogger(__name__)

TEACHERS = ("heuristic", "openai", "hf")
CONFIG_KEYS = ("supervision_teacher", "supervision_rounds", "supervision_max_users", "supervision_seed",
               "supervision_dir", "supervision_max_history", "supervision_max_new_tokens",
               "supervision_retry_failed")
FILE_NAME = "supervision.jsonl"
SUMMARY_NAME = "summary.json"
PROGRESS_NAME = "progress.jsonl"
_REASON_CHARS = 100


@dataclass
class SupervisionRun:
    """A finished supervision run: the final JSONL and its summary (also in `summary.json` beside it)."""

    path: Path
    summary: dict[str, Any]


def check_config(config) -> None:
    """Clear errors for missing or invalid `supervision_*` keys."""
    for key in CONFIG_KEYS:
        if key not in config:  # `in`: a RecBole Config answers None for a missing key
            raise KeyError(f"config lacks {key!r} (properties/overall.yaml, section Supervision)")
    if config["supervision_teacher"] not in TEACHERS:
        raise ValueError(f"supervision_teacher must be one of {list(TEACHERS)}, not {config['supervision_teacher']!r}")
    rounds = config["supervision_rounds"]
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 0:
        raise ValueError(f"supervision_rounds must be a non-negative integer, not {rounds!r}")


def teacher_settings(config) -> dict[str, Any]:
    """What about the teacher decides the content of the rows."""
    kind = config["supervision_teacher"]
    if kind == "heuristic":
        return {"kind": kind, "version": HEURISTIC_VERSION}
    return {"kind": kind, "model": config["teacher_model"], "temperature": config["teacher_temperature"],
            "max_new_tokens": config["supervision_max_new_tokens"]}


def make_teacher(config) -> Teacher:
    """The heuristic teacher, or the LLM teacher on the `teacher_*` client with its backend set by
    `supervision_teacher` (openai | hf)."""
    kind = config["supervision_teacher"]
    if kind == "heuristic":
        return HeuristicTeacher(config["supervision_seed"])
    from recbole_navigen.supervision.llm_teacher import LLMTeacher
    from recbole_navigen.teacher.client import TeacherClient

    return LLMTeacher(TeacherClient.from_config(config, backend=kind), config["supervision_max_new_tokens"])


def supervise_sample(teacher: Teacher, sample: Sample, rounds: int) -> dict[str, Any]:
    """The row of one sample: steps 1 to 3 with their trace, or the first step that failed and why."""
    row = new_row(sample, teacher.label)
    log = CallLog()
    try:
        reasoning = teacher.reason(sample, log)
        row["step1"] = {"reasoning": reasoning, "shown_history": len(sample.shown_tids)}
        row["step2"] = {}
        search = evolve(teacher, sample, rounds, log, row["step2"])
        distilled = teacher.distil(sample, reasoning, search, log)
        row["step3"] = {"reasoning": distilled}
        row.update(status=STATUS_OK, reasoning=distilled, instruction=search["best"]["prompt"])
    except StepFailed as failure:
        row["error"] = str(failure)
    row["calls"] = log.as_dict()
    return row


def _fitness_by_round(rows: list[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    """Per scoring of the search (each round, then the final population): the mean over ok samples of the
    best and of the population's mean overall."""
    stages = [f"round {number}" for number in range(1, rounds + 1)] + ["final"]
    populations: dict[str, list[list[float]]] = {stage: [] for stage in stages}
    for row in rows:
        if row["status"] != STATUS_OK:
            continue
        for stage, step in zip(stages, [*row["step2"]["rounds"], {"population": row["step2"]["final"]}]):
            populations[stage].append([candidate["overall"] for candidate in step["population"]])
    return [{"stage": stage, "best": round(mean(max(p) for p in found), 3),
             "population": round(mean(mean(p) for p in found), 3)}
            for stage, found in populations.items() if found]


def summarize(rows: list[dict[str, Any]], teacher: Teacher, settings: dict[str, Any], path: Path,
              resumed: int, new: int, seconds: float) -> dict[str, Any]:
    """Counts, failures with their reasons, teacher calls and tokens, time, and fitness per round."""
    failed = [row for row in rows if row["status"] == STATUS_FAILED]
    calls = Counter()
    for row in rows:
        calls.update({key: value for key, value in (row["calls"] or {}).items() if isinstance(value, int)})
    client = getattr(teacher, "client", None)
    return {
        "dataset": settings["dataset"], "teacher": teacher.label, "path": str(path), "hash": path.parent.name,
        "samples": len(rows), "done": len(rows) - len(failed), "failed": len(failed),
        "failure_reasons": dict(Counter(row["error"].split(" (")[0][:_REASON_CHARS] for row in failed)),
        "failures": [{"sample_id": row["sample_id"], "error": row["error"]} for row in failed],
        "teacher_calls": calls["requests"], "cache_hits": calls["cache_hits"], "reasks": calls["reasks"],
        "prompt_tokens": calls["prompt_tokens"], "completion_tokens": calls["completion_tokens"],
        "client_this_run": client.stats if client is not None else None,
        "resumed": resumed, "new_samples": new, "seconds": round(seconds, 2),
        "samples_per_second": round(new / seconds, 2) if seconds > 0 else None,
        "fitness_by_round": _fitness_by_round(rows, settings["rounds"]),
        "settings": settings,
    }


def _settings(config, identifiers_folder: Path, samples: list[Sample]) -> dict[str, Any]:
    return {"dataset": config["dataset_name"], "identifiers": identifiers_folder.name,
            "samples": fingerprint(samples), "teacher": teacher_settings(config), "prompt_version": PROMPT_VERSION,
            "rounds": config["supervision_rounds"], "max_users": config["supervision_max_users"],
            "seed": config["supervision_seed"], "max_history": config["supervision_max_history"]}


def run_supervision(config, dataset, train_dataset) -> SupervisionRun:
    """Supervision rows for one sample per user of `train_dataset` (RecBole's augmented training split),
    from the cache when this exact run finished before, else resumed or started."""
    from recbole_navigen.identifiers.build import build_identifiers

    check_config(config)
    identifiers = build_identifiers(config, dataset)
    samples = training_samples(config, train_dataset, identifiers.tokenizer, config["supervision_max_users"],
                               config["supervision_seed"], config["supervision_max_history"])
    settings = _settings(config, identifiers.folder, samples)
    folder = Path(config["supervision_dir"]) / config["dataset_name"] / settings_hash(settings)
    path, summary_path = folder / FILE_NAME, folder / SUMMARY_NAME
    if path.is_file() and summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        if not (config["supervision_retry_failed"] and summary["failed"]):
            logger.info("supervision: reusing %s", path)
            return SupervisionRun(path, {**summary, "reused": True})

    teacher = make_teacher(config)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "settings.json", json.dumps(settings, indent=2, default=str))
    progress = folder / PROGRESS_NAME
    finished = load_progress(progress)
    wanted = {sample.sample_id for sample in samples}
    finished = {sample_id: row for sample_id, row in finished.items() if sample_id in wanted and
                (row["status"] == STATUS_OK or not config["supervision_retry_failed"])}
    todo = [sample for sample in samples if sample.sample_id not in finished]
    logger.info("supervision: %d samples, %d from %s, %d to do with teacher %s",
                len(samples), len(finished), progress, len(todo), teacher.label)

    workers = 1 if teacher.label == HEURISTIC_LABEL else config["teacher_concurrency"]
    start = perf_counter()
    with open(progress, "a", encoding="utf-8") as stream:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            futures = [pool.submit(supervise_sample, teacher, sample, config["supervision_rounds"]) for sample in todo]
            bar = tqdm(as_completed(futures), total=len(samples), initial=len(samples) - len(todo),
                       desc=f"supervision ({teacher.label})", disable=not config["show_progress"])
            for future in bar:
                row = future.result()
                append_row(stream, row)
                finished[row["sample_id"]] = row
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error or ^C: drop what has not started
    seconds = perf_counter() - start

    rows = [finished[sample.sample_id] for sample in samples]
    write_rows(path, rows)
    summary = summarize(rows, teacher, settings, path, len(samples) - len(todo), len(todo), seconds)
    write_text_atomic(summary_path, json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    logger.info("supervision: %d done, %d failed, written to %s", summary["done"], summary["failed"], path)
    return SupervisionRun(path, summary)


def run_supervise(
    model: str | type,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: list[str] | None = None,
) -> SupervisionRun:
    """Build the config and the training split of `dataset` under `model`'s settings, then `run_supervision`."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from recbole_navigen.config import Config

    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    data = create_dataset(config)
    train_data, _, _ = data_preparation(config, data)
    return run_supervision(config, data, train_data._dataset)


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines (what the `supervise` command prints)."""
    samples = max(summary["samples"], 1)
    tokens = summary["prompt_tokens"] + summary["completion_tokens"]
    lines = [
        f"Supervision of {summary['dataset']} by teacher={summary['teacher']}: {summary['samples']} samples, "
        f"{summary['done']} done, {summary['failed']} failed",
        f"teacher calls {summary['teacher_calls']} ({summary['teacher_calls'] / samples:.1f} per sample), "
        f"cache hits {summary['cache_hits']}, re-asks {summary['reasks']}, tokens {tokens:,} "
        f"({summary['prompt_tokens']:,} prompt + {summary['completion_tokens']:,} completion)",
        f"{summary['seconds']:.1f} s for {summary['new_samples']} new samples"
        + (f" ({summary['samples_per_second']:.2f} samples/s)" if summary["samples_per_second"] else "")
        + f"; {summary['resumed']} resumed from the progress file",
        "mean fitness per round (best / population mean): " + ", ".join(
            f"{stage['stage']} {stage['best']:.2f} / {stage['population']:.2f}" for stage in summary["fitness_by_round"]),
    ]
    for reason, count in summary["failure_reasons"].items():
        lines.append(f"failed {count}x: {reason}")
    lines.append(f"{'read back' if summary.get('reused') else 'written'} to {summary['path']}")
    return "\n".join(lines)
