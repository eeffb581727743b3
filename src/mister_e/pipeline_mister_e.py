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
"""The `"emotion-recognition-in-conversation"` pipeline: conversations in, one emotion per utterance out.

It keeps to the rules of Hub remote code (it imports only torch, numpy, transformers and its sibling modules), and a
saved model folder carries it (`custom_pipelines` in config.json): `pipeline(model=folder, trust_remote_code=True)`
works without the package; with the package installed, `import mister_e` registers the task.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping

import torch

from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

from .configuration_mister_e import EXPERTS, PIPELINE_TASK, modalities_read
from .experts_mister_e import answerable
from .processing_mister_e import CALLERS_NAME, LEVELS_JUDGED, _describe
from .segmentation_mister_e import (
    SAMPLING_RATE,
    as_segmentation,
    is_recording,
    iter_segments,
    no_speech_found,
    read_recording,
)


TASK = PIPELINE_TASK
logger = logging.get_logger(__name__)


def non_finite(model) -> str:
    """Why a model's predictions are not finite: weights holding NaN or inf, or, with finite weights, arithmetic that
    overflows: float16's (it ends at 65504, where float32 goes on) or inputs so large that any overflows (embeddings of
    another scale than it was trained on). Each has its own remedy. Weights offloaded to disk (`device_map="auto"`
    offloads the encoders, last in the model, when memory runs short) are placeholders on the meta device, without
    data: they are left out, and said to be unchecked (on them `torch.isfinite` raised instead of this message)."""
    weights = [tensor for tensor in model.state_dict().values() if tensor.is_floating_point()]
    held = [tensor for tensor in weights if tensor.device.type != "meta"]
    if not all(torch.isfinite(tensor).all() for tensor in held):
        return ("The model's predictions are not finite (NaN or inf): its weights hold NaN or inf (a training run that "
                "diverged, or a damaged file)")
    finite = ("its weights are" if len(held) == len(weights) else
              f"its weights in memory are ({len(weights) - len(held)} offloaded to disk were not checked)")
    if model.dtype == torch.float16:
        return (f"The model's predictions are not finite (NaN or inf), but {finite}: in float16 its arithmetic "
                "overflows beyond 65504; load it in bfloat16 or float32")
    return (f"The model's predictions are not finite (NaN or inf), but {finite}: the inputs overflow its arithmetic "
            "(embeddings far larger than those it was trained on?)")


class MisterEConversationPipeline(Pipeline):
    r"""
    Emotion recognition in conversations with an end-to-end MiSTER-E model (one whose config has `speech_config`
    and/or `text_config`, e.g. built with [`MisterEForEmotionRecognition.from_stages`]) and its [`MisterEProcessor`].

    ```python
    import mister_e  # registers the task
    from transformers import pipeline

    pipe = pipeline("emotion-recognition-in-conversation", model="path/to/checkpoint")
    pipe({"utterances": [{"audio": "a.wav", "text": "hi"}, {"text": "oh no"}, {"audio": "c.wav"}]})
    # [{"label": "neu", "score": 0.61, "scores": {"neu": 0.61, ...},
    #   "expert_weights": {"speech": 0.2, "text": 0.3, "cross_modal": 0.5}}, ...]
    ```

    The processor is loaded from the model folder with `AutoProcessor` (save it there with
    `processor.save_pretrained(folder)`), or given as `pipeline(..., processor=MisterEProcessor(...))`, which is
    required when `model` is a model object rather than a path.

    Inputs: one conversation `{"utterances": [{"audio": ..., "text": ...}, ...]}` (a dict, see [`MisterEProcessor`]
    for the accepted audio forms) or a list of them. A list is a batch: it returns one result list per conversation.
    An utterance may lack audio or text; it is then answered from what it has (experts that need the missing
    modality get weight 0).

    All utterances of a conversation go through the model in one forward pass. With `batch_size=n` (at construction
    or per call), `n` conversations share one forward pass (padded to the longest one); the default is 1.

    Call options (also accepted at construction):

    - **top_k** (`int`, *optional*): keep only the `k` most likely labels in `scores`. `None` (default) keeps all.
      `scores` is always sorted from most to least likely.
    - **max_utterances** (`int`, *optional*): cut longer conversations into consecutive, non-overlapping windows of
      at most this many utterances, each run as its own conversation: the context an utterance sees is then limited
      to its window. `None` (default) runs the whole conversation at once, whatever its length (memory grows with
      the number of utterances and, for audio, with the longest clip).

    Recordings: `pipe("call.wav")` or `pipe({"recording": "call.wav"})` (a path, an audio dict, or an array with
    `sampling_rate` beside it: `{"recording": array, "sampling_rate": 44100}`) cuts the recording into utterances by
    voice activity detection (Silero VAD, extra `mister-e[recording]`) and predicts over all of them in order; each
    result also has the utterance's `start` and `end` (seconds) and its `text`. Recording options: `segmentation` (a
    [`MisterESegmentation`] or a dict of its fields: minimum silence, minimum and maximum utterance length, threshold,
    padding; the maximum is held to the processor's `max_audio_seconds`) and `asr` (a model id or folder for
    transformers' `automatic-speech-recognition` pipeline, or such a pipeline): each utterance's transcript becomes its
    text; without it utterances are answered from speech alone and `text` is `None`. A recording without speech gives
    an empty list (and a warning saying so).

    Streaming: [`~MisterEConversationPipeline.stream`] predicts each utterance as it arrives, from past context only
    (needs a model trained with `causal=True`); given a recording, it reads it block by block and predicts each
    utterance as soon as the pause after it has been read, with the same results as the whole-file call.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError(
                "MisterEConversationPipeline needs a MisterEProcessor: save it in the model folder "
                "(`processor.save_pretrained(folder)`) or pass `processor=` to `pipeline(...)`."
            )
        config = self.model.config
        if getattr(config, "speech_config", None) is None and getattr(config, "text_config", None) is None:
            raise ValueError(
                "This model has no utterance encoders (neither `speech_config` nor `text_config`): the pipeline needs "
                "an end-to-end model, e.g. `MisterEForEmotionRecognition.from_stages(utterance_model, model)`."
            )
        tokenizer, text_config = getattr(self.processor, "tokenizer", None), getattr(config, "text_config", None)
        if tokenizer is not None and text_config is not None and len(tokenizer) < text_config.vocab_size / 2:
            # what transformers builds when tokenizer.json is missing: a few special tokens, every word unknown
            raise ValueError(
                f"The processor's tokenizer knows {len(tokenizer)} tokens, the text encoder {text_config.vocab_size}: "
                "its vocabulary (tokenizer.json) is missing from the model folder or belongs to another model; save "
                "the processor again (`processor.save_pretrained(folder)`)."
            )
        positions = getattr(text_config, "max_position_embeddings", None)
        if tokenizer is not None and positions is not None and self.processor.max_text_length > positions:
            raise ValueError(
                f"The processor's `max_text_length` ({self.processor.max_text_length}) is beyond the text encoder's "
                f"{positions} positions: a long utterance would fail inside it; save the processor with "
                f"`max_text_length` <= {positions}."
            )
        # An utterance's input for a modality the model has no encoder for is not read: a text-only model answers an
        # utterance with audio and text from its text, as it answers one without audio.
        self._unread = [key for modality, key in (("speech", "audio"), ("text", "text"))
                        if getattr(config, f"{modality}_config", None) is None]
        self.model.eval()
        self._asr_pipelines = {}  # model id or folder -> loaded ASR pipeline

    # ------------------------------------------------------------------ parameters

    def _sanitize_parameters(self, top_k=None, max_utterances=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected options {sorted(kwargs)}.")
        preprocess_params, postprocess_params = {}, {}
        if max_utterances is not None:
            preprocess_params["max_utterances"] = _positive_int("max_utterances", max_utterances)
        if top_k is not None:
            postprocess_params["top_k"] = _positive_int("top_k", top_k)
        return preprocess_params, {}, postprocess_params

    # ------------------------------------------------------------------ calling

    def __call__(self, inputs, *args, batch_size=None, num_workers=None, **kwargs):
        """Predict the emotion of every utterance of one conversation (dict) or of each of a list of them.

        Returns a list with one dict per utterance for a conversation, and a list of such lists for a list (or a
        generator of them, lazily, for a generator).
        """
        if is_recording(inputs):
            return self._call_recording(inputs, kwargs)
        if isinstance(inputs, Mapping):
            return super().__call__(inputs, *args, **kwargs)
        if isinstance(inputs, (list, tuple)) and inputs and all(
                isinstance(item, Mapping) and "utterances" not in item and {"audio", "text"} & set(item)
                for item in inputs):
            raise ValueError("Got a list of utterances: a list is a batch of conversations. Give one conversation as "
                             "`{'utterances': [...]}`.")
        if isinstance(inputs, (list, tuple, Iterator)):
            batch_size = batch_size if batch_size is not None else (self._batch_size or 1)
            batch_size = _positive_int("batch_size", batch_size)
            params = self._merged_params(kwargs)
            results = self._iterate(inputs, batch_size, params)
            return results if isinstance(inputs, Iterator) else list(results)
        raise ValueError(
            "Expected a conversation dict `{'utterances': [...]}`, a list of them, or a recording (an audio file path "
            "or `{'recording': ...}`), got "
            f"{type(inputs).__name__}. (A list is a batch of conversations, not a list of utterances; an audio array is "
            "a recording as `{'recording': array, 'sampling_rate': rate}`; a conversation's JSON file or folder of "
            "audio files is read by `mister_e.conversations.read_conversation(path)`.)"
        )

    # ------------------------------------------------------------------ recordings

    def recording_utterances(self, recording, segmentation=None, asr=None) -> Iterator[dict]:
        """The utterances of a recording, in order, each as soon as the recording has been read past its end:
        `{"audio", "start", "end", "text"}` (see the class docstring)."""
        segmentation = as_segmentation(segmentation)
        longest = self.processor.max_audio_seconds  # what the processor reads of an utterance: split, never cut short
        if segmentation.max_utterance_seconds > longest:
            if segmentation.min_utterance_seconds >= longest:
                raise ValueError(f"Segmentation `min_utterance_seconds` ({segmentation.min_utterance_seconds:g}) must "
                                 f"be below the processor's `max_audio_seconds` ({longest:g} s): no utterance is read "
                                 "past it, so longer ones are split there.")
            segmentation = dataclasses.replace(segmentation, max_utterance_seconds=longest)
        source, rate = recording, None
        if isinstance(recording, Mapping) and "recording" in recording:  # {"recording": array, "sampling_rate": sr}
            source, rate = recording["recording"], recording.get("sampling_rate")
        for segment in iter_segments(read_recording(source, rate), segmentation):
            yield {**segment, "text": self._transcribe(segment["audio"]["array"], asr) if asr else None}

    def _transcribe(self, array, asr) -> str:
        """One utterance's transcript through transformers' ASR pipeline, fed the in-memory audio (no FFmpeg)."""
        if isinstance(asr, (str, os.PathLike)):
            from transformers import pipeline

            key = os.fspath(asr)
            if key not in self._asr_pipelines:
                try:
                    self._asr_pipelines[key] = pipeline("automatic-speech-recognition", model=key, device=self.device)
                except (OSError, ValueError) as error:  # ValueError: huggingface_hub's malformed-id error
                    reason = (str(error).strip() or type(error).__name__).splitlines()[0]
                    reason = reason if len(reason) <= 160 else reason[:160] + " ..."  # transformers lists classes
                    raise OSError(f"ASR model {key!r} could not be loaded (a folder that is not there, offline without "
                                  f"its weights, or not a model): {reason}") from error
            asr = self._asr_pipelines[key]
        return asr({"raw": array, "sampling_rate": SAMPLING_RATE})["text"].strip()

    def _call_recording(self, recording, kwargs) -> list[dict]:
        options = {key: kwargs.pop(key) for key in ("segmentation", "asr") if key in kwargs}
        utterances = list(self.recording_utterances(recording, **options))
        if not utterances:
            logger.warning(no_speech_found(recording, options.get("segmentation")))
            return []
        conversation = {"utterances": [_as_input(utterance) for utterance in utterances]}
        results = super().__call__(conversation, **kwargs)
        return [{**_timing(utterance), **result} for utterance, result in zip(utterances, results)]

    def _merged_params(self, kwargs):
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        return (
            {**self._preprocess_params, **preprocess_params},
            {**self._forward_params, **forward_params},
            {**self._postprocess_params, **postprocess_params},
        )

    def _iterate(self, conversations: Iterable, batch_size: int, params) -> Iterator[list[dict]]:
        preprocess_params, forward_params, postprocess_params = params
        chunk, first = [], 0
        for conversation in conversations:
            chunk.append(conversation)
            if len(chunk) == batch_size:
                yield from self.run_single(chunk, {**preprocess_params, "first_index": first}, forward_params,
                                           postprocess_params)
                chunk, first = [], first + batch_size
        if chunk:
            yield from self.run_single(chunk, {**preprocess_params, "first_index": first}, forward_params,
                                       postprocess_params)

    # ------------------------------------------------------------------ pipeline steps

    def preprocess(self, inputs, max_utterances=None, first_index=0):
        """`first_index`: the caller's index of `inputs`' first conversation (a batch call runs them in chunks), so
        that errors name conversations and utterances as the caller numbers them, never by chunk or window."""
        single = isinstance(inputs, Mapping)
        conversations = [inputs] if single else list(inputs)
        if not conversations:
            raise ValueError("Got an empty batch: expected at least one conversation.")
        self._checked(lambda: self.processor._as_batch(conversations), conversations, first_index)
        conversations = [{**conversation, "utterances": [
            _named(self._readable(u), f"{_describe('conversation', first_index + c, conversation)}, "
                                      f"{_describe('utterance', i, u)}")
            for i, u in enumerate(conversation["utterances"])]} for c, conversation in enumerate(conversations)]
        windows, counts = [], []
        for conversation in conversations:
            utterances = list(conversation["utterances"])
            step = max_utterances or len(utterances)
            parts = [utterances[i : i + step] for i in range(0, len(utterances), step)]
            windows.extend({**conversation, "utterances": part} for part in parts)
            counts.append(len(parts))
        if len(windows) == len(conversations):
            windows = conversations
        model_inputs = self._checked(lambda: dict(self.processor(windows, return_tensors="pt")), conversations,
                                     first_index)
        unanswerable = self._unanswerable(model_inputs)
        if unanswerable is not None:  # name it by the caller's conversation and utterance, not by window
            window, position = unanswerable
            index = next(c for c in range(len(counts)) if sum(counts[: c + 1]) > window)
            utterances = list(conversations[index]["utterances"])
            utterance = (window - sum(counts[:index])) * (max_utterances or len(utterances)) + position
            raise ValueError(f"{_describe('conversation', first_index + index, conversations[index])}, "
                             f"{_describe('utterance', utterance, utterances[utterance])}: {self._no_expert_reads()}")
        if self.dtype is not None and self.dtype.is_floating_point:
            for key in ("input_values", "input_features"):
                if key in model_inputs:
                    model_inputs[key] = model_inputs[key].to(self.dtype)
        return {"model_inputs": model_inputs, "windows_per_conversation": counts, "single": single}

    def _checked(self, run, conversations: list, first_index: int):
        """`run()`, and when its input is refused, the same refusal for the caller's own conversation: the batch
        that failed may be a chunk of the caller's list, or windows of a conversation, with indices of their own."""
        try:
            return run()
        except (ValueError, TypeError, FileNotFoundError) as error:
            for index, conversation in enumerate(conversations):
                try:
                    self.processor._as_batch([conversation])
                    if isinstance(conversation, Mapping):
                        self.processor(conversation)
                except type(error) as culprit:
                    raise _renamed(culprit, _describe("conversation", 0, conversation),
                                   _describe("conversation", first_index + index, conversation)) from None
            raise

    def _readable(self, utterance):
        """The utterance without the inputs this model has no encoder for (said once a process); one with nothing else
        is kept whole, for the refusal that names it (`_unanswerable`)."""
        if not isinstance(utterance, Mapping) or not any(utterance.get(key) is not None for key in self._unread):
            return utterance
        if all(utterance.get(key) is None for key in ("audio", "text") if key not in self._unread):
            return utterance
        modality = "speech" if self._unread == ["audio"] else "text"
        logger.warning_once(f"This model has no {modality} encoder: utterances' {' and '.join(self._unread)} "
                            "are not read.")
        return {key: value for key, value in utterance.items() if key not in self._unread}

    def _unanswerable(self, model_inputs) -> tuple[int, int] | None:
        """`(conversation, utterance)` of the first real utterance that no enabled expert can answer (it lacks a
        modality every expert reads: a text-only model given speech alone); its prediction would be arbitrary."""
        answered = answerable(model_inputs["modality_mask"], self.model.config.expert_mask)
        missing = (model_inputs["attention_mask"].bool() & ~answered).nonzero()
        return tuple(missing[0].tolist()) if len(missing) else None

    def _no_expert_reads(self) -> str:
        reads = modalities_read(self.model.config.experts)
        return f"no enabled expert of this model can answer it (the experts read {reads})."

    def _forward(self, inputs):
        model_inputs = inputs["model_inputs"]
        output = self.model(**model_inputs)
        return {
            "logits": output.logits,
            "gate_weights": output.gate_weights,
            "attention_mask": model_inputs["attention_mask"],
            "windows_per_conversation": inputs["windows_per_conversation"],
            "single": inputs["single"],
        }

    def postprocess(self, model_outputs, top_k=None):
        probabilities = model_outputs["logits"].float().softmax(-1)
        gate_weights = model_outputs["gate_weights"].float()
        lengths = model_outputs["attention_mask"].sum(-1).tolist()
        rows = [
            [self._utterance_result(probabilities[w, i], gate_weights[w, i], top_k) for i in range(int(length))]
            for w, length in enumerate(lengths)
        ]
        results, start = [], 0
        for count in model_outputs["windows_per_conversation"]:
            results.append([row for window in rows[start : start + count] for row in window])
            start += count
        return results[0] if model_outputs["single"] else results

    def _utterance_result(self, probabilities: torch.Tensor, gate_weights: torch.Tensor, top_k=None) -> dict:
        if not (torch.isfinite(probabilities).all() and torch.isfinite(gate_weights).all()):
            raise ValueError(f"{non_finite(self.model)}.")
        id2label = self.model.config.id2label
        order = probabilities.argsort(descending=True, stable=True).tolist()
        if top_k is not None:
            order = order[:top_k]
        scores = {id2label[i]: float(probabilities[i]) for i in order}
        return {
            "label": id2label[order[0]],
            "score": float(probabilities[order[0]]),
            "scores": scores,
            "expert_weights": {name: float(w) for name, w in zip(EXPERTS, gate_weights.tolist())},
        }

    # ------------------------------------------------------------------ streaming

    def stream(self, utterances, top_k: int | None = None, segmentation=None, asr=None) -> Iterator[dict]:
        """Predict each utterance as it arrives, from it and the utterances before it only.

        Args:
            utterances (iterable of `dict`, or a recording):
                Utterances `{"audio": ..., "text": ...}` in conversation order; may be a live generator. Or a
                recording (as for `__call__`), cut into utterances first; its results carry `start`, `end`, `text`.
            top_k (`int`, *optional*):
                As in `__call__`.
            segmentation, asr: For a recording, as in `__call__`.

        Yields:
            One result dict per utterance (the same schema as `__call__`), as soon as that utterance is read. With a
            causal model these equal the predictions for the whole conversation run at once (up to float error and
            audio padding effects of the speech encoder).

        Each utterance is encoded once, and the conversation model takes one step from its carried state (convolution
        buffer, GRU states, cached attention keys/values; `MisterEForEmotionRecognition.step`): the same work at
        every position except the attention dot products over earlier utterances, never a rerun of the history.

        Raises:
            ValueError: The model was not trained with `causal=True` (its predictions would use future context).
        """
        if not getattr(self.model.config, "causal", False):
            raise ValueError(
                "Streaming needs a causal model (`config.causal=True`): this model's predictions use future context, "
                "so they cannot be made utterance by utterance. Call the pipeline on the whole conversation instead."
            )
        if is_recording(utterances):
            heard = []  # the segments cut so far: each is predicted as soon as it is cut

            def cut():
                for segment in self.recording_utterances(utterances, segmentation, asr):
                    heard.append(segment)
                    yield _as_input(segment)

            for result in self.stream(cut(), top_k):
                yield {**_timing(heard[-1]), **result}
            if not heard:
                logger.warning(no_speech_found(utterances, segmentation))
            return
        preprocess_params, _, postprocess_params = self._merged_params({} if top_k is None else {"top_k": top_k})
        top_k = postprocess_params.get("top_k")
        # The pipeline's `max_utterances` windows, as `__call__` cuts them: each window starts from no history.
        window = preprocess_params.get("max_utterances")
        if isinstance(utterances, Mapping) and "utterances" in utterances:  # a conversation, as `__call__` takes
            utterances = utterances["utterances"]
        state = None
        for index, utterance in enumerate(utterances):
            if window and index % window == 0:
                state = None
            if isinstance(utterance, Mapping) and "utterances" in utterance:
                raise ValueError(f"streamed utterance {index} is a conversation (it has `utterances`): `stream` takes "
                                 "one conversation's utterances, or one conversation dict; stream each conversation "
                                 "on its own.")
            conversation = {"utterances": [_named(self._readable(utterance),
                                                  f"streamed {_describe('utterance', index, utterance)}")]}
            try:
                model_inputs = dict(self.processor(conversation, return_tensors="pt"))
            except (ValueError, TypeError, FileNotFoundError) as error:
                raise _renamed(error, f"conversation 0, {_describe('utterance', 0, utterance)}",
                               f"streamed {_describe('utterance', index, utterance)}") from None
            if self._unanswerable(model_inputs) is not None:
                raise ValueError(f"streamed utterance {index}: {self._no_expert_reads()}")
            with self.device_placement(), torch.no_grad():
                model_inputs = self._ensure_tensor_on_device(model_inputs, device=self.device)
                for key in ("input_values", "input_features"):
                    if key in model_inputs and self.dtype is not None and self.dtype.is_floating_point:
                        model_inputs[key] = model_inputs[key].to(self.dtype)
                encoded = self.model.encode_utterances(**model_inputs)
                output, state = self.model.step(
                    speech_embeds=_row(encoded.get("speech_embeds"), self.model.config.speech_embed_dim, self),
                    text_embeds=_row(encoded.get("text_embeds"), self.model.config.text_embed_dim, self),
                    modality_mask=model_inputs["modality_mask"][:, 0],
                    state=state,
                )
            probabilities = output.logits[0, -1].float().softmax(-1).cpu()
            yield self._utterance_result(probabilities, output.gate_weights[0, -1].float().cpu(), top_k)


def _renamed(error: Exception, old: str, new: str) -> Exception:
    """`error` again, its message starting with `new` where it started with `old`."""
    message = str(error.args[0]) if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
    return type(error)(new + message[len(old):] if message.startswith(old) else message)


def _named(utterance, name: str):
    """The utterance with the name its caller knows it by (`CALLERS_NAME`), for the processor's warnings and errors."""
    return {**utterance, CALLERS_NAME: name} if isinstance(utterance, Mapping) else utterance


def _as_input(utterance: Mapping) -> dict:
    """A recording's utterance as the processor reads it (audio array, text when transcribed), its level not judged
    again (`LEVELS_JUDGED`)."""
    return {"audio": utterance["audio"], **({"text": utterance["text"]} if utterance.get("text") else {}),
            LEVELS_JUDGED: True}


def _timing(utterance: Mapping) -> dict:
    return {"start": round(utterance["start"], 3), "end": round(utterance["end"], 3), "text": utterance.get("text")}


def _row(embeds: torch.Tensor | None, width: int, pipe: Pipeline) -> torch.Tensor:
    """One utterance's `(1, width)` embedding from a (1, 1, width) grid, or zeros when it lacks that modality."""
    if embeds is None:
        return torch.zeros(1, width, device=pipe.device, dtype=pipe.dtype if pipe.dtype is not None else torch.float32)
    return embeds[:, 0]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:  # numpy's integers too
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def register_pipeline() -> None:
    """Register `"emotion-recognition-in-conversation"` so that `transformers.pipeline(task, model=...)` finds it.

    Idempotent: a second call (e.g. after a module reload) does not re-register the same class.
    """
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if registered is not None and registered.get("impl") is MisterEConversationPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=MisterEConversationPipeline, pt_model=AutoModel, type="multimodal"
    )


__all__ = ["MisterEConversationPipeline", "register_pipeline"]
