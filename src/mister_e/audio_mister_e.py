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
"""Audio samples as the encoders take them: floats in [-1, 1], one channel, resampled; shared by the processor (an
utterance's audio) and the segmentation (a recording's blocks).

This file may be copied next to a checkpoint as Hub remote code, so it imports only torch, numpy and transformers.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


# Channel-count limit that lets a 2-D array's layout be told apart from its shape (see `to_mono`).
_MAX_CHANNELS = 8
# librosa's "kaiser_best" settings, also offered by `torchaudio.functional.resample`.
_LOWPASS_FILTER_WIDTH = 64
_ROLLOFF = 0.9475937167399596
_KAISER_BETA = 14.769656459379492
_PCM_SCALE = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}
# Float samples live in [-1, 1]. A peak beyond this limit is integer PCM cast to float unscaled (`x.astype(np.float32)`:
# speech then peaks in the hundreds or thousands), which every encoder would read as a near-constant shout; the limit
# leaves room for loud or synthetic float audio (white noise of unit variance peaks near 5).
_FLOAT_PEAK_LIMIT = 32.0
# Channels whose average is this much weaker (power ratio, -20 dB) than the channels themselves cancel each other: one
# is phase-inverted (some laptop microphone arrays record so). Unrelated or one-sided channels keep a ratio of
# 1/channels or more, identical ones 1.
_CANCELLED_POWER_RATIO = 0.01
_SILENT_POWER = 1e-8  # below it (-80 dBFS) there is nothing to cancel
# libsndfile's log of a WAV/AIFF file (`soundfile.info(path).extra_info`) whose audio chunk ends before its header says:
# `data : 88200 (should be 44078)`. Sizes from 0x7FFF0000 up are the placeholders of recorders writing to a stream.
_CUT_SHORT = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_PLACEHOLDER_SIZE = 0x7FFF0000
_MIN_MISSING_BYTES = 1024
# A file larger than this that decodes to no samples is damaged, not empty (an empty OGG Vorbis file takes 3.5 kB).
_DAMAGED_BYTES = 4096
# The polyphase resampler's filter bank (phases x taps); common rate pairs need at most ~1e5 (44.1 kHz -> 16 kHz).
_MAX_FILTER_TAPS = 4_000_000


def check_sampling_rate(sampling_rate, where: str) -> int:
    """An array's sampling rate as a whole number of Hz; `where` names the array in errors."""
    if sampling_rate is None:
        raise ValueError(
            f"{where}: an audio array needs its sampling rate, as `sampling_rate` in the audio dict or on the "
            "utterance."
        )
    if (
        isinstance(sampling_rate, bool)
        or not isinstance(sampling_rate, numbers.Real)
        or not math.isfinite(sampling_rate)
        or sampling_rate <= 0
        or sampling_rate != int(sampling_rate)
    ):
        raise ValueError(f"{where}: `sampling_rate` must be a positive whole number of Hz, got {sampling_rate!r}.")
    return int(sampling_rate)


def float_samples(array, where: str) -> np.ndarray:
    """An audio array's samples as floats: float arrays (or tensors) as they are; 16- and 32-bit integer PCM (what
    `scipy.io.wavfile` reads) and 8-bit unsigned PCM scaled to [-1, 1), as soundfile reads those files."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    try:
        array = np.asarray(array)
    except ValueError as err:
        raise ValueError(f"{where}: `audio` is not a valid array: {err}") from err
    if array.dtype.kind == "f":
        check_peak(array, where, "Pass the integer array as it is (int16, int32 and uint8 are scaled), or divide it "
                    "by 32768 (int16).")
        return array
    if array.dtype in _PCM_SCALE:
        return (array / _PCM_SCALE[array.dtype]).astype(np.float32)
    if array.dtype == np.uint8:
        return ((array.astype(np.float32) - 128) / 128).astype(np.float32)
    raise ValueError(f"{where}: `audio` must be a file path, an audio dict, or an array of float samples or of int16, "
                     f"int32 or uint8 PCM, got dtype {array.dtype}.")


def check_peak(samples: np.ndarray, where: str, remedy: str) -> None:
    """Refuses float samples far outside [-1, 1] (`_FLOAT_PEAK_LIMIT`), whether an array or a float audio file."""
    finite = np.abs(samples[np.isfinite(samples)])  # NaN and inf are refused, by name, where samples are checked
    if finite.size and finite.max() > _FLOAT_PEAK_LIMIT:
        raise ValueError(f"{where}: float audio samples reach {finite.max():.4g}, far outside [-1, 1]: integer PCM "
                         f"cast to float without scaling? {remedy}")


FILE_PEAK_REMEDY = "Rescale the file's samples to [-1, 1] (or save it as 16-bit PCM)."


def to_mono(array: np.ndarray, where: str) -> np.ndarray:
    """Averages the channels of a 2-D array.

    A 2-D array is read as (channels, samples) when its first axis is the shorter one and as (samples, channels),
    soundfile's layout, otherwise (ties included). The channel axis may hold at most 8 channels, so that a layout
    that cannot be told from the shape raises instead of averaging over time.
    """
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise ValueError(f"{where}: an audio array must be 1-D or 2-D, got shape {array.shape}.")
    channel_axis = 0 if array.shape[0] < array.shape[1] else 1
    if array.shape[channel_axis] > _MAX_CHANNELS:
        raise ValueError(
            f"{where}: cannot tell channels from samples in an audio array of shape {array.shape}: give "
            f"(samples, channels) or (channels, samples) with at most {_MAX_CHANNELS} channels."
        )
    check_downmix([array if channel_axis == 1 else array.T], where)
    return array.mean(axis=channel_axis)


def check_downmix(blocks: Iterable[np.ndarray], where: str) -> None:
    """Refuses (samples, channels) audio, given block by block (a file is never held whole for it), whose channels
    cancel each other when averaged to mono: one channel phase-inverted, so the mix holds (almost) nothing of the
    speech in the channels and would be read as silence."""
    channel_energy = mix_energy = 0.0
    samples = channels = 0
    for block in blocks:
        if block.ndim != 2 or block.shape[1] < 2:
            return
        channels, samples = block.shape[1], samples + block.shape[0]
        for start in range(0, block.shape[0], 1 << 18):  # in float64, a slice at a time
            chunk = block[start : start + (1 << 18)].astype(np.float64)
            chunk = chunk[np.isfinite(chunk).all(axis=1)]  # NaN and inf are refused, by name, where samples are checked
            channel_energy += float(np.square(chunk).mean(axis=1).sum())
            mix_energy += float(np.square(chunk.mean(axis=1)).sum())
    if not samples:
        return
    channel_power, mix_power = channel_energy / samples, mix_energy / samples
    if channel_power < _SILENT_POWER:
        return
    if mix_power < _CANCELLED_POWER_RATIO * channel_power:
        mix = ("silent" if mix_power < _SILENT_POWER
               else f"{10 * math.log10(channel_power / mix_power):.0f} dB below them")
        raise ValueError(f"{where}: its {channels} channels cancel each other when averaged to mono (the mix "
                         f"is {mix}: one channel is phase-inverted); keep one channel, or invert one before mixing.")


def check_readable(path: str, what: str) -> None:
    """Refuses a file this process may not read, by its reason: libsndfile says only "System error." of it."""
    try:
        open(path, "rb").close()
    except OSError as error:
        raise ValueError(f"{what}: could not be read: {error.strerror or error}.") from None


def check_decoded(path: str, what: str, frames: int, seconds: float, extra_info: str) -> None:
    """What decoding a file passes over in silence: no samples from a file too large to be empty (damaged: refused),
    and a WAV or AIFF file that ends before its header says (read as shorter audio: said). `frames`, `seconds` and
    `extra_info` (libsndfile's log) are soundfile's of the file; `what` names it in messages."""
    if frames == 0 and os.path.getsize(path) > _DAMAGED_BYTES:
        raise ValueError(f"{what} decodes to no samples, though it holds {os.path.getsize(path)} bytes: it is damaged "
                         "or cut short (an OGG file cut short, a WAV header never completed); export it again.")
    for found in _CUT_SHORT.finditer(extra_info or ""):
        announced, present = int(found[1]), int(found[2])
        if present + _MIN_MISSING_BYTES <= announced < _PLACEHOLDER_SIZE:
            logger.warning(f"{what} ends before its header says (it holds {present / announced:.0%} of the audio "
                           f"announced: a copy or a recording cut short?); the {seconds:.3g} s present are read.")
            return


def resample(waveform: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """Resamples a mono waveform with a Kaiser-windowed sinc filter.

    `transformers.audio_utils` resamples only while decoding a file (with soxr); for in-memory arrays it offers no
    resampler that works without torchaudio or librosa, so this is the polyphase algorithm of
    `torchaudio.functional.resample` with librosa's "kaiser_best" settings, in plain torch. Output length is
    `ceil(len(waveform) * new_freq / orig_freq)`, as with `load_audio`.
    """
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    base_freq = min(orig, new) * _ROLLOFF
    width = math.ceil(_LOWPASS_FILTER_WIDTH * orig / base_freq)
    if new * (orig + 2 * width) > _MAX_FILTER_TAPS:  # rates sharing almost no factor (16001 Hz): gigabytes of filters
        return _resample_with_soxr(waveform, orig_freq, new_freq)
    # One filter per output phase: time offsets (in input samples) of the taps around each output sample.
    taps = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + taps
    t = (t * base_freq).clamp(-_LOWPASS_FILTER_WIDTH, _LOWPASS_FILTER_WIDTH)
    beta = torch.tensor(_KAISER_BETA, dtype=torch.float64)
    window = torch.i0(beta * torch.sqrt(1 - (t / _LOWPASS_FILTER_WIDTH) ** 2)) / torch.i0(beta)
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernels = (sinc * window * base_freq / orig).to(torch.float32)

    signal = torch.nn.functional.pad(torch.from_numpy(waveform)[None, None], (width, width + orig))
    resampled = torch.nn.functional.conv1d(signal, kernels, stride=orig)  # (1, new, frames)
    resampled = resampled.transpose(1, 2).reshape(-1)
    return resampled[: math.ceil(new * waveform.shape[0] / orig)].numpy()


def _resample_with_soxr(waveform: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """soxr (what files are decoded with) for rate pairs whose polyphase filter bank would not fit in memory; it is
    imported here, not above, because remote-code files import only torch, transformers and numpy at module level."""
    try:
        import soxr
    except ImportError:
        raise ValueError(f"Resampling audio from {orig_freq} Hz to {new_freq} Hz (rates that share almost no factor) "
                         "needs soxr: `pip install soxr`, or resample the audio beforehand.") from None
    resampled = soxr.resample(waveform.astype(np.float32, copy=False), orig_freq, new_freq, quality="HQ")
    return np.asarray(resampled, dtype=np.float32)


__all__ = ["FILE_PEAK_REMEDY", "check_decoded", "check_downmix", "check_peak", "check_readable", "check_sampling_rate",
           "float_samples", "resample", "to_mono"]
