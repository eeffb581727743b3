from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import ClassLabel
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from mister_e.demo import EMOTIONS, build_demo_corpus, demo_conversation


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    build_demo_corpus(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return build_demo_corpus(corpus_dir)


def _audio_features(path):
    """Cheap prosodic features over 25 ms frames of the voiced part: level, its variation, brightness, noisiness."""
    waveform, sampling_rate = sf.read(path)
    frames = waveform[: len(waveform) // 400 * 400].reshape(-1, 400)
    rms = np.sqrt((frames**2).mean(1))
    active = rms > 0.1 * rms.max()
    zero_crossings = (np.abs(np.diff(np.sign(frames), axis=1)) > 0).mean(1)
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(400), axis=1))
    centroid = (spectrum * np.fft.rfftfreq(400, 1 / sampling_rate)).sum(1) / (spectrum.sum(1) + 1e-9)
    return [
        np.log(rms[active].mean()),
        np.log(rms[active].std()),
        zero_crossings[active].mean(),
        centroid[active].mean(),
        centroid[active].std(),
        active.mean(),
        len(waveform) / sampling_rate,
    ]


def _utterances(split):
    audio = np.array([_audio_features(path) for row in split for path in row["audio"]])
    texts = [text for row in split for text in row["texts"]]
    labels = np.array([label for row in split for label in row["labels"]])
    return audio, texts, labels


def test_schema_and_splits(corpus):
    assert {split: corpus[split].num_rows for split in corpus} == {"train": 60, "validation": 12, "test": 12}
    features = corpus["train"].features
    assert set(features) == {"dialogue_id", "utterance_ids", "texts", "audio", "labels", "speakers"}
    assert isinstance(features["labels"].feature, ClassLabel)
    assert features["labels"].feature.names == EMOTIONS
    dialogue_ids = [row["dialogue_id"] for split in corpus.values() for row in split]
    assert len(set(dialogue_ids)) == len(dialogue_ids)
    for split in corpus.values():
        for row in split:
            lengths = {len(row[column]) for column in ("utterance_ids", "texts", "audio", "labels", "speakers")}
            assert len(lengths) == 1 and 4 <= lengths.pop() <= 10
            assert len(set(row["speakers"])) <= 2
    labels = np.concatenate([row["labels"] for row in corpus["train"]])
    assert set(labels) == set(range(len(EMOTIONS)))


def test_audio_files(corpus, corpus_dir):
    audio_dir = (corpus_dir / "audio").resolve()
    for split in corpus.values():
        for path in (path for row in split for path in row["audio"]):
            path = Path(path)
            assert path.is_absolute() and audio_dir in path.parents
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert 0.8 <= info.duration <= 2.0
    waveform, _ = sf.read(corpus["test"][0]["audio"][0])
    assert np.sqrt(np.mean(waveform**2)) > 1e-3


def test_deterministic(tmp_path):
    first = build_demo_corpus(tmp_path / "a", num_conversations=7, seed=3)
    second = build_demo_corpus(tmp_path / "b", num_conversations=7, seed=3)
    for split in first:
        for row_a, row_b in zip(first[split], second[split]):
            assert (row_a["texts"], row_a["labels"], row_a["speakers"]) == (
                row_b["texts"],
                row_b["labels"],
                row_b["speakers"],
            )
            for path_a, path_b in zip(row_a["audio"], row_b["audio"]):
                assert Path(path_a).read_bytes() == Path(path_b).read_bytes()
    other = build_demo_corpus(tmp_path / "c", num_conversations=7, seed=4)
    assert other["train"]["texts"] != first["train"]["texts"]


def test_reuse_and_rebuild(tmp_path):
    corpus = build_demo_corpus(tmp_path, num_conversations=7)
    wav = Path(corpus["train"][0]["audio"][0])
    stamp = wav.stat().st_mtime_ns
    assert build_demo_corpus(tmp_path, num_conversations=7)["train"]["texts"] == corpus["train"]["texts"]
    assert wav.stat().st_mtime_ns == stamp

    rebuilt = build_demo_corpus(tmp_path, num_conversations=7, seed=1)
    assert rebuilt["train"]["texts"] != corpus["train"]["texts"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["audio", "dataset"]


def test_too_few_conversations(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        build_demo_corpus(tmp_path, num_conversations=2)


def test_both_modalities_are_learnable_and_fusion_helps(corpus):
    train_audio, train_texts, train_labels = _utterances(corpus["train"])
    test_audio, test_texts, test_labels = _utterances(corpus["test"])
    # Chance: always predicting the most frequent training class.
    chance = np.mean(test_labels == np.bincount(train_labels).argmax())

    scaler = StandardScaler().fit(train_audio)
    train_audio, test_audio = scaler.transform(train_audio), scaler.transform(test_audio)
    vectorizer = CountVectorizer().fit(train_texts)
    train_words, test_words = vectorizer.transform(train_texts).toarray(), vectorizer.transform(test_texts).toarray()

    def accuracy(train, test):
        return LogisticRegression(max_iter=2000).fit(train, train_labels).score(test, test_labels)

    audio_only = accuracy(train_audio, test_audio)
    text_only = accuracy(train_words, test_words)
    fused = accuracy(np.hstack([train_audio, train_words]), np.hstack([test_audio, test_words]))
    assert audio_only > chance + 0.15
    assert text_only > chance + 0.15
    assert fused > max(audio_only, text_only) + 0.03


def test_demo_conversation(tmp_path):
    conversation = demo_conversation(tmp_path)
    utterances = conversation["utterances"]
    assert 4 <= len(utterances) == len(conversation["labels"]) == len(conversation["speakers"])
    assert len(set(conversation["labels"])) >= 3 and set(conversation["labels"]) <= set(EMOTIONS)
    for utterance in utterances:
        assert set(utterance) == {"audio", "text"} and utterance["text"]
        assert sf.info(utterance["audio"]).samplerate == 16000
    again = demo_conversation(tmp_path)
    assert [u["text"] for u in again["utterances"]] == [u["text"] for u in utterances]
