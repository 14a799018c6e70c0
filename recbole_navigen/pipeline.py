"""The main job of a staged model (NaviGen): supervision when configured, each training stage in turn,
instruction samples, then a stage summary. Every step's output is cached, so a rerun with the same
configuration resumes at the first unfinished step.

Layout, under `checkpoint_dir` (default `saved/`): `<Model>-<dataset>-<key>/stage<N>/` (`rl/`) holds a stage's
RecBole checkpoint and its `result.json` (written once the stage has been evaluated, which marks it done);
`<key>` hashes the whole configuration, so any change of setting starts a fresh run folder. A stage killed
half-way has no `result.json` and trains again from its start. Instruction samples go to
`<results_dir>/<dataset>/<Model>-<dataset>-<key>/instructions.jsonl`, and the HTML report beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from logging import getLogger
from pathlib import Path

from recbole.utils import init_logger, set_color

from recbole_navigen.config import Config
from recbole_navigen.fileio import settings_hash, write_text_atomic
from recbole_navigen.quick_start import RunResult, run_model

# Settings that change where or how visibly a run happens, not what it computes.
_NOT_IN_KEY = {"checkpoint_dir", "device", "gpu_id", "use_gpu", "show_progress", "state", "log_wandb",
               "wandb_project", "worker", "init_from", "results_dir", "instruction_samples"}
RESULT_FILE = "result.json"
STAGE_KEY_FILE = "stage.key"  # beside result.json: the settings hash of the stage and the stages before it


@dataclass
class StepReport:
    """One line of the stage summary."""

    step: str
    status: str  # "ran", "cached", "skipped"
    detail: str


def run_key(config: Config) -> str:
    """A short hash of every setting that decides what the run computes."""
    return settings_hash({key: value for key, value in config.final_config_dict.items() if key not in _NOT_IN_KEY},
                         length=10)


def stage_key(config: Config, stage, overrides: dict, before: str) -> str:
    """A short hash of what decides one stage's weights: the shared settings (the `rl_*` keys only for the
    rl stage), this stage's own `stage_settings`, and the key of the stage it starts from. Another run whose
    settings differ only in later stages (e.g. the RL optimiser) reuses this stage's checkpoint."""
    rl = str(stage) == "rl"
    shared = {key: value for key, value in config.final_config_dict.items()
              if key not in _NOT_IN_KEY | {"stages", "stage_settings", "stage"} and (rl or not key.startswith("rl_"))}
    return settings_hash({**shared, **overrides, "stage": str(stage), "after": before}, length=10)


def run_stages(
    model: str | type,
    dataset: str,
    config_file_list: list[str] | None = None,
    config_dict: dict | None = None,
    cmd_args: list[str] | None = None,
    init_logging: bool = True,
) -> RunResult:
    """The main job: `run_model` once per entry of the model's `stages` key (NaviGen: SFT stage 1, then
    stage 2), each starting from the best checkpoint of the one before, with supervision first and
    instruction samples last when configured; a model without `stages` simply runs once."""
    config_dict = dict(config_dict or {})
    config = Config(model, dataset, config_file_list, config_dict, cmd_args)
    if not config["stages"]:
        return run_model(model, dataset, config_file_list, config_dict, cmd_args, init_logging=init_logging)
    if init_logging:
        init_logger(config)
    reports = [_identifiers(config)]
    if config["supervise"] and not config["supervision_path"]:
        from recbole_navigen.supervision.pipeline import run_supervise

        supervision = run_supervise(model, dataset, config_file_list, config_dict, cmd_args)
        config_dict["supervision_path"] = str(supervision.path)
        config = Config(model, dataset, config_file_list, config_dict, cmd_args)
        reports.append(StepReport("supervision", "done", f"{supervision.path} ({_supervision_line(supervision)})"))
    name = f"{config['model']}-{config['dataset_name']}-{run_key(config)}"
    run_dir = Path(config["checkpoint_dir"]) / name

    results: list[RunResult] = []
    key = ""
    for stage in config["stages"]:
        stage_dir = run_dir / (f"stage{stage}" if isinstance(stage, int) else str(stage))
        per_stage = config["stage_settings"] or {}
        overrides = per_stage.get(stage, per_stage.get(str(stage), {}))  # `1:` in YAML, "1" from a command line
        settings = {**config_dict, **overrides, "stage": stage, "checkpoint_dir": str(stage_dir)}
        if results:
            settings["init_from"] = results[-1].checkpoint
        key = stage_key(config, stage, overrides, key)
        result = finished_stage(stage_dir)
        cached = result is not None
        if not cached:  # found in another run folder, or trained here
            result = same_stage_elsewhere(run_dir, stage_dir.name, key)
            cached = result is not None
            if not cached:
                result = run_model(model, dataset, config_file_list, settings, cmd_args, init_logging=False)
            stage_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(stage_dir / RESULT_FILE, result.to_json())
        write_text_atomic(stage_dir / STAGE_KEY_FILE, key + "\n")
        results.append(result)
        reports.append(StepReport(f"stage {stage}", "cached" if cached else "ran", _stage_line(result)))

    final = results[-1]
    samples = config["instruction_samples"]
    if samples and final.checkpoint:
        reports.append(_instruction_samples(final.checkpoint, samples,
                                            Path(config["results_dir"]) / config["dataset_name"] / name, cmd_args))
    summary = _summary_table(name, reports)
    write_text_atomic(run_dir / "summary.md", summary)
    getLogger().info(set_color("stage summary", "blue") + f" ({run_dir / 'summary.md'}):\n{summary}")
    from recbole_navigen.evaluation.report import write_report

    getLogger().info(f"report: {write_report(run_dir)}")
    return final


def finished_stage(stage_dir: Path, quiet: bool = False) -> RunResult | None:
    """The result of a stage that ran to the end in `stage_dir` (its checkpoint still there), else None."""
    log = (lambda message: None) if quiet else getLogger().info  # quiet: looking at other run folders
    result_file = stage_dir / RESULT_FILE
    if not result_file.is_file():
        if stage_dir.is_dir():
            log(f"{stage_dir}: no {RESULT_FILE}, the stage did not finish; training it from the start")
        return None
    result = RunResult(**json.loads(result_file.read_text(encoding="utf-8")))
    if result.checkpoint and not Path(result.checkpoint).is_file():
        log(f"{result_file}: its checkpoint {result.checkpoint} is gone; training the stage again")
        return None
    log(f"{stage_dir}: finished before, reusing {result.checkpoint}")
    return result


def same_stage_elsewhere(run_dir: Path, stage_name: str, key: str) -> RunResult | None:
    """A finished stage of the same key in another run folder of this model and dataset, else None."""
    prefix = run_dir.name.rsplit("-", 1)[0]
    for key_file in sorted(run_dir.parent.glob(f"{prefix}-*/{stage_name}/{STAGE_KEY_FILE}")):
        if key_file.parent.parent != run_dir and key_file.read_text(encoding="utf-8").strip() == key:
            result = finished_stage(key_file.parent, quiet=True)
            if result is not None:
                getLogger().info(f"{stage_name}: the same settings finished in {key_file.parent}; reusing "
                                 f"{result.checkpoint}")
                return result
    return None


def _identifiers(config: Config) -> StepReport:
    """Build (or find cached) the item identifiers every stage reads, so that their cost shows on its own."""
    from recbole.data import create_dataset

    from recbole_navigen.identifiers.build import build_identifiers
    from recbole_navigen.identifiers.report import collisions_after

    identifiers = build_identifiers(config, create_dataset(config))
    cid, tid = identifiers.stats["cid"], identifiers.stats["tid"]
    return StepReport("identifiers", "ready", f"{identifiers.folder}: {cid['method']} CIDs, "
                      f"{collisions_after(identifiers)} collisions; {tid['method']} TIDs, {tid['mean_terms']} terms/item")


def _instruction_samples(checkpoint: str, users: int, folder: Path, cmd_args: list[str] | None) -> StepReport:
    """Predictions and instructions for the first `users` test users, once per run folder."""
    from recbole_navigen.generation.instructions import load_trained_navigen, write_generations

    output = folder / "instructions.jsonl"
    if output.is_file():
        return StepReport("instruction samples", "cached", str(output))
    _, model, test_data = load_trained_navigen(checkpoint, cmd_args)
    summary = write_generations(model, test_data, users, output)
    return StepReport("instruction samples", "ran", summary.describe())


def _stage_line(result: RunResult) -> str:
    tests = ", ".join(f"{key} {value:.4f}" for key, value in result.test.items() if "@10" in key)
    return f"test {tests}; trained {result.train_seconds:.0f} s; {result.checkpoint}"


def _supervision_line(supervision) -> str:
    summary = supervision.summary
    return ", ".join(f"{key} {summary[key]}" for key in ("teacher", "done", "failed") if key in summary)


def _summary_table(name: str, reports: list[StepReport]) -> str:
    lines = [f"# {name}", "", "| step | status | detail |", "|---|---|---|"]
    lines += [f"| {report.step} | {report.status} | {report.detail} |" for report in reports]
    return "\n".join(lines) + "\n"
