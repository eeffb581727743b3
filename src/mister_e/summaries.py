"""Scores over seeds: the mean and sample std of every scalar metric, and markdown tables of them. Torch-free."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The headline scores of a run, weighted F1 (the paper's metric) first.
SCALAR_METRICS = ("weighted_f1", "macro_f1", "accuracy", "unweighted_recall")


def _flatten_scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            flat.update(_flatten_scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def summarize_seeds(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and spread of every scalar metric over runs that differ only in their seed.

    The std is the sample std (`ddof=1`): the seeds are a sample of the runs one could have made, and papers
    report it that way; a single run gets 0.0 (`format_seed_table` then shows the mean alone). Nested mappings
    (per-class F1, gate summaries) are flattened to `parent/child` keys. Non-numeric values (confusion matrices, label
    names) and keys missing from any run are skipped.

    Returns:
        `{metric: {"mean": float, "std": float, "n": int}}`, in the key order of the first run.
    """
    if not runs:
        raise ValueError("summarize_seeds needs at least one run.")
    flat_runs = [_flatten_scalars(run) for run in runs]
    summary = {}
    for key in flat_runs[0]:
        if all(key in run for run in flat_runs):
            values = np.array([run[key] for run in flat_runs])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[key] = {"mean": float(values.mean()), "std": std, "n": len(values)}
    return summary


def format_seed_table(
    summaries: Mapping[str, Any],
    metrics: Sequence[str] = SCALAR_METRICS,
    *,
    percent: bool = True,
    digits: int = 1,
) -> str:
    """Markdown table of `mean ± std`: one row per metric, one column per summary (say, per ablation).

    `summaries` maps column names to `summarize_seeds` results; a single result is accepted as is. `percent`
    scales scores by 100, as ERC papers report them. A metric missing from a summary shows as a dash.
    """
    if all(isinstance(value, Mapping) and "mean" in value for value in summaries.values()):
        summaries = {"mean ± std": summaries}
    scale = 100.0 if percent else 1.0
    header = [
        f"{name} (n={next(iter(summary.values()))['n']})" if summary else name for name, summary in summaries.items()
    ]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for metric in metrics:
        cells = [_cell(summary[metric], scale, digits) if metric in summary else "–"
                 for summary in summaries.values()]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Mapping[str, Any], scale: float, digits: int) -> str:
    """`mean ± std`, or the mean alone for one run, whose spread is unknown rather than 0."""
    mean = f"{value['mean'] * scale:.{digits}f}"
    return mean if value["n"] < 2 else f"{mean} ± {value['std'] * scale:.{digits}f}"


__all__ = ["SCALAR_METRICS", "format_seed_table", "summarize_seeds"]
