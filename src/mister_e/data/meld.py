"""MELD from the raw release, with its audio: pre-extracted WAVs, or the official mp4 clips converted once by FFmpeg."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from ..segmentation_mister_e import RECORDING_EXTENSIONS
from .releases import clean_text, extract_wavs, find_audio, group_dialogues, read_csv, read_integer
from .schema import SPLITS

logger = logging.getLogger(__name__)

MELD_LABELS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]

_MELD_CSVS = {"train": "train_sent_emo.csv", "validation": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
# Official clip folders of MELD.Raw; pre-extracted WAVs may also sit in folders named after the split.
_MELD_CLIP_FOLDERS = {
    "train": "train_splits", "validation": "dev_splits_complete", "test": "output_repeated_splits_test"
}  # fmt: skip
_MELD_WAV_FOLDERS = {"train": ("train",), "validation": ("dev", "validation"), "test": ("test",)}
# MELD.Raw re-cut about 130 test clips and shipped them beside the old ones as `final_videos_testdia{D}_utt{U}.mp4`;
# the plain-named twin of such a clip is the wrong cut, so a test utterance takes the re-cut clip (or its WAV) first.
_MELD_RECUT_PREFIX = "final_videos_test"


def _meld_names(split: str, stem: str) -> tuple[str, ...]:
    """File stems that may hold an utterance's audio, preferred first."""
    return (f"{_MELD_RECUT_PREFIX}{stem}", stem) if split == "test" else (stem,)


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
        ``validation``, ``test``, or the official clip-folder names). MELD ids repeat across splits, so audio placed
        flat in ``audio_dir`` are accepted only for a single split that has no folder of its own.
      * the official mp4 clips (``root/train_splits``, ``root/dev_splits_complete``,
        ``root/output_repeated_splits_test``), converted once to 16 kHz mono WAV with FFmpeg into ``extract_to``
        (default ``root/wav16k``, laid out so it can be passed as ``audio_dir`` later; reruns skip done files).
        A test utterance with a re-cut ``final_videos_testdia{D}_utt{U}`` clip (or WAV) takes it over the
        plain-named one, which in MELD.Raw is the wrong cut.
      * nothing: a text-only dataset (as with ``audio=False``, or `build_meld_csv`).
    When audio was found, utterances without a file fail the build, listing them; with ``allow_missing_audio``
    they are kept text-only instead (the release has a few missing or unreadable clips).
    """
    root = Path(root)
    utterances, row_numbers = [], {}
    for split, name in _MELD_CSVS.items():
        path = root / name
        # `Speaker` is kept as metadata when present (never a model input), so a CSV without it builds too.
        rows = read_csv(path, required=("Utterance", "Emotion", "Dialogue_ID", "Utterance_ID"))
        if not rows:  # a saved empty split cannot be loaded again
            raise ValueError(f"{path} has no utterances, so the {split} split would be empty")
        records = []
        for number, row in enumerate(rows, start=1):
            where = f"{path} row {number}"
            emotion = (row["Emotion"] or "").strip().lower()
            if emotion not in MELD_LABELS:
                raise ValueError(f"{where}: unknown Emotion {row['Emotion']!r} (expected one of {MELD_LABELS})")
            dialogue, turn = read_integer(row, "Dialogue_ID", where), read_integer(row, "Utterance_ID", where)
            record = {
                "split": split,
                "dialogue_id": f"dia{dialogue}",
                "utterance_id": f"dia{dialogue}_utt{turn}",
                "text": clean_text(row["Utterance"]),
                "audio": None,
                "label": emotion,
                "speaker": row.get("Speaker"),
            }
            if (split, record["utterance_id"]) in row_numbers:
                raise ValueError(f"{where}: Dialogue_ID {dialogue}, Utterance_ID {turn} is also row "
                                 f"{row_numbers[split, record['utterance_id']]}; each utterance has one row.")
            records.append(((dialogue, turn), record))
            row_numbers[split, record["utterance_id"]] = number
        utterances += [record for _, record in sorted(records, key=lambda item: item[0])]
    audio_from = _meld_audio(root, audio_dir, utterances, extract_to, num_workers) if audio else None
    for utterance in utterances:  # here, because MELD ids repeat across the CSVs: name the file
        if utterance["text"] is None and utterance["audio"] is None:
            path = root / _MELD_CSVS[utterance["split"]]
            number = row_numbers[utterance["split"], utterance["utterance_id"]]
            raise ValueError(f"{path} row {number}: utterance {utterance['utterance_id']} has neither text nor audio")
    return group_dialogues(utterances, MELD_LABELS, audio_from=audio_from, allow_missing_audio=allow_missing_audio)


def build_meld_csv(root: str | os.PathLike) -> DatasetDict:
    """MELD from its CSVs alone: text-only, even where media exist."""
    return build_meld(root, audio=False)


def _meld_audio(
    root: Path, audio_dir: Any, utterances: list[dict], extract_to: Any, num_workers: int | None
) -> str | None:
    """Fill in the audio paths of MELD utterances; return where they were looked for, None when nowhere."""
    clips, chosen = None, {}  # chosen: (split, id) -> the name of the clip converted for it
    if audio_dir is not None:
        audio_dir = Path(audio_dir)
        folders = {}
        for split in SPLITS:
            names = (*_MELD_WAV_FOLDERS[split], _MELD_CLIP_FOLDERS[split])
            folders[split] = next((audio_dir / name for name in names if (audio_dir / name).is_dir()), audio_dir)
        flat = [split for split, folder in folders.items() if folder == audio_dir]
        if len(flat) > 1 and any(path.suffix.lower() in RECORDING_EXTENSIONS for path in audio_dir.iterdir()):
            raise ValueError(
                f"MELD ids repeat across splits, so the audio files directly in {audio_dir} cannot serve "
                f"{', '.join(flat)} at once: put them in train/, dev/ and test/ subfolders"
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
                # the WAV keeps the clip's name, so one converted from the wrong twin by an older build is never taken
                name = next((n for n in _meld_names(split, stem) if (clips[split] / f"{n}.mp4").is_file()), stem)
                chosen[split, stem] = name
                clip, wav = clips[split] / f"{name}.mp4", folders[split] / f"{name}.wav"
                if clip.is_file() and not wav.is_file():
                    jobs.append((clip, wav))
        if jobs:
            extract_wavs(jobs, num_workers, dataset="MELD",
                         wav_layout="train/, dev/ and test/ folders of dia{D}_utt{U}.wav files")
    for utterance in utterances:
        split, stem = utterance["split"], utterance["utterance_id"]
        names = [chosen[split, stem]] if (split, stem) in chosen else _meld_names(split, stem)
        utterance["audio"] = next(filter(None, (find_audio(folders[split], name) for name in names)), None)
    return str(audio_dir) if clips is None else f"{audio_dir} (converted from the clips in {root})"


__all__ = ["MELD_LABELS", "build_meld", "build_meld_csv"]
