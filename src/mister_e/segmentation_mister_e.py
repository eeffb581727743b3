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
from collections.abc import Mapping

import numpy as np
import torch
from transformers.audio_utils import load_audio

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


def load_recording(recording, sampling_rate: int | None = None) -> np.ndarray:
    """A recording as float32 mono at 16 kHz: a file path (any rate or channel count soundfile reads), an audio dict
    (`{"path": ...}` or `{"array": ..., "sampling_rate": ...}`) or an array with `sampling_rate`."""
    if isinstance(recording, Mapping):
        sampling_rate = recording.get("sampling_rate", sampling_rate)
        recording = recording.get("array", recording.get("path"))
        if recording is None:
            raise ValueError("A recording dict needs a `path`, or an `array` with its `sampling_rate`.")
    if isinstance(recording, (str, os.PathLike)):
        path = os.fspath(recording)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Recording not found: {path}.")
        try:
            waveform = load_audio(path, sampling_rate=SAMPLING_RATE, backend="soundfile")
        except ImportError:
            raise
        except Exception as error:
            raise ValueError(f"Could not read the recording {path}: {error}") from error
        where = f"recording {path}"
    else:
        where = "recording"
        if isinstance(recording, torch.Tensor):
            recording = recording.detach().cpu().float().numpy()
        array = np.asarray(recording)
        if array.dtype.kind != "f":
            raise ValueError(f"A recording must be a file path, an audio dict or a float array, got {array.dtype}.")
        waveform = _to_mono(array, where).astype(np.float32)
        source_rate = _check_sampling_rate(sampling_rate, where)
        if source_rate != SAMPLING_RATE and waveform.size:
            waveform = _resample(waveform, source_rate, SAMPLING_RATE)
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.size == 0:
        raise ValueError(f"The {where} has no samples.")
    if not np.isfinite(waveform).all():
        raise ValueError(f"The {where} contains NaN or infinite samples.")
    return waveform


@functools.cache
def _vad_model():
    try:
        from silero_vad import load_silero_vad
    except ImportError:
        raise ImportError(
            'Cutting a recording into utterances needs Silero VAD: pip install "mister-e[recording]" (silero-vad).'
        ) from None
    return load_silero_vad()


def segment_recording(waveform: np.ndarray, segmentation: MisterESegmentation | None = None) -> list[dict]:
    """The utterances of a 16-kHz mono waveform (`load_recording`), in order: `{"start", "end"}` in seconds and the
    `audio` dict (`array`, `sampling_rate`) of each. An empty list when the recording holds no speech."""
    segmentation = segmentation or MisterESegmentation()
    model = _vad_model()  # first: its ImportError names the extra
    from silero_vad import get_speech_timestamps

    with torch.no_grad():
        stamps = get_speech_timestamps(
            torch.from_numpy(waveform), model, threshold=segmentation.threshold, sampling_rate=SAMPLING_RATE,
            min_speech_duration_ms=round(1000 * segmentation.min_utterance_seconds),
            max_speech_duration_s=segmentation.max_utterance_seconds,
            min_silence_duration_ms=round(1000 * segmentation.min_silence_seconds),
            speech_pad_ms=round(1000 * segmentation.pad_seconds),
        )
    model.reset_states()
    return [
        {"start": stamp["start"] / SAMPLING_RATE, "end": stamp["end"] / SAMPLING_RATE,
         "audio": {"array": waveform[stamp["start"] : stamp["end"]], "sampling_rate": SAMPLING_RATE}}
        for stamp in stamps
    ]


__all__ = ["MisterESegmentation", "RECORDING_EXTENSIONS", "SAMPLING_RATE", "load_recording", "segment_recording"]
