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


# Channel-count limit that lets a 2-D array's layout be told apart from its shape (see `mono_samples`).
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
# Float samples up to 3 dB past full scale are what resampling or a lossy codec (MP3, OGG) leaves of audio mastered to
# full scale (inter-sample peaks): said only beyond it.
_FLOAT_PEAK_SAID = 10 ** (3 / 20)
# Clipping as Audacity's Analyze > Find Clipping counts it (its default start threshold): runs of at least 3 samples
# on the rails. One sample there is a loud peak (a normalised file touches full scale so: 212 of EmoDB's 339 files do,
# none for 3 samples); 3 alike is the waveform flattened against the limit. The rails are from -0.26 dBFS up, so that
# 8-bit PCM's (127/128) and A-law's and mu-law's (0.98) count; the samples of a run must be equal, which unclipped
# audio near full scale is not. Said once clipped samples reach 0.1% of a channel's samples (one 3-sample run in 3000).
_CLIP_LEVEL = 0.97
_CLIPPED_SHARE = 1e-3
# Channels whose average is this much weaker (power ratio, -20 dB) than the channels themselves cancel each other: one
# is phase-inverted (some laptop microphone arrays record so). Unrelated or one-sided channels keep a ratio of
# 1/channels or more, identical ones 1.
_CANCELLED_POWER_RATIO = 0.01
_SILENT_POWER = 1e-8  # below it (-80 dBFS) there is nothing to cancel
# libsndfile's log of a mono A-law or mu-law WAV (`extra_info`): those bytes may be a 16-bit PCM file whose format tag
# was corrupted, which decodes as noise. Its low bytes are then near-random and its high bytes cluster around zero,
# while a real A-law/mu-law file codes every sample alike: the byte entropies of even and odd positions differ by
# under 0.05 bits in real ones (EmoDB encoded at 8-22 kHz, clean or with noise at 0 dB SNR) and by over 1 bit in
# mis-tagged ones. The first MiB of audio bytes is read.
_COMPANDED_MONO = re.compile(r"WAVE_FORMAT_(ALAW|MULAW)\b.*?^[ \t]*Channels[ \t]*:[ \t]*1[ \t]*$", re.M | re.S)
_PCM_LAYOUT_BITS = 0.5
_LAYOUT_BYTES = 1 << 20
_MIN_LAYOUT_BYTES = 4096  # fewer tell nothing
_LAW_NAMES = {"ALAW": "A-law", "MULAW": "mu-law"}
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
    """An audio array's samples as floats: float arrays (or tensors) as they are (their level is judged by
    `LevelCheck`); 16- and 32-bit integer PCM (what `scipy.io.wavfile` reads) and 8-bit unsigned PCM scaled to
    [-1, 1), as soundfile reads those files."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = array.float().numpy() if array.is_floating_point() else array.numpy()
    try:
        array = np.asarray(array)
    except ValueError as err:
        raise ValueError(f"{where}: `audio` is not a valid array: {err}") from err
    if array.dtype.kind == "f":
        return array
    if array.dtype in _PCM_SCALE:
        return (array / _PCM_SCALE[array.dtype]).astype(np.float32)
    if array.dtype == np.uint8:
        return ((array.astype(np.float32) - 128) / 128).astype(np.float32)
    raise ValueError(f"{where}: `audio` must be a file path, an audio dict, or an array of float samples or of int16, "
                     f"int32 or uint8 PCM, got dtype {array.dtype}.")


def check_peak(samples: np.ndarray, where: str, remedy: str) -> float:
    """The peak of finite float samples; refuses one far outside [-1, 1] (`_FLOAT_PEAK_LIMIT`), from an array or a
    float audio file."""
    peak = float(max(samples.max(), -samples.min())) if samples.size else 0.0  # two passes, no copy
    if not np.isfinite(peak):  # NaN and inf are refused, by name, where samples are checked
        finite = np.abs(samples[np.isfinite(samples)])
        peak = float(finite.max()) if finite.size else 0.0
    if peak > _FLOAT_PEAK_LIMIT:
        raise ValueError(f"{where}: float audio samples reach {peak:.4g}, far outside [-1, 1]: integer PCM cast to "
                         f"float without scaling? {remedy}")
    return peak


FILE_PEAK_REMEDY = "Rescale the file's samples to [-1, 1] (or save it as 16-bit PCM)."
ARRAY_PEAK_REMEDY = ("Pass the integer array as it is (int16, int32 and uint8 are scaled), or divide it by 32768 "
                     "(int16).")


def clipped_samples(samples: np.ndarray) -> np.ndarray:
    """How many samples of each channel (1-D: one; or (samples, channels)) lie in a run of 3 or more equal samples on
    the rails (`_CLIP_LEVEL`). Only the samples on the rails are compared, so that audio that reaches them seldom
    costs one pass."""
    x = samples[:, None] if samples.ndim == 1 else samples
    counts = np.zeros(x.shape[1], dtype=np.int64)
    for channel in range(x.shape[1]):
        rails = np.flatnonzero(np.abs(x[:, channel]) >= _CLIP_LEVEL)
        values = x[rails, channel]
        joined = (np.diff(rails) == 1) & (values[1:] == values[:-1])  # continues the run of the sample before it
        ends = np.flatnonzero(np.diff(np.concatenate(([False], joined, [False])).astype(np.int8)))
        lengths = ends[1::2] - ends[0::2] + 1  # samples in each run of equal neighbours
        counts[channel] = lengths[lengths >= 3].sum()
    return counts


class LevelCheck:
    """Judges the level of audio read block by block (a file is never held whole for it), before its channels are
    averaged or its rate changed (both move peaks): float samples far outside [-1, 1] are refused as soon as a block
    holds one (`check_peak`); `report` then says, naming `where`, float samples well past full scale and clipping, the
    share of the most clipped channel (averaged over the channels, one clipped channel of several would read as less).
    Neither is changed: loudness is part of what the speech experts read, and clipped speech is still speech."""

    def __init__(self, where: str, remedy: str):
        self.where, self.remedy = where, remedy
        self.peak, self.frames = 0.0, 0
        self.clipped = np.zeros(1, dtype=np.int64)  # per channel, once a block reaches the rails

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """Judges a block of float samples (1-D, or (samples, channels)) and returns it, so that `map(check,
        blocks)` judges blocks as they are read."""
        peak = check_peak(block, self.where, self.remedy)
        self.peak = max(self.peak, peak)
        if peak >= _CLIP_LEVEL:  # else nothing is on the rails: one pass over the block in all
            self.clipped = self.clipped + clipped_samples(block)
        self.frames += len(block)
        return block

    def report(self) -> None:
        if self.peak > _FLOAT_PEAK_SAID:
            logger.warning(f"{self.where}: float audio samples reach {self.peak:.3g}, beyond [-1, 1]; they are read as "
                           "they are (not rescaled), louder than any audio the encoders learnt from: rescale them to "
                           "[-1, 1] unless the audio is meant to be that loud.")
        channel = int(self.clipped.argmax())
        if self.clipped[channel] and self.clipped[channel] >= _CLIPPED_SHARE * self.frames:
            which = f" of channel {channel + 1}" if len(self.clipped) > 1 else ""
            logger.warning(f"{self.where}: {100 * self.clipped[channel] / self.frames:.3g}% of the samples{which} are "
                           "clipped (flat at full scale for 3 samples or more: recorded too loud?); they are read as "
                           "they are, distorted.")


def mono_samples(array, where: str, judge: bool = True) -> np.ndarray:
    """An audio array's samples (`float_samples`) averaged to mono, their level and channels judged as a file's are
    (`LevelCheck`, `check_downmix`); their level not with `judge=False` (audio already judged, as read).

    A 2-D array is read as (channels, samples) when its first axis is the shorter one and as (samples, channels),
    soundfile's layout, otherwise (ties included). The channel axis may hold at most 8 channels, so that a layout
    that cannot be told from the shape raises instead of averaging over time.
    """
    array = float_samples(array, where)
    if array.ndim not in (1, 2):
        raise ValueError(f"{where}: an audio array must be 1-D or 2-D, got shape {array.shape}.")
    channels = array[:, None] if array.ndim == 1 else array.T if array.shape[0] < array.shape[1] else array
    if channels.shape[1] > _MAX_CHANNELS:
        raise ValueError(
            f"{where}: cannot tell channels from samples in an audio array of shape {array.shape}: give "
            f"(samples, channels) or (channels, samples) with at most {_MAX_CHANNELS} channels."
        )
    if judge:
        levels = LevelCheck(where, ARRAY_PEAK_REMEDY)
        levels(channels)
        levels.report()
    if array.ndim == 1:
        return array
    check_downmix([channels], where)
    return channels.mean(axis=1)


def check_downmix(blocks: Iterable[np.ndarray], where: str) -> None:
    """Refuses (samples, channels) audio, given block by block (a file is never held whole for it), whose channels
    cancel each other when averaged to mono: one channel phase-inverted, so the mix holds (almost) nothing of the
    speech in the channels and would be read as silence."""
    channel_energy = mix_energy = 0.0
    samples = channels = 0
    for block in blocks:
        if block.ndim != 2 or block.shape[1] < 2:  # nothing to cancel; the blocks are still read, for their caller
            continue
        channels, samples = block.shape[1], samples + block.shape[0]
        block = block.astype(np.promote_types(block.dtype, np.float32), copy=False)  # float16 sums overflow
        for start in range(0, block.shape[0], 1 << 18):  # float32 sums stay accurate over a slice, not over an hour
            chunk = block[start : start + (1 << 18)]
            squares, mix_squares = _squares(chunk)
            if not math.isfinite(squares + mix_squares):  # NaN and inf are refused, by name, where samples are checked
                squares, mix_squares = _squares(chunk[np.isfinite(chunk).all(axis=1)].astype(np.float64))
            channel_energy += squares / channels
            mix_energy += mix_squares / channels**2
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


def _squares(chunk: np.ndarray) -> tuple[float, float]:
    """The summed squares of a (samples, channels) chunk's samples and of their sums over the channels, in the chunk's
    float type (squaring a float64 copy cost 15 times reading the audio). The sums are formed before they are squared,
    not taken from the channels' products, so that channels that cancel exactly leave exactly nothing; numpy's own
    loops, not BLAS: OpenBLAS threads its products and stalls when the cores are busy (as slow as the float64 copy)."""
    mix = chunk[:, 0] + chunk[:, 1]
    for channel in range(2, chunk.shape[1]):
        mix += chunk[:, channel]
    return float(np.einsum("ij,ij->", chunk, chunk)), float(np.einsum("i,i->", mix, mix))


def check_readable(path: str, what: str) -> None:
    """Refuses a file this process may not read, by its reason: libsndfile says only "System error." of it."""
    try:
        open(path, "rb").close()
    except OSError as error:
        raise ValueError(f"{what}: could not be read: {error.strerror or error}.") from None


def check_decoded(path: str, what: str, frames: int, seconds: float, extra_info: str) -> None:
    """What decoding a file passes over in silence: no samples from a file too large to be empty, or 16-bit PCM under
    an A-law or mu-law tag (decoded as noise): damaged, refused; and a WAV or AIFF file that ends before its header
    says (read as shorter audio: said). `frames`, `seconds` and `extra_info` (libsndfile's log) are soundfile's of
    the file; `what` names it in messages."""
    if frames == 0 and os.path.getsize(path) > _DAMAGED_BYTES:
        raise ValueError(f"{what} decodes to no samples, though it holds {os.path.getsize(path)} bytes: it is damaged "
                         "or cut short (an OGG file cut short, a WAV header never completed); export it again.")
    companded = _COMPANDED_MONO.search(extra_info or "")
    if companded and _pcm_layout(_wav_audio_bytes(path, _LAYOUT_BYTES)):
        raise ValueError(f"{what} decodes as noise: its header says {_LAW_NAMES[companded[1]]} (8 bits a sample), but "
                         "its bytes are laid out as 16-bit PCM's (every other byte near-random): a PCM file whose "
                         "format tag was corrupted? Repair its header, or export it again.")
    for found in _CUT_SHORT.finditer(extra_info or ""):
        announced, present = int(found[1]), int(found[2])
        if present + _MIN_MISSING_BYTES <= announced < _PLACEHOLDER_SIZE:
            logger.warning(f"{what} ends before its header says (it holds {present / announced:.0%} of the audio "
                           f"announced: a copy or a recording cut short?); the {seconds:.3g} s present are read.")
            return


def _wav_audio_bytes(path: str, limit: int) -> np.ndarray:
    """Up to `limit` bytes of a RIFF WAV file's `data` chunk (none if it has none)."""
    with open(path, "rb") as file:
        file.seek(12)  # "RIFF", its size, "WAVE"
        while len(header := file.read(8)) == 8:
            size = int.from_bytes(header[4:], "little")
            if header[:4] == b"data":
                return np.frombuffer(file.read(min(size, limit)), dtype=np.uint8)
            file.seek(size + size % 2, os.SEEK_CUR)  # chunks are padded to an even size
    return np.zeros(0, dtype=np.uint8)


def _pcm_layout(data: np.ndarray) -> bool:
    """Whether 8-bit codes are laid out as 16-bit little-endian PCM: the even (low) bytes far more random than the odd
    (high) ones, where one codec's codes are alike at every position (`_PCM_LAYOUT_BITS`)."""
    if data.size < _MIN_LAYOUT_BYTES:
        return False

    def entropy(codes: np.ndarray) -> float:
        share = np.bincount(codes, minlength=256) / codes.size
        share = share[share > 0]
        return float(-(share * np.log2(share)).sum())

    return entropy(data[0::2]) - entropy(data[1::2]) > _PCM_LAYOUT_BITS


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


__all__ = ["ARRAY_PEAK_REMEDY", "FILE_PEAK_REMEDY", "LevelCheck", "check_decoded", "check_downmix", "check_peak",
           "check_readable", "check_sampling_rate", "float_samples", "mono_samples", "resample"]
