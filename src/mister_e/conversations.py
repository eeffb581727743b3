"""A conversation from files, as `mister-e predict` reads it: a JSON file or a folder of audio files with transcripts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# Audio and video files that a folder conversation does not read (soundfile decodes WAV, FLAC, OGG and MP3 here): one
# beside the others is refused by name, not left out (its utterance would be answered without its speech).
OTHER_AUDIO_EXTENSIONS = (".aac", ".aif", ".aifc", ".aiff", ".amr", ".au", ".avi", ".caf", ".m4a", ".mkv", ".mov",
                          ".mp4", ".oga", ".opus", ".w64", ".webm", ".wma")

# A line ends at \n, \r\n or a lone \r, never inside a text: `str.splitlines` also splits at U+2028, NEL (U+0085, a
# cp1252 ellipsis read as latin-1), form feeds and the information separators, which a transcript may hold.
_LINE_BREAK = re.compile(r"\r\n?|\n")


def read_conversation(path: str | Path) -> dict:
    """A conversation JSON file (`{"utterances": [...]}` or a bare list), or a folder of audio files.

    In a folder, `transcripts.txt` (one `name<TAB>text` line per utterance, `name` = audio file stem) gives the order
    and the texts; without it the audio files (WAV, FLAC, OGG, MP3) are taken in name order, audio only. A line
    without an audio file is text only, but every audio file must be named by a line: one left out is most likely a
    typo in its line, and dropping its audio silently would change the answers.
    """
    from .segmentation_mister_e import RECORDING_EXTENSIONS

    path = Path(path)
    if path.is_dir():
        for entry in sorted(path.iterdir()):
            if entry.suffix.lower() in RECORDING_EXTENSIONS + OTHER_AUDIO_EXTENSIONS and not entry.is_file():
                # else left out as no audio file: its utterance lost, or answered from its text alone
                raise ValueError(f"{entry} is {'a broken symbolic link' if entry.is_symlink() else 'not a file'}: "
                                 "an audio file of the conversation cannot be read from it; fix it or move it out.")
        files = sorted((file for file in path.iterdir() if file.suffix.lower() in RECORDING_EXTENSIONS
                        and file.is_file()), key=_natural)
        wavs = {}  # utt2 before utt10, as a conversation's turns are numbered
        for file in files:
            twin = next((other for other in wavs if other.lower() == file.stem.lower()), None)
            if twin is not None:  # utt1.wav and utt1.WAV, or utt1.flac: one name, two files
                raise ValueError(f"{path} holds {Path(wavs[twin]).name} and {file.name}: one utterance name for two "
                                 "audio files; rename or move one.")
            wavs[file.stem] = str(file)
        read = {name.lower() for name in wavs}  # a video beside its extracted WAV is the WAV's source: no utterance
        others = {file.stem.lower(): file for file in sorted(path.iterdir(), key=_natural)
                  if file.suffix.lower() in OTHER_AUDIO_EXTENSIONS and file.is_file() and file.stem.lower() not in read}
        transcripts = path / "transcripts.txt"
        if transcripts.exists() and not transcripts.is_file():  # else read as no transcripts: speech alone
            raise ValueError(f"{transcripts} is not a file: the transcripts are one text file.")
        if not transcripts.is_file():
            if others:
                first, more = next(iter(others.values())), len(others) - 1
                raise ValueError(f"{path} holds {first.name}{f' (and {more} more such files)' if more else ''}, which "
                                 f"predict does not read (audio files: {', '.join(RECORDING_EXTENSIONS)}): convert it, "
                                 "e.g. to .wav, or move it out.")
            if not wavs:
                raise ValueError(f"{path} has neither audio files ({', '.join(RECORDING_EXTENSIONS)}) nor "
                                 "transcripts.txt.")
            return {"id": path.name, "utterances": [{"id": name, "audio": wav} for name, wav in wavs.items()]}
        utterances = []
        for number, line in enumerate(_LINE_BREAK.split(read_utf8(transcripts)), 1):
            if line.strip():
                name, tab, text = line.partition("\t")
                if not tab:
                    raise ValueError(f"{transcripts}:{number}: expected `name<TAB>text`, got {line!r}.")
                name = name.strip()
                if Path(name).suffix.lower() in RECORDING_EXTENSIONS + OTHER_AUDIO_EXTENSIONS:  # `utt00.wav` too
                    name = Path(name).stem
                other = others.get(name.lower())
                if other is not None:  # `others` holds no name a read audio file has
                    raise ValueError(f"{transcripts}:{number}: {name!r} names {other.name}, which predict does not "
                                     f"read (audio files: {', '.join(RECORDING_EXTENSIONS)}): convert it, e.g. to "
                                     ".wav; left out, the utterance would be answered without its speech.")
                if any(utterance["id"] == name for utterance in utterances):
                    raise ValueError(f"{transcripts}:{number}: {name!r} is named twice; an utterance has one line.")
                utterances.append({"id": name, "audio": wavs.get(name), "text": text.strip() or None})
        if wavs and not any(utterance["audio"] for utterance in utterances):
            raise ValueError(f"{transcripts}: no line names one of the {len(wavs)} audio files beside it (a line is "
                             f"`name<TAB>text` with the file's name, e.g. `{next(iter(wavs))}`).")
        unnamed = sorted(set(wavs) - {utterance["id"] for utterance in utterances})
        if unnamed:
            unmatched = [utterance["id"] for utterance in utterances if not utterance["audio"]]
            raise ValueError(f"{transcripts}: no line names {Path(wavs[unnamed[0]]).name}"
                             f"{f' (and {len(unnamed) - 1} more audio files)' if len(unnamed) > 1 else ''}"
                             f"{f'; lines naming no audio file: {unmatched[:3]}' if unmatched else ''}. Name every "
                             "audio file of the folder in a line (`name<TAB>text`), or move it out.")
        return {"id": path.name, "utterances": utterances}
    if not path.is_file():
        raise FileNotFoundError(f"No conversation file or folder at {path}.")
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    conversation = {"utterances": data} if isinstance(data, list) else data
    if not isinstance(conversation, dict) or not isinstance(conversation.get("utterances"), list):
        raise ValueError(f"{path}: expected {{'utterances': [...]}} or a list of utterances.")
    first = next(iter(conversation["utterances"]), None)
    if isinstance(data, list) and isinstance(first, dict) and "utterances" in first:
        raise ValueError(f"{path} holds a list of conversations; predict reads one conversation a file "
                         "(`{'utterances': [...]}` or a list of utterances): give each its own file.")
    seen = {}
    for index, utterance in enumerate(conversation["utterances"]):
        if isinstance(utterance, dict) and utterance.get("id") is not None:
            key = json.dumps(utterance["id"])
            if key in seen:  # the output names each prediction by its utterance's id
                raise ValueError(f"{path}: utterances {seen[key]} and {index} have the same id, {key}; give each "
                                 "utterance its own id, or none.")
            seen[key] = index
    for utterance in conversation["utterances"]:  # relative audio paths are relative to the JSON file, `~` is HOME
        audio = utterance.get("audio") if isinstance(utterance, dict) else None
        if isinstance(audio, str) and audio:
            utterance["audio"] = str(path.parent / os.path.expanduser(audio))
        elif isinstance(audio, dict) and isinstance(audio.get("path"), str) and audio["path"]:
            utterance["audio"] = {**audio, "path": str(path.parent / os.path.expanduser(audio["path"]))}
    return conversation


def _natural(path: Path) -> tuple:
    """Sort key reading the digits in a name as a number, letters whatever their case: `utt2` before `utt10` and
    `Utt3`; names equal so (`utt01`, `utt1`) in their own order, not the file system's."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.stem)], path.stem


def read_utf8(path: Path) -> str:
    """A text file's contents, or a ValueError naming the file, and the line and byte, when it is not UTF-8 (a
    byte-order mark, which Windows editors write, is dropped)."""
    try:
        data = path.read_bytes()
    except (PermissionError, IsADirectoryError) as error:  # one line naming the file, not Python's errno
        raise ValueError(f"{path} could not be read: {error.strerror or error}.") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:  # decoded whole, so `start` is the file's byte, not a read buffer's
        line = len(_LINE_BREAK.findall(data[: error.start].decode("utf-8", "replace"))) + 1
        raise ValueError(f"{path} is not UTF-8 text (line {line}, byte {error.start}: {error.reason}); save it as "
                         "UTF-8.") from None


__all__ = ["OTHER_AUDIO_EXTENSIONS", "read_conversation", "read_utf8"]
