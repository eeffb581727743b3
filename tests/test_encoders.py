"""Stage-1 utterance encoders: every backbone family runs, takes LoRA that trains, saves and merges."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    Data2VecAudioConfig,
    HubertConfig,
    LlamaConfig,
    Qwen2AudioConfig,
    Qwen2Config,
    Wav2Vec2Config,
    WavLMConfig,
    WhisperConfig,
    WhisperModel,
)

from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEForUtteranceClassification
from mister_e.training.lora import apply_lora, load_lora, merge_lora

from tiny import tiny_config

NUM_LABELS, EMBED_DIM = 3, 16
_SSL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
    conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
_DECODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                intermediate_size=37, vocab_size=100)
_WHISPER = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=37, decoder_layers=1,
                decoder_attention_heads=2, decoder_ffn_dim=37, num_mel_bins=80, max_source_positions=30,
                vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)

SPEECH_BACKBONES = {
    "wavlm": lambda: WavLMConfig(**_SSL, num_buckets=16, max_bucket_distance=20),
    "hubert": lambda: HubertConfig(**_SSL),
    "wav2vec2": lambda: Wav2Vec2Config(**_SSL),
    "data2vec-audio": lambda: Data2VecAudioConfig(**{**_SSL, "num_conv_pos_embeddings": 5, "conv_pos_kernel_size": 5}),
    "whisper": lambda: WhisperConfig(**_WHISPER),
    "qwen2_audio": lambda: Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=32, encoder_layers=1, encoder_attention_heads=2,
                          encoder_ffn_dim=37, num_mel_bins=80, max_source_positions=30),
        text_config=dict(model_type="qwen2", **_DECODER),
    ),
}
TEXT_BACKBONES = {
    "bert": lambda: BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                               vocab_size=100),
    "llama": lambda: LlamaConfig(**_DECODER),
    "qwen2": lambda: Qwen2Config(**_DECODER),
}


def utterance_model(modality: str, family: str, **overrides) -> MisterEForUtteranceClassification:
    torch.manual_seed(0)
    backbone = (SPEECH_BACKBONES if modality == "speech" else TEXT_BACKBONES)[family]()
    extra = {"speech_prompt_ids": [5, 6, 7]} if family == "qwen2_audio" else {}
    config = MisterEConfig(
        **{f"{modality}_config": backbone, f"{modality}_embed_dim": EMBED_DIM, "num_labels": NUM_LABELS, **extra,
           **overrides}
    )
    return MisterEForUtteranceClassification(config)


def utterance_batch(model: MisterEForUtteranceClassification, seed: int = 0) -> dict:
    """Two conversations (3 and 2 utterances) with padded rows of raw inputs for whichever encoder exists."""
    generator = torch.Generator().manual_seed(seed)
    attention_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch = dict(attention_mask=attention_mask, labels=torch.tensor([[0, 1, 2], [2, 1, -100]]))
    rows = int(attention_mask.sum())
    if model.speech_encoder is not None:
        if model.speech_encoder.model_type in ("whisper", "qwen2_audio"):
            batch["input_features"] = torch.randn(rows, 80, 60, generator=generator)
            mask = torch.ones(rows, 60, dtype=torch.long)
            mask[1, 40:] = 0
        else:
            batch["input_values"] = torch.randn(rows, 1600, generator=generator)
            mask = torch.ones(rows, 1600, dtype=torch.long)
            mask[1, 900:] = 0
        batch["speech_attention_mask"] = mask
    if model.text_encoder is not None:
        batch["input_ids"] = torch.randint(3, 100, (rows, 7), generator=generator)
        mask = torch.ones(rows, 7, dtype=torch.long)
        mask[0, 4:] = 0
        batch["text_attention_mask"] = mask
    return batch


ALL_FAMILIES = [("speech", f) for f in SPEECH_BACKBONES] + [("text", f) for f in TEXT_BACKBONES]


@pytest.mark.parametrize("modality, family", ALL_FAMILIES)
def test_every_family_builds_runs_and_takes_lora_that_trains(modality, family):
    model = utterance_model(modality, family)
    batch = utterance_batch(model)
    out = model(**batch)
    embeds = out[f"{modality}_embeds"]
    assert embeds.shape == (2, 3, EMBED_DIM) and out[f"{modality}_logits"].shape == (2, 3, NUM_LABELS)
    assert (embeds[1, 2] == 0).all() and torch.isfinite(out.loss)

    peft_model = apply_lora(model, modality)
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert lora and set(lora) <= trainable
    assert all("lora_" in n or f"{modality}_encoder.backbone." not in n for n in trainable), "backbone not frozen"
    # lora_B starts at zero, so lora_A's gradient is zero until one step has moved B: take that step first.
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    peft_model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    peft_model(**batch).loss.backward()
    silent = [n for n, p in lora.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []
    head = [n for n in trainable if "modules_to_save" in n]
    assert head and all(peft_model.get_parameter(n).grad.abs().sum() > 0 for n in head)


def test_wavlm_attention_lora_is_the_trap_the_preset_avoids():
    model = utterance_model("speech", "wavlm")
    peft_model = apply_lora(model, "speech", target_modules=("q_proj", "k_proj", "v_proj"))
    batch = utterance_batch(model)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert grads and all(g is None or g.abs().sum() == 0 for g in grads)


def test_unknown_family_without_targets_is_a_clear_error():
    model = utterance_model("text", "bert")
    model.text_encoder.model_type = "mystery"
    with pytest.raises(ValueError, match="mystery"):
        apply_lora(model, "text")
    with pytest.raises(ValueError, match="no speech encoder"):
        apply_lora(model, "speech")


@pytest.mark.parametrize("modality, family", [("speech", "wavlm"), ("text", "bert")])
def test_adapter_and_merged_checkpoints_reproduce_outputs(tmp_path, modality, family):
    peft_model = apply_lora(utterance_model(modality, family), modality)
    with torch.no_grad():  # move every LoRA and head weight away from its initial value
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    peft_model.eval()
    batch = utterance_batch(peft_model.base_model.model)
    batch.pop("labels")
    with torch.no_grad():
        expected = peft_model(**batch)[f"{modality}_embeds"]
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = load_lora(utterance_model(modality, family), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch)[f"{modality}_embeds"], expected)

    merge_lora(reloaded).save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    merged = MisterEForUtteranceClassification.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch)[f"{modality}_embeds"], expected, rtol=1e-4, atol=1e-5)


def test_from_backbones_loads_pretrained_weights(tmp_path):
    torch.manual_seed(1)
    BertModel(TEXT_BACKBONES["bert"]()).save_pretrained(tmp_path / "bert")
    WhisperModel(SPEECH_BACKBONES["whisper"]()).save_pretrained(tmp_path / "whisper")
    model = MisterEForUtteranceClassification.from_backbones(
        speech=tmp_path / "whisper", text=tmp_path / "bert", speech_embed_dim=8, text_embed_dim=8, num_labels=2
    )
    bert = BertModel.from_pretrained(tmp_path / "bert")
    whisper_encoder = WhisperModel.from_pretrained(tmp_path / "whisper").get_encoder()
    for backbone, reference in ((model.text_encoder.backbone, bert), (model.speech_encoder.backbone, whisper_encoder)):
        theirs = reference.state_dict()
        assert all(torch.equal(value, theirs[key]) for key, value in backbone.state_dict().items())
    assert model.config.text_config.model_type == "bert" and model.config.speech_config.model_type == "whisper"


def test_from_backbones_resolves_names_as_the_cli_does(tmp_path):
    """A missing folder is named as such (not as a malformed Hub id), and the default text backbone's id loads its
    packaged copy offline (the tests run with `HF_HUB_OFFLINE=1`)."""
    from mister_e.backbones import DEFAULT_TEXT_BACKBONE, packaged_minilm

    with pytest.raises(FileNotFoundError, match="Backbone folder not found: ./no-such-minilm"):
        MisterEForUtteranceClassification.from_backbones(text="./no-such-minilm")
    if packaged_minilm() is None:
        pytest.skip("the `minilm` extra is not installed")
    model = MisterEForUtteranceClassification.from_backbones(text=DEFAULT_TEXT_BACKBONE, text_embed_dim=8, num_labels=2)
    assert model.config.text_config.hidden_size == 384


def test_stage_two_model_runs_on_raw_inputs_as_on_extracted_embeddings():
    stage_one = utterance_model("text", "bert", text_embed_dim=EMBED_DIM)
    stage_two = MisterEForEmotionRecognition(tiny_config(EMBED_DIM, EMBED_DIM, NUM_LABELS))
    model = MisterEForEmotionRecognition.from_stages(stage_one, stage_two).eval()
    stage_one.eval()
    batch = utterance_batch(stage_one)
    batch.pop("labels")
    with torch.no_grad():
        end_to_end = model(**batch)
        extracted = stage_one(**batch).text_embeds
        two_step = stage_two.eval()(text_embeds=extracted, attention_mask=batch["attention_mask"])
    torch.testing.assert_close(end_to_end.logits, two_step.logits)
    assert (end_to_end.gate_weights[batch["attention_mask"].bool()][:, 1] == 1).all()


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "hubert"])
def test_a_group_norm_speech_encoder_is_independent_of_its_batch_mates(family):
    """A group-norm front end normalises over the whole padded clip: an utterance's embedding moved with the length of
    the longest clip in its batch (9-12% here), and a causal model's answer with a later utterance's."""
    model = utterance_model("speech", family).eval()
    assert model.config.speech_config.feat_extract_norm == "group"
    generator = torch.Generator().manual_seed(0)
    short, long = torch.randn(1, 900, generator=generator), torch.randn(1, 2400, generator=generator)
    batch = torch.cat([torch.nn.functional.pad(short, (0, 1500)), long])
    mask = torch.tensor([[1] * 900 + [0] * 1500, [1] * 2400])
    with torch.no_grad():
        alone = model.speech_encoder(short, torch.ones(1, 900, dtype=torch.long))[0]
        together = model.speech_encoder(batch, mask)[0]
        long_alone = model.speech_encoder(long, torch.ones(1, 2400, dtype=torch.long))[0]
    torch.testing.assert_close(together, torch.cat([alone, long_alone]), atol=1e-5, rtol=1e-5)
    # Two clips of one length padded to a longer one elsewhere (a micro-batch of `encoder_batch_size` rows): still
    # read unpadded (they were run padded, as all lengths were equal).
    both = torch.cat([batch[:1], batch[:1]])
    with torch.no_grad():
        chunk = model.speech_encoder(both, torch.cat([mask[:1], mask[:1]]))[0]
    torch.testing.assert_close(chunk, torch.cat([alone, alone]), atol=1e-5, rtol=1e-5)


def test_a_wavlm_encoder_runs_without_torch_mask_warnings():
    """transformers' WavLM attention mixes a boolean padding mask with a float bias, and torch warned on every batch."""
    import warnings

    model = utterance_model("speech", "wavlm").eval()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        model(**utterance_batch(model))
    assert not [w for w in caught if "key_padding_mask" in str(w.message)]


def test_from_stages_joins_only_the_encoders_an_expert_reads():
    """A stage-1 model with both encoders joined to a text-only conversation model leaves the speech encoder out
    (its config would refuse a backbone no expert reads) and answers as on extracted text embeddings."""
    torch.manual_seed(0)
    both = MisterEForUtteranceClassification(MisterEConfig(
        speech_config=SPEECH_BACKBONES["wav2vec2"](), text_config=TEXT_BACKBONES["bert"](), speech_embed_dim=EMBED_DIM,
        text_embed_dim=EMBED_DIM, num_labels=NUM_LABELS)).eval()
    text_only = MisterEForEmotionRecognition(tiny_config(EMBED_DIM, EMBED_DIM, NUM_LABELS, experts=["text"])).eval()
    model = MisterEForEmotionRecognition.from_stages(both, text_only).eval()
    assert model.speech_encoder is None and model.config.speech_config is None
    batch = utterance_batch(both)
    batch.pop("labels")
    with torch.no_grad():
        extracted = both(**batch).text_embeds
        expected = text_only(text_embeds=extracted, attention_mask=batch["attention_mask"]).logits
        batch = {key: value for key, value in batch.items() if key not in ("input_values", "speech_attention_mask")}
        torch.testing.assert_close(model(**batch).logits, expected)


def test_from_stages_rejects_mismatched_embedding_widths():
    stage_one = utterance_model("text", "bert")
    stage_two = MisterEForEmotionRecognition(tiny_config(4, EMBED_DIM + 1, NUM_LABELS))
    with pytest.raises(ValueError, match=rf"reads {EMBED_DIM + 1}-d text embeddings; .* `projection` embeddings are "
                                         rf"{EMBED_DIM}-d\."):
        MisterEForEmotionRecognition.from_stages(stage_one, stage_two)


def test_rows_must_match_the_modality_mask():
    model = utterance_model("text", "bert")
    batch = utterance_batch(model)
    batch["input_ids"] = batch["input_ids"][:-1]
    batch["text_attention_mask"] = batch["text_attention_mask"][:-1]
    with pytest.raises(ValueError, match="4 text rows for 5 utterances"):
        model(**batch)


def test_lora_names_a_modality_it_cannot_adapt():
    with pytest.raises(ValueError, match=r"`modality` must be one of \['speech', 'text'\], got 'txt'"):
        apply_lora(utterance_model("text", "bert"), "txt")
    functionals = MisterEForUtteranceClassification.from_backbones(speech="opensmile:eGeMAPSv02", speech_embed_dim=8)
    with pytest.raises(ValueError, match="openSMILE functionals: it has no network for LoRA"):
        apply_lora(functionals, "speech")


def test_offline_a_backbone_id_is_resolved_only_when_cached(monkeypatch):
    """Offline, a Hub id passes when its config, or a tokenizer's alone (a `--tokenizer` repo), is in the cache, and
    anything else is refused in one line naming offline mode, before any data loads."""
    from huggingface_hub import constants

    from mister_e.backbones import resolve_backbone

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = Path(constants.HF_HUB_CACHE) / "models--tiny-owner--tokenizer-only"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "tokenizer_config.json").write_text("{}")
    assert resolve_backbone("tiny-owner/tokenizer-only") == "tiny-owner/tokenizer-only"
    with pytest.raises(OSError, match="neither a local folder nor in the Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve_backbone("tiny-owner/not-cached")
