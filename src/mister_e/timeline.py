"""A recording's predictions (the pipeline's results, with `start`/`end`/`text`) as a table and as a picture a person
can read: the predicted emotion of each utterance along time, its confidence, and the gate's expert weights."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .configuration_mister_e import EXPERTS
from .utils import atomic_path, save_figure

# Greys for the experts, so that no expert shares a colour with an emotion.
EXPERT_GREYS = ("0.2", "0.5", "0.8")
COLUMNS = ("index", "start", "end", "label", "score", "text", *(f"weight_{name}" for name in EXPERTS))


def write_timeline_csv(results: Sequence[Mapping], path: str | os.PathLike) -> None:
    """One row per utterance: times in seconds, the predicted label and its probability, the transcript (empty when
    none) and the gate's weight per expert. Written under a temporary name, then renamed."""
    with atomic_path(Path(path)) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for index, result in enumerate(results):
            weights = [f"{result['expert_weights'][name]:.4f}" for name in EXPERTS]
            writer.writerow([index, f"{result['start']:.3f}", f"{result['end']:.3f}", result["label"],
                             f"{result['score']:.4f}", result.get("text") or "", *weights])


def plot_timeline(results: Sequence[Mapping], labels: Sequence[str]) -> Figure:
    """Top: one row per emotion, each utterance a bar from its start to its end on its predicted emotion's row, as
    opaque as the model is confident. Bottom: the gate's weight per expert for each utterance, stacked. Time in mm:ss."""
    figure = Figure(figsize=(11, 5.2), layout="constrained")
    emotions, experts = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    colours = {label: f"C{index % 10}" for index, label in enumerate(labels)}
    rows = {label: index for index, label in enumerate(labels)}
    for result in results:
        width = max(result["end"] - result["start"], 1e-3)
        emotions.barh(rows[result["label"]], width, left=result["start"], height=0.7, color=colours[result["label"]],
                      alpha=0.25 + 0.75 * float(result["score"]), edgecolor="black", linewidth=0.4)
    emotions.set(yticks=range(len(labels)), ylim=(-0.6, len(labels) - 0.4), ylabel="predicted emotion",
                 title="Emotion timeline (bar opacity: the model's confidence)")
    emotions.set_yticklabels(labels)
    emotions.grid(axis="x", alpha=0.3)
    bottom = np.zeros(len(results))
    for index, name in enumerate(EXPERTS):
        weights = np.array([result["expert_weights"][name] for result in results])
        experts.bar([r["start"] for r in results], weights, width=[max(r["end"] - r["start"], 1e-3) for r in results],
                    bottom=bottom, align="edge", color=EXPERT_GREYS[index], label=name.replace("_", "-"))
        bottom += weights
    end = max((result["end"] for result in results), default=1.0)
    experts.set(ylim=(0, 1), xlim=(0, end * 1.01), ylabel="gate weight", xlabel="time (mm:ss)")
    experts.legend(title="expert", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    experts.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True, steps=[1, 2, 3, 5, 6, 10]))
    experts.xaxis.set_major_formatter(FuncFormatter(lambda seconds, _: f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"))
    handles = [Patch(color=colours[label], label=label) for label in labels]
    emotions.legend(handles=handles, title="emotion", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def save_timeline_plot(results: Sequence[Mapping], labels: Sequence[str], path: str | os.PathLike) -> None:
    save_figure(plot_timeline(results, labels), Path(path))


__all__ = ["COLUMNS", "plot_timeline", "save_timeline_plot", "write_timeline_csv"]
