"""The ERC metric (`metrics/erc_metrics.py`) loaded offline, and the scores made with it: the Trainer's
`compute_metrics` hook and the log-loss. Torch-free; reports (`evaluation`) and robustness curves score through here."""

from __future__ import annotations

import atexit
import functools
import importlib.util
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import special

if TYPE_CHECKING:
    import evaluate


ERC_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "erc_metrics.py"
IGNORE_INDEX = -100  # the label of padding and unlabelled utterances, skipped by every score


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
def shared_metric() -> evaluate.EvaluationModule:
    """One loaded metric for the package's scoring: each `evaluate.load` hashes and copies the script again."""
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
    scores = shared_metric().compute(
        predictions=predictions.reshape(-1), references=labels.reshape(-1), label_names=label_names
    )
    per_class = scores.pop("f1_per_class")
    return {**scores, **extra, **{f"f1_{name}": score for name, score in per_class.items()}}


def log_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labelled entries (-100 skipped) under `softmax(logits)`; a mixture's
    logits in probability space are log-probabilities already, which the softmax leaves as they are."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, np.shape(logits)[-1])
    labels = np.asarray(labels).reshape(-1)
    kept = labels != IGNORE_INDEX
    if not kept.any():
        return float("nan")
    log_probabilities = special.log_softmax(logits[kept], axis=-1)
    return float(-log_probabilities[np.arange(int(kept.sum())), labels[kept]].mean())


__all__ = ["ERC_METRIC_PATH", "compute_metrics", "load_erc_metric", "log_loss"]
