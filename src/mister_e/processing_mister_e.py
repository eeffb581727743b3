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
"""Processor for MiSTER-E: turns conversations (speech and/or text per utterance) into model inputs.

This file may be copied next to a checkpoint as Hub remote code, so it imports only torch, numpy and transformers.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping

import numpy as np

from transformers import BatchFeature
from transformers.audio_utils import load_audio
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging

from .audio_mister_e import (FILE_PEAK_REMEDY, LevelCheck, check_decoded, check_downmix, check_readable,
                             check_sampling_rate, mono_samples, resample)

logger = logging.get_logger(__name__)


def _describe(kind: str, index: int, item) -> str:
    """Names a conversation or utterance in error messages by index and, when present, by `id`."""
    if isinstance(item, Mapping) and item.get("id") is not None:
        return f"{kind} {index} (id={item['id']!r})"
    return f"{kind} {index}"


# Keys people give for an utterance's text or audio under another name: read nothing, so said (other keys are ignored).
_MISNAMED_KEYS = {**dict.fromkeys(("transcript", "transcription", "sentence", "utterance", "txt"), "text"),
                  **dict.fromkeys(("wav", "waveform", "speech", "audio_path", "audio_file"), "audio")}
# Audio below both is no speech: a muted channel or digital silence (-80 dBFS), or less than one analysis frame. It is
# still read (silence is a valid recording), but the caller hears of it: the speech experts would label silence.
_SILENCE_PEAK = 1e-4
_MIN_SPEECH_SECONDS = 0.025
# An utterance key the pipeline sets on the utterances it cuts from a recording: their level (clipping, float peaks)
# was judged, and said naming the file, as the recording was read, so it is not said again for each of them.
LEVELS_JUDGED = "levels_judged"
# An utterance key the pipeline sets to the name its caller knows the utterance by ("conversation 5, utterance 7", or
# "streamed utterance 3"): it processes chunks of a batch, windows of a conversation and streamed utterances one by one,
# whose positions in a processor call are not the caller's, and warnings, unlike errors, cannot be renamed afterwards.
CALLERS_NAME = "callers_name"


def blank_text(text: str) -> bool:
    """A text without a visible character: whitespace, control characters (NUL, DEL, C1 codes) and invisible format
    characters (a zero-width space, a byte-order mark), which tokenizers drop, leaving the text encoder an empty text.
    `BLANK_TEXT` says the same to Arrow."""
    return all(character.isspace() or unicodedata.category(character) in ("Cc", "Cf") for character in text)


# C0 and C1 control characters (NUL, ESC, DEL, a stray `\x92` of cp1252 read as latin-1) but the tab and the line
# breaks, which every tokenizer reads as the whitespace they are.
_CONTROLS_AS_SPACES = {code: " " for code in (*range(0x20), *range(0x7F, 0xA0)) if chr(code) not in "\t\n\r"}


def normalize_text(text: str) -> str:
    """The text the tokenizer reads, one encoding for one text: Unicode NFC (a decomposed `café`, e + U+0301 as macOS
    file names and some editors write it, tokenized apart from the composed one wherever the tokenizer keeps accents)
    with each control character but the tab and the line breaks a space (BERT-family tokenizers drop them, which
    joined the words around them: `oh\\x00no` read as `ohno`; byte-level ones made tokens of them)."""
    return unicodedata.normalize("NFC", text).translate(_CONTROLS_AS_SPACES)


# `blank_text` as an RE2 pattern, for whole Arrow columns: the spaces `str.isspace` counts are Unicode spaces (`\p{Z}`)
# or control characters (`\p{Cc}`: the tab, the line breaks, the information separators, NEL).
BLANK_TEXT = r"^[\p{Z}\p{Cc}\p{Cf}]*$"


def cut_texts_warning(first: str, cut: int, texts: int, max_text_length: int) -> str:
    """The warning of `cut` of `texts` texts cut at `max_text_length` tokens, naming the `first` such utterance: a user
    learns which utterances lost words, and how many."""
    more = f" (and {cut - 1} more of the {texts} texts)" if cut > 1 else ""
    return (f"{first}{more}: the text is longer than max_text_length ({max_text_length} tokens), so only its first "
            "tokens are read; cut long turns into utterances.")


def _check_options(max_audio_seconds, min_audio_seconds, train_crop_seconds, max_text_length) -> None:
    if not (
        max_audio_seconds > 0
        and train_crop_seconds > 0
        and 0 <= min_audio_seconds <= min(train_crop_seconds, max_audio_seconds)
    ):
        raise ValueError(
            "Expected positive max_audio_seconds and train_crop_seconds, and min_audio_seconds between 0 and both; "
            f"got max_audio_seconds={max_audio_seconds}, train_crop_seconds={train_crop_seconds}, "
            f"min_audio_seconds={min_audio_seconds}."
        )
    if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) or max_text_length <= 0:
        raise ValueError(f"`max_text_length` must be a positive int, got {max_text_length!r}.")


class MisterEProcessor(ProcessorMixin):
    r"""
    Constructs a MiSTER-E processor: it reads, resamples and crops each utterance's audio, runs it through
    `feature_extractor`, tokenizes each utterance's text with `tokenizer`, and records which utterance has which
    modality so that the model can scatter the rows back into the conversation.

    Audio files are decoded with `transformers.audio_utils.load_audio(..., backend="soundfile")` (soundfile, then
    soxr "soxr_hq" resampling; local paths only, no FFmpeg needed). In-memory arrays are resampled with a
    Kaiser-windowed sinc filter (see `resample`). Multichannel audio is averaged to mono.

    Args:
        feature_extractor ([`FeatureExtractionMixin`]):
            A speech feature extractor, e.g. [`Wav2Vec2FeatureExtractor`] (WavLM, HuBERT, Wav2Vec2, data2vec) or
            [`WhisperFeatureExtractor`] (Whisper, Qwen2-Audio). Audio is resampled to its `sampling_rate`.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The tokenizer of the text encoder.
        max_audio_seconds (`float`, *optional*, defaults to 30.0):
            Longest audio kept outside training; longer audio is cut, keeping the start. A Whisper-style extractor
            still truncates to its own window (30 s).
        min_audio_seconds (`float`, *optional*, defaults to 1.0):
            Shorter audio is zero-padded at the end up to this length. The padding counts as signal
            (`speech_attention_mask` is 1 over it) so the encoder always sees enough frames.
        train_crop_seconds (`float`, *optional*, defaults to 5.0):
            With `training=True`, longer audio is cut to a random window of this length (at most
            `max_audio_seconds`), and every row is padded to it by the feature extractor (masked).
        max_text_length (`int`, *optional*, defaults to 128):
            Texts are truncated to this many tokens, with a warning naming the utterances cut.
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        max_audio_seconds: float = 30.0,
        min_audio_seconds: float = 1.0,
        train_crop_seconds: float = 5.0,
        max_text_length: int = 128,
    ):
        _check_options(max_audio_seconds, min_audio_seconds, train_crop_seconds, max_text_length)
        self.max_audio_seconds = float(max_audio_seconds)
        self.min_audio_seconds = float(min_audio_seconds)
        self.train_crop_seconds = float(train_crop_seconds)
        self.max_text_length = max_text_length
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        conversations: Mapping | list[Mapping],
        training: bool = False,
        generator: np.random.Generator | int | None = None,
        max_audio_seconds: float | None = None,
        min_audio_seconds: float | None = None,
        train_crop_seconds: float | None = None,
        max_text_length: int | None = None,
        return_tensors: str | None = "pt",
        cut_texts: list | None = None,
    ) -> BatchFeature:
        r"""
        Prepares one conversation or a batch of conversations for the model.

        Args:
            conversations (`dict` or `list[dict]`):
                A conversation `{"utterances": [{"audio": ..., "text": ...}, ...]}` or a list of them; other keys
                (`id`, `label`, `speaker`, ...) are ignored, and `id`s name the culprit in error messages. An
                utterance has `audio` and/or `text` (a missing modality is an absent key or `None`). `audio` is a
                local file path, a dict `{"array": ..., "sampling_rate": ...}` or `{"path": ...}`, or an array of float
                samples or int16/int32/uint8 PCM (1-D, or 2-D with up to 8 channels on the shorter axis) with
                `sampling_rate` on the utterance. An utterance with `levels_judged: True` (the pipeline's, cut from a
                recording it judged) is not warned of for clipping or float peaks.
            training (`bool`, *optional*, defaults to `False`):
                Cut audio longer than `train_crop_seconds` (at most `max_audio_seconds`) to a random window of that
                length and pad shorter rows to it, instead of keeping the first `max_audio_seconds` of each clip.
            generator (`np.random.Generator` or `int`, *optional*):
                Source (or seed) of the random crops, for reproducible training batches.
            max_audio_seconds, min_audio_seconds, train_crop_seconds, max_text_length (*optional*):
                Override the processor's options for this call.
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                Tensor type of the outputs (`"pt"`, `"np"`, or `None` for NumPy arrays).
            cut_texts (`list`, *optional*):
                Collects the utterances (the dicts given) whose text is longer than `max_text_length` tokens instead
                of warning of them: a caller of many batches (extraction) says it once for them all
                (`cut_texts_warning`).

        Returns:
            [`BatchFeature`] with, for B conversations of at most N utterances:

            - **attention_mask** (B, N) -- 1 for real utterances, 0 for conversation padding.
            - **modality_mask** (B, N, 2) -- bool, [has speech, has text]; False on padding.
            - **input_values** or **input_features** (the extractor's own name), **speech_attention_mask** -- one
              row per utterance with audio, in the order of `modality_mask[..., 0].nonzero()` (conversation, then
              utterance). Absent when no utterance has audio.
            - **input_ids**, **text_attention_mask** -- one row per utterance with text, in the order of
              `modality_mask[..., 1].nonzero()`. Absent when no utterance has text. Token type ids are not returned:
              each text is a single segment, whose type ids are all zero, the encoders' default.

        Raises:
            FileNotFoundError: An audio path does not exist.
            ValueError: Malformed input, an unreadable file, empty or non-finite audio, or a bad sampling rate; the
                message names the conversation and utterance (index and `id`).
        """
        max_audio_seconds = self.max_audio_seconds if max_audio_seconds is None else max_audio_seconds
        min_audio_seconds = self.min_audio_seconds if min_audio_seconds is None else min_audio_seconds
        train_crop_seconds = self.train_crop_seconds if train_crop_seconds is None else train_crop_seconds
        max_text_length = self.max_text_length if max_text_length is None else max_text_length
        _check_options(max_audio_seconds, min_audio_seconds, train_crop_seconds, max_text_length)

        sampling_rate = self.feature_extractor.sampling_rate
        max_samples = round(max_audio_seconds * sampling_rate)
        min_samples = round(min_audio_seconds * sampling_rate)
        crop_samples = round(min(train_crop_seconds, max_audio_seconds) * sampling_rate)
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)

        batch = self._as_batch(conversations)
        num_utterances = max(len(conversation["utterances"]) for conversation in batch)
        attention_mask = np.zeros((len(batch), num_utterances), dtype=np.int64)
        modality_mask = np.zeros((len(batch), num_utterances, 2), dtype=bool)
        waveforms, texts = [], []
        text_utterances = []  # each text's utterance and its name, for the truncation warning
        waveform_utterances = []  # each waveform's utterance, for the feature extractor's errors
        silent = []  # utterances whose audio holds no speech
        misnamed = {}  # a key that reads nothing (`transcript` for `text`): where it first came
        for b, conversation in enumerate(batch):
            for i, utterance in enumerate(conversation["utterances"]):
                where = (utterance.get(CALLERS_NAME) if isinstance(utterance, Mapping) else None) or (
                    f"{_describe('conversation', b, conversation)}, {_describe('utterance', i, utterance)}")
                if not isinstance(utterance, Mapping):
                    raise ValueError(f"{where}: an utterance must be a dict, got {type(utterance).__name__}.")
                audio, text = utterance.get("audio"), utterance.get("text")
                for key in utterance.keys() & _MISNAMED_KEYS.keys():
                    if utterance.get(_MISNAMED_KEYS[key]) is None:
                        misnamed.setdefault(key, where)
                blank = isinstance(text, str) and blank_text(text)
                if blank:  # an empty transcript says nothing: the utterance has no text
                    text = None
                if audio is None and text is None:
                    raise ValueError(f"{where}: the utterance has neither `audio` nor `text`"
                                     + (" (its text is empty)." if blank else "."))
                attention_mask[b, i] = 1
                if audio is not None:
                    waveform = self._load_waveform(audio, utterance, where)
                    if (waveform.shape[0] < _MIN_SPEECH_SECONDS * self.feature_extractor.sampling_rate
                            or np.abs(waveform).max() < _SILENCE_PEAK):
                        silent.append(where)
                    if training and waveform.shape[0] > crop_samples:
                        start = rng.integers(0, waveform.shape[0] - crop_samples + 1)
                        waveform = waveform[start : start + crop_samples]
                    elif not training:
                        if waveform.shape[0] > max_samples:  # once a process: long turns tend to come in numbers
                            logger.warning_once(
                                f"An utterance is longer than max_audio_seconds ({max_audio_seconds:g} s): only its "
                                "first part is read. Cut long turns into utterances, or give the whole file to "
                                "`predict` as a recording (voice activity detection cuts it).")
                        waveform = waveform[:max_samples]
                    if waveform.shape[0] < min_samples:
                        waveform = np.pad(waveform, (0, min_samples - waveform.shape[0]))
                    waveforms.append(waveform)
                    waveform_utterances.append(where)
                    modality_mask[b, i, 0] = True
                if text is not None:
                    if not isinstance(text, str):
                        raise ValueError(f"{where}: `text` must be a string, got {type(text).__name__}.")
                    try:
                        text.encode("utf-8")
                    except UnicodeEncodeError as error:  # a lone surrogate (`"\ud83d"` in JSON): no tokenizer reads it
                        raise ValueError(f"{where}: `text` is not valid Unicode ({error.reason} at character "
                                         f"{error.start}).") from None
                    texts.append(normalize_text(text))
                    text_utterances.append((utterance, where))
                    modality_mask[b, i, 1] = True

        if silent:
            more = f" (and {len(silent) - 1} more utterances)" if len(silent) > 1 else ""
            logger.warning(f"{silent[0]}{more}: the audio is silent or shorter than {_MIN_SPEECH_SECONDS * 1000:g} ms, "
                           "so the speech experts read no speech there; give such an utterance `audio: null` to "
                           "predict from its text alone.")
        for key, where in misnamed.items():
            logger.warning(f"{where}: `{key}` is not read (here or on any utterance): the processor reads "
                           f"`{_MISNAMED_KEYS[key]}`; rename the key, or utterances are answered without it.")
        data = {"attention_mask": attention_mask, "modality_mask": modality_mask}
        if waveforms:
            try:
                data.update(self._extract_features(waveforms, crop_samples if training else None))
            except ValueError as error:  # "waveform 3: ..." (openSMILE functionals): named as the caller's utterance
                found = re.match(r"waveform (\d+): ", str(error))
                if found is None:
                    raise
                raise ValueError(f"{waveform_utterances[int(found[1])]}: {str(error)[found.end():]}") from None
        if texts:
            encoding = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=max_text_length,
                return_attention_mask=True,
                return_token_type_ids=False,
                return_tensors="np",
            )
            data["input_ids"] = encoding["input_ids"].astype(np.int64)
            data["text_attention_mask"] = encoding["attention_mask"].astype(np.int64)
            cut = self._cut_texts(texts, data["text_attention_mask"], max_text_length)
            if cut_texts is not None:
                cut_texts.extend(text_utterances[j][0] for j in cut)
            elif cut and training:  # shuffled batches: once a process
                logger.warning_once(f"An utterance's text is longer than max_text_length ({max_text_length} tokens): "
                                    "training reads its first tokens only.")
            elif cut:  # the same message once, as evaluation repeats its batches each epoch
                logger.warning_once(cut_texts_warning(text_utterances[cut[0]][1], len(cut), len(texts),
                                                      max_text_length))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _cut_texts(self, texts, mask, max_text_length) -> list[int]:
        """The positions of the texts longer than `max_text_length` tokens, which are cut there. Only a text that fills
        the limit is tokenized again, whole (one of exactly `max_text_length` tokens is whole)."""
        full = np.flatnonzero(mask.sum(-1) >= max_text_length)
        if not full.size:
            return []
        whole = self.tokenizer([texts[j] for j in full], truncation=False, verbose=False)["input_ids"]
        return [int(j) for j, ids in zip(full, whole) if len(ids) > max_text_length]

    @property
    def model_input_names(self) -> list[str]:
        return [
            "attention_mask",
            "modality_mask",
            self.feature_extractor.model_input_names[0],
            "speech_attention_mask",
            "input_ids",
            "text_attention_mask",
        ]

    @staticmethod
    def _as_batch(conversations) -> list[Mapping]:
        batch = [conversations] if isinstance(conversations, Mapping) else conversations
        if not isinstance(batch, (list, tuple)):
            raise ValueError(
                "Expected a conversation dict `{'utterances': [...]}` or a list of them, got "
                f"{type(conversations).__name__}."
            )
        if not batch:
            raise ValueError("Got an empty batch: expected at least one conversation.")
        for b, conversation in enumerate(batch):
            if not isinstance(conversation, Mapping):
                raise ValueError(f"conversation {b}: expected a dict, got {type(conversation).__name__}.")
            where = _describe("conversation", b, conversation)
            utterances = conversation.get("utterances")
            if not isinstance(utterances, (list, tuple)):
                raise ValueError(f"{where}: `utterances` must be a list of dicts, got {type(utterances).__name__}.")
            if not utterances:
                raise ValueError(f"{where}: the conversation has no utterances.")
        return batch

    def _load_waveform(self, audio, utterance: Mapping, where: str) -> np.ndarray:
        """Returns the utterance's audio as finite, non-empty float32 mono at the feature extractor's rate."""
        sampling_rate = self.feature_extractor.sampling_rate
        if isinstance(audio, Mapping):
            if audio.get("array") is None and audio.get("path") is None:
                raise ValueError(f"{where}: an audio dict needs an `array` (with `sampling_rate`) or a `path`.")
            if audio.get("array") is None:
                return self._read_file(audio["path"], where)
            array, source_rate = audio["array"], audio.get("sampling_rate", utterance.get("sampling_rate"))
        elif isinstance(audio, (str, os.PathLike)):
            return self._read_file(audio, where)
        else:
            array, source_rate = audio, utterance.get("sampling_rate")

        source_rate = check_sampling_rate(source_rate, where)
        waveform = mono_samples(array, where, judge=not utterance.get(LEVELS_JUDGED)).astype(np.float32)
        self._check_samples(waveform, where, "audio array")
        if source_rate != sampling_rate:
            waveform = resample(waveform, source_rate, sampling_rate)
        return waveform

    def _read_file(self, path, where: str) -> np.ndarray:
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"{where}: {path!r} is a folder, not an audio file.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{where}: audio file not found: {path!r}.")
        check_readable(path, f"{where}: audio file {path!r}")
        try:
            waveform = load_audio(path, sampling_rate=self.feature_extractor.sampling_rate, backend="soundfile")
        except ImportError:
            raise
        except Exception as err:
            raise ValueError(f"{where}: could not read audio file {path!r}: {err}") from err
        self._check_file(path, where)
        self._check_samples(waveform, where, f"audio file {path!r}")
        return waveform

    @staticmethod
    def _check_file(path: str, where: str) -> None:
        """What decoding passes over in silence (`check_decoded`), the level of the samples as decoded, before
        resampling and averaging (`LevelCheck`), and channels that cancel when averaged (read as silence: refused)."""
        try:  # here and in a `try`, not above: remote-code files import torch, transformers and numpy only
            import soundfile
        except ImportError:  # never reached: `load_audio` decoded the file with it
            return
        what = f"{where}: audio file {path!r}"
        info = soundfile.info(path)
        check_decoded(path, what, info.frames, info.duration, info.extra_info)
        levels = LevelCheck(what, FILE_PEAK_REMEDY)
        blocks = soundfile.blocks(path, blocksize=1 << 18, dtype="float32", always_2d=True)
        check_downmix(map(levels, blocks), what)  # read again, a block at a time
        levels.report()

    @staticmethod
    def _check_samples(waveform: np.ndarray, where: str, source: str) -> None:
        if waveform.shape[0] == 0:
            raise ValueError(f"{where}: {source} has no samples.")
        if not np.isfinite(waveform).all():
            raise ValueError(f"{where}: {source} contains NaN or infinite samples.")

    def _extract_features(self, waveforms: list[np.ndarray], pad_to: int | None) -> dict[str, np.ndarray]:
        """Runs the feature extractor and renames its outputs for the speech rows.

        Extractors with a fixed input window (Whisper-style, `n_samples`) pad to it themselves; the others pad to the
        longest row, or to `pad_to` (the training crop) when given.
        """
        extractor = self.feature_extractor
        padding = {}
        if getattr(extractor, "n_samples", None) is None:
            padding = {"padding": "longest"} if pad_to is None else {"padding": "max_length", "max_length": pad_to}
        features = extractor(
            waveforms,
            sampling_rate=extractor.sampling_rate,
            return_attention_mask=True,
            return_tensors="np",
            **padding,
        )
        main_input_name = extractor.model_input_names[0]
        data = {main_input_name: features[main_input_name]}
        if "attention_mask" in features:  # one vector per utterance (openSMILE functionals) needs no mask
            data["speech_attention_mask"] = features["attention_mask"].astype(np.int64)
        return data


__all__ = ["MisterEProcessor"]
