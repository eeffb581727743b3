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
"""Evaluation of MiSTER-E outputs: metrics, reports and modality-robustness curves (seed summaries: `summaries.py`).

Everything here works on numpy arrays the model already produced, so reports can be rebuilt from saved
predictions without loading a model. Figures are drawn on `matplotlib.figure.Figure` objects, which render
with Agg and never touch pyplot's global backend, so importing this module changes nothing for the caller.
"""

from __future__ import annotations

import atexit
import csv
import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from scipy import special
from sklearn.metrics import classification_report, confusion_matrix

from .configuration_mister_e import EXPERTS
from .summaries import SCALAR_METRICS, format_seed_table, summarize_seeds
from .utils import PLOT_FORMATS, atomic_path

logger = logging.getLogger(__name__)


if TYPE_CHECKING:
    import evaluate


ERC_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "erc_metrics.py"
GATE_NAMES = EXPERTS  # one gate weight per expert, in the model's order
ROBUSTNESS_CONDITIONS = ("speech", "text", "either")
DEFAULT_DROP_PROBABILITIES = tuple(i / 10 for i in range(10))

_IGNORE_INDEX = -100
# Which modality each robustness condition drops: (speech, text) multipliers of the drop probability.
_DROPPED_MODALITIES = {"speech": (1.0, 0.0), "text": (0.0, 1.0), "either": (1.0, 1.0)}
# Every file an evaluation report may hold: an evaluation into a used folder first removes them all, so that a file
# the new one does not write (a robustness curve, gate plots) is never left describing another model or split.
REPORT_FILES = ("metrics.json", "classification_report.txt", "confusion_matrix.png", "predictions.csv",
                "gate_weights.png", "robustness.json", "robustness.png")


def clear_report(output_dir: str | os.PathLike) -> None:
    """Remove an earlier evaluation report from `output_dir` (`REPORT_FILES`), before a new one is written."""
    for name in REPORT_FILES:
        (Path(output_dir) / name).unlink(missing_ok=True)


# How the curves are named in plots and tables: `either` takes one of the two, so each modality goes at p/2.
ROBUSTNESS_LABELS = {"speech": "drop speech", "text": "drop text", "either": "drop one of the two (each p/2)"}
_PREDICTION_COLUMNS = (
    "dialogue_id",
    "utterance_id",
    "label",
    "predicted_label",
    "confidence",
    *(f"gate_{name}" for name in GATE_NAMES),
)


def load_erc_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    """Load the ERC metric (`metrics/erc_metrics.py`) through `evaluate.load` by file path.

    Loading by path is what keeps this offline: `evaluate.load("f1")` would fetch a script from the Hub. The script
    ships inside the package, so the same call works from a source checkout and an installed wheel.
    `keep_in_memory=True` is the default so computing never writes Arrow cache files; `kwargs` go to
    `evaluate.load`.
    """
    # Imported here: `evaluate` pulls in transformers' pipelines, seconds that seed summaries should not pay.
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    try:
        return evaluate.load(str(ERC_METRIC_PATH), **kwargs)
    except OSError:
        # HF_HOME read-only or not creatable (a shared cache, a home folder that is not there): `evaluate` copies the
        # script into HF_HOME/modules and makes HF_HOME/metrics, and training failed at its first evaluation. The
        # script is imported from the package instead, its (unused, in-memory) data folder a temporary one.
        spec = importlib.util.spec_from_file_location("mister_e_erc_metrics", ERC_METRIC_PATH)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        if "cache_dir" not in kwargs:
            kwargs["cache_dir"] = tempfile.mkdtemp(prefix="mister-e-metric-")
            atexit.register(shutil.rmtree, kwargs["cache_dir"], ignore_errors=True)
        return script.ErcMetrics(**kwargs)


@functools.cache
def _shared_metric() -> evaluate.EvaluationModule:
    """One loaded metric for this module's helpers: each `evaluate.load` hashes and copies the script again."""
    return load_erc_metric()


def compute_metrics(eval_pred: Any, label_names: Sequence[str] | None = None) -> dict[str, float]:
    """`Trainer` hook; bind the class names with `functools.partial(compute_metrics, label_names=...)`.

    Takes what the Trainer gathers for a conversation model: logits `(..., num_labels)` (the first element when
    the model also returns gate weights or expert logits) or class ids already reduced by
    `preprocess_logits_for_metrics`, and labels of any shape padded with -100. Per-class F1 is flattened into
    `f1_<label>` scalars because the Trainer logs, and selects the best model on, scalars only (`None` for a class
    with no reference utterance: JSON's null, where NaN would make the Trainer's state file invalid JSON); select on
    `metric_for_best_model="weighted_f1"`, the paper's metric. Given logits, also `log_loss`: the mean negative
    log-likelihood of the labels, which `metric_for_best_model="log_loss"` minimises (BENCHMARKS.md compares the two).
    """
    predictions, labels = eval_pred[0], eval_pred[1]
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    extra = {}
    if predictions.ndim == labels.ndim + 1:
        extra["log_loss"] = log_loss(predictions, labels)
        predictions = predictions.argmax(-1)
    scores = _shared_metric().compute(
        predictions=predictions.reshape(-1), references=labels.reshape(-1), label_names=label_names
    )
    per_class = scores.pop("f1_per_class")
    return {**scores, **extra, **{f"f1_{name}": score for name, score in per_class.items()}}


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labelled entries (-100 skipped) under `softmax(logits)`; a mixture's
    logits in probability space are log-probabilities already, which the softmax leaves as they are."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, np.shape(logits)[-1])
    labels = np.asarray(labels).reshape(-1)
    kept = labels != _IGNORE_INDEX
    if not kept.any():
        return float("nan")
    log_probabilities = special.log_softmax(logits[kept], axis=-1)
    return float(-log_probabilities[np.arange(int(kept.sum())), labels[kept]].mean())


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    _write_text(path, json.dumps(payload, indent=2) + "\n")


def _save_figure(figure: Figure, path: Path) -> None:
    """`figure` in the format its suffix names (PNG for any other), written under a temporary name, then renamed.

    Characters of labels that the font cannot draw (CJK, emoji in DejaVu Sans) are drawn as boxes: said in one line
    naming the file, where matplotlib gave two warning lines per character and drawing."""
    suffix = Path(path).suffix.lower().lstrip(".")
    with atomic_path(path) as tmp, warnings.catch_warnings(record=True) as caught:
        figure.savefig(tmp, format=suffix if suffix in PLOT_FORMATS else "png", dpi=150, bbox_inches="tight")
    missing = {}
    for warning in caught:
        glyph = re.match(r"Glyph (\d+) \(.*\) missing from font", str(warning.message))
        if glyph:
            missing[chr(int(glyph.group(1)))] = None
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:
        logger.warning(f"{path}: the plot's font cannot draw {' '.join(missing)} (drawn as boxes)")


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


def _per_expert(values: np.ndarray) -> dict[str, float]:
    return {name: float(value) for name, value in zip(GATE_NAMES, values)}


def _gate_means_per_class(gate_weights: np.ndarray, references: np.ndarray, num_labels: int) -> np.ndarray:
    """Mean gate weight of each expert per true class, `(num_labels, 3)`; NaN rows for classes absent here."""
    means = np.full((num_labels, len(GATE_NAMES)), np.nan)
    for label in np.unique(references):
        means[label] = gate_weights[references == label].mean(0)
    return means


def _summarize_gates(gate_weights: np.ndarray, references: np.ndarray, label_names: Sequence[str]) -> dict:
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


def _plot_gate_weights(gate_weights: np.ndarray, references: np.ndarray, label_names: Sequence[str]) -> Figure:
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
    keep = references != _IGNORE_INDEX

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
    scores = _shared_metric().compute(predictions=predictions, references=references, label_names=label_names)
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
        report["gates"] = _summarize_gates(gate_weights, references, label_names)

    _write_text(
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
    _save_figure(_plot_confusion_matrix(matrix, label_names), output_dir / "confusion_matrix.png")
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
        _save_figure(_plot_gate_weights(gate_weights, references, label_names), output_dir / "gate_weights.png")
    _write_json(output_dir / "metrics.json", report)  # last: a report without it was interrupted
    return report


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
            runs[drop_speech_p, drop_text_p] = _shared_metric().compute(
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
    _write_json(output_dir / "robustness.json", curve)

    figure = Figure(figsize=(10, 4))
    for axes, metric in zip(figure.subplots(1, 2), ("weighted_f1", "accuracy")):
        for condition, scores in curve["conditions"].items():
            axes.plot(curve["probabilities"], scores[metric], marker="o", label=ROBUSTNESS_LABELS[condition])
        axes.set(xlabel="drop probability p", ylabel=metric, title=f"{metric} under missing modalities")
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    _save_figure(figure, output_dir / "robustness.png")


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
