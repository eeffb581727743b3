"""Berlin EmoDB: acted single utterances, cut into per-speaker monologues so the dialogue models can use them.

Everything (label, speaker, transcript) is read from the file names, and the splits are leave-one-speaker-out.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from datasets import DatasetDict

from .releases import group_dialogues, read_csv

logger = logging.getLogger(__name__)

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

_EMODB_EMOTIONS = {
    "W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "N": "neutral", "T": "sadness"
}  # fmt: skip
_EMODB_FILE = re.compile(r"(\d{2})([a-z]\d{2})([A-Z])([a-z])")  # SSTTTEv: speaker, text code, emotion, version
# audb's emodb 2.0.0 adds to wav/ the 281 recordings that fewer than 80% of the listeners recognised, which the
# corpus's own 535 leave out; this table beside wav/ lists them.
_AUDB_AMBIGUOUS = "db.emotion.categories.ambiguous.csv"


def build_emodb(
    root: str | os.PathLike,
    test_speaker: str | None = None,
    validation_speaker: str | None = None,
    conversation_size: int = 10,
    seed: int = 0,
) -> DatasetDict:
    """Berlin EmoDB (7 emotions) from its WAVs, ``SSTTTEv.wav`` in ``root`` or ``root/wav/``, split by speaker.

    Label, speaker and transcript (`EMODB_TRANSCRIPTS`) come from the file name. All of ``test_speaker`` is test,
    all of ``validation_speaker`` validation, the other speakers train; the defaults are the first speaker in sorted
    order and the next one (`emodb_folds`). EmoDB has no conversations, so each speaker's recordings, in an order
    drawn with ``seed``, are cut into chunks of ``conversation_size`` utterances (the last may be shorter), a
    monologue like a CMU-MOSI video: dialogue ids are ``<speaker>-<chunk>`` (``03-000``). A ``conversation_size`` of
    1 makes every utterance its own conversation (no context).

    Hidden files (macOS's ``._03a01Fa.wav`` metadata) are no recordings and are skipped. audb's emodb 2.0.0 adds to
    ``wav/`` 281 recordings that the corpus's own release (535) leaves out, as fewer than 80% of the listeners
    recognised their emotion; those its ``db.emotion.categories.ambiguous.csv`` lists are left out, with a warning.
    A recording under two names differing only in case (``x.wav``, ``x.WAV``) is read once (`_without_case_twins`);
    the corpus's ``.zip`` is refused with a line saying to unzip it.

    The order is drawn, not the file names': sorted by name, each sentence's recordings come in the emotion letters'
    order (fear, disgust, happiness, boredom, neutral, sadness, anger), and a context model read the labels from
    the positions (text-only stage 2, on sentences that carry no emotion: 34 weighted F1 against 15 at chance).
    """
    if conversation_size < 1:
        raise ValueError(f"conversation_size must be at least 1, got {conversation_size}")
    root = Path(root)
    if not root.is_dir():
        raise _not_a_folder(root)
    folder = root / "wav" if (root / "wav").is_dir() else root
    files = sorted(  # .WAV too; not hidden files such as macOS's ._03a01Fa.wav metadata
        path for path in folder.iterdir()
        if path.suffix.lower() == ".wav" and not path.name.startswith(".") and path.is_file()
    )
    files = _without_ambiguous(_without_case_twins(files), folder.parent / _AUDB_AMBIGUOUS)
    utterances = [_emodb_record(path) for path in files]
    if not utterances:
        raise FileNotFoundError(f"EmoDB: no WAV files in {folder} (expected SSTTTEv.wav files in root or root/wav/)")
    speakers = sorted({utterance["speaker"] for utterance in utterances})
    test_speaker, validation_speaker = _split_speakers(speakers, test_speaker, validation_speaker, folder)
    splits = {test_speaker: "test", validation_speaker: "validation"}
    rng = np.random.default_rng(seed)
    ordered = []
    for speaker in speakers:  # each speaker's recordings (sorted by name first, so the draw is reproducible)
        own = [utterance for utterance in utterances if utterance["speaker"] == speaker]
        for position, index in enumerate(rng.permutation(len(own))):
            utterance = own[index]
            utterance["split"] = splits.get(speaker, "train")
            utterance["dialogue_id"] = f"{speaker}-{position // conversation_size:03d}"
            ordered.append(utterance)
    return group_dialogues(ordered, EMODB_LABELS)


def emodb_folds(speakers: Iterable[str]) -> list[tuple[str, str]]:
    """(test, validation) speakers of every leave-one-speaker-out fold, as `build_emodb` picks them by default.

    The validation speaker is the one after the test speaker in sorted order, cyclically, so each speaker is test
    once and validation once.
    """
    ordered = sorted(set(speakers))
    if len(ordered) < 3:
        raise ValueError(f"EmoDB: speaker-independent splits need at least 3 speakers, got {ordered}")
    return [(speaker, ordered[(index + 1) % len(ordered)]) for index, speaker in enumerate(ordered)]


def _split_speakers(
    speakers: list[str], test_speaker: str | None, validation_speaker: str | None, folder: Path
) -> tuple[str, str]:
    """The (test, validation) speakers. Any choice that leaves a split without a speaker, the defaults' included, is
    refused in one line naming the option (as the CLI spells it) and the speakers there are."""
    listed = f"{folder} has speakers {', '.join(speakers)}"
    if len(speakers) < 3:
        raise ValueError(f"EmoDB: {listed}; speaker-independent splits need at least 3 (test, validation, train)")
    folds = dict(emodb_folds(speakers))
    for option, speaker in (("--test-speaker", test_speaker), ("--validation-speaker", validation_speaker)):
        if speaker is not None and speaker not in folds:
            raise ValueError(f"EmoDB: unknown {option} {speaker!r}; {listed}")
    if test_speaker is not None and test_speaker == validation_speaker:
        raise ValueError(f"EmoDB: --test-speaker and --validation-speaker are both {test_speaker!r}, leaving "
                         f"validation no speaker of its own; {listed}")
    if test_speaker is None and validation_speaker == speakers[0]:
        fold = next(test for test, validation in folds.items() if validation == validation_speaker)
        raise ValueError(f"EmoDB: --validation-speaker {validation_speaker!r} is the default test speaker (the first); "
                         f"pass --test-speaker too, e.g. {fold!r} (the fold whose validation speaker it is); {listed}")
    test_speaker = speakers[0] if test_speaker is None else test_speaker
    return test_speaker, folds[test_speaker] if validation_speaker is None else validation_speaker


def _not_a_folder(root: Path) -> OSError:
    """The error for a ROOT that is no folder: the corpus's ``.zip`` (as downloaded) says to unzip it. It is not read
    in place: the dataset keeps each recording's path, which a zip member does not have."""
    if zipfile.is_zipfile(root):
        return NotADirectoryError(f"EmoDB: {root} is a zip archive; unzip it (unzip {root.name} -d emodb) and pass "
                                  "the folder it gives (the one holding wav/)")
    if root.exists():
        return NotADirectoryError(f"EmoDB: {root} is not a folder (expected one of SSTTTEv.wav files or of wav/)")
    return FileNotFoundError(f"EmoDB: {root} not found")


def _without_case_twins(files: list[Path]) -> list[Path]:
    """``files`` with one of each name that differs only in the extension's case (``03a01Fa.wav`` beside
    ``03a01Fa.WAV``, as copies between case-insensitive and case-sensitive file systems leave them), so no recording
    counts twice: the lower-case one is kept when they are byte-identical, with a warning; twins that differ are
    refused (which one is the recording?)."""
    twins: dict[str, list[Path]] = {}
    for path in files:
        twins.setdefault(path.stem, []).append(path)
    kept, copies = [], []
    for paths in twins.values():
        keep = min(paths, key=lambda path: path.suffix != ".wav")  # the lower-case one, else the first
        for path in paths:
            if path != keep and not filecmp.cmp(keep, path, shallow=False):
                raise ValueError(f"EmoDB: {keep} and {path.name} name one recording (their names differ only in "
                                 "case) but their contents differ; keep the right one")
        kept.append(keep)
        copies += [path for path in paths if path != keep]
    if len(copies) == 1:
        logger.warning("EmoDB: left out 1 WAV that is a byte-identical copy of one whose name differs only in case "
                       "(%s)", copies[0])
    elif copies:
        logger.warning("EmoDB: left out %d WAVs that are byte-identical copies of one whose name differs only in case "
                       "(first: %s)", len(copies), copies[0])
    return sorted(kept)


def _without_ambiguous(files: list[Path], table: Path) -> list[Path]:
    """``files`` less those audb's ``table`` lists (none without the table), so every copy gives the corpus's 535."""
    if not table.is_file():
        return files
    ambiguous = {Path(row["file"]).name for row in read_csv(table, required=["file"])}
    kept = [path for path in files if path.name not in ambiguous]
    if len(kept) < len(files):
        logger.warning("EmoDB: left out %d of %d WAVs that %s lists (recognised by fewer than 80%% of the "
                       "listeners; not in the corpus's own release)", len(files) - len(kept), len(files), table)
    return kept


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


__all__ = ["EMODB_LABELS", "EMODB_TRANSCRIPTS", "build_emodb", "emodb_folds"]
