"""Dialogue datasets made from plain values: a validated `Dataset` from conversation dicts (`make_dialogue_dataset`,
which the release builders use too), and a column of precomputed per-utterance vectors added to one
(`attach_embeddings`)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

from .checks import check_finite_embeddings, each_split, validate_dialogues
from .schema import (
    AUDIO, DIALOGUE_ID, EMBED_COLUMNS, LABELS, SPEAKERS, SPEECH_EMBEDS, TEXT_EMBEDS, TEXTS, UTTERANCE_IDS,
    dialogue_features, embedding_feature,
)


def make_dialogue_dataset(conversations: Sequence[Mapping], label_names: Sequence[str]) -> Dataset:
    """Build a validated dialogue `Dataset` from conversation dicts.

    Each dict needs ``dialogue_id`` and ``labels`` (names or indices) and, per utterance, a text or an audio path
    (``texts``/``audio``, None where absent). ``utterance_ids`` default to ``<dialogue_id>_<position>``; missing
    ``texts``, ``audio`` and ``speakers`` to None. ``speech_embeds``/``text_embeds`` must be in all or none.
    """
    label_names = list(label_names)
    label_index = {name: index for index, name in enumerate(label_names)}
    embeds = [column for column in EMBED_COLUMNS if any(column in conversation for conversation in conversations)]
    rows = []
    for position, conversation in enumerate(conversations):
        if DIALOGUE_ID not in conversation or LABELS not in conversation:
            raise ValueError(f"conversation #{position} needs 'dialogue_id' and 'labels'")
        name = str(conversation[DIALOGUE_ID])
        for column in (LABELS, UTTERANCE_IDS, TEXTS, AUDIO, SPEAKERS, *embeds):
            if isinstance(conversation.get(column), str):  # read as a list, a string is one utterance per character
                raise ValueError(f"dialogue {name!r}: {column} is one string; give a list, one entry per utterance")
        labels = []
        for label in conversation[LABELS]:
            if isinstance(label, str) and label not in label_index:
                raise ValueError(f"dialogue {name!r}: unknown label {label!r} (expected one of {label_names})")
            number = isinstance(label, (int, np.integer))
            named = label_index.get(label, label_index.get(str(label))) if number else None
            if named is not None and named != label:  # class names that are numbers: 1 would be read as names[1]
                raise ValueError(f"dialogue {name!r}: label {label!r} is read as an index into label_names, yet it is "
                                 f"also the name of class {named}, {label_names[named]!r}: give the labels as names "
                                 "(strings) to say which")
            labels.append(label_index[label] if isinstance(label, str) else label)
        size = len(labels)
        row = {
            DIALOGUE_ID: name,
            UTTERANCE_IDS: [f"{name}_{index}" for index in range(size)],
            TEXTS: [None] * size,
            AUDIO: [None] * size,
            LABELS: labels,
            SPEAKERS: [None] * size,
        }
        for column in (UTTERANCE_IDS, TEXTS, AUDIO, SPEAKERS):
            if conversation.get(column) is not None:
                row[column] = list(conversation[column])
        for column in embeds:
            if conversation.get(column) is None:
                raise ValueError(f"dialogue {name!r} lacks {column}, which other dialogues have")
            row[column] = [
                None if vector is None else np.asarray(vector, dtype=np.float32) for vector in conversation[column]
            ]
        rows.append(row)
    validate_dialogues(rows, len(label_names))
    features = dialogue_features(label_names, speech_embeds=SPEECH_EMBEDS in embeds, text_embeds=TEXT_EMBEDS in embeds)
    dataset = Dataset.from_dict({column: [row[column] for row in rows] for column in features}, features=features)
    check_finite_embeddings(dataset)
    return dataset


def attach_embeddings(
    dataset: Dataset | DatasetDict, column: str, vectors: Mapping[str, Any]
) -> Dataset | DatasetDict:
    """Add (or replace) a column of precomputed per-utterance vectors, looked up by utterance id (so ids must be unique
    across the split, as `validate_dialogues` holds them). Of a `DatasetDict`, each split: an error names it."""
    if column not in EMBED_COLUMNS:
        raise ValueError(f"column must be one of {EMBED_COLUMNS}, got {column!r}")
    if isinstance(dataset, DatasetDict):
        return DatasetDict(each_split(lambda part: attach_embeddings(part, column, vectors), dataset))
    utterances = list(dataset[UTTERANCE_IDS])
    counts = Counter(itertools.chain(*utterances))
    repeated = next((utterance for utterance, count in counts.items() if count > 1), None)
    if repeated is not None:  # each of them would get the one vector of that id
        raise ValueError(f"utterance id {repeated!r} appears twice: {column} vectors are matched to utterances by id; "
                         "give every utterance of the split its own id")
    missing = [utterance for ids in utterances for utterance in ids if utterance not in vectors]
    if missing:
        raise ValueError(f"no {column} vector for {len(missing)} utterances (first: {', '.join(missing[:5])})")
    values = [[np.asarray(vectors[utterance], dtype=np.float32) for utterance in ids] for ids in utterances]
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, values, feature=embedding_feature())



__all__ = ["attach_embeddings", "make_dialogue_dataset"]
