"""Dialogues from the widely shared DialogueRNN/COSMIC feature pickles of MELD, IEMOCAP, EmoryNLP and DailyDialog.

They carry transcripts (and for IEMOCAP precomputed vectors) but no audio paths, and loading them runs pickled code,
so they get their own loader rather than a release builder.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict

from .iemocap import IEMOCAP_LABELS
from .building import make_dialogue_dataset
from .meld import MELD_LABELS
from .releases import clean_text, hold_out
from .schema import (
    DIALOGUE_ID,
    LABELS,
    SPEAKERS,
    SPEECH_EMBEDS,
    SPLITS,
    TEXT_EMBEDS,
    TEXTS,
    UTTERANCE_IDS,
)

# COSMIC's meld.pkl numbers dialogues across splits: key = offset + Dialogue_ID (shared/data/README.md).
_COSMIC_MELD_OFFSETS = {"train": 0, "validation": 1039, "test": 1153}
_COSMIC_MELD_FIELDS = (
    "speakers", "emotion_labels", "sentiment_labels", "sentences", "trainIds", "testIds", "validIds"
)  # fmt: skip
# COSMIC's own IEMOCAP, EmoryNLP and DailyDialog pickles (`COSMIC/feature-extraction/<name>/<name>.pkl`), one layout
# (its roberta_init_<name>.py scripts unpack them alike): transcripts, and each its own validation list.
_COSMIC_IEMOCAP_FIELDS = ("speakers", "labels", "sentences", "trainIds", "testIds", "validIds")
# Their label orders: EmoryNLP's from COSMIC's erc-training/dataloader.py, DailyDialog's from its train_dailydialog.py
# (whose class counts, 12885 happy ... 85572 neutral, are DailyDialog's published ones).
EMORYNLP_LABELS = ["joyful", "mad", "peaceful", "neutral", "sad", "powerful", "scared"]
DAILYDIALOG_LABELS = ["happy", "neutral", "anger", "sad", "fear", "surprise", "disgust"]
_SIX_TUPLE_LABELS = {"iemocap": IEMOCAP_LABELS, "emorynlp": EMORYNLP_LABELS, "dailydialog": DAILYDIALOG_LABELS}
COSMIC_SOURCES = ("meld", *_SIX_TUPLE_LABELS)
_DIALOGUERNN_IEMOCAP_FIELDS = (
    "videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence",
    "trainVid", "testVid",
)  # fmt: skip
_IEMOCAP_SESSION = re.compile(r"Ses0[1-5][FM]_")  # IEMOCAP's dialogue ids: session, who led it, script or improvisation
# DialogueRNN's IEMOCAP pickle has no validation list: this many training dialogues are held out (the paper's 12).
_HELD_OUT_DIALOGUES = 12


def build_cosmic_pickle(
    path: str | os.PathLike,
    dataset: str = "meld",
    *,
    trust_pickle: bool = False,
    validation_dialogues: int | None = None,
    seed: int | None = None,
    validation_ids: Sequence[str] | None = None,
) -> DatasetDict:
    """Dialogues from the widely shared DialogueRNN/COSMIC pickles (loaded with ``encoding="latin1"``).

    ``dataset="meld"``: COSMIC's ``meld.pkl``, ``(speakers, emotion_labels, sentiment_labels, sentences, trainIds,
    testIds, validIds)``; dialogue ids become the CSVs' ``dia{Dialogue_ID}``, utterance ids are positions (the
    CSVs' Utterance_IDs have gaps the pickle does not keep). ``dataset="iemocap"``, told apart by their length: COSMIC's
    ``iemocap.pkl``, ``(speakers, labels, sentences, trainIds, testIds, validIds)``, transcripts with its own
    validation dialogues; or DialogueRNN's ``IEMOCAP_features.pkl``, ``(videoIDs, videoSpeakers, videoLabels,
    videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid)``, whose text/audio vectors become
    ``text_embeds``/``speech_embeds`` (visual ones are ignored) and which has no validation list: the training
    dialogues named in ``validation_ids`` are validation, else ``validation_dialogues`` (12) of them are held out with
    ``seed`` (0). ``dataset="emorynlp"`` or ``"dailydialog"``: COSMIC's ``emorynlp.pkl`` or ``dailydialog.pkl``, in
    ``iemocap.pkl``'s layout, with `EMORYNLP_LABELS` or `DAILYDIALOG_LABELS` (COSMIC's label orders); as the layout
    cannot tell these three apart, ``dataset`` names the file, and a 7-class file named IEMOCAP, or one of IEMOCAP's
    session ids named otherwise, is refused. The validation options are refused for the pickles with their own list.
    Speakers are metadata only.

    Unpickling runs whatever code the file contains, hence the explicit ``trust_pickle=True``.
    """
    path = Path(path)
    if dataset not in COSMIC_SOURCES:
        raise ValueError(f"dataset must be one of {', '.join(COSMIC_SOURCES)}, got {dataset!r}")
    if not trust_pickle:
        raise ValueError(
            f"{path} is a pickle, and loading a pickle runs whatever code it contains. If you trust where it "
            "came from, pass trust_pickle=True (CLI: --trust-pickle)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, "rb") as file:
        try:
            data = pickle.load(file, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as error:
            raise ValueError(f"{path} is not a readable pickle ({type(error).__name__}: {error}).") from error
    ids = {"train": "trainIds", "validation": "validIds", "test": "testIds"}
    length = len(data) if isinstance(data, (tuple, list)) else None
    if dataset == "meld" and length == len(_COSMIC_IEMOCAP_FIELDS):
        raise ValueError(f"{path} is a 6-tuple, the layout of COSMIC's iemocap.pkl, emorynlp.pkl and dailydialog.pkl, "
                         "not of its meld.pkl: pass --source iemocap, emorynlp or dailydialog.")
    if dataset == "meld" and length == len(_DIALOGUERNN_IEMOCAP_FIELDS):
        raise ValueError(f"{path} is a 9-tuple, the layout of an IEMOCAP pickle (DialogueRNN's IEMOCAP_features.pkl), "
                         "not COSMIC's MELD one: pass --source iemocap (dataset='iemocap').")
    dialoguernn = dataset == "iemocap" and length != len(_COSMIC_IEMOCAP_FIELDS)
    if not dialoguernn:
        _refuse_validation_options(
            {"validation_ids": validation_ids, "validation_dialogues": validation_dialogues, "seed": seed}, path
        )
    if dataset == "meld":
        fields = _unpack(data, _COSMIC_MELD_FIELDS, path)
        splits = {split: _cosmic_meld_dialogues(fields, ids[split], split, path) for split in SPLITS}
        labels = MELD_LABELS
    elif not dialoguernn:
        fields = _unpack(data, _COSMIC_IEMOCAP_FIELDS, path)
        splits = {split: [_cosmic_dialogue(fields, key, path) for key in _split_ids(fields, ids[split], path)]
                  for split in SPLITS}
        labels = _SIX_TUPLE_LABELS[dataset]
        _check_six_tuple_source(splits, dataset, path)
    else:
        fields = _unpack(data, _DIALOGUERNN_IEMOCAP_FIELDS, path, also=_COSMIC_IEMOCAP_FIELDS)
        train = _split_ids(fields, "trainVid", path)
        if validation_ids is not None:
            unknown = sorted(set(validation_ids) - set(train))
            if unknown:
                raise ValueError(f"{path}: validation dialogue(s) {unknown} are not training dialogues (trainVid).")
            held_out = set(validation_ids)
        else:
            count = _HELD_OUT_DIALOGUES if validation_dialogues is None else validation_dialogues
            held_out = hold_out(train, count, 0 if seed is None else seed)
        groups = {
            "train": [key for key in train if key not in held_out],
            "validation": [key for key in train if key in held_out],
            "test": _split_ids(fields, "testVid", path),
        }
        splits = {
            split: [_dialoguernn_iemocap_dialogue(fields, key, path) for key in keys] for split, keys in groups.items()
        }
        labels = IEMOCAP_LABELS
    try:
        return DatasetDict({split: make_dialogue_dataset(group, labels) for split, group in splits.items()})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _unpack(data: Any, names: Sequence[str], path: Path, also: Sequence[str] = ()) -> dict[str, Any]:
    """Name the fields of a feature-release tuple, or say which layout (or ``also`` one) was expected."""
    if not isinstance(data, (tuple, list)) or len(data) != len(names):
        found = f"{len(data)} items" if isinstance(data, (tuple, list)) else f"a {type(data).__name__}"
        layouts = " or ".join(f"a {len(n)}-tuple ({', '.join(n)})" for n in (names, also) if n)
        raise ValueError(f"{path}: expected {layouts}, found {found}")
    return dict(zip(names, data))


def _split_ids(fields: Mapping[str, Any], name: str, path: Path) -> list:
    """A split's dialogue ids, sorted. Another release's tuple of the same length puts a per-dialogue dict here
    (GCNet's ``IEMOCAP_features_raw_6way.pkl``: its sentences), whose keys would name every dialogue."""
    ids = fields[name]
    if isinstance(ids, (Mapping, str, bytes)) or not isinstance(ids, (Sequence, set, frozenset, np.ndarray)):
        raise ValueError(f"{path}: {name} is a {type(ids).__name__}, expected a list or set of dialogue ids "
                         "(another release's layout of the same length?)")
    return sorted(ids)


def _refuse_validation_options(given: Mapping[str, Any], path: Path) -> None:
    """COSMIC's pickles carry their own validation list (validIds): a validation option would be silently unused."""
    used = [f"{name} (CLI: --{name.replace('_', '-')})" for name, value in given.items() if value is not None]
    if used:
        raise ValueError(f"{path} has its own validation list (validIds); {', '.join(used)} only apply to "
                         "DialogueRNN's IEMOCAP_features.pkl.")


def _lookup(fields: Mapping[str, Any], name: str, key: Any, path: Path) -> list:
    if not isinstance(fields[name], Mapping):
        raise ValueError(f"{path}: {name} is a {type(fields[name]).__name__}, expected a dict keyed by dialogue id")
    if key not in fields[name]:
        raise ValueError(f"{path}: dialogue {key!r} is listed in the splits but missing from {name}")
    return list(fields[name][key])


def _speaker(value: Any) -> str:
    """Speaker metadata: the index of a one-hot vector (COSMIC), or the value itself (e.g. 'M'/'F')."""
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
        return str(int(np.argmax(value)))
    return str(value)


def _cosmic_meld_dialogues(fields: Mapping[str, Any], ids: str, split: str, path: Path) -> list[dict]:
    conversations = []
    for key in _split_ids(fields, ids, path):
        if not isinstance(key, (int, np.integer)):
            raise ValueError(f"{path}: {ids} holds key {key!r}, expected COSMIC's integer MELD dialogue numbers")
        dialogue = key - _COSMIC_MELD_OFFSETS[split]
        if dialogue < 0:
            raise ValueError(f"{path}: {ids} holds key {key}, below the {split} offset {_COSMIC_MELD_OFFSETS[split]}")
        conversations.append({
            DIALOGUE_ID: f"dia{dialogue}",
            TEXTS: [clean_text(text) for text in _lookup(fields, "sentences", key, path)],
            LABELS: _lookup(fields, "emotion_labels", key, path),
            SPEAKERS: [_speaker(speaker) for speaker in _lookup(fields, "speakers", key, path)],
        })  # fmt: skip
    return conversations


def _check_six_tuple_source(splits: Mapping[str, list[dict]], dataset: str, path: Path) -> None:
    """COSMIC's iemocap.pkl, emorynlp.pkl and dailydialog.pkl share a layout, so ``dataset`` names which one it is;
    what can tell them apart refuses a wrong name: IEMOCAP's 6 classes and its session ids (``Ses01F_impro01``)."""
    dialogues = [dialogue for group in splits.values() for dialogue in group]
    sessions = [dialogue[DIALOGUE_ID] for dialogue in dialogues if _IEMOCAP_SESSION.match(dialogue[DIALOGUE_ID])]
    if dataset != "iemocap" and sessions:
        raise ValueError(f"{path} names IEMOCAP sessions as dialogues ({sessions[0]!r}): it is COSMIC's iemocap.pkl, "
                         f"not its {dataset}.pkl; pass --source iemocap.")
    beyond = [label for dialogue in dialogues for label in dialogue[LABELS]
              if isinstance(label, (int, np.integer)) and label >= len(IEMOCAP_LABELS)]
    if dataset == "iemocap" and not sessions and beyond and max(beyond) < len(EMORYNLP_LABELS):  # 7, as DailyDialog
        raise ValueError(f"{path} holds label {max(beyond)}, beyond IEMOCAP's {len(IEMOCAP_LABELS)} classes, and no "
                         "IEMOCAP session ids: a 6-tuple with 7 classes is COSMIC's emorynlp.pkl or dailydialog.pkl; "
                         "pass --source emorynlp or dailydialog.")


def _cosmic_dialogue(fields: Mapping[str, Any], key: str, path: Path) -> dict:
    return {
        DIALOGUE_ID: str(key),
        TEXTS: [clean_text(text) for text in _lookup(fields, "sentences", key, path)],
        LABELS: _lookup(fields, "labels", key, path),
        SPEAKERS: [_speaker(speaker) for speaker in _lookup(fields, "speakers", key, path)],
    }


def _dialoguernn_iemocap_dialogue(fields: Mapping[str, Any], key: str, path: Path) -> dict:
    return {
        DIALOGUE_ID: str(key),
        UTTERANCE_IDS: [str(utterance) for utterance in _lookup(fields, "videoIDs", key, path)],
        TEXTS: [clean_text(text) for text in _lookup(fields, "videoSentence", key, path)],
        LABELS: _lookup(fields, "videoLabels", key, path),
        SPEAKERS: [_speaker(speaker) for speaker in _lookup(fields, "videoSpeakers", key, path)],
        TEXT_EMBEDS: _lookup(fields, "videoText", key, path),
        SPEECH_EMBEDS: _lookup(fields, "videoAudio", key, path),
    }


__all__ = ["COSMIC_SOURCES", "DAILYDIALOG_LABELS", "EMORYNLP_LABELS", "build_cosmic_pickle"]
