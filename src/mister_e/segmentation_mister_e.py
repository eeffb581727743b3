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

import dataclasses
import functools
import math
import os
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch
from .processing_mister_e import _check_sampling_rate, _resample, _to_mono

# Silero VAD runs at 16 kHz (or 8 kHz); every segment keeps this rate, and the processor resamples from it.
SAMPLING_RATE = 16000
RECORDING_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


@dataclasses.dataclass(frozen=True)
class MisterESegmentation:
    """How a recording is cut into utterances.

    Args:
        min_silence_seconds: A pause at least this long ends an utterance (shorter ones stay inside it).
        min_utterance_seconds: Speech shorter than this is dropped (clicks, breaths).
        max_utterance_seconds: Longer speech is split, at its longest pause when it has one of at least 0.1 s,
            otherwise at this length.
        threshold: Speech probability above which a 32-ms frame counts as speech (Silero's default 0.5).
        pad_seconds: Audio kept on each side of a detected utterance, so that word onsets and endings are not cut.
    """

    min_silence_seconds: float = 0.3
    min_utterance_seconds: float = 0.25
    max_utterance_seconds: float = 20.0
    threshold: float = 0.5
    pad_seconds: float = 0.05

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
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
    try:
        with soundfile.SoundFile(path) as file:
            rate = file.samplerate
            stream = soxr.ResampleStream(rate, SAMPLING_RATE, 1, dtype="float32") if rate != SAMPLING_RATE else None
            while True:
                block = file.read(max(1, int(block_seconds * rate)), dtype="float32", always_2d=True)
                last = len(block) == 0
                mono = block.mean(axis=1) if len(block) else np.zeros(0, np.float32)
                yield stream.resample_chunk(mono, last=last) if stream is not None else mono
                if last:
                    return
    except (RuntimeError, soundfile.LibsndfileError, soundfile.SoundFileError) as error:
        raise ValueError(f"Could not read the recording {path}: {error}") from error


def _array_blocks(array, sampling_rate, block_seconds: float) -> Iterator[np.ndarray]:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().float().numpy()
    array = np.asarray(array)
    if array.dtype.kind != "f":
        raise ValueError(f"A recording must be a file path, an audio dict or a float array, got {array.dtype}.")
    waveform = _to_mono(array, "recording").astype(np.float32)
    rate = _check_sampling_rate(sampling_rate, "recording")
    if rate != SAMPLING_RATE and waveform.size:
        waveform = _resample(waveform, rate, SAMPLING_RATE)
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

    Silero VAD runs on a buffer of the audio not yet cut. An utterance is over once the pause that ends it (at least
    `min_silence_seconds`, after the padding) lies in the buffer; the buffer then restarts at its end, so the audio
    held stays bounded whatever the recording's length. A whole file and a stream of it are cut alike, block for
    block.
    """
    segmentation = segmentation or MisterESegmentation()
    model = _vad_model()  # first: its ImportError names the extra
    from silero_vad import get_speech_timestamps

    options = dict(threshold=segmentation.threshold, sampling_rate=SAMPLING_RATE,
                   min_speech_duration_ms=round(1000 * segmentation.min_utterance_seconds),
                   max_speech_duration_s=segmentation.max_utterance_seconds,
                   min_silence_duration_ms=round(1000 * segmentation.min_silence_seconds),
                   speech_pad_ms=round(1000 * segmentation.pad_seconds))
    settle = round((segmentation.min_silence_seconds + 2 * segmentation.pad_seconds) * SAMPLING_RATE)
    buffer, offset = np.zeros(0, np.float32), 0  # audio not yet cut, and where it starts in the recording
    blocks = iter(blocks)
    while True:
        block = next(blocks, None)
        last = block is None
        if not last:
            buffer = np.concatenate([buffer, block])
        if not len(buffer):
            return
        with torch.no_grad():
            stamps = get_speech_timestamps(torch.from_numpy(buffer), model, **options)
        model.reset_states()
        done = stamps if last else [stamp for stamp in stamps if stamp["end"] + settle <= len(buffer)]
        for stamp in done:
            yield {"start": (offset + stamp["start"]) / SAMPLING_RATE, "end": (offset + stamp["end"]) / SAMPLING_RATE,
                   "audio": {"array": buffer[stamp["start"] : stamp["end"]].copy(), "sampling_rate": SAMPLING_RATE}}
        if last:
            return
        # Restart after the last finished utterance; with none, keep the unfinished one, or only a tail of silence.
        cut = done[-1]["end"] if done else stamps[0]["start"] if stamps else max(0, len(buffer) - settle)
        buffer, offset = buffer[cut:], offset + cut


def segment_recording(waveform: np.ndarray, segmentation: MisterESegmentation | None = None,
                      block_seconds: float = 30.0) -> list[dict]:
    """The utterances of a 16-kHz mono waveform (`load_recording`), cut as `iter_segments` cuts a stream of it. An
    empty list when the recording holds no speech."""
    step = int(block_seconds * SAMPLING_RATE)
    return list(iter_segments((waveform[start : start + step] for start in range(0, len(waveform), step)),
                              segmentation))


__all__ = [
    "MisterESegmentation",
    "RECORDING_EXTENSIONS",
    "SAMPLING_RATE",
    "iter_segments",
    "load_recording",
    "read_recording",
    "segment_recording",
]
