"""How the splits of a dialogue dataset relate: the splits training needs, labelled; one label set in one order, one
width per embedding column, and no dialogue of validation or test repeated from training; and, for data saved by hand,
ids that name one dialogue and one utterance each. Each split alone is checked in `checks`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict

from .schema import AUDIO, DIALOGUE_ID, EMBED_COLUMNS, LABELS, TEXTS, UTTERANCE_IDS, is_present

logger = logging.getLogger(__name__)


def check_across_splits(dialogues: Dataset | DatasetDict, embeddings: bool = True) -> None:
    """What every command that reads a data set checks of how its splits relate, before any work: one label set and
    (with `embeddings`) one width per column (`check_splits_agree`), ids that name one dialogue and one utterance
    each (`check_unique_ids`), and, for several splits, a warning of dialogues they share
    (`warn_of_shared_dialogues`)."""
    check_splits_agree(dialogues, embeddings)
    check_unique_ids(dialogues)
    if isinstance(dialogues, DatasetDict):
        warn_of_shared_dialogues(dialogues)


def check_splits_agree(dialogues: Dataset | DatasetDict, embeddings: bool = True) -> None:
    """Raise a ValueError naming the first split, and dialogue, that disagrees with the training split (or, for one
    `Dataset`, with its own first vectors): other class names, or the same in another order, under which every
    validation score that selects the model, and every test score, would count one class as another; or (with
    `embeddings`) an embedding column of another width, which the model refused only once a batch held it, after
    epochs of training, naming neither split nor dialogue."""
    parts = {"train": dialogues} if isinstance(dialogues, Dataset) else dialogues
    order = sorted(parts, key=lambda split: split != "train")  # train first: the others are held to it
    names, widths = parts[order[0]].features.get(LABELS), {}
    for split in order:
        part = parts[split]
        where = f"split {split!r}: " if isinstance(dialogues, DatasetDict) else ""
        if part.features.get(LABELS) != names:
            raise ValueError(f"{where}its labels are {_label_names(part)}, the {order[0]} split's "
                             f"{_label_names(parts[order[0]])}: one class id would mean two classes; build every "
                             "split with the same label_names, in one order.")
        for column in EMBED_COLUMNS if embeddings else ():
            if column not in part.column_names:
                continue
            table = pa.chunked_array(part.with_format("arrow")[column]).combine_chunks()
            lengths = pc.list_value_length(table.flatten())  # one per utterance; null: no vector
            present = np.flatnonzero(lengths.is_valid().to_numpy(zero_copy_only=False))
            if not len(present):
                continue
            sizes = lengths.fill_null(0).to_numpy(zero_copy_only=False)
            width, origin = widths.setdefault(column, (int(sizes[present[0]]), split))
            wrong = present[sizes[present] != width]
            if len(wrong):
                row = pc.list_parent_indices(table)[int(wrong[0])].as_py()
                name = part[row][DIALOGUE_ID] if DIALOGUE_ID in part.column_names else f"#{row}"
                elsewhere = f" (split {origin!r} has {width}-d ones)" if origin != split else ""
                raise ValueError(f"{where}dialogue {name!r}: {column} mixes sizes {width} and {int(sizes[wrong[0]])}"
                                 f"{elsewhere}; extract every split with one encoder.")


def require_splits(dialogues, where: str | os.PathLike | None = None,
                   splits: Sequence[str] = ("train", "validation")) -> None:
    """Raise unless `dialogues` has `splits`: training fits on `train` and selects its epoch on `validation`."""
    held = list(dialogues) if isinstance(dialogues, DatasetDict) else []
    missing = [split for split in splits if split not in held]
    if missing:
        raise ValueError(f"{where or 'The data set'} has splits {held or 'none (a single Dataset)'}; training needs "
                         f"{missing} too (`train` to fit, `validation` to select the epoch).")


def require_labelled(dialogues: DatasetDict, splits: tuple[str, ...] = ("train", "validation")) -> None:
    """Raise unless `splits` each hold a labelled utterance (a class id, not -1 or -100): training fits on `train` and
    selects on `validation`, and an unlabelled one failed after the first epoch, naming no split."""
    for split in splits:
        if not pc.any(pc.greater_equal(labels_of(dialogues[split]), 0)).as_py():
            raise ValueError(f"split {split!r} has no labelled utterance (every label is missing, -1 or -100): "
                             f"training {'fits on' if split == 'train' else 'selects its epoch on'} its labels.")


def labels_of(part: Dataset) -> pa.Array:
    """Every utterance's label in a split, dialogue after dialogue, as one flat Arrow array (no Python row loop)."""
    return pc.list_flatten(pa.chunked_array(part.with_format("arrow")[LABELS]))


def warn_of_shared_dialogues(dialogues: DatasetDict) -> None:
    """Warn when a validation or test dialogue repeats a training one (the same utterance ids, texts, audio and
    labels): its scores would measure memory, not generalisation, and nothing else would tell. Dialogues without a
    text or an audio path are not compared: ids alone repeat across the splits of some releases (MELD's)."""
    columns = [column for column in (UTTERANCE_IDS, TEXTS, AUDIO, LABELS) if column in dialogues["train"].column_names]

    def contents(part: Dataset) -> list[tuple | None]:
        rows = part.select_columns([c for c in (DIALOGUE_ID, *columns) if c in part.column_names])
        return [tuple(tuple(row.get(column) or ()) for column in columns)
                if any(is_present(value) for column in (TEXTS, AUDIO) for value in row.get(column) or ()) else None
                for row in rows]

    seen = set(contents(dialogues["train"])) - {None}
    for split, part in dialogues.items():
        if split == "train":
            continue
        shared = [index for index, key in enumerate(contents(part)) if key in seen]
        if shared:
            first = part[shared[0]].get(DIALOGUE_ID, f"#{shared[0]}")
            logger.warning(f"{len(shared)} of the {len(part)} {split} dialogues repeat a training dialogue (same "
                           f"utterances, texts, audio and labels; first: {first!r}): their scores would measure "
                           "memory, not generalisation; keep each dialogue in one split.")


def check_unique_ids(dialogues: Dataset | DatasetDict) -> None:
    """Raise a ValueError naming the split and the first id used twice in it: a dialogue id, or an utterance id within
    one dialogue. Training and scoring go by position, but `predictions.csv`, and every message that names an
    utterance, know it by these two ids: two utterances under the same ones could not be told apart there, and a
    dialogue count by id would come out short. The package's builders ensure this (`validate_dialogues`); a data set
    built and saved by hand is checked here, over whole Arrow columns (MELD's test split in milliseconds)."""
    parts = {None: dialogues} if isinstance(dialogues, Dataset) else dialogues
    for split, part in parts.items():
        where = f"split {split!r}: " if split is not None else ""
        columns = [column for column in (DIALOGUE_ID, UTTERANCE_IDS) if column in part.column_names]
        table = part.select_columns(columns).with_format("arrow")[:]
        names = table[DIALOGUE_ID].to_pandas() if DIALOGUE_ID in columns else None
        if names is not None and (repeat := _first_repeat(names.to_frame())):
            first, count = repeat
            raise ValueError(f"{where}dialogue {names[first]!r} appears twice{_others(count)}: "
                             "predictions.csv and messages name a dialogue by its id; give each its own.")
        if UTTERANCE_IDS not in columns:
            continue
        ids = pa.chunked_array(table[UTTERANCE_IDS]).combine_chunks()
        frame = pd.DataFrame({"dialogue": pc.list_parent_indices(ids).to_numpy(zero_copy_only=False),
                              "utterance": ids.flatten().to_pandas()})
        if repeat := _first_repeat(frame):
            first, count = repeat
            row, utterance = (frame.iat[first, column] for column in (0, 1))
            dialogue = names[row] if names is not None else f"#{row}"
            raise ValueError(f"{where}dialogue {dialogue!r}: utterance id {utterance!r} appears twice"
                             f"{_others(count)}: predictions.csv names an utterance by its dialogue's "
                             "id and its own; give each utterance of a dialogue its own id.")


def _first_repeat(frame: pd.DataFrame) -> tuple[int, int] | None:
    """`(position of the first row whose values an earlier row has, how many rows repeat one)`; rows with a missing
    value are not compared. `None` when no row repeats."""
    repeated = frame.duplicated().to_numpy() & frame.notna().all(axis=1).to_numpy()
    return (int(np.argmax(repeated)), int(repeated.sum())) if repeated.any() else None


def _others(count: int) -> str:
    return f" ({count} repeats in the split)" if count > 1 else ""


def _label_names(dataset: Dataset) -> list | str:
    feature = dataset.features.get(LABELS)
    return getattr(getattr(feature, "feature", None), "names", None) or str(feature)


__all__ = [
    "check_across_splits", "check_splits_agree", "check_unique_ids", "labels_of", "require_labelled", "require_splits",
    "warn_of_shared_dialogues",
]
