"""Batches for both stages: dialogue rows -> padded tensors (embeddings, or raw audio/text through the processor).

Stage 1 sees each utterance as a one-utterance conversation (`flatten_utterances`), so one collator serves both
models, and the batch format is the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ..configuration_mister_e import MODALITIES
from ..data.schema import DIALOGUE_ID, EMBED_COLUMN, LABELS, RAW_COLUMN, UTTERANCE_IDS, is_present, processor_utterances

_IGNORE_INDEX = -100
# Per-conversation flag of the training split: held out from the experts' losses, for the gate (`gate_holdout_fraction`).
GATE_HOLDOUT_COLUMN = "gate_holdout"



def drop_modalities(
    presence: np.ndarray, drop_speech_p: float, drop_text_p: float, generator: np.random.Generator
) -> np.ndarray:
    """Take one modality away from some utterances that have both, never both and never an utterance's only one.

    An utterance with speech and text loses one with probability `max(drop_speech_p, drop_text_p)`; the one it loses
    is speech with probability `drop_speech_p / (drop_speech_p + drop_text_p)`. So `(p, 0)` drops speech w.p. `p`,
    and `(p, p)` drops speech w.p. `p/2` or text w.p. `p/2`. Two uniforms are drawn per utterance whatever the
    probabilities, so with one seed the utterances dropped at a larger `p` include those dropped at a smaller one.

    Args:
        presence: `(utterances, 2)` booleans, [has speech, has text].
    """
    presence = np.asarray(presence, dtype=bool)
    draws = generator.random((2, len(presence)))
    total = max(drop_speech_p, drop_text_p)
    if total == 0:
        return presence
    lose = presence.all(-1) & (draws[0] < total)
    pick_speech = draws[1] < drop_speech_p / (drop_speech_p + drop_text_p)
    dropped = presence.copy()
    dropped[lose & pick_speech, 0] = False
    dropped[lose & ~pick_speech, 1] = False
    return dropped


@dataclasses.dataclass
class MisterEDataCollator:
    """Dialogue rows (the `mister_e.data` schema) to a batch for `MisterEForEmotionRecognition` and
    `MisterEForUtteranceClassification` alike.

    Rows that carry `speech_embeds`/`text_embeds` are padded to `(B, N, D)` tensors (a `None` vector marks the modality
    missing for that utterance); other rows go through `processor` as raw audio paths and texts. Either way the batch
    has `attention_mask` (B, N), `modality_mask` (B, N, 2) and `labels` (B, N; -100 on padding and unlabelled
    utterances). Speaker columns are never read: the model must not see speaker identity.

    Args:
        processor: `MisterEProcessor` for rows without embeddings.
        modalities: Modalities to feed; the others are treated as missing (text-only runs on a bimodal dataset).
        modality_dropout: Drop one modality of an utterance that has both (`drop_modalities`): `p` for either modality
            w.p. `p` (an augmentation; the paper does not use it), or `(speech_p, text_p)`. The Trainer built by
            `build_trainer` applies it to training batches only.
        training: Random audio crops in the processor (`train_crop_seconds`).
        seed: Seed of the collator's own random draws. `None` (the default for training) draws each batch's seed from
            torch's global generator, which the Trainer seeds and stores in checkpoints, so resumed runs repeat the
            same draws.
    """

    processor: Any = None
    modalities: Sequence[str] = MODALITIES
    modality_dropout: float | tuple[float, float] = 0.0
    training: bool = False
    seed: int | None = None

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        if not self.modalities or not set(self.modalities) <= set(MODALITIES):
            raise ValueError(f"`modalities` must be a non-empty subset of {MODALITIES}, got {self.modalities}.")
        drop = self.modality_dropout
        self._drop = (float(drop), float(drop)) if isinstance(drop, (int, float)) else tuple(map(float, drop))
        if len(self._drop) != 2 or not all(0 <= p <= 1 for p in self._drop):
            raise ValueError(f"`modality_dropout` must be p or (speech_p, text_p) in [0, 1], got {drop!r}.")
        self._generator = None if self.seed is None else np.random.default_rng(self.seed)

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        embedded = [m for m in self.modalities if EMBED_COLUMN[m] in features[0]]
        columns = {m: (EMBED_COLUMN if embedded else RAW_COLUMN)[m] for m in (embedded or self.modalities)}
        generator = self._batch_generator(raw=not embedded)
        presence = []
        for row in features:
            present = np.zeros((len(row[LABELS]), 2), dtype=bool)
            for modality, column in columns.items():
                if row.get(column) is not None:
                    present[:, MODALITIES.index(modality)] = [is_present(value) for value in row[column]]
            self._check_inputs(row, present, columns)
            if any(self._drop):
                present = drop_modalities(present, *self._drop, generator)
            presence.append(present)

        lengths = [len(present) for present in presence]
        modality_mask = torch.zeros(len(features), max(lengths), 2, dtype=torch.bool)
        for b, present in enumerate(presence):
            modality_mask[b, : len(present)] = torch.from_numpy(present)
        if embedded:
            batch = {"attention_mask": _length_mask(lengths), "modality_mask": modality_mask}
            for modality, column in columns.items():
                embeds = _pad_embeddings([row[column] for row in features], presence, MODALITIES.index(modality))
                if embeds is not None:
                    batch[column] = embeds
        else:
            batch = self._process(features, presence, generator)
        labels = torch.full((len(features), max(lengths)), _IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(features):
            row_labels = torch.as_tensor(row[LABELS], dtype=torch.long)
            labels[b, : len(row_labels)] = row_labels.masked_fill(row_labels < 0, _IGNORE_INDEX)
        batch["labels"] = labels
        if GATE_HOLDOUT_COLUMN in features[0]:
            batch[GATE_HOLDOUT_COLUMN] = torch.tensor([bool(row[GATE_HOLDOUT_COLUMN]) for row in features])
        return batch

    def _batch_generator(self, raw: bool) -> np.random.Generator | None:
        if not (any(self._drop) or (raw and self.training)):
            return None  # Draw nothing: evaluation must not move the training random stream.
        if self._generator is not None:
            return self._generator
        return np.random.default_rng(int(torch.randint(2**62, ()).item()))

    @staticmethod
    def _check_inputs(row: Mapping, present: np.ndarray, columns: Mapping[str, str]) -> None:
        empty = np.flatnonzero(~present.any(-1))
        if len(empty):
            utterance = (row.get(UTTERANCE_IDS) or range(len(present)))[empty[0]]
            raise ValueError(
                f"dialogue {row.get('dialogue_id')!r}: utterance {utterance!r} has none of the columns "
                f"{sorted(columns.values())}; drop it from the dataset or feed other modalities."
            )

    def _process(self, features, presence, generator) -> dict[str, torch.Tensor]:
        if self.processor is None:
            raise ValueError("Rows without `speech_embeds`/`text_embeds` need a `processor` to read audio and text.")
        conversations = [{"id": row.get(DIALOGUE_ID), "utterances": processor_utterances(row, present=present)}
                         for row, present in zip(features, presence)]
        return dict(self.processor(conversations, training=self.training, generator=generator, return_tensors="pt"))


def _length_mask(lengths: Sequence[int]) -> torch.Tensor:
    return (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()


def _pad_embeddings(rows: Sequence[Sequence], presence: Sequence[np.ndarray], column: int) -> torch.Tensor | None:
    """`(B, N, D)` float32 with zeros where absent; `None` when no utterance of the batch has the modality."""
    kept = [
        [np.asarray(vectors[i], dtype=np.float32) for i in np.flatnonzero(present[:, column])]
        for vectors, present in zip(rows, presence)
    ]
    width = next((vectors[0].shape[-1] for vectors in kept if vectors), None)
    if width is None:
        return None
    padded = torch.zeros(len(rows), max(len(p) for p in presence), width)
    for b, (vectors, present) in enumerate(zip(kept, presence)):
        if vectors:
            padded[b, torch.from_numpy(np.flatnonzero(present[:, column]))] = torch.from_numpy(np.stack(vectors))
    return padded


def flatten_utterances(dataset: Dataset, modality: str) -> Dataset:
    """One-utterance conversations of the labelled utterances that have `modality`, for stage-1 training.

    Only the columns stage 1 reads are kept, so precomputed embeddings of another run never reach the collator.
    """
    column = RAW_COLUMN[modality]
    keep = [DIALOGUE_ID, UTTERANCE_IDS, column, LABELS]
    dataset = dataset.select_columns(keep)

    def explode(batch):
        rows = {key: [] for key in keep}
        for dialogue_id, utterance_ids, values, labels in zip(*(batch[key] for key in keep)):
            for utterance_id, value, label in zip(utterance_ids, values, labels):
                if is_present(value) and label >= 0:  # a blank text is no text, here as in the collator
                    for key, item in zip(keep, (dialogue_id, [utterance_id], [value], [label])):
                        rows[key].append(item)
        return rows

    return dataset.map(explode, batched=True, remove_columns=keep, features=dataset.features, keep_in_memory=True)

