"""Does the RL stage learn? Read a finished main-job run folder (stages ... 2, rl) and write a table: the
test metrics after SFT only (the stage before rl) and after SFT + RL (same split, seed and users), and the
GRPO reward over the first and last steps of `rl_log.csv`. With `--probe_users=N`, both checkpoints are also
scored on the reward itself: each of the first N test users' mean cid2cid reward over G samples (the same
users and random stream for both), compared by a paired Wilcoxon test: the log's per-step means move with
each batch's users, this does not.

    python -m bench.rl_report --run=saved/NaviGen-ml-100k-KEY --output=bench/results/rl_ml100k.md --probe_users=300
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

import numpy as np

from bench.machine import machine, write_table
from recbole_navigen.evaluation.compare import paired_p_value
from recbole_navigen.rl.log import read_rl_log

METRICS = ("recall@5", "recall@10", "recall@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10")


def stage_results(run: Path) -> list[tuple[str, dict]]:
    """(stage folder name, result.json) of each finished stage, in training order."""
    found = [(folder.name, json.loads((folder / "result.json").read_text())) for folder in run.iterdir()
             if (folder / "result.json").is_file()]
    order = {name: index for index, name in enumerate(["stage1", "stage2", "rl"])}
    return sorted(found, key=lambda item: order.get(item[0], len(order)))


def reward_trend(log: Path, window: int) -> list[tuple[str, float, float]]:
    """(column, mean over the first `window` steps, mean over the last `window`) of the reward columns."""
    rows = read_rl_log(log)
    columns = [name for name in rows[0] if name.endswith("_mean") and "reward" in name or name in ("kl", "valid_format_rate")]
    trend = []
    for column in columns:
        values = [row[column] for row in rows if column in row]
        if values:
            trend.append((column, mean(values[:window]), mean(values[-window:])))
    return trend


def probe(checkpoint: str, users: int, samples: int | None, seed: int) -> tuple[np.ndarray, int]:
    """Per-user mean cid2cid reward of a checkpoint on its first `users` test users, and the samples per user."""
    from recbole_navigen.generation.instructions import load_trained_navigen
    from recbole_navigen.rl.objective import rollout_settings
    from recbole_navigen.rl.probe import probe_cid_rewards

    config, model, test_data = load_trained_navigen(checkpoint)
    settings = rollout_settings(config)
    if samples:
        settings["num_generations"] = samples
    rewards = probe_cid_rewards(model, test_data, settings, users, seed)
    return np.asarray(rewards), settings["num_generations"]


def probe_lines(before: tuple[str, dict], after: dict, users: int, samples: int | None, seed: int) -> list[str]:
    """The probe's table: mean reward per checkpoint on the same users, the change and its paired p-value."""
    (name, result) = before
    sft, group = probe(result["checkpoint"], users, samples, seed)
    rl, _ = probe(after["checkpoint"], users, samples, seed)
    return ["", f"Reward on held-out users: the first {len(sft)} test users, {group} trie-constrained samples each "
            f"(temperature as in training, generator seed {seed}, identical for both checkpoints); per-user means, "
            "paired two-sided Wilcoxon signed-rank test.", "",
            "| checkpoint | mean cid2cid reward | std over users |", "|---|---|---|",
            f"| SFT only ({name}) | {sft.mean():.4f} | {sft.std():.4f} |",
            f"| SFT + RL | {rl.mean():.4f} | {rl.std():.4f} |",
            "", f"Change {rl.mean() - sft.mean():+.4f}, p = {paired_p_value(rl, sft):.3g}."]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="saved/<Model>-<dataset>-<key>")
    parser.add_argument("--window", type=int, default=10, help="steps averaged at each end of the RL log")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--command", default="", help="the command that produced the run, for the header")
    parser.add_argument("--sft", type=Path, help="the SFT stage folder, when the run holds only the rl stage")
    parser.add_argument("--probe_users", type=int, default=0, help="score both checkpoints' reward on N test users")
    parser.add_argument("--probe_samples", type=int, help="samples per user (default: the run's rl_num_generations)")
    parser.add_argument("--probe_seed", type=int, default=0)
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
    steps = len(read_rl_log(log))
    lines += ["", f"GRPO log ({steps} steps, `{log}`): mean of the first and last {args.window} steps.", "",
              "| column | first steps | last steps | change |", "|---|---|---|---|"]
    for column, first, last in reward_trend(log, args.window):
        lines.append(f"| {column} | {first:.4f} | {last:.4f} | {last - first:+.4f} |")
    if args.probe_users:
        lines += probe_lines(stages[-2], after, args.probe_users, args.probe_samples, args.probe_seed)
    table = "\n".join(lines) + "\n"
    write_table(args.output, table)


if __name__ == "__main__":
    main(sys.argv[1:])
