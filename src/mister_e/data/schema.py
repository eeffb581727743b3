"""The dialogue schema every data set shares: its columns, building and checking dialogue datasets (`storage`
saves and loads them).

Every dataset is a `datasets.DatasetDict` with splits ``train``, ``validation`` and ``test`` and one row per
conversation (schema: `dialogue_features`). Builders never copy audio: rows store file paths, so a prepared dataset
stays small and points at the release on disk. Code elsewhere names columns through the constants below.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from ..configuration_mister_e import EXPERT_MODALITIES, MODALITIES, modalities_read
from ..processing_mister_e import BLANK_TEXT, blank_text

logger = logging.getLogger(__name__)

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


def validate_dialogues(dialogues: Dataset | DatasetDict | Iterable[Mapping], num_labels: int | None = None) -> None:
    """Raise a ValueError naming the first dialogue a model could not use.

    Catches empty dialogues, per-utterance lists of different lengths, utterances with no input at all (no text,
    no audio, no precomputed embedding), labels outside ``0..num_labels-1``, embeddings of varying size, and a
    dialogue id or an utterance id used twice (embeddings are matched to utterances by id).
    ``num_labels`` is read from the features of a `Dataset`; give it for a list of conversation dicts.
    """
    if isinstance(dialogues, DatasetDict):
        _check_each_split(validate_dialogues, dialogues)
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
    """Raise a ValueError naming the first utterance whose embedding holds NaN or inf: one such value turns every loss,
    then every weight, into NaN without an error. Checked over whole Arrow columns at once; only a column that fails is
    searched row by row for the utterance to name."""
    if isinstance(dialogues, DatasetDict):
        _check_each_split(check_finite_embeddings, dialogues)
        return
    _check_one_row_per_utterance(dialogues)
    for column in EMBED_COLUMNS:
        if column not in dialogues.column_names:
            continue
        values = pa.chunked_array(dialogues.with_format("arrow")[column]).combine_chunks().flatten().flatten()
        if np.isfinite(values.drop_null().to_numpy(zero_copy_only=False)).all():
            continue
        for position, row in enumerate(dialogues.select_columns([c for c in (DIALOGUE_ID, UTTERANCE_IDS, column)
                                                                 if c in dialogues.column_names])):
            for index, vector in enumerate(row[column]):
                if vector is not None and not np.isfinite(np.asarray(vector, dtype=np.float64)).all():
                    ids = row.get(UTTERANCE_IDS)
                    utterance = ids[index] if ids else index
                    raise ValueError(f"dialogue {row.get(DIALOGUE_ID, f'#{position}')!r}: utterance {utterance!r} has "
                                     f"a non-finite value (NaN or inf) in {column}; re-extract or drop it")


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
        _check_each_split(lambda part: check_experts_can_answer(experts, part, modalities, raw), split)
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


def _check_each_split(check, dialogues: DatasetDict) -> None:
    """`check` on every split, its error naming the split."""
    for split, dataset in dialogues.items():
        try:
            check(dataset)
        except ValueError as error:
            raise ValueError(f"split {split!r}: {error}") from None


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
    across the split, as `validate_dialogues` holds them)."""
    if column not in EMBED_COLUMNS:
        raise ValueError(f"column must be one of {EMBED_COLUMNS}, got {column!r}")
    if isinstance(dataset, DatasetDict):
        return DatasetDict({split: attach_embeddings(part, column, vectors) for split, part in dataset.items()})
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


def require_splits(dialogues, where: str | os.PathLike | None = None,
                   splits: Sequence[str] = ("train", "validation")) -> None:
    """Raise unless `dialogues` has `splits`: training fits on `train` and selects its epoch on `validation`."""
    held = list(dialogues) if isinstance(dialogues, DatasetDict) else []
    missing = [split for split in splits if split not in held]
    if missing:
        raise ValueError(f"{where or 'The data set'} has splits {held or 'none (a single Dataset)'}; training needs "
                         f"{missing} too (`train` to fit, `validation` to select the epoch).")


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
    "attach_embeddings",
    "check_finite_embeddings",
    "experts_never_given",
    "require_splits",
    "dialogue_features",
    "describe",
    "make_dialogue_dataset",
    "validate_dialogues",
]
