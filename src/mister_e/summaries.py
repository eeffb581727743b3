"""Scores over seeds: the mean and sample std of every scalar metric, and markdown tables of them. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The headline scores of a run, weighted F1 (the paper's metric) first.
SCALAR_METRICS = ("weighted_f1", "macro_f1", "accuracy", "unweighted_recall")


def _flatten_scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """Numbers as floats and `None` (a score undefined in that run, such as the F1 of a class with no reference
    utterance), under `parent/child` keys."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_scalars(value, f"{prefix}{key}/"))
        elif value is None or (isinstance(value, (int, float, np.number)) and not isinstance(value, bool)):
            flat[f"{prefix}{key}"] = None if value is None else float(value)
    return flat


def summarize_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and spread of every scalar metric over runs that differ only in their seed.

    The std is the sample std (`ddof=1`): the seeds are a sample of the runs one could have made, and papers
    report it that way; a single run gets 0.0 (`format_seed_table` then shows the mean alone). Nested mappings
    (per-class F1, gate summaries) are flattened to `parent/child` keys. Non-numeric values (confusion matrices, label
    names) and keys missing from any run are skipped. A score a run gives as `None` (undefined there: the F1 of a
    class absent from that run's split) is averaged over the runs that define it, `n` counting those; where none
    does, its mean and std are `None` and `n` is 0.

    Returns:
        `{metric: {"mean": float | None, "std": float | None, "n": int}}`, in the key order of the first run.
    """
    if not runs:
        raise ValueError("summarize_seeds needs at least one run.")
    flat_runs = [_flatten_scalars(run) for run in runs]
    summary = {}
    for key in flat_runs[0]:
        if all(key in run for run in flat_runs):
            values = np.array([run[key] for run in flat_runs if run[key] is not None])
            if not len(values):
                summary[key] = {"mean": None, "std": None, "n": 0}
                continue
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[key] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return summary


def runs_counted(summary: Mapping[str, Mapping[str, Any]]) -> int:
    """How many runs a `summarize_seeds` result summarises: the largest `n` (a score undefined in some runs has a
    smaller one)."""
    return max((int(value.get("n", 1)) for value in summary.values()), default=1)


def format_seed_table(
    summaries: Mapping[str, Any],
    metrics: Sequence[str] = SCALAR_METRICS,
    *,
    percent: bool = True,
    digits: int = 1,
) -> str:
    """Markdown table of `mean ± std`: one row per metric, one column per summary (say, per ablation).

    `summaries` maps column names to `summarize_seeds` results; a single result is accepted as is. `percent`
    scales scores by 100, as ERC papers report them. A metric missing from a summary shows as a dash, one undefined
    in every run as n/a.
    """
    if all(isinstance(value, Mapping) and "mean" in value for value in summaries.values()):
        summaries = {"mean ± std": summaries}
    scale = 100.0 if percent else 1.0
    header = [f"{name} (n={runs_counted(summary)})" if summary else name for name, summary in summaries.items()]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for metric in metrics:
        cells = [seed_cell(summary[metric], runs_counted(summary), scale, digits) if metric in summary else "–"
                 for summary in summaries.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_cell(value: Mapping[str, Any], runs: int, scale: float, digits: int) -> str:
    """`mean ± std`, or the mean alone for one run, whose spread is unknown rather than 0; `n/a` for a score no run
    defines, and `(n of runs)` after one that only some runs define."""
    if value["mean"] is None:
        return "n/a"
    n = int(value.get("n", 1))
    cell = f"{value['mean'] * scale:.{digits}f}"
    if n > 1:
        cell += f" ± {value['std'] * scale:.{digits}f}"
    return cell if n >= runs else f"{cell} ({n} of {runs} runs)"


__all__ = ["SCALAR_METRICS", "format_seed_table", "runs_counted", "seed_cell", "summarize_seeds"]
