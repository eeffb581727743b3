"""CMU-MOSI as binary sentiment conversations (one per video), from a scores table, MMSA's label.csv or the bc-LSTM
release.

Kept apart because MOSI alone needs label binarisation rules, fold files and the release's acoustic vectors.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
from datasets import DatasetDict

from ..conversations import read_utf8
from .releases import clean_text, extract_wavs, find_audio, group_dialogues, read_csv, read_integer
from .building import attach_embeddings
from .schema import SPEECH_EMBEDS, SPLITS

MOSI_LABELS = ["negative", "positive"]
MOSI_LABEL_RULES = ("nonnegative", "nonzero")
# The scores layout of CMU-MOSI (one row per segment), and the CMU-SDK standard folds transcribed to JSON.
MOSI_CSV = "mosi.csv"
MOSI_FOLDS = "mosi_standard_folds.json"

_MOSI_RELEASE_CSV = "transcripts.csv"
_MOSI_RELEASE_COLUMNS = ("segment_id", "text", "video_index", "label")
_MOSI_SCORE_COLUMNS = ("segment_id", "video_id", "clip", "text", "sentiment")
# MMSA's CMU-MOSI folder (thuiar/MMSA, MMSA-FET): label.csv
# `video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode`, clips in Raw/<video_id>/<clip_id>.mp4.
# MMSA-FET splits on the modes train/valid/test; "validation", the schema's own name, is taken too.
_MMSA_CSV = "label.csv"
_MMSA_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
_MMSA_MODES = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}


def build_mosi(
    root: str | os.PathLike,
    label_rule: str = "nonnegative",
    *,
    audio_dir: str | os.PathLike | None = None,
    folds: str | os.PathLike | None = None,
    acoustic: bool = False,
    allow_missing_audio: bool = False,
    audio: bool = True,
    extract_to: str | os.PathLike | None = None,
    num_workers: int | None = None,
) -> DatasetDict:
    """CMU-MOSI as binary sentiment, one conversation per video, segments in clip order.

    ``root`` is a folder holding one of three layouts (first found wins), or the CSV itself (``label.csv`` is
    MMSA's, ``transcripts.csv`` the release's, any other name the scores layout):
      * scores layout, ``mosi.csv`` with a header ``segment_id,video_id,clip,text,sentiment[,audio]``: sentiment
        in [-3, 3], audio an optional WAV path (relative to the CSV's folder). ``label_rule`` binarises scores:
        ``"nonnegative"`` makes score >= 0 positive (the MulT/MMSA "Has0" convention), ``"nonzero"`` drops
        score == 0 segments and makes > 0 positive ("Non0").
      * MMSA's CMU-MOSI folder, ``label.csv`` with columns ``video_id,clip_id,text,label,...,mode``: ``label`` is the
        score in [-3, 3], binarised by ``label_rule``; the segment id is ``<video_id>_<clip_id>``; the splits are
        its ``mode`` column (train/valid/test) unless ``folds`` is given. Without ``audio_dir``, its clips
        ``Raw/<video_id>/<clip_id>.mp4`` are converted once to 16 kHz WAV with FFmpeg into ``extract_to`` (default
        ``wav16k`` beside label.csv, named by segment id so it can be passed as ``audio_dir`` later; reruns skip done
        files; ``num_workers`` parallel jobs).
      * bc-LSTM release, ``transcripts.csv`` (no header: ``segment_id,text,video_index,label``) with labels already
        0/1. How it binarised score-0 segments is undocumented, so only ``"nonnegative"`` (labels as given) is allowed.
    CMU-MultimodalSDK ``.csd`` files (HDF5) are not read. Folds come from ``folds`` or ``mosi_standard_folds.json``
    beside the data (keys train/valid/test, lists of video ids; valid becomes validation). ``audio_dir`` holds
    ``<segment_id>.wav`` (or .flac, .ogg, .mp3); missing files fail the build unless ``allow_missing_audio``;
    ``audio=False`` builds text only, whatever audio there is. ``acoustic`` attaches the release's 73-d vectors as
    ``speech_embeds`` (`load_mosi_acoustic`; needs the release files in the data folder). The speaker is the video id.
    """
    if label_rule not in MOSI_LABEL_RULES:
        raise ValueError(f"label_rule must be one of {MOSI_LABEL_RULES}, got {label_rule!r}")
    table = _mosi_table(Path(root))
    folder, mmsa = table.parent, table.name == _MMSA_CSV
    named_audio, modes = False, {}
    if table.name == _MOSI_RELEASE_CSV:
        if label_rule != "nonnegative":
            raise ValueError(
                f"{table} has binary labels only, so label_rule={label_rule!r} cannot drop score-0 segments; use a "
                f"scores layout ({MOSI_CSV}) or MMSA's {_MMSA_CSV} for it"
            )
        segments = _mosi_release_segments(table)
    elif mmsa:
        segments, modes = _mmsa_segments(table, label_rule)
    else:
        segments, named_audio = _mosi_scored_segments(table, label_rule)
    _refuse_duplicates(segments, table, "video_id and clip_id" if mmsa else "segment_id")
    if mmsa and folds is None:
        splits, origin = modes, "its mode column"
    else:
        folds = Path(folds) if folds is not None else folder / MOSI_FOLDS
        splits, origin = _mosi_folds(folds), str(folds)
    unassigned = sorted({segment["dialogue_id"] for segment in segments} - splits.keys())
    if unassigned:
        raise ValueError(f"{len(unassigned)} videos are in no fold of {origin} (first: {', '.join(unassigned[:5])})")
    filled = {splits[segment["dialogue_id"]] for segment in segments}
    empty = [split for split in SPLITS if split not in filled]
    if empty:  # a saved empty split cannot be loaded again
        raise ValueError(f"{table}: no segment falls in the {empty[0]} split of {origin}")
    for segment in segments:
        segment["split"] = splits[segment["dialogue_id"]]
    if not audio:  # text only, whatever audio there is
        audio_dir, named_audio = None, False
        for segment in segments:
            segment["audio"] = None
    audio_from = (audio_dir or table) if named_audio or audio_dir is not None else None
    if audio and audio_dir is None and mmsa and (folder / "Raw").is_dir():
        audio_dir = Path(extract_to) if extract_to is not None else folder / "wav16k"
        _convert_mmsa_clips(folder / "Raw", segments, audio_dir, num_workers)
        audio_from = f"{audio_dir} (converted from the clips in {folder / 'Raw'})"
    for segment in segments:
        if segment["audio"] is None and audio_dir is not None:
            segment["audio"] = find_audio(Path(audio_dir), segment["utterance_id"])
    segments.sort(key=lambda segment: (segment["dialogue_id"], segment["clip"]))
    dialogues = group_dialogues(segments, MOSI_LABELS, audio_from=audio_from, allow_missing_audio=allow_missing_audio)
    return attach_embeddings(dialogues, SPEECH_EMBEDS, load_mosi_acoustic(folder)) if acoustic else dialogues


def _mosi_table(source: Path) -> Path:
    """The CSV that ``root`` names or holds; a CMU-MultimodalSDK release fails here, saying what to do instead."""
    sdk = ("CMU-MultimodalSDK computational sequences (.csd, HDF5) are not read, as that needs h5py and the SDK's "
           f"alignment: use MMSA's CMU-MOSI folder ({_MMSA_CSV}), or write {MOSI_CSV} (segment_id,video_id,clip,"
           "text,sentiment) from CMU_MOSI_Opinion_Labels.csd and the transcripts")  # fmt: skip
    if source.is_file():
        if source.suffix == ".csd":
            raise ValueError(f"{source}: {sdk}")
        return source
    for name in (MOSI_CSV, _MMSA_CSV, _MOSI_RELEASE_CSV):
        if (source / name).is_file():
            return source / name
    message = (f"CMU-MOSI: no {MOSI_CSV} (scores layout), {_MMSA_CSV} (MMSA) or {_MOSI_RELEASE_CSV} (bc-LSTM "
               f"release) in {source}")  # fmt: skip
    raise FileNotFoundError(f"{message}; {sdk}" if any(source.glob("*.csd")) else message)


def load_mosi_acoustic(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """The 73-d utterance-level acoustic vectors of the bc-LSTM CMU-MOSI release, keyed by segment id.

    Reads ``audio_{train,test}0.csv`` (features + label), placed by ``text_{train,test}.csv`` column 0 (row numbers
    into ``transcripts.csv``); every label is checked against the transcripts. The release's 100-d text features are
    deliberately not loaded: a CNN trained on the release's own train split made them, and 24 of those training
    videos are in the standard test fold, so pairing them with the standard folds leaks test labels.
    """
    root = Path(root)
    transcripts = read_csv(root / "transcripts.csv", columns=_MOSI_RELEASE_COLUMNS)
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


def _read_matrix(path: Path) -> np.ndarray:
    """A numeric CSV as a 2-D array; an empty file or a nan/inf value fails here, not as NaN features later."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    rows = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        matrix = np.array([[float(value) for value in row] for row in rows if row], dtype=np.float64)
    except ValueError as error:
        raise ValueError(f"{path}: expected a numeric table ({error})") from None
    if matrix.size == 0:
        raise ValueError(f"{path} has no rows")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise ValueError(f"{path} row {bad[0] + 1}: non-finite value (nan or inf)")
    return matrix


def _mosi_segment(segment_id: str, where: str) -> tuple[str, int]:
    video, _, clip = segment_id.rpartition("_")
    if not video or not clip.isdigit():
        raise ValueError(f"{where}: segment id {segment_id!r} is not <video>_<clip number>")
    return video, int(clip)


def _mosi_release_segments(path: Path) -> list[dict]:
    segments = []
    for number, row in enumerate(read_csv(path, columns=_MOSI_RELEASE_COLUMNS), start=1):
        where = f"{path} row {number}"
        video, clip = _mosi_segment(row["segment_id"], where)
        if row["label"] not in ("0", "1"):
            raise ValueError(f"{where}: label must be 0 or 1, got {row['label']!r}")
        label = MOSI_LABELS[int(row["label"])]
        segments.append(_mosi_record(row["segment_id"], video, clip, row["text"], label, None, number))
    return segments


def _mosi_scored_segments(path: Path, label_rule: str) -> tuple[list[dict], bool]:
    """Segments of the scores layout, and whether it names audio files."""
    rows = read_csv(path, required=_MOSI_SCORE_COLUMNS)
    segments = []
    for number, row in enumerate(rows, start=1):
        where = f"{path} row {number}"
        label = _binary_label(row, "sentiment", label_rule, where)
        if label is None:
            continue
        audio = None
        if row.get("audio"):
            candidate = path.parent / row["audio"]
            audio = str(candidate.resolve()) if candidate.is_file() else None
        clip = read_integer(row, "clip", where)
        segments.append(_mosi_record(row["segment_id"], row["video_id"], clip, row["text"], label, audio, number))
    return segments, bool(rows) and "audio" in rows[0]


def _mmsa_segments(path: Path, label_rule: str) -> tuple[list[dict], dict[str, str]]:
    """Segments of MMSA's label.csv, and each video's split from its ``mode`` column.

    A video is one conversation, so all its segments must share a mode. Every row's mode is checked, also those of
    segments that ``label_rule`` drops.
    """
    segments, splits, first_mode = [], {}, {}
    for number, row in enumerate(read_csv(path, required=_MMSA_COLUMNS), start=1):
        where = f"{path} row {number}"
        video, clip_id, mode = ((row[column] or "").strip() for column in ("video_id", "clip_id", "mode"))
        if not video:
            raise ValueError(f"{where}: video_id is empty")
        if mode not in _MMSA_MODES:
            raise ValueError(f"{where}: mode must be one of {', '.join(_MMSA_MODES)}, got {row['mode']!r}")
        earlier, row_of_earlier = first_mode.setdefault(video, (mode, number))
        if _MMSA_MODES[earlier] != _MMSA_MODES[mode]:
            raise ValueError(f"{where}: mode {mode!r} of video {video} differs from {earlier!r} in row "
                             f"{row_of_earlier}; a video is one conversation, so all its segments need one split")
        splits[video] = _MMSA_MODES[mode]
        clip = read_integer(row, "clip_id", where)
        label = _binary_label(row, "label", label_rule, where)
        if label is not None:  # the id keeps clip_id as written: it also names the clip Raw/<video_id>/<clip_id>.mp4
            segments.append(_mosi_record(f"{video}_{clip_id}", video, clip, row["text"], label, None, number))
    return segments, splits


def _binary_label(row: dict[str, str], column: str, label_rule: str, where: str) -> str | None:
    """The binary label of a score in [-3, 3] under ``label_rule``; None for a segment the rule drops."""
    try:
        score = float(row[column])
    except (TypeError, ValueError):
        score = float("nan")
    if not -3 <= score <= 3:
        raise ValueError(f"{where}: {column} must be a number in [-3, 3], got {row[column]!r}")
    if label_rule == "nonzero" and score == 0:
        return None
    return MOSI_LABELS[int(score >= 0 if label_rule == "nonnegative" else score > 0)]


def _mosi_record(segment_id: str, video: str, clip: int, text: str, label: str, audio: str | None, row: int) -> dict:
    return {
        "dialogue_id": video,
        "clip": clip,
        "row": row,
        "utterance_id": segment_id,
        "text": clean_text(text),
        "audio": audio,
        "label": label,
        "speaker": video,
    }


def _refuse_duplicates(segments: list[dict], table: Path, field: str) -> None:
    """Two rows of one segment would make it two utterances of its conversation."""
    rows = {}
    for segment in segments:
        first = rows.setdefault(segment["utterance_id"], segment["row"])
        if first != segment["row"]:
            raise ValueError(f"{table} row {segment['row']}: segment {segment['utterance_id']} ({field}) is also row "
                             f"{first}; each segment has one row")  # fmt: skip


def _convert_mmsa_clips(clips: Path, segments: list[dict], target: Path, num_workers: int | None) -> None:
    """MMSA's ``Raw/<video_id>/<clip_id>.mp4`` clips to ``target/<segment id>.wav``, those not converted yet."""
    jobs = []
    for segment in segments:
        video, wav = segment["dialogue_id"], target / f"{segment['utterance_id']}.wav"
        clip_id = segment["utterance_id"].removeprefix(f"{video}_")  # the id is <video_id>_<clip_id>
        clip = clips / video / f"{clip_id}.mp4"
        if clip.is_file() and not wav.is_file():
            jobs.append((clip, wav))
    if jobs:
        extract_wavs(jobs, num_workers, dataset="CMU-MOSI", wav_layout="<video_id>_<clip_id>.wav files")


def _mosi_folds(path: Path) -> dict[str, str]:
    """Video id -> split, from the JSON transcription of the CMU-SDK standard folds."""
    if not path.is_file():
        raise FileNotFoundError(f"CMU-MOSI folds {path} not found (JSON with train/valid/test lists of video ids)")
    try:
        folds = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(folds, dict):
        raise ValueError(f"{path}: expected a JSON object of train/valid/test lists of video ids, got {folds!r:.80}")
    splits = {}
    for key, split in (("train", "train"), ("valid", "validation"), ("test", "test")):
        videos = folds.get(key)
        if not isinstance(videos, list) or not all(isinstance(video, str) for video in videos):
            raise ValueError(f"{path}: key {key!r} must be a list of video ids (strings), got {videos!r:.80}")
        for video in videos:
            if splits.setdefault(video, split) != split:
                raise ValueError(f"{path}: video {video!r} is in more than one fold")
    return splits


__all__ = ["MOSI_CSV", "MOSI_FOLDS", "MOSI_LABELS", "MOSI_LABEL_RULES", "build_mosi", "load_mosi_acoustic",
           "mosi_release_folds"]  # fmt: skip
