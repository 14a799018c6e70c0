"""Instruction writers compared on the same users: each writer's measures (mean ± std over its runs, e.g.
seeds) and, per measure, a paired Wilcoxon signed-rank test against a reference writer over users (each
user's value averaged over the writer's runs first). Ties (all differences zero) give p = 1."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean, pstdev

import numpy as np
from scipy.stats import wilcoxon

from recbole_navigen.evaluation.instructions import MEASURES, instruction_measures


@dataclass
class WriterResult:
    """A writer's measures: per run means, and per user values averaged over runs (for the paired test)."""

    writer: str
    runs: int
    users: int
    run_means: dict[str, list[float]]
    per_user: dict[str, np.ndarray]
    p_values: dict[str, float]


def paired_p_value(values: np.ndarray, reference: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples; 1.0 when every difference is zero."""
    differences = values - reference
    if not np.any(differences):
        return 1.0
    return float(wilcoxon(values, reference, zero_method="wilcox").pvalue)


def compare_writers(runs_by_writer: dict[str, list[list[dict]]], encoder, shares: dict[str, float],
                    reference: str, distinctive_share: float = 0.01) -> list[WriterResult]:
    """Measure every run of every writer on the users all of them share (in the reference's order)."""
    if reference not in runs_by_writer:
        raise KeyError(f"reference writer {reference!r} is not among {sorted(runs_by_writer)}")
    common = set.intersection(*({row["user"] for row in run} for runs in runs_by_writer.values() for run in runs))
    users = [row["user"] for row in runs_by_writer[reference][0] if row["user"] in common]
    if not users:
        raise ValueError("the writers share no user: compare files written for the same test users")
    results = []
    for writer, runs in runs_by_writer.items():
        measured = []
        for run in runs:
            by_user = {row["user"]: row for row in run}
            measured.append(instruction_measures([by_user[user] for user in users], encoder, shares, distinctive_share))
        per_user = {name: np.mean([m[name] for m in measured], axis=0) for name in MEASURES}
        run_means = {name: [mean(m[name]) for m in measured] for name in MEASURES}
        results.append(WriterResult(writer, len(runs), len(users), run_means, per_user, {}))
    base = next(result for result in results if result.writer == reference)
    for result in results:
        if result is not base:
            result.p_values = {name: paired_p_value(result.per_user[name], base.per_user[name]) for name in MEASURES}
    return results


def markdown_table(results: list[WriterResult], reference: str) -> str:
    """One row per writer: mean (± std over runs when several) and the paired test's p against `reference`."""
    lines = ["| writer | runs | users | " + " | ".join(MEASURES) + " |", "|---|---|---|" + "---|" * len(MEASURES)]
    for result in results:
        cells = []
        for name in MEASURES:
            values = result.run_means[name]
            cell = f"{mean(values):.3f}" + (f" ± {pstdev(values):.3f}" if len(values) > 1 else "")
            if name in result.p_values:
                cell += f" (p {result.p_values[name]:.3g})"
            cells.append(cell)
        lines.append(f"| {result.writer} | {result.runs} | {result.users} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\np: two-sided Wilcoxon signed-rank test over users against `{reference}`.\n"
