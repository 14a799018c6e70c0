"""Does the RL stage learn? Read a finished main-job run folder (stages ... 2, rl) and write a table: the
test metrics after SFT only (the stage before rl) and after SFT + RL (same split, seed and users), and the
GRPO reward over the first and last steps of `rl_log.csv`.

    python -m bench.rl_report --run=saved/NaviGen-ml-100k-KEY --output=bench/results/rl_ml100k.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from statistics import mean

from bench.machine import machine, write_table

METRICS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10")


def stage_results(run: Path) -> list[tuple[str, dict]]:
    """(stage folder name, result.json) of each finished stage, in training order."""
    found = [(folder.name, json.loads((folder / "result.json").read_text())) for folder in run.iterdir()
             if (folder / "result.json").is_file()]
    order = {name: index for index, name in enumerate(["stage1", "stage2", "rl"])}
    return sorted(found, key=lambda item: order.get(item[0], len(order)))


def reward_trend(log: Path, window: int) -> list[tuple[str, float, float]]:
    """(column, mean over the first `window` steps, mean over the last `window`) of the reward columns."""
    rows = list(csv.DictReader(log.open()))
    columns = [name for name in rows[0] if name.endswith("_mean") and "reward" in name or name in ("kl", "valid_format_rate")]
    trend = []
    for column in columns:
        values = [float(row[column]) for row in rows if row.get(column)]
        if values:
            trend.append((column, mean(values[:window]), mean(values[-window:])))
    return trend


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="saved/<Model>-<dataset>-<key>")
    parser.add_argument("--window", type=int, default=10, help="steps averaged at each end of the RL log")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--command", default="", help="the command that produced the run, for the header")
    parser.add_argument("--sft", type=Path, help="the SFT stage folder, when the run holds only the rl stage")
    args = parser.parse_args(argv)
    stages = stage_results(args.run)
    if args.sft:
        stages.insert(0, (args.sft.name, json.loads((args.sft / "result.json").read_text())))
    if not stages or stages[-1][0] != "rl" or len(stages) < 2:
        raise SystemExit(f"{args.run}: needs a finished stage before rl (or --sft) and the rl stage")
    (before_name, before), (_, after) = stages[-2], stages[-1]
    log = args.run / "rl" / "rl_log.csv"
    lines = [
        f"# RL stage on `{after['dataset']}`: SFT only vs SFT + GRPO", "",
        f"Machine: {machine()}. Run: `{args.command or args.run}`.", "",
        f"Same split (fingerprint {after['split_fingerprint']}), seed {after['seed']}, {after['eval_users']} "
        f"evaluated test users of {after['total_users']}. SFT only = the `{before_name}` checkpoint; SFT + RL = "
        "the `rl` stage's best checkpoint (GRPO from it, validation-selected like every stage).", "",
        "| model | " + " | ".join(METRICS) + " | train s |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    for label, result in ((f"SFT only ({before_name})", before), ("SFT + RL", after)):
        lines.append(f"| {label} | " + " | ".join(f"{result['test'].get(m, float('nan')):.4f}" for m in METRICS)
                     + f" | {result['train_seconds']:.0f} |")
    steps = sum(1 for _ in csv.DictReader(log.open()))
    lines += ["", f"GRPO log ({steps} steps, `{log}`): mean of the first and last {args.window} steps.", "",
              "| column | first steps | last steps | change |", "|---|---|---|---|"]
    for column, first, last in reward_trend(log, args.window):
        lines.append(f"| {column} | {first:.4f} | {last:.4f} | {last - first:+.4f} |")
    table = "\n".join(lines) + "\n"
    write_table(args.output, table)


if __name__ == "__main__":
    main(sys.argv[1:])
