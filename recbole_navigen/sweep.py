"""A sweep: several models (and seeds) on one identical split, summarised in one table.

A sweep is declared on the command line (`--models`, `--seeds`) or in a YAML file given with
`--config_files`::

    sweep:
      models: [SASRec, GRU4Rec]
      seeds: [2020, 2021]
      shared: {epochs: 20}            # config_dict for every run
      per_model: {GRU4Rec: {hidden_size: 128}}

Each finished run is written at once as `<model>-seed<seed>.json` in the run folder, so re-running
with the same `--run_id` skips what is done; `summary.csv` and `summary.md` follow every run.
`--parallel=N` runs N jobs at once in processes of their own (see `run_sweep`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from recbole_navigen.fileio import write_text_atomic
from recbole_navigen.pipeline import run_stages

logger = logging.getLogger(__name__)


@dataclass
class SweepSpec:
    """Which models and seeds to run, and the config each run gets on top of the files."""

    models: list[str]
    seeds: list[int] | None = None  # None: the seed the configuration gives
    shared: dict = field(default_factory=dict)
    per_model: dict[str, dict] = field(default_factory=dict)
    variants: dict[str, dict] = field(default_factory=dict)  # name -> {model: <class name>, **settings}

    def runs(self) -> list[tuple[str, int | None]]:
        return [(model, seed) for model in self.models for seed in self.seeds or [None]]

    def model_class(self, name: str) -> str:
        """The model a run of `name` trains: the variant's `model`, else `name` itself."""
        return self.variants[name]["model"] if name in self.variants else name

    def config_dict(self, model: str, seed: int | None) -> dict:
        """The parameters one run gets in code: shared, then the variant's, the model's own, then the seed."""
        variant = {key: value for key, value in self.variants.get(model, {}).items() if key != "model"}
        return {**self.shared, **variant, **self.per_model.get(model, {}), **({} if seed is None else {"seed": seed})}

    @classmethod
    def from_config(cls, config: dict, source: str = "the config files") -> SweepSpec | None:
        """The spec in the `sweep:` section of `config` (merged YAML files), or `None` if it has none."""
        section = config.get("sweep")
        if section is None:
            return None
        keys = {"models", "seeds", "shared", "per_model", "variants"}
        if not isinstance(section, dict) or set(section) - keys or not section.get("models"):
            raise ValueError(
                f"{source}: 'sweep' must be a mapping with 'models' and optionally seeds, shared, per_model, "
                f"variants; found {section!r}."
            )
        variants = {name: dict(values or {}) for name, values in (section.get("variants") or {}).items()}
        without_model = sorted(name for name, values in variants.items() if not values.get("model"))
        if without_model:
            raise ValueError(f"{source}: sweep variants {without_model} must name their `model`")
        return cls(
            models=list(section["models"]),
            seeds=[int(seed) for seed in section["seeds"]] if section.get("seeds") else None,
            shared=dict(section.get("shared") or {}),
            per_model={name: dict(values or {}) for name, values in (section.get("per_model") or {}).items()},
            variants=variants,
        )


def run_sweep(
    spec: SweepSpec,
    dataset: str,
    config_file_list: list[str] | None = None,
    cmd_args: list[str] | None = None,
    output_dir: str | os.PathLike = "results",
    run_id: str | None = None,
    parallel: int = 1,
) -> Path:
    """Run every (model, seed) of `spec` on `dataset`; return the run folder with the summary.

    `parallel` > 1 runs that many jobs at once, each in its own process (spawned, so CUDA and RecBole's
    global state start clean) pinned to its share of the CPU cores and, when there are GPUs, to one GPU
    (job slot modulo the GPU count). Jobs write their records as they finish; the summary reads them all.
    """
    run_id = run_id or datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(output_dir) / dataset / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for model, seed in spec.runs():
        record = run_dir / (f"{model}.json" if seed is None else f"{model}-seed{seed}.json")
        if record.is_file():
            logger.info("sweep: %s already done in %s, skipped", record.stem, record)
        else:
            jobs.append((model, spec.model_class(model), spec.config_dict(model, seed), record))
    if parallel > 1 and len(jobs) > 1:
        _run_parallel(jobs, dataset, config_file_list, cmd_args, parallel, run_dir)
    else:
        for index, job in enumerate(jobs):
            logger.info("sweep: run %d/%d, %s", index + 1, len(jobs), job[3].stem)
            _run_job(*job, dataset, config_file_list, cmd_args, init_logging=index == 0)
            write_summary(run_dir, _records(spec, run_dir))
    write_summary(run_dir, _records(spec, run_dir))
    from recbole_navigen.evaluation.report import write_report

    logger.info("sweep report: %s", write_report(run_dir))
    return run_dir


def _records(spec: SweepSpec, run_dir: Path) -> list[dict]:
    """The finished runs' records, in the spec's order."""
    files = [run_dir / (f"{model}.json" if seed is None else f"{model}-seed{seed}.json") for model, seed in spec.runs()]
    return [json.loads(file.read_text()) for file in files if file.is_file()]


def _run_job(name: str, model: str, config_dict: dict, record: Path, dataset: str, config_file_list, cmd_args,
             init_logging: bool = True) -> None:
    """Train and evaluate one run; its record is written once it finished."""
    result = run_stages(model, dataset, config_file_list, config_dict, cmd_args, init_logging=init_logging)
    result.model = name  # a variant's name, so the table tells variants of one model apart
    write_text_atomic(record, result.to_json())


def _pin(slots, parallel: int) -> None:
    """Process initializer: take a job slot; keep this process to the slot's share of cores (and GPU)."""
    import torch

    slot = slots.get()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    share = max(1, len(cores) // parallel)
    mine = cores[slot * share:(slot + 1) * share] or cores[-share:]
    if mine:
        os.sched_setaffinity(0, mine)
        torch.set_num_threads(len(mine))
    if torch.cuda.is_available():
        torch.cuda.set_device(slot % torch.cuda.device_count())


def _run_parallel(jobs: list, dataset: str, config_file_list, cmd_args, parallel: int, run_dir: Path) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    workers = min(parallel, len(jobs))
    slots = context.Manager().Queue()
    for slot in range(workers):
        slots.put(slot)
    failures = []
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_pin, initargs=(slots, workers)) as pool:
        futures = {pool.submit(_run_job, *job, dataset, config_file_list, cmd_args): job[3].stem for job in jobs}
        for done, future in enumerate(as_completed(futures), start=1):
            if future.exception() is not None:
                failures.append(f"{futures[future]}: {future.exception()!r}")
            logger.info("sweep: %s ended (%d of %d)", futures[future], done, len(jobs))
    if failures:
        raise RuntimeError(f"sweep jobs failed: {'; '.join(failures)} (finished ones are kept in {run_dir})")


def summarise(results: list[dict]) -> list[dict]:
    """One row per model: test metrics as mean and std over seeds, cost columns as means."""
    fingerprints = {result["split_fingerprint"] for result in results}
    if len(fingerprints) > 1:
        raise RuntimeError(f"the sweep's runs saw different data splits: {sorted(fingerprints)}")
    if len({result["eval_users"] for result in results}) > 1:
        raise RuntimeError("the sweep's runs were evaluated on different numbers of users")
    rows = []
    for model in dict.fromkeys(result["model"] for result in results):
        runs = [result for result in results if result["model"] == model]
        row = {"model": model, "seeds": len(runs)}
        for metric in runs[0]["test"]:
            values = [run["test"][metric] for run in runs]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for cost in ("train_seconds", "eval_users_per_second", "n_params"):
            row[cost] = statistics.fmean(run[cost] for run in runs)
        rows.append(row)
    return rows


def evaluation_note(results: list[dict]) -> str:
    """How many users the test metrics cover; says so when `eval_user_sample` restricted them."""
    first = results[0]
    sample = first["config"].get("eval_user_sample")
    if not sample:
        return f"Test split of `{first['dataset']}`, full ranking over all items, all {first['eval_users']:,} users."
    return (f"Test split of `{first['dataset']}`, full ranking over all items, on a sample of "
            f"{first['eval_users']:,} of {first.get('total_users', '?'):,} users (eval_user_sample={sample}, "
            f"seed {first['config'].get('eval_user_sample_seed')}), the same users for every run.")


def markdown_table(rows: list[dict], note: str, decimals: int = 4) -> str:
    """The summary as a markdown table under `note`; `mean ± std` when a model ran with several seeds."""
    metrics = [key for key in rows[0] if key not in ("model", "seeds") and not key.endswith("_std")]
    metrics = [key for key in metrics if key not in ("train_seconds", "eval_users_per_second", "n_params")]
    header = ["model", "seeds", *metrics, "train s", "eval users/s", "params"]
    lines = [note, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], str(row["seeds"])]
        for metric in metrics:
            cell = f"{row[metric]:.{decimals}f}"
            cells.append(cell + (f" ± {row[metric + '_std']:.{decimals}f}" if row["seeds"] > 1 else ""))
        cells += [f"{row['train_seconds']:.1f}", f"{row['eval_users_per_second']:.1f}", f"{row['n_params']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(run_dir: Path, results: list[dict]) -> str:
    """Write `summary.csv` and `summary.md` for `results`; return the markdown."""
    rows = summarise(results)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(run_dir / "summary.csv", buffer.getvalue())
    table = markdown_table(rows, evaluation_note(results))
    write_text_atomic(run_dir / "summary.md", table)
    return table
