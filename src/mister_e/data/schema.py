"""Dialogue datasets for emotion recognition in conversations, and builders from the official releases.

Every dataset is a `datasets.DatasetDict` with splits ``train``, ``validation`` and ``test`` and one row per
conversation (schema: `dialogue_features`). The builders read the release layouts as distributed and never copy
audio: rows store file paths, so a prepared dataset stays small and points at the release on disk.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import random
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
EMBED_COLUMNS = ("speech_embeds", "text_embeds")
UTTERANCE_COLUMNS = ("utterance_ids", "texts", "audio", "labels", "speakers", *EMBED_COLUMNS)

# Order of the common IEMOCAP feature releases (DialogueRNN/COSMIC), so label indices match theirs.
IEMOCAP_LABELS = ["hap", "sad", "neu", "ang", "exc", "fru"]
# Annotated in IEMOCAP but outside the 6-class benchmark: such utterances are left out of the dialogue.
IEMOCAP_DROPPED_LABELS = frozenset({"xxx", "sur", "fea", "dis", "oth"})
MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
MOSI_LABELS = ["negative", "positive"]
MOSI_LABEL_RULES = ("nonnegative", "nonzero")
# Class order of the EmoDB builder; each file name's 6th character is the German initial of its emotion.
EMODB_LABELS = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
# Every EmoDB speaker reads these ten sentences, by the text code of the file name (so texts carry no emotion).
EMODB_TRANSCRIPTS = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
# The scores layout of CMU-MOSI (one row per segment), and the CMU-SDK standard folds transcribed to JSON.
MOSI_CSV = "mosi.csv"
MOSI_FOLDS = "mosi_standard_folds.json"

_MELD_CSVS = {"train": "train_sent_emo.csv", "validation": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
# Official clip folders of MELD.Raw; pre-extracted WAVs may also sit in folders named after the split.
_MELD_CLIP_FOLDERS = {
    "train": "train_splits", "validation": "dev_splits_complete", "test": "output_repeated_splits_test"
}  # fmt: skip
_MELD_WAV_FOLDERS = {"train": ("train",), "validation": ("dev", "validation"), "test": ("test",)}
# COSMIC's meld.pkl numbers dialogues across splits: key = offset + Dialogue_ID (shared/data/README.md).
_COSMIC_MELD_OFFSETS = {"train": 0, "validation": 1039, "test": 1153}
_COSMIC_MELD_FIELDS = (
    "speakers", "emotion_labels", "sentiment_labels", "sentences", "trainIds", "testIds", "validIds"
)  # fmt: skip
_DIALOGUERNN_IEMOCAP_FIELDS = (
    "videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual", "videoSentence",
    "trainVid", "testVid",
)  # fmt: skip
_EMODB_EMOTIONS = {
    "W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "N": "neutral", "T": "sadness"
}  # fmt: skip
_EMODB_FILE = re.compile(r"(\d{2})([a-z]\d{2})([A-Z])([a-z])")  # SSTTTEv: speaker, text code, emotion, version
_MOSI_RELEASE_COLUMNS = ("segment_id", "text", "video_index", "label")
_MOSI_SCORE_COLUMNS = ("segment_id", "video_id", "clip", "text", "sentiment")
# Utterance record key -> dataset column; the tabular builders emit one record per utterance.
_RECORD_COLUMNS = {
    "utterance_id": "utterance_ids", "text": "texts", "audio": "audio", "label": "labels", "speaker": "speakers"
}  # fmt: skip
_IEMOCAP_TURN = re.compile(r"\[\s*([\d.]+)\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)")
_IEMOCAP_TRANSCRIPT = re.compile(r"(\S+)\s+\[[^\]]*\]:\s?(.*)")


def dialogue_features(
    label_names: Sequence[str], *, speech_embeds: bool = False, text_embeds: bool = False
) -> Features:
    """The schema: one row per conversation, one list entry per utterance.

    Audio is kept as file paths rather than `datasets.Audio`, which needs torchcodec and FFmpeg even to declare.
    Label names live in the `ClassLabel`, so a saved dataset carries its own label set. ``speakers`` is metadata
    for analysis; models never see it. The embedding columns hold precomputed per-utterance vectors.
    """
    features = {
        "dialogue_id": Value("string"),
        "utterance_ids": List(Value("string")),
        "texts": List(Value("string")),
        "audio": List(Value("string")),
        "labels": List(ClassLabel(names=list(label_names))),
        "speakers": List(Value("string")),
    }
    for column, wanted in zip(EMBED_COLUMNS, (speech_embeds, text_embeds)):
        if wanted:
            features[column] = List(List(Value("float32")))
    return Features(features)


def validate_dialogues(dialogues: Dataset | DatasetDict | Iterable[Mapping], num_labels: int | None = None) -> None:
    """Raise a ValueError naming the first dialogue a model could not use.

    Catches empty dialogues, per-utterance lists of different lengths, utterances with no input at all (no text,
    no audio, no precomputed embedding), labels outside ``0..num_labels-1`` and embeddings of varying size.
    ``num_labels`` is read from the features of a `Dataset`; give it for a list of conversation dicts.
    """
    if isinstance(dialogues, DatasetDict):
        for split, dataset in dialogues.items():
            try:
                validate_dialogues(dataset)
            except ValueError as error:
                raise ValueError(f"split {split!r}: {error}") from None
        return
    if isinstance(dialogues, Dataset):
        num_labels = dialogues.features["labels"].feature.num_classes
    elif num_labels is None:
        raise TypeError("num_labels is required when validating a list of conversations")
    sizes: dict[str, int] = {}
    for position, conversation in enumerate(dialogues):
        name = conversation.get("dialogue_id", f"#{position}")
        labels = conversation.get("labels")
        if labels is None or len(labels) == 0:
            raise ValueError(f"dialogue {name!r} is empty")
        for column in UTTERANCE_COLUMNS:
            values = conversation.get(column)
            if values is not None and len(values) != len(labels):
                raise ValueError(f"dialogue {name!r}: {column} has {len(values)} entries but labels has {len(labels)}")
        for column in EMBED_COLUMNS:
            for vector in conversation.get(column) or ():
                if vector is None:
                    continue
                if sizes.setdefault(column, len(vector)) != len(vector):
                    raise ValueError(f"dialogue {name!r}: {column} mixes sizes {sizes[column]} and {len(vector)}")
        inputs = [conversation.get(column) for column in ("texts", "audio", *EMBED_COLUMNS)]
        utterance_ids = conversation.get("utterance_ids") or range(len(labels))
        for index, (utterance, label) in enumerate(zip(utterance_ids, labels)):
            if not any(values is not None and values[index] is not None for values in inputs):
                raise ValueError(f"dialogue {name!r}: utterance {utterance!r} has neither audio nor text")
            if not isinstance(label, (int, np.integer)) or not 0 <= label < num_labels:
                raise ValueError(
                    f"dialogue {name!r}: utterance {utterance!r} has label {label!r}, outside 0..{num_labels - 1}"
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
        if "dialogue_id" not in conversation or "labels" not in conversation:
            raise ValueError(f"conversation #{position} needs 'dialogue_id' and 'labels'")
        name = str(conversation["dialogue_id"])
        labels = []
        for label in conversation["labels"]:
            if isinstance(label, str) and label not in label_index:
                raise ValueError(f"dialogue {name!r}: unknown label {label!r} (expected one of {label_names})")
            labels.append(label_index[label] if isinstance(label, str) else label)
        size = len(labels)
        row = {
            "dialogue_id": name,
            "utterance_ids": [f"{name}_{index}" for index in range(size)],
            "texts": [None] * size,
            "audio": [None] * size,
            "labels": labels,
            "speakers": [None] * size,
        }
        for column in ("utterance_ids", "texts", "audio", "speakers"):
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
    features = dialogue_features(
        label_names, speech_embeds="speech_embeds" in embeds, text_embeds="text_embeds" in embeds
    )
    return Dataset.from_dict({column: [row[column] for row in rows] for column in features}, features=features)


def attach_embeddings(
    dataset: Dataset | DatasetDict, column: str, vectors: Mapping[str, Any]
) -> Dataset | DatasetDict:
    """Add (or replace) a column of precomputed per-utterance vectors, looked up by utterance id."""
    if column not in EMBED_COLUMNS:
        raise ValueError(f"column must be one of {EMBED_COLUMNS}, got {column!r}")
    if isinstance(dataset, DatasetDict):
        return DatasetDict({split: attach_embeddings(part, column, vectors) for split, part in dataset.items()})
    utterances = list(dataset["utterance_ids"])
    missing = [utterance for ids in utterances for utterance in ids if utterance not in vectors]
    if missing:
        raise ValueError(f"no {column} vector for {len(missing)} utterances (first: {', '.join(missing[:5])})")
    values = [[np.asarray(vectors[utterance], dtype=np.float32) for utterance in ids] for ids in utterances]
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, values, feature=List(List(Value("float32"))))


def save_dialogues(dialogues: DatasetDict, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """`save_to_disk` into a folder beside ``path``, then rename: a crash never leaves a half-written dataset.

    ``overwrite`` only ever replaces a saved `DatasetDict`, so a mistyped path cannot delete an unrelated folder.
    """
    path = Path(path)
    _check_target(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        dialogues.save_to_disk(str(staging))
        if path.exists():
            retired = staging.with_suffix(".old")
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def describe(dialogues: DatasetDict) -> str:
    """Per-split dialogue, utterance and class counts, as a plain-text table."""
    names = next(iter(dialogues.values())).features["labels"].feature.names
    lines = [" ".join([f"{'split':<10} {'dialogues':>9} {'utterances':>10}", *(f"{name:>9}" for name in names)])]
    for split, dataset in dialogues.items():
        counts = Counter(label for labels in dataset["labels"] for label in labels)
        cells = [f"{split:<10} {len(dataset):>9} {sum(counts.values()):>10}"]
        lines.append(" ".join([*cells, *(f"{counts[index]:>9}" for index in range(len(names)))]))
    return "\n".join(lines)


def build_iemocap(
    root: str | os.PathLike, validation_dialogues: int = 12, seed: int = 0, *, allow_missing_audio: bool = False
) -> DatasetDict:
    """IEMOCAP (6 classes) from the full release: ``root/Session{1..5}/{dialog,sentences}``.

    Labels come from ``dialog/EmoEvaluation/*.txt``, texts from ``dialog/transcriptions/``, audio from
    ``sentences/wav/<dialog>/<utterance>.wav``; utterances are ordered by start time. Utterances labelled outside
    the 6 classes (xxx, sur, fea, dis, oth) are left out. Sessions 1-4 give train and validation
    (``validation_dialogues`` whole dialogues, drawn with ``seed``; the paper holds out 12 of 120), Session 5 test.
    The speaker is the F/M letter of the utterance id.
    """
    root = Path(root)
    utterances = []
    for session in range(1, 6):
        folder = root / f"Session{session}"
        evaluations = folder / "dialog" / "EmoEvaluation"
        files = sorted(path for path in evaluations.glob("*.txt") if not path.name.startswith("."))
        if not files:
            raise FileNotFoundError(f"IEMOCAP: no label files {evaluations}/*.txt (expected root/Session1..5/dialog/)")
        for path in files:
            texts = _iemocap_transcripts(folder / "dialog" / "transcriptions" / path.name)
            for _, utterance, label in sorted(_iemocap_turns(path)):
                utterances.append({
                    "split": "test" if session == 5 else "train",
                    "dialogue_id": path.stem,
                    "utterance_id": utterance,
                    "text": texts.get(utterance),
                    "audio": _find_audio(folder / "sentences" / "wav" / path.stem, utterance),
                    "label": label,
                    "speaker": utterance.rsplit("_", 1)[-1][:1],
                })  # fmt: skip
    held_out = _hold_out([u["dialogue_id"] for u in utterances if u["split"] == "train"], validation_dialogues, seed)
    for utterance in utterances:
        if utterance["dialogue_id"] in held_out:
            utterance["split"] = "validation"
    return _group_dialogues(
        utterances, IEMOCAP_LABELS, audio_from=root / "Session*/sentences/wav", allow_missing_audio=allow_missing_audio
    )


def build_meld(
    root: str | os.PathLike,
    audio_dir: str | os.PathLike | None = None,
    *,
    audio: bool = True,
    extract_to: str | os.PathLike | None = None,
    allow_missing_audio: bool = False,
    num_workers: int | None = None,
) -> DatasetDict:
    """MELD (7 emotions) from the raw release: ``root/{train,dev,test}_sent_emo.csv``; dev becomes validation.

    Audio, first match wins:
      * ``audio_dir`` of pre-extracted WAVs ``dia{D}_utt{U}.wav``, one folder per split (``train``, ``dev`` or
        ``validation``, ``test``, or the official clip-folder names). MELD ids repeat across splits, so WAVs placed
        flat in ``audio_dir`` are accepted only for a single split that has no folder of its own.
      * the official mp4 clips (``root/train_splits``, ``root/dev_splits_complete``,
        ``root/output_repeated_splits_test``), converted once to 16 kHz mono WAV with FFmpeg into ``extract_to``
        (default ``root/wav16k``, laid out so it can be passed as ``audio_dir`` later; reruns skip done files).
      * nothing: a text-only dataset (as with ``audio=False``, or `build_meld_csv`).
    When audio was found, utterances without a file fail the build, listing them; with ``allow_missing_audio``
    they are kept text-only instead (the release has a few missing or unreadable clips).
    """
    root = Path(root)
    utterances = []
    for split, name in _MELD_CSVS.items():
        path = root / name
        rows = _read_csv(path, required=("Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"))
        records = []
        for number, row in enumerate(rows, start=1):
            where = f"{path} row {number}"
            emotion = (row["Emotion"] or "").strip().lower()
            if emotion not in MELD_LABELS:
                raise ValueError(f"{where}: unknown Emotion {row['Emotion']!r} (expected one of {MELD_LABELS})")
            dialogue, turn = _integer(row, "Dialogue_ID", where), _integer(row, "Utterance_ID", where)
            record = {
                "split": split,
                "dialogue_id": f"dia{dialogue}",
                "utterance_id": f"dia{dialogue}_utt{turn}",
                "text": _clean_text(row["Utterance"]),
                "audio": None,
                "label": emotion,
                "speaker": row["Speaker"],
            }
            records.append(((dialogue, turn), record))
        utterances += [record for _, record in sorted(records, key=lambda item: item[0])]
    audio_from = _meld_audio(root, audio_dir, utterances, extract_to, num_workers) if audio else None
    return _group_dialogues(utterances, MELD_LABELS, audio_from=audio_from, allow_missing_audio=allow_missing_audio)


def build_meld_csv(root: str | os.PathLike) -> DatasetDict:
    """MELD from its CSVs alone: text-only, even where media exist."""
    return build_meld(root, audio=False)


def build_mosi(
    root: str | os.PathLike,
    label_rule: str = "nonnegative",
    *,
    audio_dir: str | os.PathLike | None = None,
    folds: str | os.PathLike | None = None,
    acoustic: bool = False,
    allow_missing_audio: bool = False,
) -> DatasetDict:
    """CMU-MOSI as binary sentiment, one conversation per video, segments in clip order, standard CMU-SDK folds.

    ``root`` is a folder holding one of two layouts, or the scores CSV itself:
      * scores layout, ``mosi.csv`` with a header ``segment_id,video_id,clip,text,sentiment[,audio]``: sentiment
        in [-3, 3], audio an optional WAV path (relative to the CSV's folder). ``label_rule`` binarises scores:
        ``"nonnegative"`` makes score >= 0 positive (the MulT/MMSA "Has0" convention), ``"nonzero"`` drops
        score == 0 segments and makes > 0 positive ("Non0").
      * bc-LSTM release, ``transcripts.csv`` (no header: ``segment_id,text,video_index,label``) with labels already
        0/1. How it binarised score-0 segments is undocumented, so only ``"nonnegative"`` (labels as given) is allowed.
    Folds come from ``folds`` or ``mosi_standard_folds.json`` beside the data (keys train/valid/test, lists of video
    ids; valid becomes validation). ``audio_dir`` holds ``<segment_id>.wav``; missing files fail the build unless
    ``allow_missing_audio``. ``acoustic`` attaches the release's 73-d vectors as ``speech_embeds``
    (`load_mosi_acoustic`; needs the release files in the data folder). The speaker is the video id.
    """
    if label_rule not in MOSI_LABEL_RULES:
        raise ValueError(f"label_rule must be one of {MOSI_LABEL_RULES}, got {label_rule!r}")
    source = Path(root)
    table = source if source.is_file() else source / MOSI_CSV
    folder = table.parent
    if table.is_file():
        segments, requested = _mosi_scored_segments(table, label_rule)
    elif (folder / "transcripts.csv").is_file():
        if label_rule != "nonnegative":
            raise ValueError(
                f"{folder / 'transcripts.csv'} has binary labels only, so label_rule={label_rule!r} cannot drop "
                f"score-0 segments; use a scores layout ({MOSI_CSV}) for it"
            )
        segments, requested = _mosi_release_segments(folder / "transcripts.csv"), False
    else:
        raise FileNotFoundError(f"CMU-MOSI: neither {table} (scores layout) nor {folder / 'transcripts.csv'} found")
    folds = Path(folds) if folds is not None else folder / MOSI_FOLDS
    splits = _mosi_folds(folds)
    unassigned = sorted({segment["dialogue_id"] for segment in segments} - splits.keys())
    if unassigned:
        raise ValueError(f"{len(unassigned)} videos are in no fold of {folds} (first: {', '.join(unassigned[:5])})")
    requested = requested or audio_dir is not None
    for segment in segments:
        segment["split"] = splits[segment["dialogue_id"]]
        if segment["audio"] is None and audio_dir is not None:
            segment["audio"] = _find_audio(Path(audio_dir), segment["utterance_id"])
    segments.sort(key=lambda segment: (segment["dialogue_id"], segment["clip"]))
    audio_from = (audio_dir or table) if requested else None
    dialogues = _group_dialogues(segments, MOSI_LABELS, audio_from=audio_from, allow_missing_audio=allow_missing_audio)
    return attach_embeddings(dialogues, "speech_embeds", load_mosi_acoustic(folder)) if acoustic else dialogues


def load_mosi_acoustic(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """The 73-d utterance-level acoustic vectors of the bc-LSTM CMU-MOSI release, keyed by segment id.

    Reads ``audio_{train,test}0.csv`` (features + label), placed by ``text_{train,test}.csv`` column 0 (row numbers
    into ``transcripts.csv``); every label is checked against the transcripts. The release's 100-d text features are
    deliberately not loaded: a CNN trained on the release's own train split made them, and 24 of those training
    videos are in the standard test fold, so pairing them with the standard folds leaks test labels.
    """
    root = Path(root)
    transcripts = _read_csv(root / "transcripts.csv", columns=_MOSI_RELEASE_COLUMNS)
    vectors = {}
    for part in ("train", "test"):
        index = _read_matrix(root / f"text_{part}.csv")[:, 0].astype(int)
        path = root / f"audio_{part}0.csv"
        acoustic = _read_matrix(path)
        if acoustic.shape != (len(index), 74):
            raise ValueError(f"{path}: expected {len(index)} rows of 73 features + label, got shape {acoustic.shape}")
        for row, values in zip(index, acoustic):
            if not 0 <= row < len(transcripts):
                raise ValueError(f"{root / f'text_{part}.csv'}: row number {row} is outside transcripts.csv")
            segment = transcripts[row]
            if int(values[-1]) != int(segment["label"]):
                raise ValueError(f"{path}: label of {segment['segment_id']} differs from transcripts.csv")
            vectors[segment["segment_id"]] = values[:-1].astype(np.float32)
    return vectors


def mosi_release_folds(root: str | os.PathLike, validation_every: int = 6) -> dict[str, list[str]]:
    """The bc-LSTM release's own speaker-independent split as folds for `build_mosi(folds=...)` (written as JSON).

    Train and test videos come from ``text_{train,test}.csv`` column 0 (row numbers into ``transcripts.csv``). The
    release has no validation split: every `validation_every`-th train video (sorted by id) becomes ``valid``.
    """
    root = Path(root)
    videos = [segment["dialogue_id"] for segment in _mosi_release_segments(root / "transcripts.csv")]
    folds = {}
    for part in ("train", "test"):
        path = root / f"text_{part}.csv"
        rows = _read_matrix(path)[:, 0].astype(int)
        if not all(0 <= row < len(videos) for row in rows):
            raise ValueError(f"{path}: a row number is outside transcripts.csv")
        folds[part] = sorted({videos[row] for row in rows})
    shared = sorted(set(folds["train"]) & set(folds["test"]))
    if shared:
        raise ValueError(f"{root}: videos in both text_train.csv and text_test.csv (first: {', '.join(shared[:5])})")
    folds["valid"] = folds["train"][::validation_every]
    folds["train"] = [video for video in folds["train"] if video not in folds["valid"]]
    return folds


def build_cosmic_pickle(
    path: str | os.PathLike,
    dataset: str = "meld",
    *,
    trust_pickle: bool = False,
    validation_dialogues: int = 12,
    seed: int = 0,
) -> DatasetDict:
    """Dialogues from the widely shared DialogueRNN/COSMIC pickles (loaded with ``encoding="latin1"``).

    ``dataset="meld"``: COSMIC's ``meld.pkl``, ``(speakers, emotion_labels, sentiment_labels, sentences, trainIds,
    testIds, validIds)``; dialogue ids become the CSVs' ``dia{Dialogue_ID}``, utterance ids are positions (the
    CSVs' Utterance_IDs have gaps the pickle does not keep). ``dataset="iemocap"``: ``IEMOCAP_features.pkl``,
    ``(videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence, trainVid,
    testVid)``; its text/audio vectors become ``text_embeds``/``speech_embeds`` (visual ones are ignored) and
    ``validation_dialogues`` training dialogues are held out with ``seed``. Speakers are metadata only.

    Unpickling runs whatever code the file contains, hence the explicit ``trust_pickle=True``.
    """
    path = Path(path)
    if dataset not in ("meld", "iemocap"):
        raise ValueError(f"dataset must be 'meld' or 'iemocap', got {dataset!r}")
    if not trust_pickle:
        raise ValueError(
            f"{path} is a pickle, and loading a pickle runs whatever code it contains. If you trust where it "
            "came from, pass trust_pickle=True (CLI: --trust-pickle)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, "rb") as file:
        data = pickle.load(file, encoding="latin1")
    if dataset == "meld":
        fields = _unpack(data, _COSMIC_MELD_FIELDS, path)
        ids = {"train": "trainIds", "validation": "validIds", "test": "testIds"}
        splits = {split: _cosmic_meld_dialogues(fields, ids[split], split, path) for split in SPLITS}
        labels = MELD_LABELS
    else:
        fields = _unpack(data, _DIALOGUERNN_IEMOCAP_FIELDS, path)
        train = sorted(fields["trainVid"])
        held_out = _hold_out(train, validation_dialogues, seed)
        groups = {
            "train": [key for key in train if key not in held_out],
            "validation": [key for key in train if key in held_out],
            "test": sorted(fields["testVid"]),
        }
        splits = {
            split: [_dialoguernn_iemocap_dialogue(fields, key, path) for key in keys] for split, keys in groups.items()
        }
        labels = IEMOCAP_LABELS
    try:
        return DatasetDict({split: make_dialogue_dataset(group, labels) for split, group in splits.items()})
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def build_emodb(
    root: str | os.PathLike,
    test_speaker: str | None = None,
    validation_speaker: str | None = None,
    conversation_size: int = 10,
) -> DatasetDict:
    """Berlin EmoDB (7 emotions) from its WAVs, ``SSTTTEv.wav`` in ``root`` or ``root/wav/``, split by speaker.

    Label, speaker and transcript (`EMODB_TRANSCRIPTS`) come from the file name. All of ``test_speaker`` is test,
    all of ``validation_speaker`` validation, the other speakers train; the defaults are the first speaker in sorted
    order and the next one (`emodb_folds`). EmoDB has no conversations, so each speaker's recordings, in file-name
    order (text code, emotion, version), are cut into chunks of ``conversation_size`` utterances (the last may be
    shorter), a monologue like a CMU-MOSI video: dialogue ids are ``<speaker>-<chunk>`` (``03-000``). A
    ``conversation_size`` of 1 makes every utterance its own conversation (no context).
    """
    if conversation_size < 1:
        raise ValueError(f"conversation_size must be at least 1, got {conversation_size}")
    root = Path(root)
    folder = root / "wav" if (root / "wav").is_dir() else root
    utterances = [_emodb_record(path) for path in sorted(folder.glob("*.wav"))]
    if not utterances:
        raise FileNotFoundError(f"EmoDB: no WAV files in {folder} (expected SSTTTEv.wav files in root or root/wav/)")
    speakers = sorted({utterance["speaker"] for utterance in utterances})
    folds = dict(emodb_folds(speakers))
    for role, speaker in (("test_speaker", test_speaker), ("validation_speaker", validation_speaker)):
        if speaker is not None and speaker not in folds:
            raise ValueError(f"EmoDB: unknown {role} {speaker!r}; {folder} has speakers {', '.join(speakers)}")
    test_speaker = speakers[0] if test_speaker is None else test_speaker
    validation_speaker = folds[test_speaker] if validation_speaker is None else validation_speaker
    if test_speaker == validation_speaker:
        raise ValueError(f"EmoDB: speaker {test_speaker!r} cannot be both test and validation speaker")
    splits = {test_speaker: "test", validation_speaker: "validation"}
    positions: Counter[str] = Counter()
    for utterance in utterances:  # sorted by file name: speaker, text code, emotion, version
        speaker = utterance["speaker"]
        utterance["split"] = splits.get(speaker, "train")
        utterance["dialogue_id"] = f"{speaker}-{positions[speaker] // conversation_size:03d}"
        positions[speaker] += 1
    return _group_dialogues(utterances, EMODB_LABELS)


def emodb_folds(speakers: Iterable[str]) -> list[tuple[str, str]]:
    """(test, validation) speakers of every leave-one-speaker-out fold, as `build_emodb` picks them by default.

    The validation speaker is the one after the test speaker in sorted order, cyclically, so each speaker is test
    once and validation once.
    """
    ordered = sorted(set(speakers))
    if len(ordered) < 3:
        raise ValueError(f"EmoDB: speaker-independent splits need at least 3 speakers, got {ordered}")
    return [(speaker, ordered[(index + 1) % len(ordered)]) for index, speaker in enumerate(ordered)]


BUILDERS = {
    "iemocap": build_iemocap,
    "meld": build_meld,
    "mosi": build_mosi,
    "cosmic": build_cosmic_pickle,
    "emodb": build_emodb,
}


def prepare(
    dataset: str, root: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False, **options: Any
) -> DatasetDict:
    """``mister-e prepare``: build ``dataset`` (a key of `BUILDERS`) from ``root``, save it atomically, print counts.

    ``options`` go to the builder; for ``"cosmic"``, ``root`` is the pickle file.
    """
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
    _check_target(Path(output_dir), overwrite)  # fail before a long build, not after
    logger.info("Building %s from %s", dataset, root)
    dialogues = BUILDERS[dataset](root, **options)
    save_dialogues(dialogues, output_dir, overwrite=overwrite)
    print(f"Saved {dataset} to {output_dir}\n{describe(dialogues)}")
    return dialogues


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and not (path / "dataset_dict.json").is_file():
        raise FileExistsError(f"{path} exists and is not a saved dialogue dataset; refusing to replace it")


def _group_dialogues(
    utterances: list[dict], label_names: Sequence[str], *, audio_from: Any = None, allow_missing_audio: bool = False
) -> DatasetDict:
    """Group utterance records, already in dialogue order, into the three splits.

    ``audio_from`` says where audio was looked for (None: a text-only build). Then utterances without audio fail
    the build, or with ``allow_missing_audio`` stay text-only: one policy for every builder.
    """
    if audio_from is not None:
        missing = [utterance["utterance_id"] for utterance in utterances if utterance["audio"] is None]
        if missing:
            message = (
                f"{len(missing)} of {len(utterances)} utterances have no audio file in {audio_from} "
                f"(first: {', '.join(missing[:5])})"
            )
            if not allow_missing_audio:
                raise FileNotFoundError(f"{message}; pass allow_missing_audio=True to keep them text-only")
            logger.warning("%s; keeping them text-only", message)
    grouped: dict[str, dict[str, dict]] = {split: {} for split in SPLITS}
    for utterance in utterances:
        name = utterance["dialogue_id"]
        conversation = grouped[utterance["split"]].setdefault(name, {"dialogue_id": name})
        for key, column in _RECORD_COLUMNS.items():
            conversation.setdefault(column, []).append(utterance[key])
    return DatasetDict(
        {split: make_dialogue_dataset(list(dialogues.values()), label_names) for split, dialogues in grouped.items()}
    )


def _hold_out(dialogue_ids: Iterable[str], count: int, seed: int) -> set[str]:
    """Whole dialogues for validation, reproducibly: sorted first, so input order does not matter."""
    candidates = sorted(set(dialogue_ids))
    if not 0 <= count < len(candidates):
        raise ValueError(
            f"validation_dialogues={count} must lie in 0..{len(candidates) - 1} ({len(candidates)} training dialogues)"
        )
    return set(random.Random(seed).sample(candidates, count))


def _clean_text(text: Any) -> str | None:
    """Undo the mojibake of the public releases; None for an empty transcript.

    MELD CSV copies carry UTF-8 read as cp1252 (``’``), the py2 pickles cp1252 bytes read as latin1 (``\\x92``).
    Each repair is a no-op on clean text. No-break spaces become spaces, as in the MELD CSVs.
    """
    if not isinstance(text, str) or not text.strip():
        return None
    for wrong, right in (("latin1", "cp1252"), ("cp1252", "utf-8")):
        try:
            text = text.encode(wrong).decode(right)
        except UnicodeError:
            pass
    return text.replace("\xa0", " ")


def _find_audio(folder: Path, stem: str) -> str | None:
    path = folder / f"{stem}.wav"
    return str(path.resolve()) if path.is_file() else None


def _read_csv(
    path: Path, *, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Rows as dicts (``columns`` names a header-less file), failing with the file and missing column named."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file, fieldnames=columns)
        missing = [column for column in required if column not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; it has {reader.fieldnames}")
        return list(reader)


def _read_matrix(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="") as file:
        try:
            return np.array([[float(value) for value in row] for row in csv.reader(file) if row], dtype=np.float64)
        except ValueError as error:
            raise ValueError(f"{path}: expected a numeric table ({error})") from None


def _integer(row: Mapping[str, str], column: str, where: str) -> int:
    try:
        return int(row[column])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} must be an integer, got {row[column]!r}") from None


def _iemocap_turns(path: Path) -> list[tuple[float, str, str]]:
    """(start time, utterance id, label) of the 6-class turns of one EmoEvaluation file."""
    turns = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.startswith("["):
            continue  # headers and per-annotator lines
        match = _IEMOCAP_TURN.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: cannot parse {line!r}")
        start, utterance, label = match.groups()
        if label in IEMOCAP_LABELS:
            turns.append((float(start), utterance, label))
        elif label not in IEMOCAP_DROPPED_LABELS:
            raise ValueError(f"{path}:{number}: unknown label {label!r} for {utterance}")
    return turns


def _iemocap_transcripts(path: Path) -> dict[str, str | None]:
    if not path.is_file():
        raise FileNotFoundError(f"IEMOCAP: transcript {path} not found")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    matches = (_IEMOCAP_TRANSCRIPT.match(line) for line in lines)
    return {match[1]: _clean_text(match[2]) for match in matches if match}


def _meld_audio(
    root: Path, audio_dir: Any, utterances: list[dict], extract_to: Any, num_workers: int | None
) -> str | None:
    """Fill in the audio paths of MELD utterances; return where they were looked for, None when nowhere."""
    clips = None
    if audio_dir is not None:
        audio_dir = Path(audio_dir)
        folders = {}
        for split in SPLITS:
            names = (*_MELD_WAV_FOLDERS[split], _MELD_CLIP_FOLDERS[split])
            folders[split] = next((audio_dir / name for name in names if (audio_dir / name).is_dir()), audio_dir)
        flat = [split for split, folder in folders.items() if folder == audio_dir]
        if len(flat) > 1 and any(audio_dir.glob("*.wav")):
            raise ValueError(
                f"MELD ids repeat across splits, so the WAVs directly in {audio_dir} cannot serve {', '.join(flat)} "
                "at once: put them in train/, dev/ and test/ subfolders"
            )
    else:
        clips = {split: root / name for split, name in _MELD_CLIP_FOLDERS.items() if (root / name).is_dir()}
        if not clips:
            logger.warning("MELD: no audio_dir and no clip folders in %s; building a text-only dataset", root)
            return None
        audio_dir = Path(extract_to) if extract_to is not None else root / "wav16k"
        folders = {split: audio_dir / _MELD_WAV_FOLDERS[split][0] for split in SPLITS}
        jobs = []
        for utterance in utterances:
            split, stem = utterance["split"], utterance["utterance_id"]
            if split in clips:
                clip, wav = clips[split] / f"{stem}.mp4", folders[split] / f"{stem}.wav"
                if clip.is_file() and not wav.is_file():
                    jobs.append((clip, wav))
        if jobs:
            _extract_wavs(jobs, num_workers)
    for utterance in utterances:
        utterance["audio"] = _find_audio(folders[utterance["split"]], utterance["utterance_id"])
    return str(audio_dir) if clips is None else f"{audio_dir} (converted from the clips in {root})"


def _extract_wavs(jobs: list[tuple[Path, Path]], num_workers: int | None) -> None:
    """Convert clips to 16 kHz mono WAV with FFmpeg; a clip that fails is logged and left missing."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(
            f"{len(jobs)} MELD clips (e.g. {jobs[0][0]}) need converting to 16 kHz WAV, which needs FFmpeg, not found "
            "on PATH. Install FFmpeg, or extract the audio elsewhere and pass audio_dir (CLI: --audio-dir) holding "
            "train/, dev/ and test/ folders of dia{D}_utt{U}.wav files."
        )
    for folder in {target.parent for _, target in jobs}:
        folder.mkdir(parents=True, exist_ok=True)

    def convert(job: tuple[Path, Path]) -> None:
        source, target = job
        partial = target.with_name(f".{target.stem}.partial.wav")  # renamed when complete, so reruns can trust it
        command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
                   "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(partial)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 and partial.is_file():
            os.replace(partial, target)
        else:
            partial.unlink(missing_ok=True)
            logger.warning("FFmpeg could not convert %s: %s", source, result.stderr.strip())

    with ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        for _ in tqdm(pool.map(convert, jobs), total=len(jobs), desc="MELD clips -> 16 kHz WAV"):
            pass


def _mosi_segment(segment_id: str, where: str) -> tuple[str, int]:
    video, _, clip = segment_id.rpartition("_")
    if not video or not clip.isdigit():
        raise ValueError(f"{where}: segment id {segment_id!r} is not <video>_<clip number>")
    return video, int(clip)


def _mosi_release_segments(path: Path) -> list[dict]:
    segments = []
    for number, row in enumerate(_read_csv(path, columns=_MOSI_RELEASE_COLUMNS), start=1):
        where = f"{path} row {number}"
        video, clip = _mosi_segment(row["segment_id"], where)
        if row["label"] not in ("0", "1"):
            raise ValueError(f"{where}: label must be 0 or 1, got {row['label']!r}")
        segments.append(_mosi_record(row, video, clip, MOSI_LABELS[int(row["label"])], None))
    return segments


def _mosi_scored_segments(path: Path, label_rule: str) -> tuple[list[dict], bool]:
    """Segments of the scores layout, and whether it names audio files."""
    rows = _read_csv(path, required=_MOSI_SCORE_COLUMNS)
    segments = []
    for number, row in enumerate(rows, start=1):
        where = f"{path} row {number}"
        try:
            score = float(row["sentiment"])
        except (TypeError, ValueError):
            score = float("nan")
        if not -3 <= score <= 3:
            raise ValueError(f"{where}: sentiment must be a number in [-3, 3], got {row['sentiment']!r}")
        if label_rule == "nonzero" and score == 0:
            continue
        audio = None
        if row.get("audio"):
            candidate = path.parent / row["audio"]
            audio = str(candidate.resolve()) if candidate.is_file() else None
        label = MOSI_LABELS[int(score >= 0 if label_rule == "nonnegative" else score > 0)]
        segments.append(_mosi_record(row, row["video_id"], _integer(row, "clip", where), label, audio))
    return segments, bool(rows) and "audio" in rows[0]


def _mosi_record(row: Mapping[str, str], video: str, clip: int, label: str, audio: str | None) -> dict:
    return {
        "dialogue_id": video,
        "clip": clip,
        "utterance_id": row["segment_id"],
        "text": _clean_text(row["text"]),
        "audio": audio,
        "label": label,
        "speaker": video,
    }


def _mosi_folds(path: Path) -> dict[str, str]:
    """Video id -> split, from the JSON transcription of the CMU-SDK standard folds."""
    if not path.is_file():
        raise FileNotFoundError(f"CMU-MOSI folds {path} not found (JSON with train/valid/test lists of video ids)")
    folds = json.loads(path.read_text())
    splits = {}
    for key, split in (("train", "train"), ("valid", "validation"), ("test", "test")):
        if not isinstance(folds.get(key), list):
            raise ValueError(f"{path}: key {key!r} must be a list of video ids")
        for video in folds[key]:
            if splits.setdefault(video, split) != split:
                raise ValueError(f"{path}: video {video!r} is in more than one fold")
    return splits


def _emodb_record(path: Path) -> dict:
    """The utterance record of one EmoDB WAV, all read from its name ``SSTTTEv.wav``."""
    match = _EMODB_FILE.fullmatch(path.stem)
    if match is None:
        raise ValueError(f"EmoDB: {path} is not named SSTTTEv.wav (speaker, text code, emotion letter, version)")
    speaker, text, letter, _ = match.groups()
    if letter not in _EMODB_EMOTIONS:
        raise ValueError(f"EmoDB: {path} has unknown emotion letter {letter!r} (expected {', '.join(_EMODB_EMOTIONS)})")
    if text not in EMODB_TRANSCRIPTS:
        raise ValueError(f"EmoDB: {path} has unknown text code {text!r} (expected {', '.join(EMODB_TRANSCRIPTS)})")
    return {
        "utterance_id": path.stem,
        "text": EMODB_TRANSCRIPTS[text],
        "audio": str(path.resolve()),
        "label": _EMODB_EMOTIONS[letter],
        "speaker": speaker,
    }


def _unpack(data: Any, names: Sequence[str], path: Path) -> dict[str, Any]:
    """Name the fields of a feature-release tuple, or say which layout was expected."""
    if not isinstance(data, (tuple, list)) or len(data) != len(names):
        found = f"{len(data)} items" if isinstance(data, (tuple, list)) else f"a {type(data).__name__}"
        raise ValueError(f"{path}: expected a {len(names)}-tuple ({', '.join(names)}), found {found}")
    return dict(zip(names, data))


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
    for key in sorted(fields[ids]):
        dialogue = key - _COSMIC_MELD_OFFSETS[split]
        if dialogue < 0:
            raise ValueError(f"{path}: {ids} holds key {key}, below the {split} offset {_COSMIC_MELD_OFFSETS[split]}")
        conversations.append({
            "dialogue_id": f"dia{dialogue}",
            "texts": [_clean_text(text) for text in _lookup(fields, "sentences", key, path)],
            "labels": _lookup(fields, "emotion_labels", key, path),
            "speakers": [_speaker(speaker) for speaker in _lookup(fields, "speakers", key, path)],
        })  # fmt: skip
    return conversations


def _dialoguernn_iemocap_dialogue(fields: Mapping[str, Any], key: str, path: Path) -> dict:
    return {
        "dialogue_id": str(key),
        "utterance_ids": [str(utterance) for utterance in _lookup(fields, "videoIDs", key, path)],
        "texts": [_clean_text(text) for text in _lookup(fields, "videoSentence", key, path)],
        "labels": _lookup(fields, "videoLabels", key, path),
        "speakers": [_speaker(speaker) for speaker in _lookup(fields, "videoSpeakers", key, path)],
        "text_embeds": _lookup(fields, "videoText", key, path),
        "speech_embeds": _lookup(fields, "videoAudio", key, path),
    }


__all__ = [
    "BUILDERS",
    "EMBED_COLUMNS",
    "EMODB_LABELS",
    "EMODB_TRANSCRIPTS",
    "IEMOCAP_LABELS",
    "MELD_LABELS",
    "MOSI_LABELS",
    "MOSI_LABEL_RULES",
    "SPLITS",
    "attach_embeddings",
    "build_cosmic_pickle",
    "build_emodb",
    "build_iemocap",
    "build_meld",
    "build_meld_csv",
    "build_mosi",
    "describe",
    "dialogue_features",
    "emodb_folds",
    "load_mosi_acoustic",
    "make_dialogue_dataset",
    "mosi_release_folds",
    "prepare",
    "save_dialogues",
    "validate_dialogues",
]
