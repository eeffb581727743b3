"""Berlin EmoDB: acted single utterances, cut into per-speaker monologues so the dialogue models can use them.

Everything (label, speaker, transcript) is read from the file names, and the splits are leave-one-speaker-out.
"""

from __future__ import annotations

import logging
import os
import re
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

    The order is drawn, not the file names': sorted by name, each sentence's recordings come in the emotion letters'
    order (fear, disgust, happiness, boredom, neutral, sadness, anger), and a context model read the labels from
    the positions (text-only stage 2, on sentences that carry no emotion: 34 weighted F1 against 15 at chance).
    """
    if conversation_size < 1:
        raise ValueError(f"conversation_size must be at least 1, got {conversation_size}")
    root = Path(root)
    folder = root / "wav" if (root / "wav").is_dir() else root
    files = sorted(  # .WAV too; not hidden files such as macOS's ._03a01Fa.wav metadata
        path for path in folder.iterdir()
        if path.suffix.lower() == ".wav" and not path.name.startswith(".") and path.is_file()
    )
    files = _without_ambiguous(files, folder.parent / _AUDB_AMBIGUOUS)
    utterances = [_emodb_record(path) for path in files]
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
