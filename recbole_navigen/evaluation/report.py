"""`report.html` for a run folder, one page a person opens in a browser.

    python run_recbole_navigen.py report --run=results/amazon/20250101-120000    # a sweep
    python run_recbole_navigen.py report --run=saved/NaviGen-ml-100k-KEY         # a main job (or its results/ folder)

A sweep's page shows `summary.csv`; a main job's one row per stage (`<stage>/result.json`), its step summary
and the RL stage's reward curves. Both get the test metrics against K as `metrics_vs_k.png` and, when the
folder has `instructions.jsonl`, a gallery of users (with the pictures of `render` when `images/` exists). A
main job's page goes to its results folder (`results/<dataset>/<run>`, made if need be), so every picture it
shows sits beside it and is referenced by a relative path. Every text comes from models and data, so the
template escapes all of it (jinja2 autoescape).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from recbole_navigen.fileio import read_jsonl, write_text_atomic
from recbole_navigen.generation.instructions import item_title
from recbole_navigen.generation.render import IMAGES_DIR, INSTRUCTIONS_NAME, read_index
from recbole_navigen.pipeline import RESULT_FILE
from recbole_navigen.rl.log import CSV_NAME, PLOT_NAME
from recbole_navigen.sweep import evaluation_note

REPORT_NAME, METRICS_PLOT, SUMMARY_CSV, STEPS_FILE = "report.html", "metrics_vs_k.png", "summary.csv", "summary.md"
HISTORY_SHOWN, PREDICTED_SHOWN = 10, 5  # a card shows the latest history items and the top predictions
_STATUS_CLASS = {"ok": "ok", "ok after retry": "retry", "failed": "failed", "not trained": "untrained"}


@dataclass
class Table:
    """A results table as text cells."""

    header: list[str]
    rows: list[list[str]]


@dataclass
class RunFolders:
    """Where a run's files are: `output` gets the report; `saved` is a main job's stage folder, if any."""

    kind: str  # "sweep" or "main job"
    name: str
    output: Path
    saved: Path | None = None
    notes: list[str] = field(default_factory=list)


def write_report(run_dir: Path) -> Path:
    """Write `report.html` (and the PNGs it shows) for a sweep or main-job folder; return its path."""
    folders = locate(Path(run_dir))
    folders.output.mkdir(parents=True, exist_ok=True)
    if folders.kind == "sweep":
        context = _sweep_context(folders.output)
    else:
        context = _main_job_context(folders)
    context.update(name=folders.name, kind=folders.kind, notes=folders.notes,
                   generated=datetime.now().strftime("%Y-%m-%d %H:%M"), gallery=gallery(folders.output))
    html = _environment().get_template("report.html.j2").render(**context)
    path = folders.output / REPORT_NAME
    write_text_atomic(path, html)
    return path


def locate(run_dir: Path) -> RunFolders:
    """Recognise `run_dir`: a sweep (`summary.csv`), a main job's `saved/<run>` (stage folders with
    `result.json`) or its `results/<dataset>/<run>`; find the other folder of a main job by the run name."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    if (run_dir / SUMMARY_CSV).is_file():
        return RunFolders("sweep", run_dir.name, run_dir)
    stages = stage_results(run_dir)
    if stages:
        return RunFolders("main job", run_dir.name, _results_folder(run_dir, stages[-1][1]), run_dir)
    saved_candidates = [run_dir.parent.parent.parent / "saved" / run_dir.name, Path("saved") / run_dir.name]
    saved = next((folder for folder in saved_candidates if stage_results(folder)), None)
    if saved is None and not (run_dir / INSTRUCTIONS_NAME).is_file():
        raise ValueError(f"{run_dir} is not a run folder: it holds no {SUMMARY_CSV} (a sweep), no "
                         f"<stage>/{RESULT_FILE} (saved/<run>) and no {INSTRUCTIONS_NAME} (results/<dataset>/<run>)")
    looked = ", ".join(map(str, saved_candidates))
    notes = [] if saved else [f"No stage results found for this run (looked in {looked})."]
    return RunFolders("main job", run_dir.name, run_dir, saved, notes)


def stage_results(run_dir: Path) -> list[tuple[str, dict]]:
    """(stage folder name, its result.json) of each finished stage of a main job, in the configured order."""
    found = {path.parent.name: json.loads(path.read_text(encoding="utf-8"))
             for path in sorted(run_dir.glob(f"*/{RESULT_FILE}"))}
    if not found:
        return []
    configured = next(iter(found.values()))["config"].get("stages") or []
    order = [f"stage{stage}" if isinstance(stage, int) else str(stage) for stage in configured]
    return sorted(found.items(), key=lambda item: (order.index(item[0]) if item[0] in order else len(order), item[0]))


def _results_folder(saved: Path, result: dict) -> Path:
    """`<results_dir>/<dataset>/<run>` of a main job's `saved/<run>`: beside `saved/`, or where the run's
    `results_dir` points from the working directory when only that one exists."""
    relative = Path(result["config"].get("results_dir") or "results") / result["dataset"] / saved.name
    beside = saved.parent.parent / relative
    return relative if relative.is_dir() and not beside.is_dir() else beside


def _sweep_context(run_dir: Path) -> dict:
    with open(run_dir / SUMMARY_CSV, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        raise ValueError(f"{run_dir / SUMMARY_CSV} has no rows")
    metrics = [key for key in rows[0] if "@" in key and not key.endswith("_std")]
    table = Table(["model", "seeds", *metrics, "train s", "eval users/s", "params"], [
        [row["model"], row["seeds"], *(_mean_std(row, metric) for metric in metrics),
         f"{float(row['train_seconds']):.1f}", f"{float(row['eval_users_per_second']):.1f}",
         f"{float(row['n_params']):,.0f}"] for row in rows])
    series = {row["model"]: {metric: float(row[metric]) for metric in metrics} for row in rows}
    spread = {row["model"]: {metric: float(row.get(f"{metric}_std") or 0) for metric in metrics} for row in rows}
    runs = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(run_dir.glob("*.json"))]
    runs = [run for run in runs if isinstance(run, dict) and "split_fingerprint" in run]
    return {"table": table, "note": evaluation_note(runs).replace("`", "") if runs else "",
            "metrics_plot": plot_metrics_vs_k(series, run_dir / METRICS_PLOT, spread), "steps": None,
            "rl_logs": []}


def _mean_std(row: dict, metric: str) -> str:
    std = row.get(f"{metric}_std")
    return f"{float(row[metric]):.4f}" + (f" ± {float(std):.4f}" if std and int(row["seeds"]) > 1 else "")


def _main_job_context(folders: RunFolders) -> dict:
    stages = stage_results(folders.saved) if folders.saved else []
    if not stages:
        return {"table": None, "note": "", "metrics_plot": None, "steps": None, "rl_logs": []}
    metrics = list(stages[-1][1]["test"])
    table = Table(["stage", *metrics, "best valid", "train s", "eval users", "eval users/s", "params"], [
        [stage, *(f"{result['test'].get(metric, float('nan')):.4f}" for metric in metrics),
         f"{result['best_valid_score']:.4f}", f"{result['train_seconds']:.1f}",
         f"{result['eval_users']:,} of {result['total_users']:,}", f"{result['eval_users_per_second']:.1f}",
         f"{result['n_params']:,}"] for stage, result in stages])
    series = {stage: result["test"] for stage, result in stages}
    last = stages[-1][1]
    steps = folders.saved / STEPS_FILE
    return {"table": table, "metrics_plot": plot_metrics_vs_k(series, folders.output / METRICS_PLOT),
            "note": f"Test split of {last['dataset']}, seed {last['seed']}, {last['eval_users']:,} evaluated users "
                    f"of {last['total_users']:,}; run folder {folders.saved}.",
            "steps": steps_table(steps.read_text(encoding="utf-8")) if steps.is_file() else None,
            "rl_logs": _copy_rl_logs(folders.saved, folders.output)}


def steps_table(markdown: str) -> Table:
    """The main job's `summary.md` (a markdown table of steps) as a Table; the whole text in one cell when it
    holds no table."""
    lines = [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]
    if len(lines) < 3:
        return Table(["summary"], [[markdown]])
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return Table(cells[0], cells[2:])


def _copy_rl_logs(saved: Path, output: Path) -> list[dict]:
    """Copy each stage's `rl_log.png` / `rl_log.csv` beside the report as `<stage>-rl_log.*`."""
    logs = []
    for plot in sorted(saved.glob(f"*/{PLOT_NAME}")):
        stage, copied = plot.parent.name, {}
        for name in (PLOT_NAME, CSV_NAME):
            source = plot.parent / name
            copied[source.suffix[1:]] = f"{stage}-{name}" if source.is_file() else None
            if source.is_file():
                shutil.copyfile(source, output / f"{stage}-{name}")
        logs.append({"stage": stage, **copied})
    return logs


def plot_metrics_vs_k(series: dict[str, dict[str, float]], path: Path,
                      spread: dict[str, dict[str, float]] | None = None) -> str | None:
    """Plot each metric family (Recall, NDCG, MRR, ...) against K, one line per label of `series` (a model or
    a stage), with `spread` as error bars; write `path` and return its name, or None when no metric has a K."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, nothing shown

    families = list(dict.fromkeys(key.split("@")[0] for values in series.values() for key in values if "@" in key))
    if not families:
        return None
    figure = Figure(figsize=(4.2 * len(families), 3.4), layout="constrained")
    for axis, family in zip(figure.subplots(1, len(families), squeeze=False)[0], families):
        for label, values in series.items():
            points = sorted((int(key.split("@")[1]), value, (spread or {}).get(label, {}).get(key, 0.0))
                            for key, value in values.items() if key.split("@")[0] == family)
            ks, ys, errors = zip(*points)
            axis.errorbar(ks, ys, yerr=errors if spread else None, marker="o", capsize=3, label=label)
            axis.set_xticks(ks)
        axis.set_title({"ndcg": "NDCG", "mrr": "MRR"}.get(family, family.capitalize()))
        axis.set_xlabel("K")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    return path.name


def gallery(run_dir: Path) -> list[dict]:
    """One card per line of `run_dir/instructions.jsonl` ([] when there is none): what the template shows."""
    path = run_dir / INSTRUCTIONS_NAME
    if not path.is_file():
        return []
    rows = read_jsonl(path, "instructions file")
    titles = {entry["item"]: _title(entry) for row in rows for entry in [*row.get("history", []), row["target"]]}
    index = read_index(run_dir / IMAGES_DIR)
    return [_card(row, titles, index.get(row["user"]), run_dir) for row in rows]


def _card(row: dict, titles: dict[str, str], image: dict | None, run_dir: Path) -> dict:
    target, history = row["target"], row.get("history", [])
    status = row.get("parse_status") or ""
    picture = f"{IMAGES_DIR}/{image['image']}" if image and (run_dir / IMAGES_DIR / image["image"]).is_file() else None
    return {
        "user": row["user"],
        "history": [_title(entry) for entry in history[-HISTORY_SHOWN:]],
        "history_earlier": max(0, len(history) - HISTORY_SHOWN),
        "target": {"item": target["item"], "title": _title(target), "tid": target.get("tid") or []},
        "predicted": [{"item": entry["item"], "title": titles.get(entry["item"]), "score": f"{entry['score']:.4f}",
                       "hit": entry["item"] == target["item"]} for entry in row.get("predicted", [])[:PREDICTED_SHOWN]],
        "top_item_tid": row.get("top_item_tid") or [],
        "predicted_tid": row.get("predicted_tid", row.get("target_tid")) or [],  # target_tid: the first format
        "instruction": row.get("instruction"),
        "reasoning": row.get("reasoning"),
        "status": status, "status_class": _STATUS_CLASS.get(status, "other"), "error": row.get("parse_error"),
        "supervision": row.get("supervision"),
        "image": picture, "image_seed": image.get("seed") if image else None,
    }


def _title(entry: dict) -> str:
    """An item's title without its field label (item texts are `field: value; ...`: `movie_title: Heat` ->
    `Heat`); the first format of the file had no title, only the text."""
    return item_title(entry.get("title") or entry.get("text") or "") or str(entry["item"])


def _environment() -> Environment:
    return Environment(loader=PackageLoader("recbole_navigen.evaluation", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
