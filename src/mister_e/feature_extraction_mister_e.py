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
"""openSMILE functionals as a feature extractor: one acoustic-statistics vector per utterance.

This file may be copied next to a checkpoint as Hub remote code, so it imports only numpy and transformers at module
level; the `opensmile` package (the optional extra `mister-e[opensmile]`) is imported where features are computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
import warnings
from collections import OrderedDict

import numpy as np

from transformers import BatchFeature
from transformers.feature_extraction_utils import FeatureExtractionMixin

from .configuration_mister_e import OPENSMILE_FEATURE_SETS

INSTALL_HINT = 'pip install "mister-e[opensmile]"'
# Functionals depend on the waveform alone, and stage-1 training reads every utterance once per epoch: memoised per
# waveform, epochs after the first cost no openSMILE time. Bounded in bytes (about 256 MB of float32 vectors).
_CACHE_BYTES = 256 * 2**20
_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
_smiles: dict[str, object] = {}


def _smile(feature_set: str):
    """One `opensmile.Smile` per feature set and process (building one parses its config files)."""
    if feature_set not in _smiles:
        try:
            import opensmile
        except ImportError as error:
            raise ImportError(
                f"openSMILE functionals ({feature_set}) need the `opensmile` package: {INSTALL_HINT}"
            ) from error
        _smiles[feature_set] = opensmile.Smile(
            feature_set=getattr(opensmile.FeatureSet, feature_set), feature_level=opensmile.FeatureLevel.Functionals
        )
    return _smiles[feature_set]


class MisterEFunctionalsFeatureExtractor(FeatureExtractionMixin):
    r"""
    Computes openSMILE functionals (utterance-level statistics of low-level acoustic descriptors) of mono waveforms.

    `MisterEProcessor` reads, downmixes and resamples each utterance's audio to `sampling_rate` first, so files of any
    rate or channel count give the features of their 16 kHz mono version.

    Args:
        feature_set (`str`, *optional*, defaults to `"ComParE_2016"`):
            `"ComParE_2016"` (6373 functionals) or `"eGeMAPSv02"` (88).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Rate the waveforms arrive at.
    """

    model_input_names = ["input_features"]

    def __init__(self, feature_set: str = "ComParE_2016", sampling_rate: int = 16000, **kwargs):
        if feature_set not in OPENSMILE_FEATURE_SETS:
            raise ValueError(f"`feature_set` got {feature_set!r}; expected one of {list(OPENSMILE_FEATURE_SETS)}.")
        super().__init__(**kwargs)
        self.feature_set = feature_set
        self.sampling_rate = sampling_rate

    @property
    def feature_size(self) -> int:
        return OPENSMILE_FEATURE_SETS[self.feature_set]

    def __call__(self, raw_speech, sampling_rate: int | None = None, return_tensors=None, **kwargs) -> BatchFeature:
        """`input_features` of shape `(len(raw_speech), feature_size)`; padding options are ignored (one vector per
        utterance needs none).

        Raises:
            ImportError: `opensmile` is not installed (the message names the extra).
            ValueError: A waveform at another rate, or one too short for openSMILE's analysis windows (its functionals
                are undefined); the message gives the waveform's index in `raw_speech`.
        """
        if sampling_rate is not None and sampling_rate != self.sampling_rate:
            raise ValueError(f"Expected audio at {self.sampling_rate} Hz, got {sampling_rate} Hz: resample it first.")
        features = np.stack([self._functionals(np.asarray(wave, dtype=np.float32), i) for i, wave in enumerate(raw_speech)])
        return BatchFeature({"input_features": features}, tensor_type=return_tensors)

    def _functionals(self, waveform: np.ndarray, index: int) -> np.ndarray:
        key = (self.feature_set, self.sampling_rate, hashlib.blake2b(waveform.tobytes(), digest_size=16).digest())
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        with warnings.catch_warnings(), _interruptible():  # "Segment too short": reported below, naming the waveform
            warnings.simplefilter("ignore", UserWarning)
            vector = _smile(self.feature_set).process_signal(waveform, self.sampling_rate).to_numpy(np.float32)[0]
        if not np.isfinite(vector).all():
            raise ValueError(
                f"waveform {index}: openSMILE {self.feature_set} functionals are undefined for {len(waveform)} samples "
                f"({len(waveform) / self.sampling_rate:.3f} s); use longer audio (pad it with `min_audio_seconds`)."
            )
        _cache[key] = vector
        while len(_cache) * vector.nbytes > _CACHE_BYTES:
            _cache.popitem(last=False)
        return vector


@contextlib.contextmanager
def _interruptible():
    """Ctrl-C during openSMILE's C code is swallowed there ("Exception ignored") and leaves NaN functionals, which
    would then read as audio too short; the interrupt is recorded instead and raised once openSMILE returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


__all__ = ["MisterEFunctionalsFeatureExtractor"]
