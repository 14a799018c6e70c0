"""Command line: train and evaluate one model, compare several in a sweep, or build identifiers.

    python run_recbole_navigen.py --model=SASRec --dataset=ml-100k
    python run_recbole_navigen.py --models=SASRec,GRU4Rec --dataset=amazon --data_path=../shared/datasets
    python run_recbole_navigen.py --dataset=amazon --config_files=dataset_configs/sweeps/amazon.yaml
    python run_recbole_navigen.py --model=SASRec --dataset=ml-100k --nproc=2        # 2 processes (gloo on CPUs)
    python run_recbole_navigen.py identifiers --dataset=amazon --data_path=../shared/datasets
    python run_recbole_navigen.py supervise --dataset=amazon --teacher=heuristic --max_users=500
    python run_recbole_navigen.py generate --checkpoint=saved/NaviGen-ml-100k-KEY/stage2/X.pth --users=20
    python run_recbole_navigen.py export --checkpoint=saved/NaviGen-ml-100k-KEY/stage2/X.pth --output=served/stage2
    python run_recbole_navigen.py render --run=results/ml-100k/NaviGen-ml-100k-KEY --pipeline=stabilityai/sd-turbo
    python run_recbole_navigen.py report --run=results/ml-100k/NaviGen-ml-100k-KEY
    python run_recbole_navigen.py evaluate-instructions --dataset=ml-100k --inputs navigen=RUN/instructions.jsonl \
        --references=history_keywords,teacher

Any other `--key=value` is a RecBole config parameter and wins over every file.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import recbole_navigen  # noqa: F401  (applies the RecBole compatibility shims first)
from recbole_navigen.config import read_config_files
from recbole_navigen.pipeline import run_stages
from recbole_navigen.quick_start import run_generate, run_identifiers
from recbole_navigen.sweep import SweepSpec, run_sweep


def _names(text: str) -> list[str]:
    return [name for name in re.split(r"[,\s]+", text.strip()) if name]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", help="one model, the plugin's or RecBole's (default SASRec)")
    parser.add_argument("--models", type=_names, help="several models, comma-separated: runs a sweep")
    parser.add_argument("--dataset", "-d", help="dataset name (default: the config files' or ml-100k)")
    parser.add_argument("--config_files", type=_names, default=[], help="YAML files, space- or comma-separated")
    parser.add_argument("--data_path", help="folder holding <dataset>/ (else NAVIGEN_DATA_PATH)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in _names(text)], help="one or more seeds")
    parser.add_argument("--output_dir", default="results", help="where sweeps write (default results/)")
    parser.add_argument("--run_id", help="sweep folder name; an existing one resumes (default: the time)")
    parser.add_argument("--parallel", type=int, default=1, help="sweep jobs at once, each in its own process")
    parser.add_argument("--nproc", type=int, default=1,
                        help="train one run in N processes of one group (RecBole's distributed path; gloo on CPUs)")
    args, unknown = parser.parse_known_args(argv)
    malformed = [arg for arg in unknown if not re.fullmatch(r"--[^=]+=.*", arg)]
    if malformed:
        parser.error(f"config parameters are given as --key=value, not {' '.join(malformed)}")
    cmd_args = unknown + ([f"--data_path={args.data_path}"] if args.data_path else [])
    args.file_config = read_config_files(args.config_files)
    args.dataset = args.dataset or args.file_config.get("dataset") or "ml-100k"
    return args, cmd_args


def identifiers(argv: list[str]) -> None:
    """Build or load a dataset's identifiers; print the stats table and ten sample items."""
    from recbole_navigen.identifiers.report import sample_items, stats_table

    args, cmd_args = parse_args(argv)
    built = run_identifiers(args.model or "SASRec", args.dataset, args.config_files, None, cmd_args)
    print(stats_table(built))
    print(sample_items(built))


def _checkpoint_parser() -> argparse.ArgumentParser:
    """The arguments of a command that works on a trained checkpoint (more are added by the command)."""
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--checkpoint", required=True, help="a NaviGen checkpoint written by training")
    return extra


def _parse_checkpoint_command(command: str, extra: argparse.ArgumentParser, argv: list[str]):
    """(own arguments, common arguments, --key=value overrides); the model comes from the checkpoint."""
    own, rest = extra.parse_known_args(argv)
    args, cmd_args = parse_args(rest)
    if args.model or args.models or args.config_files:
        raise SystemExit(f"{command} rebuilds the model from the checkpoint's own configuration: give only "
                         "--key=value overrides (e.g. --data_path=...), not --model or --config_files")
    return own, args, cmd_args


def generate(argv: list[str]) -> None:
    """Write a trained NaviGen's predictions and instructions for some test users as JSONL."""
    extra = _checkpoint_parser()
    extra.add_argument("--users", type=int, default=20, help="how many test users (default 20)")
    extra.add_argument("--output", help="the JSONL file (default results/generate/<checkpoint>.jsonl)")
    own, args, cmd_args = _parse_checkpoint_command("generate", extra, argv)
    output = own.output or f"{args.output_dir}/generate/{Path(own.checkpoint).stem}.jsonl"
    summary = run_generate(own.checkpoint, own.users, output, cmd_args)
    print(f"Predictions written to {summary.path}: {summary.users} users; instructions {summary.parse_status}"
          + (f" (trained on {summary.supervision} supervision)" if summary.supervision else ""))


def export(argv: list[str]) -> None:
    """Write a trained NaviGen's backbone, its adapters merged, as a Hugging Face folder for `vllm serve`."""
    from recbole_navigen.rl.served import export_checkpoint

    extra = _checkpoint_parser()
    extra.add_argument("--output", required=True, help="the folder to write (model, tokenizer, navigen_export.json)")
    own, _, cmd_args = _parse_checkpoint_command("export", extra, argv)
    folder = export_checkpoint(own.checkpoint, own.output, cmd_args)
    print(f"Backbone written to {folder}; serve it for RL rollouts with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
          f"vllm serve {folder} --enable-lora --max-lora-rank <rl_lora_r>")


def supervise(argv: list[str]) -> None:
    """Write the teacher's instruction supervision (steps 1-3) for one sample per user; print its summary."""
    from recbole_navigen.supervision.pipeline import TEACHERS, format_summary, run_supervise

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--teacher", choices=TEACHERS, help="heuristic (offline) or an LLM through teacher_* keys")
    extra.add_argument("--max_users", type=int, help="supervise this many users, drawn with supervision_seed")
    own, rest = extra.parse_known_args(argv)
    args, cmd_args = parse_args(rest)
    settings = {}
    if own.teacher:
        settings["supervision_teacher"] = own.teacher
        if own.teacher != "heuristic":
            settings["teacher_backend"] = own.teacher
    if own.max_users is not None:
        settings["supervision_max_users"] = own.max_users
    run = run_supervise(args.model or "SASRec", args.dataset, args.config_files, settings, cmd_args)
    print(format_summary(run.summary))


def evaluate_instructions(argv: list[str]) -> None:
    """Compare instruction writers (generate files, reference writers) on the same users; write a table."""
    from recbole_navigen.config import Config
    from recbole_navigen.evaluation.instruction_eval import REFERENCES
    from recbole_navigen.evaluation.instruction_eval import evaluate_instructions as evaluate

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--inputs", nargs="+", required=True, metavar="WRITER=FILE[,FILE...]",
                       help="generate files per writer; several files (seeds) give mean ± std")
    extra.add_argument("--references", type=_names, default=[], help=f"reference writers: {', '.join(REFERENCES)}")
    extra.add_argument("--reference", help="the writer every other is tested against (default: the first input)")
    extra.add_argument("--output", help="the markdown table (default results/<dataset>/instructions-<first>.md)")
    extra.add_argument("--judge", action="store_true",
                       help="also score with the media judge (the teacher_* model; images from a render)")
    own, rest = extra.parse_known_args(argv)
    malformed = [item for item in own.inputs if "=" not in item]
    if malformed:
        raise SystemExit(f"--inputs takes WRITER=FILE[,FILE...], not {' '.join(malformed)}")
    inputs = {writer: _names(files) for writer, files in (item.split("=", 1) for item in own.inputs)}
    args, cmd_args = parse_args(rest)
    config = Config(args.model or "NaviGen", args.dataset, args.config_files, None, cmd_args)
    first = next(iter(inputs))
    output = own.output or f"{args.output_dir}/{args.dataset}/instructions-{first}.md"
    path = evaluate(config, inputs, own.references, own.reference or first, output, own.judge)
    print(path.read_text())
    print(f"Table written to {path}")


def render(argv: list[str]) -> None:
    """Render each user's instruction in a run's instructions.jsonl with a diffusers pipeline (images/)."""
    from recbole_navigen.generation.render import render_instructions

    parser = argparse.ArgumentParser(prog="run_recbole_navigen.py render", description=render.__doc__)
    parser.add_argument("--run", required=True, help="results/<dataset>/<run> holding instructions.jsonl, or the file")
    parser.add_argument("--pipeline", required=True, help="a diffusers pipeline: a local folder or a hub name")
    parser.add_argument("--users", type=int, help="render the first N users with an instruction (default all)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--size", type=int, default=512, help="height and width in pixels (default 512)")
    parser.add_argument("--seed_from", default="user",
                        help="user (a hash of the user id; default), user_chars (the release's sum of its "
                             "characters) or an integer for every user")
    args = parser.parse_args(argv)
    try:
        summary = render_instructions(args.run, args.pipeline, args.users, args.steps, args.size, args.seed_from)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"render: {error}") from error
    print(f"Rendered to {summary.folder}: {summary.describe()}")


def report(argv: list[str]) -> None:
    """Write report.html for a sweep folder or a main job's run folder (saved/<run> or results/<dataset>/<run>)."""
    from recbole_navigen.evaluation.report import write_report

    parser = argparse.ArgumentParser(prog="run_recbole_navigen.py report", description=report.__doc__)
    parser.add_argument("--run", required=True, type=Path,
                        help="a sweep folder, saved/<run> or results/<dataset>/<run>")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"report: {error}") from error
    print(f"Report written to {path}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"identifiers": identifiers, "generate": generate, "export": export, "supervise": supervise,
                "render": render, "report": report, "evaluate-instructions": evaluate_instructions}
    if argv and argv[0] in commands:
        commands[argv[0]](argv[1:])
        return
    args, cmd_args = parse_args(argv)
    declared = SweepSpec.from_config(args.file_config, " ".join(args.config_files))
    spec = declared or SweepSpec(models=["SASRec"])
    if args.models or args.model:
        spec.models = args.models or [args.model]
    if args.seeds:
        spec.seeds = args.seeds
    if len(spec.runs()) == 1 and not (declared or args.models or args.run_id):
        model, seed = spec.runs()[0]
        if args.nproc > 1:  # one training run across processes; a staged main job runs its stages one by one
            from recbole_navigen.distributed import run_distributed
            from recbole_navigen.quick_start import run_model

            result = run_distributed(run_model, spec.model_class(model), args.dataset, args.config_files,
                                     spec.config_dict(model, seed), cmd_args, args.nproc)
            print(f"test: {result.test}")
            return
        run_stages(spec.model_class(model), args.dataset, args.config_files, spec.config_dict(model, seed), cmd_args)
        return
    run_dir = run_sweep(spec, args.dataset, args.config_files, cmd_args, args.output_dir, args.run_id, args.parallel)
    print((run_dir / "summary.md").read_text())
    print(f"Sweep written to {run_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
