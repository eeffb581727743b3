"""What the gate did over a split: its weights per expert summarised for `metrics.json`, and drawn per emotion for
`gate_weights.png`. Torch-free, on the gate weights a model already produced."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from .configuration_mister_e import EXPERTS

GATE_NAMES = EXPERTS  # one gate weight per expert, in the model's order


def _per_expert(values: np.ndarray) -> dict[str, float]:
    return {name: float(value) for name, value in zip(GATE_NAMES, values)}


def _gate_means_per_class(gate_weights: np.ndarray, references: np.ndarray, num_labels: int) -> np.ndarray:
    """Mean gate weight of each expert per true class, `(num_labels, 3)`; NaN rows for classes absent here."""
    means = np.full((num_labels, len(GATE_NAMES)), np.nan)
    for label in np.unique(references):
        means[label] = gate_weights[references == label].mean(0)
    return means


def summarize_gates(gate_weights: np.ndarray, references: np.ndarray, label_names: Sequence[str]) -> dict:
    """The `gates` entry of `metrics.json`: each expert's mean and std weight, how often it dominates, and its mean
    weight per true class."""
    per_class = _gate_means_per_class(gate_weights, references, len(label_names))
    # An utterance counts for the expert with its largest weight; a tie (the `mean` gate: 1/3 each) is shared
    # equally among the tied experts rather than given to the first of them.
    largest = np.isclose(gate_weights, gate_weights.max(1, keepdims=True), rtol=0, atol=1e-6)
    dominant = (largest / largest.sum(1, keepdims=True)).mean(0)
    return {
        "experts": list(GATE_NAMES),
        "mean": _per_expert(gate_weights.mean(0)),
        "std": _per_expert(gate_weights.std(0)),
        # How often each expert carries the largest weight of an utterance (ties shared).
        "dominant_fraction": _per_expert(dominant),
        # Classes absent from the split are left out rather than written as NaN, which JSON cannot hold.
        "mean_per_class": {
            name: _per_expert(means) for name, means in zip(label_names, per_class) if not np.isnan(means).any()
        },
    }


def plot_gate_weights(gate_weights: np.ndarray, references: np.ndarray, label_names: Sequence[str]) -> Figure:
    """Which expert the gate trusts per emotion (grouped bars), and how peaked its choices are (histograms, the
    experts' bars side by side in each bin so none hides another); one legend above both, clear of the bars."""
    figure = Figure(figsize=(6 + 0.6 * len(label_names), 4.4), layout="constrained")
    bars, histograms = figure.subplots(1, 2, width_ratios=(2, 1))
    per_class = np.nan_to_num(_gate_means_per_class(gate_weights, references, len(label_names)))
    width = 0.8 / len(GATE_NAMES)
    positions = np.arange(len(label_names))
    for index, name in enumerate(GATE_NAMES):
        bars.bar(positions + (index - 1) * width, per_class[:, index], width, label=name)
    histograms.hist([gate_weights[:, index] for index in range(len(GATE_NAMES))], bins=np.linspace(0.0, 1.0, 11),
                    histtype="bar", rwidth=0.9)
    bars.set_xticks(positions)
    bars.set_xticklabels(label_names, rotation=45, ha="right")
    bars.set(ylim=(0.0, 1.0), ylabel="mean gate weight", title="Gate weight per true class")
    histograms.set(xlabel="gate weight", ylabel="utterances", title="Gate weight distribution")
    figure.legend(title="expert", loc="outside upper center", ncols=len(GATE_NAMES))
    return figure


__all__ = ["GATE_NAMES", "plot_gate_weights", "summarize_gates"]
