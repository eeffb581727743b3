"""Helpers more than one release builder needs: reading the releases' CSV files, repairing their text, finding each
utterance's audio (or converting its video clip to it), holding out validation dialogues, and grouping utterance
records into the three splits."""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from tqdm.auto import tqdm

from ..conversations import read_utf8
from ..processing_mister_e import blank_text
from ..segmentation_mister_e import RECORDING_EXTENSIONS
from .building import make_dialogue_dataset
from .schema import AUDIO, DIALOGUE_ID, LABELS, SPEAKERS, SPLITS, TEXTS, UTTERANCE_IDS

logger = logging.getLogger(__name__)

# Utterance record key -> dataset column; the tabular builders emit one record per utterance (see `group_dialogues`).
RECORD_COLUMNS = {
    "utterance_id": UTTERANCE_IDS, "text": TEXTS, "audio": AUDIO, "label": LABELS, "speaker": SPEAKERS
}  # fmt: skip


def group_dialogues(
    utterances: list[dict], label_names: Sequence[str], *, audio_from: Any = None, allow_missing_audio: bool = False
) -> DatasetDict:
    """Group utterance records, already in dialogue order, into the three splits.

    A record holds ``split``, ``dialogue_id`` and the keys of `RECORD_COLUMNS`. ``audio_from`` says where audio
    was looked for (None: a text-only build). Then utterances without audio fail the build, or with
    ``allow_missing_audio`` stay text-only: one policy for every builder.
    """
    if audio_from is not None:
        # ids can repeat across splits (MELD's do): name the split too
        missing = [f"{u['split']} {u['utterance_id']}" for u in utterances if u["audio"] is None]
        if missing:
            message = (
                f"{len(missing)} of {len(utterances)} utterances have no audio file in {audio_from} "
                f"(first: {', '.join(missing[:5])})"
            )
            if not allow_missing_audio:
                raise FileNotFoundError(
                    f"{message}; pass allow_missing_audio=True (CLI: --allow-missing-audio) to keep them text-only"
                )
            logger.warning("%s; keeping them text-only", message)
    grouped: dict[str, dict[str, dict]] = {split: {} for split in SPLITS}
    for utterance in utterances:
        name = utterance["dialogue_id"]
        conversation = grouped[utterance["split"]].setdefault(name, {DIALOGUE_ID: name})
        for key, column in RECORD_COLUMNS.items():
            conversation.setdefault(column, []).append(utterance[key])
    return DatasetDict(
        {split: make_dialogue_dataset(list(dialogues.values()), label_names) for split, dialogues in grouped.items()}
    )


def hold_out(dialogue_ids: Iterable[str], count: int, seed: int) -> set[str]:
    """Whole dialogues for validation, reproducibly: sorted first, so input order does not matter."""
    candidates = sorted(set(dialogue_ids))
    if not 0 <= count < len(candidates):
        raise ValueError(
            f"validation_dialogues={count} must lie in 0..{len(candidates) - 1} ({len(candidates)} training dialogues)"
        )
    return set(random.Random(seed).sample(candidates, count))


def clean_text(text: Any) -> str | None:
    """Undo the mojibake of the public releases; None for a blank transcript (`blank_text`, as the processor reads it:
    repaired, since the pickles' punctuation, ``\\x93\\x85\\x94`` for “…”, is C1 control characters before).

    MELD CSV copies carry UTF-8 read as cp1252 (``’``), the py2 pickles cp1252 bytes read as latin1 (``\\x92``).
    Each repair is a no-op on clean text. No-break spaces become spaces, as in the MELD CSVs.
    """
    if not isinstance(text, str):
        return None
    for wrong, right in (("latin1", "cp1252"), ("cp1252", "utf-8")):
        try:
            text = text.encode(wrong).decode(right)
        except UnicodeError:
            pass
    return None if blank_text(text) else text.replace("\xa0", " ")


def find_audio(folder: Path, stem: str) -> str | None:
    """``folder/<stem>`` with an audio extension the processor reads (`RECORDING_EXTENSIONS`, WAV first): a folder
    of FLAC re-encodes (a common form of MELD's audio) serves as well as one of WAVs."""
    for extension in RECORDING_EXTENSIONS:
        path = folder / f"{stem}{extension}"
        if path.is_file():
            return str(path.resolve())
    return None


def extract_wavs(jobs: list[tuple[Path, Path]], num_workers: int | None, *, dataset: str, wav_layout: str) -> None:
    """Convert (clip, WAV) pairs to 16 kHz mono WAV with FFmpeg; a clip that fails is logged and left missing.

    ``dataset`` and ``wav_layout`` (how pre-extracted WAVs must be laid out instead) only word the error when FFmpeg is
    missing. Each WAV is written under a temporary name and renamed when complete, so reruns can skip done files.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError(
            f"{len(jobs)} {dataset} clips (e.g. {jobs[0][0]}) need converting to 16 kHz WAV, which needs FFmpeg, not "
            "found on PATH. Install FFmpeg, or extract the audio elsewhere and pass audio_dir (CLI: --audio-dir) "
            f"holding {wav_layout}, or build text-only with audio=False (CLI: --text-only)."
        )
    for folder in {target.parent for _, target in jobs}:
        folder.mkdir(parents=True, exist_ok=True)

    def convert(job: tuple[Path, Path]) -> None:
        source, target = job
        partial = target.with_name(f".{target.stem}.partial.wav")
        command = [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
                   "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(partial)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode == 0 and partial.is_file():
            os.replace(partial, target)
        else:
            partial.unlink(missing_ok=True)
            logger.warning("FFmpeg could not convert %s: %s", source, result.stderr.strip())

    with ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        for _ in tqdm(pool.map(convert, jobs), total=len(jobs), desc=f"{dataset} clips -> 16 kHz WAV", disable=None):
            pass


def read_csv(
    path: Path, *, columns: Sequence[str] | None = None, required: Sequence[str] = ()
) -> list[dict[str, str]]:
    """Rows as dicts (``columns`` names a header-less file), failing with the file and missing column named, or with
    the file and line named when it is not UTF-8 (`read_utf8`), or with the row (or header) named when its fields are
    not the header's or cannot be read. Header names are read without surrounding spaces (``Utterance ,Speaker``, as
    spreadsheets export them)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""), fieldnames=columns)
    header, rows = None, []
    try:
        header = reader.fieldnames  # the file's first row, unless `columns` names them
        if columns is None and header is not None:
            reader.fieldnames = header = [name.strip() for name in header]
        missing = [column for column in required if column not in (header or ())]
        if missing and any("\n" in name or "\r" in name for name in header or ()):  # it took in the rows after it
            raise ValueError(f"{path} header runs over several lines, so it lacks column(s) {missing}: a quote left "
                             "open?")
        if missing:
            raise ValueError(f"{path} lacks column(s) {missing}; it has {header}")
        rows.extend(reader)
    except csv.Error as error:  # a quote left open with none after it: the rest of the file is one field, too large
        where = "header" if header is None else f"row {len(rows) + 1}"
        raise ValueError(f"{path} {where} could not be read ({error}): a quote left open?") from None
    for number, row in enumerate(rows, start=1):  # DictReader fills a short row with None, keeps extras under None
        if None in row or None in row.values():  # e.g. a quote left open, which takes in the rows after it as text
            fields = sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None, ()))
            raise ValueError(f"{path} row {number} has {fields} fields where {len(reader.fieldnames)} are expected: a "
                             "quote left open, or a comma in an unquoted text?")
    return rows


def read_integer(row: Mapping[str, str], column: str, where: str) -> int:
    try:
        return int(row[column])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} must be an integer, got {row[column]!r}") from None


__all__ = ["clean_text", "extract_wavs", "find_audio", "group_dialogues", "hold_out", "read_csv", "read_integer"]
