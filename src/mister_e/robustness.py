"""Modality-robustness curves: the scores as speech, text or either goes missing at test time, and their report
(`robustness.json`, `robustness.png`). Torch-free: the model is reached only through the caller's `predict_fn`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .scores import shared_metric
from .summaries import SCALAR_METRICS
from .utils import save_figure, write_json

ROBUSTNESS_CONDITIONS = ("speech", "text", "either")
DEFAULT_DROP_PROBABILITIES = tuple(i / 10 for i in range(10))
# Which modality each robustness condition drops: (speech, text) multipliers of the drop probability.
_DROPPED_MODALITIES = {"speech": (1.0, 0.0), "text": (0.0, 1.0), "either": (1.0, 1.0)}
# How the curves are named in plots and tables: `either` takes one of the two, so each modality goes at p/2.
ROBUSTNESS_LABELS = {"speech": "drop speech", "text": "drop text", "either": "drop one of the two (each p/2)"}


def robustness_curve(
    predict_fn: Callable[[float, float, int], tuple[Sequence[int], Sequence[int]]],
    probabilities: Sequence[float] = DEFAULT_DROP_PROBABILITIES,
    seed: int = 0,
    conditions: Sequence[str] = ROBUSTNESS_CONDITIONS,
) -> dict[str, Any]:
    """Scores as a modality goes missing at test time, for the conditions of `ROBUSTNESS_CONDITIONS` asked for.

    `predict_fn(drop_speech_p, drop_text_p, seed)` runs the model with each modality's input dropped with the
    given probability and returns `(predictions, references)` (-100 references are ignored). Conditions call it
    with `(p, 0)` for `speech`, `(0, p)` for `text` and `(p, p)` for `either`. How `either` avoids dropping both
    modalities of one utterance is `predict_fn`'s rule, since only it sees the inputs; the package's
    (`training.collator.drop_modalities`) takes one of the two, chosen at random, from an utterance with both with
    probability p, so each modality is dropped with probability p/2. The same `seed` is passed at
    every point so the curves share their random draws; a setting seen twice (`p = 0`) runs once.

    Returns:
        `{"probabilities": [...], "seed": seed, "conditions": {condition: {metric: [score per p]}}}` holding the
        metrics of `SCALAR_METRICS`.
    """
    runs: dict[tuple[float, float], dict[str, Any]] = {}

    def scores(drop_speech_p: float, drop_text_p: float) -> dict[str, Any]:
        if (drop_speech_p, drop_text_p) not in runs:
            predictions, references = predict_fn(drop_speech_p, drop_text_p, seed)
            runs[drop_speech_p, drop_text_p] = shared_metric().compute(
                predictions=np.asarray(predictions).reshape(-1), references=np.asarray(references).reshape(-1)
            )
        return runs[drop_speech_p, drop_text_p]

    curves = {}
    for condition in conditions:
        speech_share, text_share = _DROPPED_MODALITIES[condition]
        points = [scores(speech_share * p, text_share * p) for p in probabilities]
        curves[condition] = {metric: [point[metric] for point in points] for metric in SCALAR_METRICS}
    return {"probabilities": [float(p) for p in probabilities], "seed": seed, "conditions": curves}


def write_robustness_report(output_dir: str | os.PathLike, curve: Mapping[str, Any]) -> None:
    """Write a `robustness_curve` result as `robustness.json` and `robustness.png` (weighted F1 and accuracy)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "robustness.json", curve)

    figure = Figure(figsize=(10, 4))
    for axes, metric in zip(figure.subplots(1, 2), ("weighted_f1", "accuracy")):
        for condition, scores in curve["conditions"].items():
            axes.plot(curve["probabilities"], scores[metric], marker="o", label=ROBUSTNESS_LABELS[condition])
        axes.set(xlabel="drop probability p", ylabel=metric, title=f"{metric} under missing modalities")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    save_figure(figure, output_dir / "robustness.png")


__all__ = [
    "DEFAULT_DROP_PROBABILITIES",
    "ROBUSTNESS_CONDITIONS",
    "ROBUSTNESS_LABELS",
    "robustness_curve",
    "write_robustness_report",
]
