"""Tests of `MisterEProcessor`: audio reading/resampling, batch layout, crops, errors and save/load."""

from __future__ import annotations

import os
import re
import sys
import unicodedata

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
import transformers.dynamic_module_utils as dynamic_module_utils
from transformers import AutoProcessor, BertTokenizerFast, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor
from transformers.testing_utils import CaptureLogger

from mister_e.audio_mister_e import resample
from mister_e.processing_mister_e import MisterEProcessor, normalize_text
from mister_e.segmentation_mister_e import load_recording


SR = 16000
WORDS = ["hello", "world", "yes", "no", "oh", "okay", "really", "fine"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


@pytest.fixture(scope="session")
def tokenizer():
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)})


def wav2vec2_extractor(do_normalize=True):
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=do_normalize, return_attention_mask=True
    )


@pytest.fixture
def processor(tokenizer):
    return MisterEProcessor(wav2vec2_extractor(), tokenizer)


def tones(sampling_rate, seconds=2.0):
    """A sum of sines with faded ends, so resampling edge effects stay tiny: the same signal at any rate."""
    t = np.arange(round(sampling_rate * seconds)) / sampling_rate
    signal = 0.5 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 1234.5 * t + 0.3)
    signal += 0.1 * np.sin(2 * np.pi * 3000 * t)
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.1)
    return (signal * fade).astype(np.float32)


def array_audio(seconds, value=None, seed=0):
    samples = round(seconds * SR)
    array = np.full(samples, value) if value is not None else np.random.default_rng(seed).standard_normal(samples)
    return {"array": array.astype(np.float32), "sampling_rate": SR}


def test_stereo_44k_file_matches_16k_array(processor, tmp_path):
    path = tmp_path / "stereo.wav"
    stereo = np.stack([tones(44100), tones(44100)], axis=1)
    sf.write(path, stereo, 44100, subtype="FLOAT")
    from_file = processor({"utterances": [{"audio": str(path)}]})
    from_path_dict = processor({"utterances": [{"audio": {"path": path}}]})
    from_array = processor({"utterances": [{"audio": tones(SR), "sampling_rate": SR}]})
    # The 44.1 kHz array, channels first, goes through the in-package resampler instead of soxr.
    resampled = processor({"utterances": [{"audio": stereo.T, "sampling_rate": 44100}]})

    assert from_file["input_values"].shape == (1, 2 * SR)
    for output in (from_file, from_path_dict, resampled):
        torch.testing.assert_close(output["input_values"], from_array["input_values"], atol=2e-4, rtol=0)
        assert torch.equal(output["speech_attention_mask"], from_array["speech_attention_mask"])


def test_whisper_file_matches_array(tokenizer, tmp_path):
    processor = MisterEProcessor(WhisperFeatureExtractor(), tokenizer)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([tones(44100), tones(44100)], axis=1), 44100)
    from_file = processor({"utterances": [{"audio": path, "text": "hello"}]})
    from_array = processor({"utterances": [{"audio": {"array": tones(SR), "sampling_rate": SR}, "text": "hello"}]})

    assert from_file["input_features"].shape == (1, 80, 3000)
    assert from_file["speech_attention_mask"].shape == (1, 3000)
    assert from_file["speech_attention_mask"].sum() == 2 * SR // processor.feature_extractor.hop_length
    # 16-bit FLAC quantisation noise shows in the log-mel of the faded ends.
    torch.testing.assert_close(from_file["input_features"], from_array["input_features"], atol=1e-2, rtol=0)
    # Whisper-style extractors keep their fixed window in training too.
    trained = processor({"utterances": [{"audio": path}]}, training=True, generator=0)
    assert trained["input_features"].shape == (1, 80, 3000)


def test_batch_layout_and_row_order(processor, tokenizer):
    # Audio durations and texts are distinct per utterance so every row can be traced back to its utterance.
    batch = [
        {
            "id": "d0",
            "utterances": [
                {"audio": array_audio(1.25), "text": "hello world", "label": 3},
                {"text": "oh"},
                {"audio": array_audio(1.5, seed=1), "text": None, "speaker": "A"},
            ],
        },
        {
            "id": "d1",
            "utterances": [
                {"audio": array_audio(2.0, seed=2)},
                {"audio": array_audio(1.75, seed=3), "text": "yes really fine"},
            ],
        },
    ]
    out = processor(batch)

    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["attention_mask"].dtype == torch.long
    assert out["modality_mask"].dtype == torch.bool
    assert out["modality_mask"].tolist() == [
        [[True, True], [False, True], [True, False]],
        [[True, False], [True, True], [False, False]],
    ]
    assert out["input_values"].shape == (4, 2 * SR)
    assert out["input_ids"].shape[0] == out["text_attention_mask"].shape[0] == 3
    assert "token_type_ids" not in out and "text_token_type_ids" not in out

    # The contract with the model: rows fill `modality_mask[..., m]` in row-major order.
    durations = torch.zeros(2, 3, dtype=torch.long)
    durations[out["modality_mask"][..., 0]] = out["speech_attention_mask"].sum(-1)
    assert durations.tolist() == [[1.25 * SR, 0, 1.5 * SR], [2 * SR, 1.75 * SR, 0]]
    texts = np.full((2, 3), "", dtype=object)
    texts[out["modality_mask"][..., 1].numpy()] = tokenizer.batch_decode(out["input_ids"], skip_special_tokens=True)
    assert texts.tolist() == [["hello world", "oh", ""], ["", "yes really fine", ""]]


def test_single_modality_batches_omit_the_other_keys(processor):
    text_only = processor({"utterances": [{"text": "hello"}, {"text": "no"}]})
    assert set(text_only) == {"attention_mask", "modality_mask", "input_ids", "text_attention_mask"}
    speech_only = processor([{"utterances": [{"audio": array_audio(1.0)}]}], return_tensors="np")
    assert set(speech_only) == {"attention_mask", "modality_mask", "input_values", "speech_attention_mask"}
    assert isinstance(speech_only["input_values"], np.ndarray)


def test_text_truncation(processor):
    long_text = " ".join(WORDS * 20)
    assert processor({"utterances": [{"text": long_text}]})["input_ids"].shape == (1, 128)
    assert processor({"utterances": [{"text": long_text}]}, max_text_length=8)["input_ids"].shape == (1, 8)


def test_inference_keeps_the_start_and_pads_short_audio(tokenizer):
    processor = MisterEProcessor(wav2vec2_extractor(do_normalize=False), tokenizer, max_audio_seconds=2.0)
    ramp = np.linspace(-1, 1, 3 * SR, dtype=np.float32)
    short = array_audio(0.25, value=0.5)
    out = processor({"utterances": [{"audio": {"array": ramp, "sampling_rate": SR}}, {"audio": short}]})

    np.testing.assert_array_equal(out["input_values"][0].numpy(), ramp[: 2 * SR])
    # Short audio is zero-padded up to `min_audio_seconds` and that padding counts as signal.
    assert out["speech_attention_mask"].sum(-1).tolist() == [2 * SR, SR]
    np.testing.assert_array_equal(out["input_values"][1, : SR // 4].numpy(), 0.5)
    np.testing.assert_array_equal(out["input_values"][1, SR // 4 :].numpy(), 0.0)


def test_training_crop_is_random_but_seeded(tokenizer):
    processor = MisterEProcessor(wav2vec2_extractor(do_normalize=False), tokenizer, train_crop_seconds=2.0)
    ramp = np.arange(10 * SR, dtype=np.float32) / (10 * SR)
    batch = {"utterances": [{"audio": {"array": ramp, "sampling_rate": SR}}, {"audio": array_audio(1.5, value=0.5)}]}

    first = processor(batch, training=True, generator=0)
    again = processor(batch, training=True, generator=np.random.default_rng(0))
    other = processor(batch, training=True, generator=1)

    assert first["input_values"].shape == (2, 2 * SR)
    torch.testing.assert_close(first["input_values"], again["input_values"])
    assert not torch.equal(first["input_values"], other["input_values"])
    for out in (first, other):
        window = out["input_values"][0].numpy()
        start = round(float(window[0]) * 10 * SR)
        np.testing.assert_allclose(window, ramp[start : start + 2 * SR])
    # Shorter audio is padded to the crop by the extractor, and that padding is masked.
    assert first["speech_attention_mask"].sum(-1).tolist() == [2 * SR, 1.5 * SR]
    # Inference ignores the crop; the crop never exceeds `max_audio_seconds`.
    assert processor(batch)["input_values"].shape == (2, 10 * SR)
    assert processor(batch, training=True, max_audio_seconds=1.5)["input_values"].shape == (2, 1.5 * SR)


def test_save_load_round_trip_keeps_options(tokenizer, tmp_path):
    processor = MisterEProcessor(
        wav2vec2_extractor(),
        tokenizer,
        max_audio_seconds=12.0,
        min_audio_seconds=0.5,
        train_crop_seconds=3.0,
        max_text_length=32,
    )
    processor.save_pretrained(tmp_path)
    loaded = MisterEProcessor.from_pretrained(tmp_path)

    assert (loaded.max_audio_seconds, loaded.min_audio_seconds, loaded.train_crop_seconds, loaded.max_text_length) == (
        12.0,
        0.5,
        3.0,
        32,
    )
    assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab()
    batch = {"utterances": [{"audio": array_audio(1.2), "text": "okay fine"}]}
    for key, value in processor(batch).items():
        torch.testing.assert_close(loaded(batch)[key], value)


def test_auto_processor_loads_saved_remote_code(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(MisterEProcessor, "_auto_class", None)
    MisterEProcessor.register_for_auto_class("AutoProcessor")
    processor = MisterEProcessor(WhisperFeatureExtractor(), tokenizer, max_text_length=16)
    processor.save_pretrained(tmp_path / "saved")

    # The copied file must pass transformers' remote-code import check with only these third-party imports.
    module_file = tmp_path / "saved" / "processing_mister_e.py"
    assert module_file.is_file()
    third_party = set(dynamic_module_utils.get_imports(module_file)) - set(sys.stdlib_module_names)
    assert third_party <= {"numpy", "torch", "transformers"}

    loaded = AutoProcessor.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert type(loaded).__name__ == "MisterEProcessor"
    assert isinstance(loaded.feature_extractor, WhisperFeatureExtractor)
    assert loaded.max_text_length == 16


@pytest.mark.parametrize("bad", [{"max_audio_seconds": 0.5}, {"train_crop_seconds": 0.0}, {"max_text_length": 0}])
def test_bad_options_raise(processor, tokenizer, bad):
    with pytest.raises(ValueError):
        MisterEProcessor(wav2vec2_extractor(), tokenizer, **bad)
    with pytest.raises(ValueError):
        processor({"utterances": [{"text": "hello"}]}, **bad)


def _conversation(utterance):
    return {"id": "dia7", "utterances": [{"id": "u0", "text": "hello"}, {"id": "u1", **utterance}]}


def test_missing_file_names_path_and_utterance(processor, tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(FileNotFoundError) as error:
        processor([{"utterances": [{"text": "hi"}]}, _conversation({"audio": str(path)})])
    message = str(error.value)
    assert str(path) in message and "conversation 1 (id='dia7'), utterance 1 (id='u1')" in message


def test_an_audio_path_naming_a_folder_is_named(processor, tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"utterance 1 (id='u1'): {str(tmp_path)!r} is a folder, not an")):
        processor(_conversation({"audio": str(tmp_path)}))


@pytest.mark.parametrize(
    "content, match",
    [(b"RIFF\x00\x00 this is not audio" * 8, "could not read audio file"), (None, "has no samples")],
    ids=["corrupt", "empty"],
)
def test_unreadable_or_empty_file(processor, tmp_path, content, match):
    path = tmp_path / "clip.wav"
    if content is None:
        sf.write(path, np.zeros(0, dtype=np.float32), 44100)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as error:
        processor(_conversation({"audio": path}))
    assert str(path) in str(error.value) and "utterance 1 (id='u1')" in str(error.value)


def test_non_finite_file(processor, tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), SR, subtype="FLOAT")
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        processor(_conversation({"audio": str(path)}))
    assert str(path) in str(error.value)


def test_an_unscaled_float_file_is_refused_by_the_processor_and_as_a_recording_alike(processor, tmp_path):
    """Float WAV samples in the thousands are integer PCM saved unscaled: read as a conversation's utterance or as a
    recording, the same refusal names the file."""
    path = tmp_path / "loud.wav"
    sf.write(path, (tones(SR) * 2**15).astype(np.float32), SR, subtype="FLOAT")
    with pytest.raises(ValueError, match="far outside \\[-1, 1\\]") as error:
        processor(_conversation({"audio": str(path)}))
    assert str(path) in str(error.value) and "utterance 1 (id='u1')" in str(error.value)
    with pytest.raises(ValueError, match=f"The recording {path}: float audio samples reach .* far outside"):
        load_recording(path)
    sf.write(path, tones(SR).astype(np.float32), SR, subtype="FLOAT")  # in range: read by both
    assert len(processor(_conversation({"audio": str(path)}))["input_values"]) and len(load_recording(path)) == SR * 2


def test_a_capped_utterance_is_said(processor):
    """Inference reads the first `max_audio_seconds` of a longer utterance (said once a process), a text up to
    `max_text_length` tokens (said naming the utterances cut and how many: it was said once a process, of the first
    text that filled the limit, even one of exactly that length); training crops audio without a word."""
    long_turn = {"utterances": [{"audio": np.full(2 * SR, 0.1, np.float32), "sampling_rate": SR}]}
    logger = transformers.logging.get_logger("mister_e.processing_mister_e")
    with CaptureLogger(logger) as captured:
        processor(long_turn, training=True, max_audio_seconds=0.75, train_crop_seconds=0.5, min_audio_seconds=0.25)
    assert captured.out == ""
    with CaptureLogger(logger) as captured:
        features = processor(long_turn, max_audio_seconds=0.75, min_audio_seconds=0.25)
    assert "longer than max_audio_seconds (0.75 s)" in captured.out
    assert features["input_values"].shape[-1] == round(0.75 * SR)
    texts = [" ".join(WORDS * 3), "hello world", "yes no oh okay fine", " ".join(WORDS * 2)]  # 26, 4, 7, 18 tokens
    with CaptureLogger(logger) as captured:
        features = processor({"utterances": [{"text": text, "id": f"u{i}"} for i, text in enumerate(texts)]},
                             max_text_length=7)
    assert features["input_ids"].shape[-1] == 7
    assert captured.out == ("conversation 0, utterance 0 (id='u0') (and 1 more of the 4 texts): the text is longer "
                            "than max_text_length (7 tokens), so only its first tokens are read; cut long turns into "
                            "utterances.\n")  # the text of exactly 7 tokens is whole, and not counted


@pytest.mark.parametrize("dtype, scale, offset", [(np.int16, 2**15, 0), (np.int32, 2**31, 0), (np.uint8, 128, 128)])
def test_integer_pcm_reads_as_its_float_samples(processor, dtype, scale, offset):
    """Integer PCM (scipy.io.wavfile's arrays) is scaled as soundfile scales those files, for an utterance and for a
    recording alike."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, SR).astype(np.float32)
    pcm = (np.round(samples * scale) + offset).astype(dtype)
    expected = ((pcm.astype(np.float64) - offset) / scale).astype(np.float32)
    as_pcm = processor({"utterances": [{"audio": {"array": pcm, "sampling_rate": SR}}]})["input_values"]
    as_float = processor({"utterances": [{"audio": {"array": expected, "sampling_rate": SR}}]})["input_values"]
    np.testing.assert_allclose(as_pcm, as_float, atol=1e-6)
    np.testing.assert_allclose(load_recording({"array": pcm, "sampling_rate": SR}), expected, atol=1e-7)
    if dtype is np.int16:  # the common slip, PCM cast to float unscaled, is refused rather than read as a shout
        for read in (lambda a: processor({"utterances": [{"audio": {"array": a, "sampling_rate": SR}}]}),
                     lambda a: load_recording({"array": a, "sampling_rate": SR})):
            with pytest.raises(ValueError, match="samples reach .*integer PCM cast to float"):
                read(pcm.astype(np.float32))
            read(expected * 8)  # loud float audio past full scale is still audio


@pytest.mark.parametrize(
    "utterance, match",
    [
        ({"audio": np.zeros(0, dtype=np.float32), "sampling_rate": SR}, "has no samples"),
        ({"audio": np.array([0.0, np.inf], dtype=np.float32), "sampling_rate": SR}, "NaN or infinite"),
        ({"audio": {"array": np.array([0.0, np.nan]), "sampling_rate": SR}}, "NaN or infinite"),
        ({"audio": np.zeros(SR, dtype=np.float32)}, "needs its sampling rate"),
        ({"audio": {"array": np.zeros(SR)}}, "needs its sampling rate"),
        ({"audio": np.zeros(SR), "sampling_rate": "16000"}, "positive whole number"),
        ({"audio": np.zeros(SR), "sampling_rate": np.array([16000.0])}, "positive whole number"),
        ({"audio": np.zeros(SR), "sampling_rate": -16000}, "positive whole number"),
        ({"audio": np.zeros(SR), "sampling_rate": 22050.5}, "positive whole number"),
        ({"audio": np.zeros(SR, dtype=np.int64), "sampling_rate": SR}, "int16, int32 or uint8 PCM"),
        ({"audio": 3, "sampling_rate": SR}, "float samples"),
        ({"audio": {"sampling_rate": SR}}, "an `array`"),
        ({"audio": np.zeros((2, 3, SR)), "sampling_rate": SR}, "1-D or 2-D"),
        ({"audio": np.zeros((16, SR)), "sampling_rate": SR}, "cannot tell channels"),
        ({"text": 42}, "must be a string"),
        ({"text": "broken \ud83d emoji"}, "not valid Unicode"),
        ({"audio": None, "text": None, "label": 0}, "neither `audio` nor `text`"),
    ],
    ids=[
        "empty-array",
        "inf-array",
        "nan-array-dict",
        "rate-missing",
        "rate-missing-in-dict",
        "rate-str",
        "rate-array",
        "rate-negative",
        "rate-fractional",
        "int64-samples",
        "audio-int",
        "dict-without-audio",
        "3d-array",
        "ambiguous-channels",
        "text-not-str",
        "text-lone-surrogate",
        "no-modality",
    ],
)
def test_bad_utterance_names_it(processor, utterance, match):
    with pytest.raises(ValueError, match=match) as error:
        processor(_conversation(utterance))
    assert "conversation 0 (id='dia7'), utterance 1 (id='u1')" in str(error.value)


@pytest.mark.parametrize(
    "conversations, match",
    [
        ([], "empty batch"),
        ({"id": "dia7", "utterances": []}, r"conversation 0 \(id='dia7'\): the conversation has no utterances"),
        ({"utterances": "hello"}, "`utterances` must be a list"),
        ({"dialogue": []}, "`utterances` must be a list"),
        ("hello", "Expected a conversation dict"),
        ([{"utterances": [{"text": "hi"}]}, ["hi"]], "conversation 1: expected a dict"),
        ({"utterances": [{"text": "hi"}, "hi"]}, "conversation 0, utterance 1: an utterance must be a dict"),
    ],
    ids=["empty-batch", "empty-conversation", "utterances-str", "no-utterances", "str", "conv-list", "utt-str"],
)
def test_bad_batch_structure(processor, conversations, match):
    with pytest.raises(ValueError, match=match):
        processor(conversations)


def test_path_like_and_os_fspath(processor, tmp_path):
    path = tmp_path / "mono.wav"
    sf.write(path, tones(SR), SR, subtype="FLOAT")
    out = processor({"utterances": [{"audio": path}, {"audio": os.fspath(path)}]})
    torch.testing.assert_close(out["input_values"][0], out["input_values"][1])


@pytest.mark.parametrize("rate", [16001, 44056])
def test_rates_sharing_almost_no_factor_resample_without_a_giant_filter_bank(processor, rate):
    """The polyphase resampler would need one filter per output phase (16000 of them from 16001 Hz: gigabytes); such
    rates go through soxr, and the tone comes out where it should."""
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    resampled = resample(tone, rate, SR)
    assert abs(len(resampled) - SR) <= 1
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(resampled)) / SR)
    np.testing.assert_allclose(resampled[100:-100], expected[100:-100], atol=2e-3)
    processor({"utterances": [{"audio": {"array": tone, "sampling_rate": rate}}]})  # and the processor reads it


def test_silent_audio_is_said_with_its_utterance(processor):
    """Silent audio (or a few samples) is read, since a muted turn is a valid recording, but the caller is told which
    utterance it is: the speech experts would otherwise label silence with no word. Speech-like audio says nothing."""
    logger = transformers.logging.get_logger("mister_e.processing_mister_e")
    tone = np.sin(np.arange(SR) / 10).astype(np.float32) * 0.1
    conversation = {"id": "call-7", "utterances": [
        {"id": "u1", "audio": tone, "sampling_rate": SR},
        {"id": "u2", "audio": np.zeros(SR, np.float32), "sampling_rate": SR, "text": "hello"},
        {"id": "u3", "audio": tone[:1], "sampling_rate": SR},
    ]}
    with CaptureLogger(logger) as captured:
        features = processor(conversation)
    assert "'u2'" in captured.out and "call-7" in captured.out and "(and 1 more utterances)" in captured.out
    assert "silent or shorter than 25 ms" in captured.out
    assert features["modality_mask"][0, :, 0].tolist() == [True, True, True]  # still read
    with CaptureLogger(logger) as captured:
        processor({"utterances": [{"audio": tone, "sampling_rate": SR}]})
    assert captured.out == ""


def test_a_key_that_misnames_text_or_audio_is_said(processor):
    """`transcript` for `text` would silently answer from speech alone: the first utterance with it is named; an
    utterance that also has `text` (a dataset's extra column) says nothing."""
    logger = transformers.logging.get_logger("mister_e.processing_mister_e")
    tone = np.sin(np.arange(SR) / 10).astype(np.float32) * 0.1
    conversation = {"id": "call-7", "utterances": [
        {"id": "u1", "text": "hi", "transcript": "hi"},
        {"id": "u2", "audio": tone, "sampling_rate": SR, "transcript": "hello"},
        {"id": "u3", "audio": tone, "sampling_rate": SR, "transcript": "bye"},
    ]}
    with CaptureLogger(logger) as captured:
        features = processor(conversation)
    assert captured.out.count("is not read") == 1 and "utterance 1 (id='u2')" in captured.out
    assert "`transcript` is not read" in captured.out and "reads `text`" in captured.out
    assert features["modality_mask"][0, :, 1].tolist() == [True, False, False]
    with CaptureLogger(logger) as captured:
        processor({"utterances": [{"text": "hi", "transcript": "hi", "speaker": "A"}]})
    assert captured.out == ""


def test_a_file_cut_short_is_read_with_a_warning(processor, tmp_path):
    """A WAV whose last half is missing (an interrupted copy or recording) was read as shorter audio without a word:
    the utterance and the recording both say so, naming the file."""
    path = tmp_path / "cut.wav"
    sf.write(path, tones(SR), SR, subtype="PCM_16")
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    logger = transformers.logging.get_logger("mister_e.audio_mister_e")
    with CaptureLogger(logger) as captured:
        features = processor(_conversation({"audio": str(path)}), min_audio_seconds=0)
    assert "utterance 1 (id='u1')" in captured.out and str(path) in captured.out
    assert "ends before its header says (it holds 50% of the audio announced" in captured.out
    assert features["input_values"].shape[-1] == pytest.approx(SR, abs=40)  # the second present, still read
    with CaptureLogger(logger) as captured:
        assert len(load_recording(path)) == pytest.approx(SR, abs=40)
    assert f"The recording {path} ends before its header says" in captured.out
    with CaptureLogger(logger) as captured:  # a whole file, and a recorder's placeholder size, say nothing
        sf.write(path, tones(SR), SR, subtype="PCM_16")
        processor(_conversation({"audio": str(path)}))
        streamed = bytearray(path.read_bytes())
        streamed[40:44] = b"\xff\xff\xff\xff"  # the data chunk's size, as a recorder writing to a pipe leaves it
        path.write_bytes(bytes(streamed))
        processor(_conversation({"audio": str(path)}))
    assert captured.out == ""


def test_channels_that_cancel_are_refused_not_read_as_silence(processor, tmp_path):
    """A stereo file with one channel phase-inverted (as some laptop microphone arrays record) averaged to digital
    silence: predicted from silence as a conversation's utterance, "no speech found" as a recording."""
    path = tmp_path / "inverted.wav"
    sf.write(path, np.stack([tones(SR), -tones(SR)], axis=1), SR, subtype="PCM_16")
    match = "its 2 channels cancel each other when averaged to mono"
    with pytest.raises(ValueError, match=match) as error:
        processor(_conversation({"audio": str(path)}))
    assert str(path) in str(error.value) and "utterance 1 (id='u1')" in str(error.value)
    with pytest.raises(ValueError, match=f"The recording {path}: {match}"):
        load_recording(path)
    with pytest.raises(ValueError, match=match):  # an array, either layout
        processor({"utterances": [{"audio": np.stack([tones(SR), -tones(SR)]), "sampling_rate": SR}]})
    # Channels that do not cancel are averaged as before: one-sided, unrelated, or six with four silent.
    rng = np.random.default_rng(0)
    for channels in ([tones(SR), np.zeros(2 * SR, np.float32)],
                     [tones(SR), 0.1 * rng.standard_normal(2 * SR).astype(np.float32)],
                     [tones(SR)] * 2 + [np.zeros(2 * SR, np.float32)] * 4):
        sf.write(path, np.stack(channels, axis=1), SR, subtype="FLOAT")
        processor(_conversation({"audio": str(path)}))
        assert len(load_recording(path)) == 2 * SR


def _read_everywhere(processor, audio):
    """What the audio-module logger says while `audio` is read as an utterance (array or file) and, for a file or an
    array at SR, as a recording."""
    logger = transformers.logging.get_logger("mister_e.audio_mister_e")
    with CaptureLogger(logger) as captured:
        if isinstance(audio, np.ndarray):
            processor(_conversation({"audio": {"array": audio, "sampling_rate": SR}}))
            load_recording({"array": audio, "sampling_rate": SR})
        else:
            processor(_conversation({"audio": str(audio)}))
            load_recording(audio)
    return captured.out


def test_clipped_audio_is_read_with_a_warning_naming_it(processor, tmp_path):
    """Speech recorded too loud, flattened at full scale, was read without a word: an array, a file and a recording
    each say what share is clipped, and are still read. A peak that touches full scale (a normalised file) is not
    clipping."""
    clipped = np.clip(4 * tones(SR), -1, 1)  # 55% of the samples in flat runs at +-1
    path = tmp_path / "loud.wav"
    sf.write(path, clipped, SR, subtype="PCM_16")
    said = _read_everywhere(processor, clipped)
    assert "utterance 1 (id='u1'): 55.1% of the samples are clipped" in said
    assert "recording: 55.1% of the samples are clipped" in said
    said = _read_everywhere(processor, path)
    assert f"audio file {str(path)!r}: 55.1% of the samples are clipped" in said
    assert f"The recording {path}: 55.1% of the samples are clipped" in said
    stereo = np.stack([clipped, tones(SR)], axis=1)  # one channel clipped is said too, its own share
    assert "55.1% of the samples of channel 1 are clipped" in _read_everywhere(processor, stereo)
    sf.write(path, stereo, SR, subtype="PCM_16")
    assert "55.1% of the samples of channel 1 are clipped" in _read_everywhere(processor, path)
    some = tones(SR)  # 0.15% of one channel: said, though 0.075% of all the samples
    some[::2000] = some[1::2000] = some[2::2000] = -1.0
    assert "0.15% of the samples of channel 2 are clipped" in _read_everywhere(processor, np.stack([tones(SR), some]))
    sf.write(path, np.clip(4 * tones(SR), -1, 1), SR, subtype="PCM_U8")  # 8-bit PCM's rails are at 127/128
    assert "55.4% of the samples are clipped" in _read_everywhere(processor, path)
    normalised = tones(SR) / np.abs(tones(SR)).max()
    sf.write(path, normalised, SR, subtype="PCM_16")
    assert _read_everywhere(processor, normalised) + _read_everywhere(processor, path) == ""
    sparse = tones(SR)  # one 3-sample run in 5000 samples: under 0.1%, not said
    sparse[::5000] = sparse[1::5000] = sparse[2::5000] = 1.0
    assert _read_everywhere(processor, sparse) == ""


def test_float_audio_past_full_scale_is_read_as_it_is_with_a_warning(processor, tmp_path):
    """Float samples between 1 and 32 were read silently: they are read as they are (loudness is part of what the
    speech experts read), and the array, file or recording is named. Inter-sample overshoot (up to 3 dB) says
    nothing, nor does PCM, which cannot exceed full scale."""
    loud = 3 * tones(SR)  # peaks at 2.7
    path = tmp_path / "loud.wav"
    sf.write(path, loud, SR, subtype="FLOAT")
    said = _read_everywhere(processor, loud)
    assert "utterance 1 (id='u1'): float audio samples reach 2.7, beyond [-1, 1]; they are read as they are" in said
    assert "recording: float audio samples reach 2.7" in said and "clipped" not in said
    said = _read_everywhere(processor, path)
    assert f"audio file {str(path)!r}: float audio samples reach 2.7" in said
    assert f"The recording {path}: float audio samples reach 2.7" in said
    features = processor({"utterances": [{"audio": loud, "sampling_rate": SR}]}, min_audio_seconds=0)
    unnormalised = MisterEProcessor(wav2vec2_extractor(do_normalize=False), processor.tokenizer)
    features = unnormalised({"utterances": [{"audio": loud, "sampling_rate": SR}]}, min_audio_seconds=0)
    np.testing.assert_allclose(features["input_values"][0], loud, atol=1e-6)  # not rescaled
    sf.write(path, 1.3 * tones(SR), SR, subtype="FLOAT")  # peak 1.17: what resampling leaves of full scale
    assert _read_everywhere(processor, 1.3 * tones(SR)) + _read_everywhere(processor, path) == ""


def _retag(path, tag):
    """Overwrites the format tag of a canonical WAV file (the 2 bytes after "fmt " and its size)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"fmt ") + 8
    data[at : at + 2] = tag.to_bytes(2, "little")
    path.write_bytes(bytes(data))


def test_pcm_under_an_a_law_or_mu_law_tag_is_refused_not_read_as_noise(processor, tmp_path):
    """A 16-bit PCM file whose format tag was corrupted into A-law's (6) or mu-law's (7) decoded as noise of twice its
    length, read without a word; real A-law and mu-law files still read."""
    rng = np.random.default_rng(0)
    speechlike = (0.2 * tones(SR) * rng.uniform(0.2, 1, 2 * SR)).astype(np.float32)
    path = tmp_path / "tagged.wav"
    for tag, law in ((6, "A-law"), (7, "mu-law")):
        sf.write(path, speechlike, SR, subtype="PCM_16")
        _retag(path, tag)
        assert sf.info(path).frames == 4 * SR  # read as 8-bit codes: twice the samples
        match = f"decodes as noise: its header says {law} \\(8 bits a sample\\), but its bytes are laid out as 16-bit"
        with pytest.raises(ValueError, match=match) as error:
            processor(_conversation({"audio": str(path)}))
        assert str(path) in str(error.value) and "utterance 1 (id='u1')" in str(error.value)
        with pytest.raises(ValueError, match=f"The recording {path} {match}"):
            load_recording(path)
    for subtype in ("ALAW", "ULAW"):
        for signal in (speechlike, tones(SR), 0.9 * tones(SR) / np.abs(tones(SR)).max()):
            sf.write(path, signal, SR, subtype=subtype)
            assert _read_everywhere(processor, path) == ""


def test_a_file_that_may_not_be_read_or_decodes_to_nothing_says_why(processor, tmp_path, monkeypatch):
    """libsndfile said "System error." of a file without read permission, and "has no samples" of a damaged file."""
    path = tmp_path / "locked.wav"
    sf.write(path, tones(SR), SR)
    real_open = open

    def locked_open(file, *args, **kwargs):  # as `chmod 000` for a user other than root
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", locked_open)
    with pytest.raises(ValueError, match=re.escape(f"audio file {str(path)!r}: could not be read: Permission denied.")):
        processor(_conversation({"audio": str(path)}))
    with pytest.raises(ValueError, match=re.escape(f"The recording {path}: could not be read: Permission denied.")):
        load_recording(path)
    monkeypatch.undo()
    damaged = bytearray(path.read_bytes())
    damaged[40:44] = bytes(4)  # a WAV header never completed: 0 bytes of audio announced, 64 kB present
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="decodes to no samples, though it holds 64044 bytes: it is damaged"):
        processor(_conversation({"audio": str(path)}))
    with pytest.raises(ValueError, match=f"The recording {path} decodes to no samples"):
        load_recording(path)


def test_a_text_of_invisible_characters_is_no_text(processor):
    """A zero-width space (or a stray byte-order mark) tokenizes to no token: it was read as a text, an empty one."""
    tone = {"audio": tones(SR), "sampling_rate": SR}
    features = processor({"utterances": [{**tone, "text": "\u200b\ufeff "}, {**tone, "text": "hello\u200b"}]})
    assert features["modality_mask"][0, :, 1].tolist() == [False, True]
    with pytest.raises(ValueError, match=re.escape("neither `audio` nor `text` (its text is empty)")):
        processor({"utterances": [{"text": "\u200b"}]})


def test_composed_and_decomposed_accents_tokenize_alike():
    """`café` as é or as e + U+0301 is one text; a tokenizer that keeps accents (cased BERT, byte-level BPE) read the
    decomposed form as another word ([UNK] here)."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "caf\u00e9", "ol\u00e9"]
    cased = BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=False)
    processor = MisterEProcessor(wav2vec2_extractor(), cased)
    texts = ["caf\u00e9 ol\u00e9", unicodedata.normalize("NFD", "caf\u00e9 ol\u00e9")]
    ids = processor({"utterances": [{"text": text} for text in texts]})["input_ids"]
    assert ids[0].tolist() == ids[1].tolist() == [2, 5, 6, 3]


def test_a_text_of_control_characters_is_no_text(processor):
    """NUL, DEL and C1 codes (a stray `\\x92` of cp1252 read as latin-1) tokenize to no token: such a text was read as
    a text, an empty one, where a blank one is no text."""
    tone = {"audio": tones(SR), "sampling_rate": SR}
    features = processor({"utterances": [{**tone, "text": "\x00\x7f\x92 "}, {**tone, "text": "hello\x00"}]})
    assert features["modality_mask"][0, :, 1].tolist() == [False, True]
    with pytest.raises(ValueError, match=re.escape("neither `audio` nor `text` (its text is empty)")):
        processor({"utterances": [{"text": "\x00"}]})


def test_control_characters_inside_a_text_read_as_spaces(processor):
    """A control character inside a text reached the tokenizer as it was: MiniLM's drops it, so `oh\x00no` read as
    one unknown word `ohno`. C0/C1 controls read as a space; the tab and the line breaks stay as they are."""
    texts = ["oh\x00no", "oh no", "\x1boh\x1bno\x7f", "oh\x92no", "ohno"]
    ids = processor({"utterances": [{"text": text} for text in texts]})["input_ids"].tolist()
    assert ids[0] == ids[1] == ids[2] == ids[3] != ids[4]
    assert normalize_text("a\tb\r\nc\x00d\x85e\x0cf") == "a\tb\r\nc d e f"


def test_a_release_text_is_judged_blank_once_its_mojibake_is_repaired():
    """The py2 pickles' cp1252 punctuation read as latin-1 is C1 control characters (`\x93\x85\x94`): judged blank
    before the repair, an utterance of “…” was dropped as no text, though the processor reads it repaired."""
    from mister_e.data.releases import clean_text

    assert clean_text("\x93\x85\x94") == "\u201c\u2026\u201d" and clean_text("\x92") == "\u2019"
    assert clean_text("\x00\x81 ") is None  # no character of cp1252 either: still no text
