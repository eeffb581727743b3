# Copyright 2026 The MiSTER-E authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""One evaluation run's report (`write_evaluation_report`: metrics, classification report, plots, predictions), and
the public names of evaluation's other parts, which are imported from here: the ERC metric and `compute_metrics`
(`scores.py`), gate summaries (`gates.py`), modality-robustness curves (`robustness.py`) and seed summaries
(`summaries.py`).

Everything here works on numpy arrays the model already produced, so reports can be rebuilt from saved
predictions without loading a model. Figures are drawn on `matplotlib.figure.Figure` objects, which render
with Agg and never touch pyplot's global backend, so importing this module changes nothing for the caller.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import classification_report, confusion_matrix

from .gates import GATE_NAMES, plot_gate_weights, summarize_gates
from .robustness import (
    DEFAULT_DROP_PROBABILITIES, ROBUSTNESS_CONDITIONS, ROBUSTNESS_LABELS, robustness_curve, write_robustness_report,
)
from .scores import ERC_METRIC_PATH, IGNORE_INDEX, compute_metrics, load_erc_metric, log_loss, shared_metric
from .summaries import SCALAR_METRICS, format_seed_table, summarize_seeds
from .utils import atomic_path, save_figure, write_json, write_text


# Every file an evaluation report may hold: an evaluation into a used folder first removes them all, so that a file
# the new one does not write (a robustness curve, gate plots) is never left describing another model or split.
REPORT_FILES = ("metrics.json", "classification_report.txt", "confusion_matrix.png", "predictions.csv",
                "gate_weights.png", "robustness.json", "robustness.png")


def clear_report(output_dir: str | os.PathLike) -> None:
    """Remove an earlier evaluation report from `output_dir` (`REPORT_FILES`), before a new one is written."""
    for name in REPORT_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)


_PREDICTION_COLUMNS = (
    "dialogue_id",
    "utterance_id",
    "label",
    "predicted_label",
    "confidence",
    *(f"gate_{name}" for name in GATE_NAMES),
)


_MACRO_NOTE = ("\nmacro avg above: over all {total} classes (an absent class scores 0). metrics.json's macro_f1 and "
               "unweighted_recall average the {present} classes present in the references, as the ERC literature "
               "does.\n")
_ABSENT_NOTE = ("No reference utterance is of {names}: the zeros in {their} above are scikit-learn's convention; "
                "a class without references has no F1 (null in metrics.json).\n")


def _absent_note(scores: Mapping[str, Any]) -> str:
    """What `classification_report.txt` says of classes without a reference utterance (none: nothing)."""
    absent = [name for name, score in scores["f1_per_class"].items() if score is None]
    if not absent:
        return ""
    return _ABSENT_NOTE.format(names=", ".join(absent), their="its row" if len(absent) == 1 else "their rows")


def _plot_confusion_matrix(matrix: np.ndarray, label_names: Sequence[str]) -> Figure:
    """Colours are row-normalised (recall per true class) so rare classes stay readable; cells show counts too."""
    support = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
    side = 1.5 + 0.8 * len(label_names)
    figure = Figure(figsize=(side + 1.5, side))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, label="fraction of the true class")
    for (row, column), count in np.ndenumerate(matrix):
        share = normalised[row, column]
        color = "white" if share > 0.5 else "black"
        axes.text(column, row, f"{count}\n{share:.0%}", ha="center", va="center", fontsize=8, color=color)
    ticks = range(len(label_names))
    axes.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true", title="Confusion matrix")
    axes.set_xticklabels(label_names, rotation=45, ha="right")
    axes.set_yticklabels(label_names)
    return figure


def _write_predictions_csv(
    path: Path,
    predictions: np.ndarray,
    references: np.ndarray,
    label_names: Sequence[str],
    gate_weights: np.ndarray | None,
    dialogue_ids: np.ndarray | None,
    utterance_ids: np.ndarray | None,
    probabilities: np.ndarray | None,
) -> None:
    """One row per utterance; optional columns stay empty rather than absent so every CSV has the same header."""
    num_utterances = len(references)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(_PREDICTION_COLUMNS)
        for i in range(num_utterances):
            confidence = "" if probabilities is None else float(probabilities[i, predictions[i]])
            gates = [""] * len(GATE_NAMES) if gate_weights is None else [float(g) for g in gate_weights[i]]
            writer.writerow(
                [
                    "" if dialogue_ids is None else dialogue_ids[i],
                    i if utterance_ids is None else utterance_ids[i],
                    label_names[references[i]],
                    label_names[predictions[i]],
                    confidence,
                    *gates,
                ]
            )


def write_evaluation_report(
    output_dir: str | os.PathLike,
    *,
    predictions: Sequence[int] | np.ndarray,
    references: Sequence[int] | np.ndarray,
    label_names: Sequence[str],
    gate_weights: np.ndarray | None = None,
    dialogue_ids: Sequence[Any] | None = None,
    utterance_ids: Sequence[Any] | None = None,
    probabilities: np.ndarray | None = None,
    num_dialogues: int | None = None,
) -> dict[str, Any]:
    """Write the artefacts of one evaluation run to `output_dir` and return what `metrics.json` holds.

    Files: `metrics.json` (scores, counts, raw confusion matrix, gate summary), `classification_report.txt`,
    `confusion_matrix.png`, `predictions.csv` and, given gate weights, `gate_weights.png`. Each is written under a
    temporary name and renamed, and `metrics.json` comes last: a folder without it holds no finished report.

    Args:
        predictions: Predicted class id per utterance, `(N,)`.
        references: True class id per utterance, `(N,)`; utterances whose reference is -100 (padding) are dropped
            from every artefact.
        label_names: Class names in class-id order.
        gate_weights: Gate weight per utterance for the speech, text and cross-modal experts, `(N, 3)`.
        dialogue_ids: Conversation of each utterance, `(N,)`.
        utterance_ids: Identifier of each utterance, `(N,)`; defaults to the row index.
        probabilities: Class probabilities per utterance, `(N, num_labels)`; the CSV's `confidence` is the
            probability of the predicted class.
        num_dialogues: How many conversations were scored (default: the distinct `dialogue_ids`, which undercounts
            a data set that repeats an id).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    references = np.asarray(references).reshape(-1)
    keep = references != IGNORE_INDEX

    def per_utterance(values: Any) -> np.ndarray | None:
        if values is None:
            return None
        values = np.asarray(values)
        if len(values) != len(references):
            raise ValueError(f"Expected one row per utterance ({len(references)}), got {len(values)}.")
        return values[keep]

    predictions = per_utterance(np.asarray(predictions).reshape(-1))
    gate_weights, probabilities = per_utterance(gate_weights), per_utterance(probabilities)
    dialogue_ids, utterance_ids = per_utterance(dialogue_ids), per_utterance(utterance_ids)
    references = references[keep]
    label_names = [str(name) for name in label_names]
    if gate_weights is not None and gate_weights.shape[1:] != (len(GATE_NAMES),):
        raise ValueError(f"gate_weights must be (N, {len(GATE_NAMES)}), got {gate_weights.shape}.")

    if num_dialogues is None and dialogue_ids is not None:
        num_dialogues = len(set(dialogue_ids.tolist()))
    scores = shared_metric().compute(predictions=predictions, references=references, label_names=label_names)
    matrix = confusion_matrix(references, predictions, labels=range(len(label_names)))
    report = {
        **scores,
        "num_utterances": len(references),
        **({"num_dialogues": num_dialogues} if num_dialogues is not None else {}),
        "label_names": label_names,
        "support_per_class": dict(zip(label_names, matrix.sum(1).tolist())),
        "predicted_per_class": dict(zip(label_names, matrix.sum(0).tolist())),
        # Rows are true classes, columns predicted classes, in label order.
        "confusion_matrix": matrix.tolist(),
    }
    if gate_weights is not None:
        report["gates"] = summarize_gates(gate_weights, references, label_names)

    write_text(
        output_dir / "classification_report.txt",
        classification_report(
            references,
            predictions,
            labels=range(len(label_names)),
            target_names=label_names,
            digits=4,
            zero_division=0,
        ) + _MACRO_NOTE.format(present=len(np.unique(references)), total=len(label_names)) + _absent_note(scores),
    )
    save_figure(_plot_confusion_matrix(matrix, label_names), output_dir / "confusion_matrix.png")
    _write_predictions_csv(
        output_dir / "predictions.csv",
        predictions,
        references,
        label_names,
        gate_weights,
        dialogue_ids,
        utterance_ids,
        probabilities,
    )
    if gate_weights is not None:
        save_figure(plot_gate_weights(gate_weights, references, label_names), output_dir / "gate_weights.png")
    write_json(output_dir / "metrics.json", report)  # last: a report without it was interrupted
    return report


__all__ = [
    "DEFAULT_DROP_PROBABILITIES",
    "ERC_METRIC_PATH",
    "GATE_NAMES",
    "ROBUSTNESS_CONDITIONS",
    "ROBUSTNESS_LABELS",
    "REPORT_FILES",
    "clear_report",
    "SCALAR_METRICS",
    "compute_metrics",
    "format_seed_table",
    "load_erc_metric",
    "log_loss",
    "robustness_curve",
    "summarize_seeds",
    "write_evaluation_report",
    "write_robustness_report",
]
