"""From a recording to an emotion timeline: voice activity detection, optional ASR, JSON/CSV/PNG, streaming, errors.

The recordings are assembled from the demo corpus's synthetic utterances with known silences in between. Silero VAD,
trained on real speech, finds most but not all synthetic voices (96% of the utterances of `bench/recording.py`'s
30-minute recording, within 0.3 s), so the tests use three demo conversations (22 utterances, all four emotions) that
it cuts right; on real recorded speech (EmoDB, the last test) it needs no such choice.
"""

from __future__ import annotations

import csv
import json
import logging
import string

import numpy as np
import pytest
import soundfile as sf
import torch
from matplotlib.image import imread
from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor,
                          WhisperTokenizer, pipeline)
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as logging_utils

from tiny_end_to_end import _SSL, SR, TASK, tiny_model, tiny_processor
from mister_e.cli import main
from mister_e.data.demo import demo_conversation
from mister_e.segmentation_mister_e import MisterESegmentation, iter_segments, load_recording, segment_recording

pytest.importorskip("silero_vad")

SILENCE = 1.0  # seconds between utterances, and before the first and after the last


def assemble(conversations, folder):
    """One recording of the demo conversations' utterances with `SILENCE` s of silence around each, and the true
    (start, end) of every utterance in it."""
    parts, truth, time = [], [], 0.0
    for seed in conversations:
        for utterance in demo_conversation(folder / f"demo-{seed}", seed=seed)["utterances"]:
            audio = load_recording(utterance["audio"])
            parts += [np.zeros(int(SILENCE * SR), np.float32), audio]
            time += SILENCE
            truth.append((time, time + len(audio) / SR))
            time += len(audio) / SR
    parts.append(np.zeros(int(SILENCE * SR), np.float32))
    return np.concatenate(parts), truth


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recording")
    waveform, truth = assemble((0, 3, 7), folder)
    sf.write(folder / "call.wav", waveform, SR)
    return folder / "call.wav", truth


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def tiny_whisper(folder):
    """A randomly initialised Whisper with a 26-letter vocabulary, saved locally: it writes a few letters."""
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|notimestamps|>"]
    vocab = {token: index for index, token in enumerate([*string.ascii_lowercase, *specials])}
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    end = vocab["<|endoftext|>"]
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), bos_token=specials[0],
                                 eos_token=specials[0], unk_token=specials[0], pad_token=specials[0])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=16,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_target_positions=16, pad_token_id=end, bos_token_id=end, eos_token_id=end,
        decoder_start_token_id=vocab["<|startoftranscript|>"]))
    generation = model.generation_config
    generation.decoder_start_token_id, generation.eos_token_id, generation.pad_token_id = (
        vocab["<|startoftranscript|>"], end, end)
    generation.no_timestamps_token_id, generation.is_multilingual = vocab["<|notimestamps|>"], False
    generation.suppress_tokens = [vocab[token] for token in specials[1:]]
    generation.begin_suppress_tokens, generation.max_new_tokens, generation.forced_decoder_ids = [end], 4, None
    model.save_pretrained(folder)
    WhisperProcessor(WhisperFeatureExtractor(), tokenizer).save_pretrained(folder)
    return folder


def test_segments_match_the_utterances_within_0_3_s(recording):
    path, truth = recording
    segments = segment_recording(load_recording(path))
    assert len(segments) == len(truth)
    for segment, (start, end) in zip(segments, truth):
        assert abs(segment["start"] - start) < 0.3 and abs(segment["end"] - end) < 0.3, (segment, start, end)
        assert segment["audio"]["array"].shape == (round((segment["end"] - segment["start"]) * SR),)


def test_blocks_of_any_sample_type_are_cut_the_same_and_stereo_blocks_are_named(recording):
    """`iter_segments` takes any iterable of 16-kHz mono blocks: numpy's default float64 and int16 PCM are read as
    their float32 samples; a 2-D block is refused by its number."""
    waveform = load_recording(recording[0])
    expected = [(s["start"], s["end"]) for s in segment_recording(waveform)]
    blocks = np.array_split(waveform, 7)
    for converted in ([b.astype(np.float64) for b in blocks], [np.round(b * 2**15).astype(np.int16) for b in blocks]):
        assert [(s["start"], s["end"]) for s in iter_segments(converted)] == expected
    with pytest.raises(ValueError, match=r"recording block 1: expected 16-kHz mono samples \(1-D\)"):
        list(iter_segments([blocks[0], np.stack([blocks[1], blocks[1]], axis=1)]))


def test_recordings_cut_at_the_same_time_are_cut_as_alone(recording):
    """Two recordings segmented in turns (two streams) shared one detector's state and moved each other's cuts."""
    waveform = load_recording(recording[0])
    other = np.concatenate([waveform[len(waveform) // 3:], waveform[: len(waveform) // 3]])
    alone = [[(s["start"], s["end"]) for s in segment_recording(w)] for w in (waveform, other)]
    streams = [iter_segments(np.array_split(w, 40)) for w in (waveform, other)]
    together = [[], []]
    while any(stream is not None for stream in streams):
        for index, stream in enumerate(streams):
            if stream is not None:
                found = next(stream, None)
                if found is None:
                    streams[index] = None
                else:
                    together[index].append((found["start"], found["end"]))
    assert together == alone


def test_stereo_44k_recording_is_cut_the_same(recording, tmp_path):
    from mister_e.audio_mister_e import resample

    path, truth = recording
    waveform = resample(load_recording(path), SR, 44100)
    sf.write(tmp_path / "stereo44k.wav", np.stack([waveform, 0.5 * waveform], axis=1), 44100)
    segments = segment_recording(load_recording(tmp_path / "stereo44k.wav"))
    assert len(segments) == len(truth)
    for segment, (start, end) in zip(segments, truth):
        assert abs(segment["start"] - start) < 0.3 and abs(segment["end"] - end) < 0.3


def test_over_long_speech_is_split_and_short_speech_dropped(recording):
    waveform = load_recording(recording[0])
    longest = max(end - start for start, end in recording[1])
    split = segment_recording(waveform, MisterESegmentation(max_utterance_seconds=longest / 2))
    assert len(split) > len(recording[1])
    assert all(s["end"] - s["start"] <= longest / 2 + 0.2 for s in split)  # + the padding on both sides
    assert segment_recording(waveform, MisterESegmentation(min_utterance_seconds=10.0, max_utterance_seconds=20.0)) == []
    with pytest.raises(ValueError, match="max_utterance_seconds"):
        MisterESegmentation(min_utterance_seconds=2.0, max_utterance_seconds=1.0)


def test_padding_wider_than_half_a_pause_never_overlaps_the_utterance_before(recording):
    waveform, truth = load_recording(recording[0]), recording[1]
    segments = segment_recording(waveform, MisterESegmentation(pad_seconds=1.0))  # the pauses last 1 s
    assert len(segments) == len(truth)
    assert all(after["start"] >= before["end"] for before, after in zip(segments, segments[1:]))
    assert segments[0]["start"] < truth[0][0] - 0.5  # the first keeps its padding
    for segment in segments:
        assert len(segment["audio"]["array"]) == round((segment["end"] - segment["start"]) * SR)


def test_utterances_are_split_within_what_the_processor_reads(recording, model_dir):
    """A `max_utterance_seconds` past the processor's `max_audio_seconds` would leave utterances read cut short: the
    recording is split at the processor's limit instead."""
    pipe = pipeline(TASK, model=str(model_dir))
    limit = max(end - start for start, end in recording[1]) / 2
    pipe.processor.max_audio_seconds = limit
    results = pipe(str(recording[0]), segmentation={"max_utterance_seconds": 1e300})
    expected = segment_recording(load_recording(recording[0]), MisterESegmentation(max_utterance_seconds=limit))
    assert [(r["start"], r["end"]) for r in results] == [(round(s["start"], 3), round(s["end"], 3)) for s in expected]
    with pytest.raises(ValueError, match=r"`threshold` must be in \(0, 1\)"):
        MisterESegmentation(threshold=-1)


def test_pipeline_predicts_every_utterance_with_its_times(recording, model_dir, tmp_path, caplog):
    path, truth = recording
    pipe = pipeline(TASK, model=str(model_dir))
    results = pipe(str(path))
    assert len(results) == len(truth)
    segments = segment_recording(load_recording(path))
    for result, segment in zip(results, segments):
        assert (result["start"], result["end"]) == (round(segment["start"], 3), round(segment["end"], 3))
        assert result["text"] is None and result["expert_weights"]["text"] == 0.0  # speech alone, and said so
    # The same utterances given as a conversation get the same predictions.
    conversation = {"utterances": [{"audio": s["audio"]} for s in segments]}
    for result, expected in zip(results, pipe(conversation)):
        assert result["label"] == expected["label"] and result["score"] == pytest.approx(expected["score"], abs=1e-6)
    assert pipe({"recording": {"array": np.zeros(3 * SR, np.float32), "sampling_rate": SR}}) == []  # no speech
    array = load_recording(path)  # an array with its rate beside it, as the README shows, is the same recording
    assert [r["scores"] for r in pipe({"recording": array, "sampling_rate": SR})] == [r["scores"] for r in results]
    with pytest.raises(ValueError, match="'sampling_rate': rate"):
        pipe(array)
    sf.write(tmp_path / "quiet.wav", np.zeros(2 * SR, np.float32), SR)
    with caplog.at_level(logging.WARNING):
        assert pipe(str(tmp_path / "quiet.wav")) == []
    assert f"No speech found in {tmp_path / 'quiet.wav'}" in caplog.text  # the warning names the file


def test_a_clipped_recording_is_said_once_not_once_per_utterance(recording, model_dir, tmp_path):
    """Its level is judged as the recording is read, naming the file; the utterances cut from it said it again, each
    as `conversation 0, utterance k` (or `utterance 0` when streamed), a line per utterance of an hour-long call."""
    loud = tmp_path / "loud.wav"
    sf.write(loud, np.clip(8 * load_recording(recording[0]), -1, 1), SR, subtype="PCM_16")
    pipe, causal = pipeline(TASK, model=str(model_dir)), pipeline(TASK, model=tiny_model(causal=True),
                                                                   processor=tiny_processor())
    for call in (pipe, lambda path: list(causal.stream(path))):
        with CaptureLogger(logging_utils.get_logger("mister_e.audio_mister_e")) as captured:
            assert len(call(str(loud))) > 1
        assert captured.out.count("are clipped") == 1 and f"The recording {loud}: " in captured.out, captured.out


def test_asr_text_reaches_the_model(recording, model_dir, tmp_path):
    whisper = tiny_whisper(tmp_path / "whisper")
    pipe = pipeline(TASK, model=str(model_dir))
    results = pipe(str(recording[0]), asr=str(whisper))
    assert len(results) == len(recording[1])
    assert all(result["text"] and set(result["text"]) <= set(string.ascii_lowercase) for result in results)
    assert all(result["expert_weights"]["text"] > 0 for result in results)  # the text expert now answers too
    with pytest.raises(OSError, match="ASR model"):
        pipe(str(recording[0]), asr=str(tmp_path / "no-such-asr-model"))


def test_streaming_a_recording_equals_the_whole_file_call(recording, tmp_path):
    """With a speech backbone that padding does not reach (layer-norm Wav2Vec2; WavLM's group norm sees it)."""
    from transformers import Wav2Vec2Config

    causal = tiny_model(causal=True)
    torch.manual_seed(0)
    config = causal.config
    config.speech_config = Wav2Vec2Config(**{k: v for k, v in _SSL.items() if k not in ("num_buckets",
                                                                                            "max_bucket_distance")},
                                          feat_extract_norm="layer", do_stable_layer_norm=True)
    causal = type(causal)(config).eval()
    pipe = pipeline(TASK, model=causal, processor=tiny_processor())
    whole = pipe(str(recording[0]))
    streamed = list(pipe.stream(str(recording[0])))
    assert [r["label"] for r in streamed] == [r["label"] for r in whole]
    for one, other in zip(streamed, whole):
        assert (one["start"], one["end"]) == (other["start"], other["end"])
        assert one["score"] == pytest.approx(other["score"], abs=1e-5)


def test_a_streamed_recording_is_answered_before_it_is_read_to_the_end(recording, monkeypatch):
    from mister_e import segmentation_mister_e

    reads, blocks = [], segmentation_mister_e._read_file_blocks
    monkeypatch.setattr(segmentation_mister_e, "_read_file_blocks",
                        lambda path, seconds: (reads.append(len(reads)) or block for block in blocks(path, 2.0)))
    pipe = pipeline(TASK, model=tiny_model(causal=True), processor=tiny_processor())
    first = next(pipe.stream(str(recording[0])))
    total = len(list(blocks(str(recording[0]), 2.0)))
    assert first["start"] == pytest.approx(recording[1][0][0], abs=0.3) and len(reads) < total / 3, (len(reads), total)


def test_cli_names_each_prediction_by_position_and_by_the_id_it_was_given(model_dir, tmp_path, capsys):
    conversation = tmp_path / "c.json"  # a position stood in for a missing id, and could equal another's id
    conversation.write_text(json.dumps([{"id": 1, "text": "hello"}, {"text": "oh no"}, {"id": "x", "text": "yes"}]))
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(conversation)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["index"], r.get("id")) for r in results] == [(0, 1), (1, None), (2, "x")]
    assert "id" not in results[1] and all("label" in r for r in results)


def test_cli_writes_json_csv_and_png(recording, model_dir, tmp_path, capsys):
    path, truth = recording
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(path), "--csv", str(tmp_path / "t.csv"), "--plot",
                 str(tmp_path / "t.png")]) == 0
    printed = capsys.readouterr()
    results = json.loads(printed.out)
    assert [r["index"] for r in results] == list(range(len(truth))) and "speech alone" in printed.err
    with open(tmp_path / "t.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["label"] for row in rows] == [r["label"] for r in results]
    assert [float(row["start"]) for row in rows] == pytest.approx([r["start"] for r in results], abs=1e-3)
    image = imread(tmp_path / "t.png")
    assert image.shape[0] > 500 and image.shape[1] > 1200  # 11 x 5.2 in at 150 dpi, cropped to its content


@pytest.mark.parametrize("name, content, message", [
    ("garbage.wav", b"RIFF not audio", "Could not read the recording"),
    ("empty.wav", None, "no samples"),
])
def test_bad_recordings_are_one_named_line(name, content, message, model_dir, tmp_path, capsys):
    if content is None:
        sf.write(tmp_path / name, np.zeros(0, np.float32), SR)
    else:
        (tmp_path / name).write_bytes(content)
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(tmp_path / name)]) == 2
    error = capsys.readouterr().err.strip()
    assert name in error and message in error and len(error.splitlines()) == 1, error


@pytest.mark.parametrize("outputs, message", [
    (["--csv", "{recording}"], "--csv {recording} is the recording"),
    (["--csv", "{folder}/t.png", "--plot", "{folder}/./t.png"], "--plot {folder}/./t.png is --csv"),
])
def test_outputs_that_would_overwrite_the_recording_or_each_other_are_refused(outputs, message, model_dir, tmp_path,
                                                                               capsys):
    path = tmp_path / "speech.wav"
    sf.write(path, np.zeros(SR, np.float32), SR)
    before = path.read_bytes()
    names = {"recording": path, "folder": tmp_path}
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(path), *(o.format(**names) for o in outputs)]) == 2
    error = capsys.readouterr().err.strip()
    assert message.format(**names) in error and len(error.splitlines()) == 1, error
    assert path.read_bytes() == before and not (tmp_path / "t.png").exists()


def test_silence_and_a_missing_asr_model_say_why(recording, model_dir, tmp_path, capsys):
    sf.write(tmp_path / "quiet.wav", np.zeros(2 * SR, np.float32), SR)
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(tmp_path / "quiet.wav")]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out) == [] and printed.err.count("No speech found in") == 1, printed.err
    assert f"No speech found in {tmp_path / 'quiet.wav'}: voice activity detection found no utterance of at least " \
        "0.25 s" in printed.err
    # speech, all of it shorter than asked for: the message names that length, not only the threshold
    assert main(["predict", "--model", str(model_dir), str(recording[0]), "--min-utterance", "9",
                 "--max-utterance", "12"]) == 0
    assert "no utterance of at least 9 s" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"`min_utterance_seconds` \(40\) must be below the processor's "
                                         r"`max_audio_seconds` \(30 s\)"):
        pipeline(TASK, model=str(model_dir))(str(recording[0]), segmentation={"min_utterance_seconds": 40,
                                                                               "max_utterance_seconds": 60})
    assert main(["predict", "--model", str(model_dir), str(recording[0]), "--asr", str(tmp_path / "no-asr")]) == 2
    error = capsys.readouterr().err.strip()
    assert "no-asr" in error and "ASR model" in error and len(error.splitlines()) == 1, error


def test_real_speech_is_cut_at_the_recordings_boundaries(shared_data):
    """EmoDB's recorded sentences, joined with 1 s of silence: one segment each, at the default settings."""
    paths = sorted((shared_data / "emodb").glob("*.wav"))[:8]
    parts, starts = [], []
    for path in paths:
        parts.append(np.zeros(SR, np.float32))
        starts.append(sum(len(p) for p in parts) / SR)
        parts.append(load_recording(path))
    segments = segment_recording(np.concatenate([*parts, np.zeros(SR, np.float32)]))
    assert len(segments) == len(paths)
    assert all(abs(segment["start"] - start) < 0.3 for segment, start in zip(segments, starts))


def test_without_the_extra_the_error_names_it(recording, model_dir, monkeypatch, capsys):
    from mister_e import segmentation_mister_e

    monkeypatch.setitem(__import__("sys").modules, "silero_vad", None)  # as if not installed
    segmentation_mister_e._vad_model.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"mister-e\[recording\]"):
            segment_recording(load_recording(recording[0]))
        capsys.readouterr()
        assert main(["predict", "--model", str(model_dir), str(recording[0])]) == 2
        assert "mister-e[recording]" in capsys.readouterr().err
    finally:
        segmentation_mister_e._vad_model.cache_clear()
