"""The dialogue schema every data set shares: its columns, their features, and a dialogue row as processor input
(`checks` checks a split of it, `building` makes one from plain values, `storage` saves and loads it).

Every dataset is a `datasets.DatasetDict` with splits ``train``, ``validation`` and ``test`` and one row per
conversation (schema: `dialogue_features`). Builders never copy audio: rows store file paths, so a prepared dataset
stays small and points at the release on disk. Code elsewhere names columns through the constants below.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from ..configuration_mister_e import MODALITIES
from ..processing_mister_e import blank_text

SPLITS = ("train", "validation", "test")

# Column names: one row per conversation, every column but the first one entry per utterance.
DIALOGUE_ID = "dialogue_id"
UTTERANCE_IDS = "utterance_ids"
TEXTS = "texts"
AUDIO = "audio"
LABELS = "labels"
SPEAKERS = "speakers"
SPEECH_EMBEDS = "speech_embeds"
TEXT_EMBEDS = "text_embeds"
EMBED_COLUMNS = (SPEECH_EMBEDS, TEXT_EMBEDS)
UTTERANCE_COLUMNS = (UTTERANCE_IDS, TEXTS, AUDIO, LABELS, SPEAKERS, *EMBED_COLUMNS)
# Per modality: the column of its raw input, and of its precomputed embeddings.
RAW_COLUMN = {"speech": AUDIO, "text": TEXTS}
EMBED_COLUMN = {"speech": SPEECH_EMBEDS, "text": TEXT_EMBEDS}
# The key of each modality's input in an utterance of `MisterEProcessor`'s conversation format.
UTTERANCE_KEYS = {"speech": "audio", "text": "text"}


def is_present(value: Any) -> bool:
    """Whether an utterance has this input: not missing, and not a blank text (which says nothing; the processor
    treats it as no text too)."""
    return value is not None and not (isinstance(value, str) and blank_text(value))


def processor_utterances(row: Mapping, modalities: Sequence[str] = MODALITIES, present=None) -> list[dict]:
    """A dialogue row's utterances in the processor's format (`{"audio": path, "text": text}`), each with only the
    modalities asked for that it has, or, given `present` (`(utterances, 2)` booleans, speech then text), that it
    marks: the one place a dataset row becomes processor input (the collator, extraction and stage 1 use it)."""
    count = len(present) if present is not None else len(row[UTTERANCE_IDS])
    inputs = {modality: row.get(RAW_COLUMN[modality]) or [None] * count for modality in MODALITIES}
    utterances = []
    for index in range(count):
        utterance = {}
        for column, modality in enumerate(MODALITIES):
            value = inputs[modality][index]
            if modality in modalities and (is_present(value) if present is None else present[index][column]):
                utterance[UTTERANCE_KEYS[modality]] = value
        utterances.append(utterance)
    return utterances


def dialogue_features(
    label_names: Sequence[str], *, speech_embeds: bool = False, text_embeds: bool = False
) -> Features:
    """The schema: one row per conversation, one list entry per utterance.

    Audio is kept as file paths rather than `datasets.Audio`, which needs torchcodec and FFmpeg even to declare.
    Label names live in the `ClassLabel`, so a saved dataset carries its own label set. ``speakers`` is metadata
    for analysis; models never see it. The embedding columns hold precomputed per-utterance vectors.
    """
    features = {
        DIALOGUE_ID: Value("string"),
        UTTERANCE_IDS: List(Value("string")),
        TEXTS: List(Value("string")),
        AUDIO: List(Value("string")),
        LABELS: List(ClassLabel(names=list(label_names))),
        SPEAKERS: List(Value("string")),
    }
    for column, wanted in zip(EMBED_COLUMNS, (speech_embeds, text_embeds)):
        if wanted:
            features[column] = embedding_feature()
    return Features(features)


def embedding_feature(embedding: str | None = None) -> List:
    """The feature of an embedding column: per dialogue, per utterance, a float vector. `embedding` names the encoder
    vector it holds (`extract --embedding`); it is kept as the `id` of the vectors' values, which `datasets` carries
    through `map`, `select`, `save_to_disk` and `load_from_disk`, so that stage 2 can record what it reads."""
    return List(List(Value("float32", id=embedding)))


def column_embedding(dataset: Dataset, column: str) -> str | None:
    """The encoder vector an embedding column holds (see `embedding_feature`); `None` when unrecorded (precomputed
    vectors such as CMU-MOSI's acoustic features, or data extracted before it was recorded)."""
    feature = dataset.features.get(column)
    while hasattr(feature, "feature"):
        feature = feature.feature
    return getattr(feature, "id", None)


def describe(dialogues: DatasetDict) -> str:
    """Per-split dialogue, utterance and class counts, as a plain-text table."""
    names = next(iter(dialogues.values())).features[LABELS].feature.names
    lines = [" ".join([f"{'split':<10} {'dialogues':>9} {'utterances':>10}", *(f"{name:>9}" for name in names)])]
    for split, dataset in dialogues.items():
        counts = Counter(label for labels in dataset[LABELS] for label in labels)
        cells = [f"{split:<10} {len(dataset):>9} {sum(counts.values()):>10}"]
        lines.append(" ".join([*cells, *(f"{counts[index]:>9}" for index in range(len(names)))]))
    return "\n".join(lines)


# Names that lived here before `checks`, `building` and `splits` took them (stop 35): still importable from here, read
# from their new homes when asked for (an import at the top would be circular: they import this module).
_MOVED = {
    **dict.fromkeys(("check_finite_embeddings", "experts_never_given", "validate_dialogues"), "checks"),
    **dict.fromkeys(("attach_embeddings", "make_dialogue_dataset"), "building"),
    "require_splits": "splits",
}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AUDIO",
    "DIALOGUE_ID",
    "EMBED_COLUMNS",
    "LABELS",
    "SPEAKERS",
    "SPEECH_EMBEDS",
    "SPLITS",
    "TEXTS",
    "TEXT_EMBEDS",
    "UTTERANCE_COLUMNS",
    "UTTERANCE_IDS",
    "column_embedding",
    "describe",
    "dialogue_features",
    "embedding_feature",
    "processor_utterances",
]
