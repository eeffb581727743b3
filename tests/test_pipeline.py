"""The `"emotion-recognition-in-conversation"` pipeline on a tiny end-to-end model (tiny WavLM + tiny BERT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from tiny_end_to_end import LABELS, SR, TASK, tiny_model, tiny_processor, write_clips
from transformers import pipeline
from transformers.testing_utils import CaptureLogger

from mister_e import MisterEForEmotionRecognition, MisterEProcessor
import mister_e  # noqa: F401  (registers the model classes)
from mister_e.pipeline_mister_e import MisterEConversationPipeline, register_pipeline


register_pipeline()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    dirs = {}
    for causal in (False, True):
        folder = tmp_path_factory.mktemp("causal" if causal else "bidirectional")
        tiny_model(causal).save_pretrained(folder)
        tiny_processor().save_pretrained(folder)
        dirs[causal] = str(folder)
    return dirs


@pytest.fixture(scope="module")
def pipe(model_dirs):
    return pipeline(TASK, model=model_dirs[False], device="cpu")


@pytest.fixture(scope="module")
def causal_pipe(model_dirs):
    return pipeline(TASK, model=model_dirs[True], device="cpu")


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("wavs"))


def conversation(wavs, texts=("hello world", "oh no", "yes really", "okay fine"), audio=True, text=True):
    return {
        "utterances": [
            {**({"audio": wav} if audio else {}), **({"text": t} if text else {})} for wav, t in zip(wavs, texts)
        ]
    }


def check_schema(result, num_labels=len(LABELS)):
    assert set(result) == {"label", "score", "scores", "expert_weights"}
    scores = result["scores"]
    assert len(scores) == num_labels and set(scores) <= set(LABELS)
    values = list(scores.values())
    assert values == sorted(values, reverse=True)
    assert result["label"] == max(scores, key=scores.get) and result["score"] == scores[result["label"]]
    assert set(result["expert_weights"]) == {"speech", "text", "cross_modal"}
    assert sum(result["expert_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert all(w >= 0 for w in result["expert_weights"].values())


def test_loads_from_folder_and_answers_each_utterance(pipe, model_dirs, wavs):
    assert isinstance(pipe, MisterEConversationPipeline)
    assert isinstance(pipe.processor, MisterEProcessor)
    results = pipe(conversation(wavs))
    assert len(results) == 4
    for result in results:
        check_schema(result)
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert all(w > 0 for w in result["expert_weights"].values())

    # The same numbers as the model itself on the processor's output.
    model = MisterEForEmotionRecognition.from_pretrained(model_dirs[False]).eval()
    with torch.no_grad():
        output = model(**pipe.processor(conversation(wavs)))
    probabilities = output.logits[0].softmax(-1)
    for i, result in enumerate(results):
        expected = {LABELS[c]: float(p) for c, p in enumerate(probabilities[i])}
        assert result["scores"] == pytest.approx(expected, abs=1e-5)
        assert list(result["expert_weights"].values()) == pytest.approx(output.gate_weights[0, i].tolist(), abs=1e-5)


def test_top_k_and_missing_modalities(pipe, wavs):
    for result in pipe(conversation(wavs), top_k=2):
        assert len(result["scores"]) == 2 and result["label"] == next(iter(result["scores"]))

    for result in pipe(conversation(wavs, audio=False)):
        check_schema(result)
        assert result["expert_weights"]["speech"] == 0 and result["expert_weights"]["cross_modal"] == 0
        assert result["expert_weights"]["text"] == pytest.approx(1.0)
    for result in pipe(conversation(wavs, text=False)):
        check_schema(result)
        assert result["expert_weights"]["speech"] == pytest.approx(1.0)

    mixed = {"utterances": [{"audio": wavs[0]}, {"text": "oh no"}, {"audio": wavs[1], "text": "fine"}]}
    weights = [r["expert_weights"] for r in pipe(mixed)]
    assert weights[0]["text"] == weights[0]["cross_modal"] == 0
    assert weights[1]["speech"] == weights[1]["cross_modal"] == 0
    assert all(w > 0 for w in weights[2].values())

    with pytest.raises(ValueError, match="top_k"):
        pipe(conversation(wavs), top_k=0)


def test_batch_equals_one_by_one(pipe, wavs):
    conversations = [
        conversation(wavs),
        conversation(wavs[:2], texts=("no", "really okay")),
        conversation(wavs[1:], audio=False),
    ]
    one_by_one = [pipe(c) for c in conversations]
    for batch_size in (1, 3):
        batched = pipe(conversations, batch_size=batch_size)
        assert len(batched) == 3
        for got, expected in zip(batched, one_by_one):
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert g["label"] == e["label"]
                assert g["scores"] == pytest.approx(e["scores"], abs=1e-5)
                assert g["expert_weights"] == pytest.approx(e["expert_weights"], abs=1e-5)
    lazy = pipe(c for c in conversations)
    assert not isinstance(lazy, list)
    assert [r["label"] for r in list(lazy)[1]] == [r["label"] for r in one_by_one[1]]


def test_max_utterances_windows(pipe, wavs):
    whole = conversation(wavs)
    windowed = pipe(whole, max_utterances=2)
    halves = pipe(conversation(wavs[:2], texts=("hello world", "oh no"))) + pipe(
        conversation(wavs[2:], texts=("yes really", "okay fine"))
    )
    assert len(windowed) == 4
    for got, expected in zip(windowed, halves):
        assert got["scores"] == pytest.approx(expected["scores"], abs=1e-5)


def test_missing_audio_file_is_named(pipe, wavs, tmp_path):
    missing = str(tmp_path / "nowhere.wav")
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        pipe({"utterances": [{"audio": wavs[0], "text": "hi"}, {"audio": missing}]})
    with pytest.raises(FileNotFoundError, match="nowhere.wav"):
        pipe([conversation(wavs), {"utterances": [{"audio": missing}]}])
    with pytest.raises(ValueError, match="list of them"):
        pipe("hello")


def test_errors_name_the_callers_conversation_and_utterance(pipe):
    """A batch runs in chunks and `max_utterances` in windows: neither may renumber the utterance at fault."""
    ok = {"utterances": [{"text": "hi"}, {"text": "yo"}]}
    bad = {"utterances": [{"text": "a"}, {"text": "b"}, {"text": ""}]}
    for batch_size in (1, 2, 4):
        with pytest.raises(ValueError, match=r"^conversation 3, utterance 2: the utterance has neither"):
            pipe([ok, ok, ok, bad], batch_size=batch_size)
    long = {"utterances": [{"text": "x"}] * 7 + [{"text": " "}]}
    with pytest.raises(ValueError, match=r"^conversation 0, utterance 7: "):
        pipe(long, max_utterances=3)
    with pytest.raises(ValueError, match=r"^conversation 1, utterance 7: "):
        pipe([ok, long], max_utterances=3, batch_size=2)


@pytest.mark.parametrize("causal", [False, True])
def test_an_utterance_no_expert_can_answer_is_named(causal, wavs, tmp_path):
    """A text-only model given speech alone would answer with an arbitrary label: refused, naming the utterance by the
    caller's conversation and position (also through windows, and when streamed)."""
    model = tiny_model(causal)
    model.config.experts, model.config.speech_config = ["text"], None
    text_only = MisterEForEmotionRecognition(model.config)
    text_only.load_state_dict(model.state_dict(), strict=False)
    text_only.save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    text_pipe = pipeline(TASK, model=str(tmp_path), device="cpu")
    speech_at_3 = {"utterances": [{"text": t} for t in ("hello", "oh no", "yes")] + [{"audio": wavs[0], "id": "u3"}]}
    assert len(text_pipe({"utterances": speech_at_3["utterances"][:3]})) == 3
    for options in ({}, {"max_utterances": 2}):
        with pytest.raises(ValueError, match=r"conversation 0, utterance 3 \(id='u3'\): no enabled expert"):
            text_pipe(speech_at_3, **options)
    if causal:
        with pytest.raises(ValueError, match="streamed utterance 3: no enabled expert"):
            list(text_pipe.stream(speech_at_3["utterances"]))


def test_a_model_without_a_speech_encoder_answers_from_the_text(wavs, tmp_path):
    """A text-only end-to-end model (no speech encoder) reads an utterance's text and leaves its audio unread, as the
    README's "answered from what they have" says; it stopped at the audio ("Got speech inputs but the config has no
    `speech_config`"). An utterance with audio alone is still refused, named."""
    config = tiny_model(causal=True).config
    config.speech_config, config.experts = None, ["text"]
    torch.manual_seed(0)
    MisterEForEmotionRecognition(config).save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    text_pipe = pipeline(TASK, model=str(tmp_path), device="cpu")
    both, text_alone = conversation(wavs), conversation(wavs, audio=False)
    assert text_pipe(both) == text_pipe(text_alone)
    assert list(text_pipe.stream(both)) == list(text_pipe.stream(text_alone))
    with pytest.raises(ValueError, match=r"utterance 0: no enabled expert"):
        text_pipe(conversation(wavs, text=False))


def test_stream_matches_whole_causal_conversation(causal_pipe, wavs):
    mixed = {"utterances": [
        {"audio": wavs[0], "text": "hello world"}, {"text": "oh no"}, {"audio": wavs[1]},
        {"audio": wavs[2], "text": "okay fine"}, {"audio": wavs[3], "text": "really"},
    ]}
    whole = causal_pipe(mixed)
    streamed = list(causal_pipe.stream(iter(mixed["utterances"])))
    assert len(streamed) == len(whole)
    for got, expected in zip(streamed, whole):
        check_schema(got)
        assert got["label"] == expected["label"]
        assert got["scores"] == pytest.approx(expected["scores"], abs=1e-5)
        assert got["expert_weights"] == pytest.approx(expected["expert_weights"], abs=1e-5)
    assert len(next(causal_pipe.stream(mixed["utterances"], top_k=1))["scores"]) == 1
    # the conversation dict `__call__` takes streams too; a bad utterance is named once, by its stream position
    assert [r["scores"] for r in causal_pipe.stream(mixed)] == [r["scores"] for r in streamed]
    with pytest.raises(ValueError, match=r"^streamed utterance 2 \(id='c'\): the utterance has neither"):
        list(causal_pipe.stream([{"text": "a"}, {"text": "b"}, {"text": "", "id": "c"}]))


def test_stream_keeps_the_pipelines_utterance_windows(model_dirs):
    """A pipeline built with `max_utterances` cuts a call into windows; `stream` kept the whole history instead."""
    windowed = pipeline(TASK, model=model_dirs[True], device="cpu", max_utterances=2)
    texts = {"utterances": [{"text": text} for text in ("a b", "oh no", "yes", "fine then", "well")]}
    whole, streamed = windowed(texts), list(windowed.stream(texts))
    alone = windowed({"utterances": texts["utterances"][2:4]})  # the second window, as its own conversation
    for got, expected in [*zip(streamed, whole), *zip(streamed[2:4], alone)]:
        assert got["scores"] == pytest.approx(expected["scores"], abs=1e-5)


def test_warnings_name_the_callers_conversation_and_utterance(pipe, causal_pipe, wavs):
    """The processor's warnings named an utterance by its place in one processor call: a batch's third conversation,
    run in a chunk of two, was `conversation 0`, a window's utterance was numbered in its window, and every streamed
    utterance was `conversation 0, utterance 0`. They name it as the caller does, as errors do."""
    logger = transformers.logging.get_logger("mister_e.processing_mister_e")
    silent = {"audio": np.zeros(SR // 2, np.float32), "sampling_rate": SR, "text": "oh no"}
    cases = [
        (lambda: pipe([conversation(wavs)] * 2 + [{"utterances": [{"text": "yes"}, silent]}], batch_size=2),
         "conversation 2, utterance 1: the audio is silent"),
        (lambda: pipe({"utterances": [{"text": "yes"}] * 3 + [silent]}, max_utterances=2),
         "conversation 0, utterance 3: the audio is silent"),
        (lambda: list(causal_pipe.stream([{"text": "yes"}, {"text": "no"}, silent])),
         "streamed utterance 2: the audio is silent"),
    ]
    for run, said in cases:
        with CaptureLogger(logger) as captured:
            run()
        assert captured.out.startswith(said), captured.out


def test_stream_needs_causal_model(pipe, wavs):
    with pytest.raises(ValueError, match="causal"):
        next(pipe.stream(conversation(wavs)["utterances"]))


def test_long_conversations_go_through_the_backbones_in_micro_batches(tmp_path):
    """`encoder_batch_size` bounds the backbones' memory; the predictions equal one pass over every utterance."""
    paths = write_clips(tmp_path, count=7)
    words = ["hello world", "yes", None, "oh okay", "no", "fine", "hello"]
    conversation = {"utterances": [{"audio": path, "text": text} for path, text in zip(paths, words)]}
    model = tiny_model()
    inputs = tiny_processor()(conversation)
    calls, widths = [], []
    model.speech_encoder.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    model.text_encoder.register_forward_hook(lambda module, args, out: widths.append(args[0].shape[1]))
    with torch.no_grad():
        model.config.encoder_batch_size = None
        whole = model(**inputs)
        model.config.encoder_batch_size = 3
        chunked = model(**inputs)
    assert calls == [7, 3, 3, 1]
    # Token ids lose the columns that are padding in every row of a pass: the one-word pass is narrower.
    assert widths == [4, 4, 3], widths  # [CLS] hello world [SEP]; then "no", "fine", "hello" with [CLS]/[SEP]
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(chunked.gate_weights, whole.gate_weights, rtol=1e-4, atol=1e-5)


def test_nan_weights_are_refused_not_printed_as_scores(wavs, tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.text_expert.classifier.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="predictions are not finite"):
        pipeline(TASK, model=str(tmp_path), device="cpu")(conversation(wavs))


def test_a_conversation_file_is_not_taken_for_a_recording(pipe, tmp_path):
    """An existing file was read as a recording whatever its kind ("Format not recognised" for a JSON file)."""
    (tmp_path / "conv.json").write_text('{"utterances": [{"text": "hello"}]}')
    (tmp_path / "calls.wav").mkdir()  # a folder whose name ends in .wav
    for path in (str(tmp_path / "conv.json"), tmp_path / "calls.wav"):
        with pytest.raises(ValueError, match=r"read by `mister_e\.conversations\.read_conversation\(path\)`"):
            pipe(path)


def test_the_processors_numpy_output_is_refused_by_the_model_naming_the_input(pipe, wavs):
    """`return_tensors="np"` is a documented processor option; the model takes torch tensors and said so only for
    embeddings (raw inputs failed inside it with `'numpy.ndarray' object has no attribute ...`)."""
    features = pipe.processor(conversation(wavs), return_tensors="np")
    with pytest.raises(TypeError, match=r"`input_values` must be a torch tensor .*got ndarray"):
        pipe.model(**features)


def test_common_input_mistakes_get_a_message_that_says_what_to_do(causal_pipe, wavs):
    """A list of utterances (not of conversations), conversations given to `stream`, any iterator as a batch, and
    numpy integers as options (refused as "not a positive int")."""
    import numpy as np

    two = [conversation(wavs, texts=("hello", "oh no", "yes", "fine")), conversation(wavs)]
    with pytest.raises(ValueError, match=r"^Got a list of utterances: a list is a batch of conversations"):
        causal_pipe([{"text": "hi"}, {"text": "oh"}])
    with pytest.raises(ValueError, match=r"^streamed utterance 0 is a conversation"):
        list(causal_pipe.stream(two))
    expected = causal_pipe(two, batch_size=2)
    assert list(causal_pipe(iter(two), batch_size=np.int64(2))) == expected
    assert causal_pipe(two[0], top_k=np.int32(1))[0]["scores"] == {expected[0][0]["label"]: expected[0][0]["score"]}


def test_a_text_length_beyond_the_encoders_positions_is_refused_up_front(tmp_path):
    """A processor saved with `max_text_length` above the text encoder's positions failed inside BERT, on the first
    long utterance only (`expanded size (602) must match (512)`)."""
    model = tiny_model(False)
    model.save_pretrained(tmp_path)
    processor = tiny_processor()
    processor.max_text_length = 600
    processor.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"`max_text_length` \(600\) is beyond the text encoder's 512 positions"):
        pipeline(TASK, model=str(tmp_path), device="cpu")
    features = processor({"utterances": [{"text": " ".join(["hello"] * 700)}]})
    with pytest.raises(ValueError, match=r"`input_ids` hold 600 tokens an utterance, beyond the text encoder's 512"):
        model(**features)


def test_non_finite_predictions_of_a_model_offloaded_to_disk_are_said_not_raised(wavs, tmp_path):
    """With `device_map` offloading (what "auto" does to the encoders, last in the model, when memory runs short) the
    offloaded weights are placeholders on the meta device: the check of the weights' finiteness raised on them
    ("Tensor.item() cannot be called on meta tensors") instead of saying why the predictions are not finite."""
    model = tiny_model()
    with torch.no_grad():
        model.text_encoder.projection.weight.fill_(float("nan"))  # a damaged file, in the part offloaded
    model.save_pretrained(tmp_path / "model")
    device_map = {**{name: "cpu" for name, _ in model.named_children()}, "text_encoder": "disk"}
    offloaded = MisterEForEmotionRecognition.from_pretrained(tmp_path / "model", device_map=device_map,
                                                             offload_folder=tmp_path / "offload")
    assert any(weight.device.type == "meta" for weight in offloaded.state_dict().values())
    pipe = pipeline(TASK, model=offloaded, processor=tiny_processor())
    with pytest.raises(ValueError, match=r"not finite .*, but its weights in memory are \(\d+ offloaded to disk were "
                                         r"not checked\)"):
        pipe(conversation(wavs, audio=False))
