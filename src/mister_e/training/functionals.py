"""Stage 1 of an openSMILE functionals encoder: its standardisation fitted on the training split, and its head
fitted full batch to convergence (the default; `train_encoder(solver="lbfgs")`).

A few hundred utterances of thousands of functionals is the regime where an L2-regularised model fitted to
convergence beats epochs of minibatch descent stopped on a small validation set (EmoDB: the epoch picked on one
validation speaker scores ~10 points lower on the test speaker). So the head is fitted as logistic regression is:
class-balanced cross-entropy plus an L2 penalty, L-BFGS on the whole training set, no epoch to choose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from torch import nn

from ..data.schema import LABELS, RAW_COLUMN, UTTERANCE_KEYS
from ..encoders_mister_e import MisterEFunctionalsEncoder

# Chosen on EmoDB's validation speakers (`bench/search_functionals_head.py`: best mean over ComParE and eGeMAPS of
# 0.01-1; above 0.1 the 88 eGeMAPS features collapse to a few classes).
FUNCTIONALS_L2 = 0.03
# L-BFGS iterations: on EmoDB the predictions stop changing between 200 and 400 (0 of 339 differ).
FUNCTIONALS_MAX_ITER = 200


def speech_features(processor: Any, paths: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """The processor's speech features of audio files, `(len(paths), width)` for one-vector-per-utterance extractors
    (openSMILE functionals), computed in batches of one-utterance conversations."""
    conversations = [{"id": path, "utterances": [{UTTERANCE_KEYS["speech"]: path}]} for path in paths]
    return torch.cat([processor(conversations[start : start + batch_size])["input_features"]
                      for start in range(0, len(paths), batch_size)])


@torch.no_grad()
def fit_functionals_statistics(model, processor: Any, utterances: Dataset, batch_size: int = 64) -> torch.Tensor:
    """Fit the speech functionals encoder's standardisation on the training utterances (`flatten_utterances` rows);
    the statistics then travel inside the model and are never recomputed at inference. Returns the features."""
    paths = [audio[0] for audio in utterances[RAW_COLUMN["speech"]]]
    if not paths:
        raise ValueError("The training split has no utterance with audio to fit the functionals' statistics on.")
    features = speech_features(processor, paths, batch_size)
    model.speech_encoder.standardizer.fit(features)
    return features


def check_l2(l2: float) -> None:
    """The L2 strength of the L-BFGS fit must be a finite number >= 0 (NaN fails too)."""
    if not 0 <= l2 < math.inf:
        raise ValueError(f"`l2` must be a finite number >= 0, got {l2}.")


def fit_functionals_head(encoder: MisterEFunctionalsEncoder, features: torch.Tensor, labels: Sequence[int],
                         l2: float = FUNCTIONALS_L2, max_iter: int = FUNCTIONALS_MAX_ITER) -> float:
    """Fit the projection and classifier on all training utterances at once: class-balanced cross-entropy (each
    class weighs as much as the others, as `class_weight="balanced"` does) + `l2 / 2` x the squared weights of both
    layers (biases free), minimised by L-BFGS with the dropouts off. Deterministic given the initial weights.
    Returns the final objective."""
    check_l2(l2)
    labels = torch.as_tensor(labels, dtype=torch.long)
    counts = torch.bincount(labels, minlength=encoder.classifier[-1].out_features).clamp(min=1)
    class_weight = len(labels) / (len(counts) * counts.float())
    weights = [encoder.projection.weight, encoder.classifier[-1].weight]
    parameters = [*encoder.projection.parameters(), *encoder.classifier.parameters()]
    was_training = encoder.training
    encoder.eval()  # dropouts off: L-BFGS needs one deterministic objective
    standardized = encoder.standardizer(features)
    optimizer = torch.optim.LBFGS(parameters, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = encoder.classifier(encoder.projection(standardized))
        loss = (nn.functional.cross_entropy(logits, labels, reduction="none") * class_weight[labels]).mean()
        loss = loss + l2 / 2 * sum(weight.square().sum() for weight in weights)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
        final = objective().item()
    encoder.train(was_training)
    return final


def train_labels(utterances: Dataset) -> list[int]:
    """The label of each one-utterance training row (`flatten_utterances`)."""
    return [row[0] for row in utterances[LABELS]]
