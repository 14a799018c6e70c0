"""`python run_recbole_navigen.py evaluate-instructions`: instruction writers on the same test users.

Inputs are `generate` files, one or more per writer (several = several seeds), e.g.
`--inputs navigen-rl=a.jsonl,b.jsonl navigen-sft=c.jsonl`; `--references history_keywords,teacher` adds the
reference writers of `evaluation.references`, computed from the first input's users. The table (markdown)
gives every measure of `evaluation.instructions` per writer with the paired test against `--reference`.
"""

from __future__ import annotations

from pathlib import Path

from recbole_navigen.evaluation.compare import compare_writers, markdown_table
from recbole_navigen.evaluation.instructions import MEASURES, term_shares
from recbole_navigen.evaluation.references import history_keyword_rows, teacher_rows
from recbole_navigen.fileio import read_jsonl, write_text_atomic

REFERENCES = ("history_keywords", "teacher")


def read_rows(path: str | Path) -> list[dict]:
    """The lines of a `generate` JSONL file."""
    return read_jsonl(path, "generate file")


def judge_table(config, runs: dict[str, list[list[dict]]], inputs: dict[str, list[str]]) -> str:
    """Mean media-judge scores per writer (its first run), with the images a render left beside its file."""
    from statistics import mean

    from recbole_navigen.evaluation.media_judge import IMAGE_SCORES, judge_media
    from recbole_navigen.generation.render import IMAGES_DIR, read_index
    from recbole_navigen.teacher.client import TeacherClient

    client = TeacherClient.from_config(config)
    lines = ["| writer | judged | failed | images | " + " | ".join(IMAGE_SCORES) + " |",
             "|---|---|---|---|" + "---|" * len(IMAGE_SCORES)]
    for writer, writer_runs in runs.items():
        folder = Path(inputs[writer][0]).parent / IMAGES_DIR if writer in inputs else None
        index = read_index(folder) if folder else {}
        images = {user: folder / entry["image"] for user, entry in index.items()}
        rows = writer_runs[0]
        scores = judge_media(client, rows, images)
        asked = [score for row, score in zip(rows, scores) if row.get("instruction")]
        judged = [score for score in asked if score is not None]
        cells = [f"{mean(s[name] for s in judged if s[name] is not None):.3f}"
                 if any(s[name] is not None for s in judged) else "n/a" for name in IMAGE_SCORES]
        lines.append(f"| {writer} | {len(judged)} | {len(asked) - len(judged)} | {len(images)} | "
                     + " | ".join(cells) + " |")
    return (f"\n## Media judge (`{client.model}` through the teacher client)\n\n" + "\n".join(lines)
            + "\n\nScores in [0, 1]; instruction_following needs an image (n/a without one).\n")


def evaluate_instructions(config, inputs: dict[str, list[str]], references: list[str], reference: str,
                          output: str | Path, judge: bool = False) -> Path:
    """Compare the writers of `inputs` (and `references`) under `config` (dataset, text encoder, supervision
    teacher); write the markdown table to `output` (with the media judge's table when `judge`) and return
    its path."""
    from recbole.data import create_dataset

    from recbole_navigen.identifiers.build import build_identifiers
    from recbole_navigen.identifiers.embeddings import SentenceEncoder

    unknown = sorted(set(references) - set(REFERENCES))
    if unknown:
        raise ValueError(f"unknown reference writers {unknown}; known: {list(REFERENCES)}")
    runs = {writer: [read_rows(path) for path in paths] for writer, paths in inputs.items()}
    if not runs:
        raise ValueError("give at least one --inputs writer=generate.jsonl")
    first = next(iter(runs.values()))[0]
    if "history_keywords" in references:
        runs["history_keywords"] = [history_keyword_rows(first, seed=config["seed"])]
    if "teacher" in references:
        from recbole_navigen.supervision.pipeline import make_teacher

        teacher = make_teacher(config)
        runs[f"teacher:{teacher.label}"] = [teacher_rows(first, teacher, config["supervision_rounds"],
                                                         config["supervision_max_history"])]
    identifiers = build_identifiers(config, create_dataset(config))
    shares = term_shares(identifiers.tokenizer.tid(i) for i in range(1, identifiers.tokenizer.n_items))
    encoder = SentenceEncoder(config["text_encoder"], config["pretrained_cache_dir"], config["text_encoder_max_length"])
    results = compare_writers(runs, encoder, shares, reference, config["instruction_distinctive_share"])
    header = (f"# Instruction writers on `{config['dataset_name']}`\n\nMeasures ({', '.join(MEASURES)}): "
              "recbole_navigen/evaluation/instructions.py. Inputs: "
              + "; ".join(f"{writer}: {', '.join(paths)}" for writer, paths in inputs.items())
              + (f"; references: {', '.join(references)}" if references else "") + ".\n\n")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, header + markdown_table(results, reference) + (judge_table(config, runs, inputs) if judge else ""))
    return output
