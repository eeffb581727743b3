"""Checks of one split of a dialogue dataset, each raising one ValueError that names the dialogue and utterance (and,
given a `DatasetDict`, the split) at fault: what a model could not use (`validate_dialogues`), embeddings that would
turn training into NaN (`check_finite_embeddings`), and utterances that no enabled expert can answer
(`check_experts_can_answer`). How the splits relate to each other is checked in `splits`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from ..configuration_mister_e import EXPERT_MODALITIES, MODALITIES, modalities_read
from ..processing_mister_e import BLANK_TEXT
from .schema import (
    AUDIO, DIALOGUE_ID, EMBED_COLUMN, EMBED_COLUMNS, LABELS, RAW_COLUMN, TEXTS, UTTERANCE_COLUMNS, UTTERANCE_IDS,
)


def validate_dialogues(dialogues: Dataset | DatasetDict | Iterable[Mapping], num_labels: int | None = None) -> None:
    """Raise a ValueError naming the first dialogue a model could not use.

    Catches empty dialogues, per-utterance lists of different lengths, utterances with no input at all (no text,
    no audio, no precomputed embedding), labels outside ``0..num_labels-1``, embeddings of varying size, and a
    dialogue id or an utterance id used twice (embeddings are matched to utterances by id).
    ``num_labels`` is read from the features of a `Dataset`; give it for a list of conversation dicts.
    """
    if isinstance(dialogues, DatasetDict):
        each_split(validate_dialogues, dialogues)
        return
    if isinstance(dialogues, Dataset):
        num_labels = dialogues.features[LABELS].feature.num_classes
    elif num_labels is None:
        raise TypeError("num_labels is required when validating a list of conversations")
    sizes: dict[str, int] = {}
    seen: set[str] = set()
    owners: dict[str, str] = {}  # utterance id -> its dialogue: embeddings are matched by utterance id
    for position, conversation in enumerate(dialogues):
        name = conversation.get(DIALOGUE_ID, f"#{position}")
        labels = conversation.get(LABELS)
        if labels is None or len(labels) == 0:
            raise ValueError(f"dialogue {name!r} is empty")
        if name in seen:
            raise ValueError(f"dialogue {name!r} appears twice")
        seen.add(name)
        for utterance in conversation.get(UTTERANCE_IDS) or ():
            if utterance in owners:
                raise ValueError(f"utterance id {utterance!r} appears twice (dialogues {owners[utterance]!r} and "
                                 f"{name!r})")
            owners[utterance] = name
        for column in UTTERANCE_COLUMNS:
            values = conversation.get(column)
            if values is not None and len(values) != len(labels):
                raise _misaligned(name, column, len(values), len(labels))
        for column in EMBED_COLUMNS:
            for vector in conversation.get(column) or ():
                if vector is None:
                    continue
                if sizes.setdefault(column, len(vector)) != len(vector):
                    raise ValueError(f"dialogue {name!r}: {column} mixes sizes {sizes[column]} and {len(vector)}")
        inputs = [conversation.get(column) for column in (TEXTS, AUDIO, *EMBED_COLUMNS)]
        utterance_ids = conversation.get(UTTERANCE_IDS) or range(len(labels))
        for index, (utterance, label) in enumerate(zip(utterance_ids, labels)):
            if not any(values is not None and values[index] is not None for values in inputs):
                raise ValueError(f"dialogue {name!r}: utterance {utterance!r} has neither audio nor text")
            if not isinstance(label, (int, np.integer)) or not 0 <= label < num_labels:
                raise ValueError(
                    f"dialogue {name!r}: utterance {utterance!r} has label {label!r}, outside 0..{num_labels - 1}"
                )


def check_finite_embeddings(dialogues: Dataset | DatasetDict) -> None:
    """Raise a ValueError naming the first utterance whose embedding holds NaN or inf, a missing value inside a vector
    (a NaN that pandas or Arrow stored as null, read back as NaN), or a value beyond float32's range (finite in a
    float64 column, inf once the model reads it): one such value turns every loss, then every weight, into NaN
    without an error. Checked, and the utterance found, over whole Arrow columns at once."""
    if isinstance(dialogues, DatasetDict):
        each_split(check_finite_embeddings, dialogues)
        return
    _check_one_row_per_utterance(dialogues)
    for column in EMBED_COLUMNS:
        if column not in dialogues.column_names:
            continue
        table = pa.chunked_array(dialogues.with_format("arrow")[column]).combine_chunks()
        vectors = table.flatten()  # one per utterance (null: the utterance lacks this modality)
        values = vectors.flatten()
        readable = np.abs(values.to_numpy(zero_copy_only=False)) <= np.finfo(np.float32).max  # null: NaN, False
        if readable.all():
            continue
        first = int(np.argmin(readable))
        utterance = pc.list_parent_indices(vectors)[first].as_py()
        parents = pc.list_parent_indices(table).to_numpy(zero_copy_only=False)
        row = int(parents[utterance])
        position = utterance - int(np.searchsorted(parents, row))
        named = dialogues.select_columns([c for c in (DIALOGUE_ID, UTTERANCE_IDS) if c in dialogues.column_names])[row]
        ids = named.get(UTTERANCE_IDS)
        value = values[first].as_py()
        what = ("a missing value (null: a NaN stored as null?)" if value is None else
                "a non-finite value (NaN or inf)" if not np.isfinite(value) else
                f"a value ({value:.3g}) too large for float32 (inf as the model reads it)")
        count = int((~readable).sum())
        raise ValueError(f"dialogue {named.get(DIALOGUE_ID, f'#{row}')!r}: utterance "
                         f"{ids[position] if ids else position!r} has {what} in {column}; re-extract or drop it"
                         f"{f' ({count} such values in the column)' if count > 1 else ''}")


def _check_one_row_per_utterance(dialogues: Dataset) -> None:
    """Every per-utterance column of a dialogue is as long as its labels; one that is not would shift every utterance
    after the gap onto another's label (or fail deep in numpy, naming nothing)."""
    table = dialogues.with_format("arrow")[:]
    labels = pc.list_value_length(table[LABELS])
    for column in UTTERANCE_COLUMNS:
        if column == LABELS or column not in table.column_names:
            continue
        lengths = pc.list_value_length(table[column])
        wrong = pc.and_(pc.is_valid(lengths), pc.not_equal(lengths, labels))
        if pc.any(wrong).as_py():
            row = pc.index(wrong, True).as_py()
            name = table[DIALOGUE_ID][row].as_py() if DIALOGUE_ID in table.column_names else f"#{row}"
            raise _misaligned(name, column, lengths[row].as_py(), labels[row].as_py())


def _misaligned(dialogue: str, column: str, entries: int, labels: int) -> ValueError:
    """The one message for a per-utterance column whose length differs from the labels', whichever check found it
    (`validate_dialogues` on conversation dicts, `_check_one_row_per_utterance` on a whole Arrow table at once)."""
    return ValueError(f"dialogue {dialogue!r}: {column} has {entries} entries for {labels} labels; every "
                      "per-utterance column needs one entry per utterance.")


def modalities_given(split: Dataset, modalities: Sequence[str] = MODALITIES, raw: bool = False) -> list[str]:
    """The modalities a model is given: fed (`modalities`), and in the split as embedding columns (or `raw`: a
    processor reads audio and text)."""
    return [modality for modality in modalities if raw or EMBED_COLUMN[modality] in split.column_names]


def experts_never_given(experts: Sequence[str], given: Sequence[str]) -> list[str]:
    """The experts that read a modality not among `given` (`modalities_given`)."""
    return [expert for expert in experts if not set(EXPERT_MODALITIES[expert]) <= set(given)]


def check_experts_can_answer(experts: Sequence[str], split: Dataset | DatasetDict,
                             modalities: Sequence[str] = MODALITIES, raw: bool = False) -> None:
    """Raise a ValueError when no enabled expert is given every modality it reads, in the whole split or at one of its
    utterances: the gate would have no expert to weigh, so a model would train on nothing, or predict that utterance
    as an arbitrary class, without an error. A modality is given when it is fed (`modalities`) and the split has its
    embedding column (or `raw`: a processor reads audio and text), and at an utterance when its entry is there."""
    if isinstance(split, DatasetDict):
        each_split(lambda part: check_experts_can_answer(experts, part, modalities, raw), split)
        return
    given = modalities_given(split, modalities, raw)
    if len(experts_never_given(experts, given)) == len(experts):
        raise ValueError(f"No enabled expert can answer: the experts read {modalities_read(experts)}, but the split "
                         f"gives {given or 'no modality'} (`modalities`, and its embedding columns).")
    # Then utterance by utterance, as the collator will feed them: one that no expert can read would be predicted as
    # an arbitrary class and counted in every validation score that selects the model.
    embedded = [modality for modality in modalities if EMBED_COLUMN[modality] in split.column_names]
    columns = {modality: (EMBED_COLUMN if embedded else RAW_COLUMN)[modality] for modality in embedded or modalities}
    table = split.select_columns([c for c in {*columns.values(), LABELS, DIALOGUE_ID, UTTERANCE_IDS}
                                  if c in split.column_names]).with_format("arrow")[:]
    counts = pc.list_value_length(table[LABELS]).to_numpy(zero_copy_only=False)
    present = np.zeros((int(counts.sum()), len(MODALITIES)), dtype=bool)
    for modality, column in columns.items():
        if column in table.column_names:
            present[:, MODALITIES.index(modality)] = _present_per_utterance(table[column], counts)
    answerable = np.zeros(len(present), dtype=bool)
    for expert in experts:
        answerable |= present[:, [MODALITIES.index(modality) for modality in EXPERT_MODALITIES[expert]]].all(-1)
    if not answerable.all():
        first = int(np.flatnonzero(~answerable)[0])
        row = int(np.searchsorted(np.cumsum(counts), first, side="right"))
        position = first - int(counts[:row].sum())
        name = table[DIALOGUE_ID][row].as_py() if DIALOGUE_ID in table.column_names else f"#{row}"
        ids = table[UTTERANCE_IDS][row].as_py() if UTTERANCE_IDS in table.column_names else None
        utterance = ids[position] if ids else position
        raise ValueError(f"dialogue {name!r}: utterance {utterance!r} lacks every "
                         f"modality an enabled expert reads ({int((~answerable).sum())} such utterances; the experts "
                         f"read {modalities_read(experts)}, fed {list(columns)}): its prediction would be arbitrary; "
                         "drop them or feed another modality.")


def _present_per_utterance(column: pa.ChunkedArray, counts: np.ndarray) -> np.ndarray:
    """Whether each utterance has this column's input (`is_present`, over whole Arrow columns): a missing row (`None`
    for the whole dialogue) marks all its utterances absent."""
    values = pc.list_flatten(column)  # one entry per utterance of the dialogues that have the column
    valid = pc.is_valid(values)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):  # a blank text says nothing
        valid = pc.and_(valid, pc.invert(pc.match_substring_regex(values, BLANK_TEXT)).fill_null(False))
    valid = valid.to_numpy(zero_copy_only=False)
    rows_valid = column.is_valid().to_numpy(zero_copy_only=False)
    pieces, start = [], 0
    for count, row_valid in zip(counts, rows_valid):
        pieces.append(valid[start:start + count] if row_valid else np.zeros(count, dtype=bool))
        start += count if row_valid else 0
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=bool)


def each_split(function: Callable[[Dataset], Any], dialogues: DatasetDict) -> dict[str, Any]:
    """`function` on every split, its ValueError naming the split; what it returns, by split."""
    results = {}
    for split, dataset in dialogues.items():
        try:
            results[split] = function(dataset)
        except ValueError as error:
            raise ValueError(f"split {split!r}: {error}") from None
    return results


__all__ = [
    "check_experts_can_answer",
    "check_finite_embeddings",
    "each_split",
    "experts_never_given",
    "modalities_given",
    "validate_dialogues",
]
