# Copyright 2026 The MiSTER-E authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""A recording cut into utterances by voice activity detection, for the pipeline to predict over in order.

MiSTER-E needs no speaker identity, so a call, a meeting or an interview goes from one audio file to a per-utterance
emotion timeline without diarization. Speech is found with Silero VAD (`silero-vad` on PyPI, MIT: its model ships
inside the wheel and runs offline), imported only here, where the speech is detected, so that this module keeps to the
rules of Hub remote code (torch, numpy, transformers and its siblings at module level).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

from .audio_mister_e import (ARRAY_PEAK_REMEDY, FILE_PEAK_REMEDY, LevelCheck, check_decoded, check_downmix,
                             check_peak, check_readable, check_sampling_rate, float_samples, mono_samples, resample)

# Silero VAD runs at 16 kHz (or 8 kHz); every segment keeps this rate, and the processor resamples from it.
SAMPLING_RATE = 16000
RECORDING_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
_WINDOW = 512  # samples: Silero VAD's frame at 16 kHz


@dataclasses.dataclass(frozen=True)
class MisterESegmentation:
    """How a recording is cut into utterances.

    Args:
        min_silence_seconds: A pause at least this long ends an utterance (shorter ones stay inside it).
        min_utterance_seconds: Speech shorter than this is dropped (clicks, breaths).
        max_utterance_seconds: Longer speech is split: an utterance that reaches this length is cut at its quietest
            32 ms in the second half of it, and continues after the cut.
        threshold: Speech probability above which a 32-ms frame starts speech (Silero's default 0.5; it ends below
            `threshold - 0.15`).
        pad_seconds: Audio kept on each side of a detected utterance, so that word onsets and endings are not cut
            (an utterance's padding stops where the utterance before it ended: no audio is read twice).
    """

    min_silence_seconds: float = 0.3
    min_utterance_seconds: float = 0.25
    max_utterance_seconds: float = 20.0
    threshold: float = 0.5
    pad_seconds: float = 0.05

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Segmentation `{field.name}` must be a number, got {value!r}.")
            if value < 0 and field.name != "threshold":
                raise ValueError(f"Segmentation `{field.name}` must be a non-negative number, got {value!r}.")
        if not 0 < self.threshold < 1:
            raise ValueError(f"Segmentation `threshold` must be in (0, 1), got {self.threshold!r}.")
        if self.max_utterance_seconds <= self.min_utterance_seconds:
            raise ValueError(
                f"Segmentation `max_utterance_seconds` ({self.max_utterance_seconds}) must exceed "
                f"`min_utterance_seconds` ({self.min_utterance_seconds})."
            )


def read_recording(recording, sampling_rate: int | None = None, block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """A recording as consecutive float32 mono blocks at 16 kHz, read as they are needed: a file path (any rate or
    channel count soundfile reads: WAV, FLAC, OGG, MP3) block by block through soxr's streaming resampler, or an
    audio dict (`{"path": ...}` or `{"array": ..., "sampling_rate": ...}`) or an array with `sampling_rate`."""
    if isinstance(recording, Mapping):
        sampling_rate = recording.get("sampling_rate", sampling_rate)
        recording = recording.get("array", recording.get("path"))
        if recording is None:
            raise ValueError("A recording dict needs a `path`, or an `array` with its `sampling_rate`.")
    if isinstance(recording, (str, os.PathLike)):
        blocks, where = _read_file_blocks(os.fspath(recording), block_seconds), f"recording {os.fspath(recording)}"
    else:
        blocks, where = _array_blocks(recording, sampling_rate, block_seconds), "recording"
    total = 0
    for block in blocks:
        if not np.isfinite(block).all():
            raise ValueError(f"The {where} contains NaN or infinite samples.")
        total += len(block)
        if len(block):
            yield block
    if total == 0:
        raise ValueError(f"The {where} has no samples.")


def load_recording(recording, sampling_rate: int | None = None) -> np.ndarray:
    """The whole recording (`read_recording`'s blocks joined): float32 mono at 16 kHz."""
    return np.concatenate(list(read_recording(recording, sampling_rate)))


def _read_file_blocks(path: str, block_seconds: float) -> Iterator[np.ndarray]:
    import soundfile  # here, not above: the remote-code files import torch/transformers/numpy at module level
    import soxr

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recording not found: {path}.")
    check_readable(path, f"The recording {path}")
    try:
        with soundfile.SoundFile(path) as file:
            rate = file.samplerate
            check_decoded(path, f"The recording {path}", file.frames, file.frames / rate, file.extra_info)
            stream = soxr.ResampleStream(rate, SAMPLING_RATE, 1, dtype="float32") if rate != SAMPLING_RATE else None
            levels = LevelCheck(f"The recording {path}", FILE_PEAK_REMEDY)
            while True:
                block = levels(file.read(max(1, int(block_seconds * rate)), dtype="float32", always_2d=True))
                last = len(block) == 0
                check_downmix([block], f"The recording {path}")
                mono = block.mean(axis=1) if len(block) else np.zeros(0, np.float32)
                yield stream.resample_chunk(mono, last=last) if stream is not None else mono
                if last:
                    levels.report()
                    return
    except (RuntimeError, soundfile.LibsndfileError, soundfile.SoundFileError) as error:
        raise ValueError(f"Could not read the recording {path}: {error}") from error


def _array_blocks(array, sampling_rate, block_seconds: float) -> Iterator[np.ndarray]:
    waveform = mono_samples(array, "recording").astype(np.float32, copy=False)
    rate = check_sampling_rate(sampling_rate, "recording")
    if rate != SAMPLING_RATE and waveform.size:
        waveform = resample(waveform, rate, SAMPLING_RATE)
    step = int(block_seconds * SAMPLING_RATE)
    for start in range(0, len(waveform), step):
        yield waveform[start : start + step]


@functools.cache
def _vad_model():
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise ImportError(
            'Cutting a recording into utterances needs Silero VAD: pip install "mister-e[recording]" (silero-vad).'
        ) from None
    return load_silero_vad()


def iter_segments(blocks: Iterable[np.ndarray], segmentation: MisterESegmentation | None = None) -> Iterator[dict]:
    """The utterances of a recording given as 16-kHz mono blocks (`read_recording`), in order and as soon as each is
    over: `{"start", "end"}` in seconds and the `audio` dict (`array`, `sampling_rate`) of each.

    Silero's streaming detector (`VADIterator`) reads the audio 32 ms at a time with its state carried through the
    whole recording, so a file and a stream of it are cut identically, and only the audio of the utterance in
    progress is held. Utterances shorter than `min_utterance_seconds` are dropped; one that reaches
    `max_utterance_seconds` is cut at its quietest 32 ms in the second half of that length, and continues after it.
    """
    segmentation = segmentation or MisterESegmentation()
    # A copy of its own (4 ms): the detector carries its state through the recording, and recordings cut at the same
    # time (two streams, two threads) moved each other's cuts through one shared model.
    model = copy.deepcopy(_vad_model())  # first: its ImportError names the extra
    from silero_vad import VADIterator

    model.reset_states()
    detector = VADIterator(model, threshold=segmentation.threshold, sampling_rate=SAMPLING_RATE,
                           min_silence_duration_ms=round(1000 * segmentation.min_silence_seconds),
                           speech_pad_ms=round(1000 * segmentation.pad_seconds))
    shortest = round(segmentation.min_utterance_seconds * SAMPLING_RATE)
    longest = round(segmentation.max_utterance_seconds * SAMPLING_RATE)
    held, offset, position, start = np.zeros(0, np.float32), 0, 0, None  # audio held, its first sample, read, open
    last_end = 0  # an utterance's padding never reaches back into the one before it

    def utterance(first: int, last: int) -> dict | None:
        nonlocal last_end
        if last - first < shortest:
            return None
        last_end = last
        return {"start": first / SAMPLING_RATE, "end": last / SAMPLING_RATE,
                "audio": {"array": held[first - offset : last - offset].copy(), "sampling_rate": SAMPLING_RATE}}

    for number, block in enumerate(blocks):
        block = float_samples(block, f"recording block {number}").astype(np.float32, copy=False)
        check_peak(block, f"recording block {number}", ARRAY_PEAK_REMEDY)
        if block.ndim != 1:
            raise ValueError(f"recording block {number}: expected 16-kHz mono samples (1-D), got shape "
                             f"{block.shape}; `read_recording` makes such blocks from any file or array.")
        held = np.concatenate([held, block])
        while offset + len(held) - position >= _WINDOW:
            window = held[position - offset : position - offset + _WINDOW]
            event = detector(torch.from_numpy(window)) or {}
            position += _WINDOW
            if "start" in event:
                start = max(event["start"], offset, last_end)
            if "end" in event and start is not None:
                found, start = utterance(start, min(event["end"], offset + len(held))), None
                if found:
                    yield found
            if start is not None and position - start >= longest:
                cut = _quietest(held[start + longest // 2 - offset : start + longest - offset]) + start + longest // 2
                found, start = utterance(start, cut), cut
                if found:
                    yield found
            # Keep only what a coming utterance may still need: its padding before the detector's trigger.
            keep = start if start is not None else position - _WINDOW - round(segmentation.pad_seconds * SAMPLING_RATE)
            if keep - offset > 0:
                held, offset = held[keep - offset :], keep
    if start is not None:
        found = utterance(start, offset + len(held))
        if found:
            yield found


def _quietest(audio: np.ndarray) -> int:
    """Offset of the start of the quietest 32-ms window of `audio` (the last when none is whole)."""
    count = len(audio) // _WINDOW
    if count == 0:
        return len(audio)
    energy = (audio[: count * _WINDOW].reshape(count, _WINDOW) ** 2).mean(axis=1)
    return int(np.argmin(energy)) * _WINDOW


def segment_recording(waveform: np.ndarray, segmentation: MisterESegmentation | None = None,
                      block_seconds: float = 30.0) -> list[dict]:
    """The utterances of a 16-kHz mono waveform (`load_recording`), cut as `iter_segments` cuts a stream of it. An
    empty list when the recording holds no speech."""
    return list(iter_segments(_array_blocks(waveform, SAMPLING_RATE, block_seconds), segmentation))


def no_speech_found(recording, segmentation=None) -> str:
    """What to say of a recording in which no utterance was found, and what to change."""
    shortest = as_segmentation(segmentation).min_utterance_seconds
    return (f"No speech found in {recording_name(recording)}: voice activity detection found no utterance of at "
            f"least {shortest:g} s (`min_utterance_seconds`, CLI --min-utterance; lower it for short bursts of speech, "
            "or the threshold, --vad-threshold, for a quiet recording).")


def as_segmentation(segmentation) -> MisterESegmentation:
    """The recording options' `segmentation`: a `MisterESegmentation`, a dict of its fields, or `None` (defaults)."""
    if isinstance(segmentation, Mapping):
        return MisterESegmentation(**segmentation)
    return segmentation or MisterESegmentation()


def is_recording(inputs) -> bool:
    """A recording is a path (a file, or a name with an audio extension; not a conversation's JSON file or folder) or
    a dict with a `recording` key."""
    if isinstance(inputs, (str, os.PathLike)):
        path = os.fspath(inputs)
        if path.lower().endswith(".json") or os.path.isdir(path):
            return False
        return isinstance(inputs, os.PathLike) or os.path.isfile(path) or path.lower().endswith(RECORDING_EXTENSIONS)
    return isinstance(inputs, Mapping) and "recording" in inputs


def recording_name(recording) -> str:
    """The recording's file, for messages; "the recording" for an array."""
    if isinstance(recording, Mapping):  # {"recording": ...}, then an audio dict {"path": ...} or {"array": ...}
        recording = recording.get("recording", recording)
    if isinstance(recording, Mapping):
        recording = recording.get("path")
    return os.fspath(recording) if isinstance(recording, (str, os.PathLike)) else "the recording"


__all__ = [
    "MisterESegmentation",
    "RECORDING_EXTENSIONS",
    "SAMPLING_RATE",
    "iter_segments",
    "load_recording",
    "read_recording",
    "segment_recording",
]
