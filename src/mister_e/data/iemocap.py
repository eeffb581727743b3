"""IEMOCAP from the full release: its 6-class label order is shared with the COSMIC/DialogueRNN feature pickles."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from datasets import DatasetDict

from .releases import clean_text, find_audio, group_dialogues, hold_out

logger = logging.getLogger(__name__)

# Order of the common IEMOCAP feature releases (DialogueRNN/COSMIC), so label indices match theirs.
IEMOCAP_LABELS = ["hap", "sad", "neu", "ang", "exc", "fru"]
# Annotated in IEMOCAP but outside the 6-class benchmark: such utterances are left out of the dialogue.
IEMOCAP_DROPPED_LABELS = frozenset({"xxx", "sur", "fea", "dis", "oth"})

_IEMOCAP_TURN = re.compile(r"\[\s*([\d.]+)\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)")
_IEMOCAP_TRANSCRIPT = re.compile(r"(\S+)\s+\[[^\]]*\]:\s?(.*)")


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
            transcript = folder / "dialog" / "transcriptions" / path.name
            texts = _iemocap_transcripts(transcript)
            for _, utterance, label in sorted(_iemocap_turns(path)):
                if utterance not in texts:  # the release has a line for every labelled turn: a damaged copy
                    raise ValueError(f"{transcript} has no line for {utterance}, labelled in {path}")
                utterances.append({
                    "split": "test" if session == 5 else "train",
                    "dialogue_id": path.stem,
                    "utterance_id": utterance,
                    "text": texts.get(utterance),
                    "audio": find_audio(folder / "sentences" / "wav" / path.stem, utterance),
                    "label": label,
                    "speaker": utterance.rsplit("_", 1)[-1][:1],
                })  # fmt: skip
    held_out = hold_out([u["dialogue_id"] for u in utterances if u["split"] == "train"], validation_dialogues, seed)
    for utterance in utterances:
        if utterance["dialogue_id"] in held_out:
            utterance["split"] = "validation"
    return group_dialogues(
        utterances, IEMOCAP_LABELS, audio_from=root / "Session*/sentences/wav", allow_missing_audio=allow_missing_audio
    )


def _iemocap_turns(path: Path) -> list[tuple[float, str, str]]:
    """(start time, utterance id, label) of the 6-class turns of one EmoEvaluation file."""
    turns = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
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
    matches = (_IEMOCAP_TRANSCRIPT.match(line) for line in _read_text(path).splitlines())
    return {match[1]: clean_text(match[2]) for match in matches if match}


def _read_text(path: Path) -> str:
    """UTF-8, or else cp1252 (a Windows-edited copy), never a silent U+FFFD in place of a character."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        logger.warning("%s is not UTF-8 (byte %d); reading it as cp1252", path, error.start)
        return data.decode("cp1252", errors="replace")


__all__ = ["IEMOCAP_DROPPED_LABELS", "IEMOCAP_LABELS", "build_iemocap"]
