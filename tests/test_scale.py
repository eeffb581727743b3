"""Scaling stage 1: gradient checkpointing, bf16 backbones with fp32 heads, the QLoRA guard, the paper-scale plan."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import DatasetDict
from test_encoders import SPEECH_BACKBONES, TEXT_BACKBONES, utterance_batch, utterance_model
from tiny_corpus import FAST, corpus
from tiny_end_to_end import tiny_processor
from transformers import LlamaModel, TrainerCallback, WavLMModel

from mister_e import MisterEForUtteranceClassification
from mister_e.cli import main
from mister_e.training.lora import apply_lora
from mister_e.training.memory_plan import paper_scale_plan
from mister_e.training import train_encoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny matmuls gain nothing from threads, and on a busy CPU the checkpoint recomputation's OpenMP threads were
    seen to stall each other for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gradients(model, batch, checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    """One backward pass with the same dropout and SpecAugment draws, and how often the first block of the trained
    model's first layer ran (Qwen2-Audio's frozen audio tower comes before its language model)."""
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    model.zero_grad()
    layer = [m for name, m in model.named_modules() if name.endswith("layers.0")][-1]
    calls = []
    hook = next(layer.children()).register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(1)
    np.random.seed(1)
    model(**batch).loss.backward()
    hook.remove()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return grads, len(calls)


@pytest.mark.parametrize("modality, family, lora", [
    ("text", "llama", False), ("text", "llama", True), ("speech", "wavlm", True), ("speech", "qwen2_audio", True),
])  # fmt: skip
def test_gradient_checkpointing_recomputes_the_backbone_and_keeps_gradients(modality, family, lora):
    def build():
        model = utterance_model(modality, family)
        if lora:
            model = apply_lora(model, modality)
            with torch.no_grad():  # lora_B starts at zero; move it so that lora_A gets a gradient too
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.normal_()
        return model

    batch = utterance_batch(build())
    expected, plain_calls = _gradients(build(), batch, checkpointing=False)
    got, checkpointed_calls = _gradients(build(), batch, checkpointing=True)
    # (a group-norm speech backbone takes utterances of different lengths one pass each: several calls either way)
    assert plain_calls >= 1 and checkpointed_calls == 2 * plain_calls, "the backbone's layers were not recomputed"
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert all(got[name].abs().sum() > 0 for name in got if "lora_" in name)


@pytest.mark.parametrize("modality, family", [("text", "llama"), ("speech", "wavlm")])
def test_bfloat16_backbone_trains_float32_heads_and_adapters(tmp_path, modality, family):
    torch.manual_seed(0)
    backbone_class, configs = (LlamaModel, TEXT_BACKBONES) if modality == "text" else (WavLMModel, SPEECH_BACKBONES)
    backbone_class(configs[family]()).save_pretrained(tmp_path / family)
    model = MisterEForUtteranceClassification.from_backbones(
        **{modality: tmp_path / family}, dtype=torch.bfloat16, num_labels=3, **{f"{modality}_embed_dim": 16}
    )
    encoder = getattr(model, f"{modality}_encoder")
    assert {p.dtype for p in encoder.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for n, p in encoder.named_parameters() if not n.startswith("backbone.")} == {torch.float32}

    peft_model = apply_lora(model, modality)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    output = peft_model(**utterance_batch(model))
    assert output[f"{modality}_embeds"].dtype == torch.float32 and torch.isfinite(output.loss)
    output.loss.backward()
    optimizer.step()
    moved = {n for n, p in trainable.items() if not torch.equal(p, before[n])}
    assert any("lora_B" in n for n in moved) and {n for n in trainable if "modules_to_save" in n} <= moved


class _Inspect(TrainerCallback):
    """What the model the Trainer trains looks like once training runs."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.checkpointed = sum(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules())
        backbone = model.get_base_model().text_encoder.backbone
        self.backbone = {p.dtype for n, p in backbone.named_parameters() if "lora_" not in n}
        self.trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        self.autocast = args.bf16


def test_train_encoder_checkpoints_a_bfloat16_backbone_under_autocast(tmp_path):
    torch.manual_seed(0)
    LlamaModel(TEXT_BACKBONES["llama"]()).save_pretrained(tmp_path / "llama")
    data = corpus(train=2, validation=2, test=2)
    inspect = _Inspect()
    results = train_encoder(
        DatasetDict(train=data["train"], validation=data["validation"]), "text", tmp_path / "run", tiny_processor(),
        backbone=tmp_path / "llama", dtype=torch.bfloat16, config_overrides={"text_embed_dim": 16},
        training_overrides={**FAST, "num_train_epochs": 1, "gradient_checkpointing": True, "bf16": True},
        callbacks=[inspect],
    )
    assert inspect.checkpointed >= 2 and inspect.autocast
    assert inspect.backbone == {torch.bfloat16} and inspect.trainable == {torch.float32}
    assert 0 <= results["validation"]["weighted_f1"] <= 1
    merged = MisterEForUtteranceClassification.from_pretrained(tmp_path / "run" / "merged")
    assert {p.dtype for p in merged.text_encoder.backbone.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("has_bitsandbytes, missing", [(False, ["bitsandbytes", "CUDA GPU"]), (True, ["CUDA GPU"])])
def test_quantized_loading_names_what_is_missing_before_loading(monkeypatch, tmp_path, has_bitsandbytes, missing):
    monkeypatch.setattr("mister_e.training.quantization.find_spec", lambda name: object() if has_bitsandbytes else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = corpus(train=2, validation=2, test=2)
    # The backbone folder does not exist: loading anything would fail differently.
    with pytest.raises(ValueError, match="4-bit loading of the backbone") as error:
        train_encoder(data, "text", tmp_path / "run", None, backbone=tmp_path / "missing", load_in_bits=4)
    assert [name for name in ("bitsandbytes", "CUDA GPU") if name in str(error.value)] == missing
    assert not (tmp_path / "run").exists()


def test_train_encoder_command_names_what_quantizing_needs_before_loading(monkeypatch, tmp_path, capsys):
    """The command said it only after building the processor (a Hub download) and loading the data: offline, the
    Hub's error came instead."""
    monkeypatch.setattr("mister_e.training.quantization.find_spec", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    arguments = ["train-encoder", "--dataset", str(tmp_path / "missing"), "--modality", "text", "--backbone",
                 "owner/not-cached", "--output-dir", str(tmp_path / "run"), "--load-in-bits", "4"]
    assert main(arguments) == 2
    assert "needs the `bitsandbytes` package (pip install bitsandbytes) and a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_encoder_command_routes_memory_options(monkeypatch, tmp_path, capsys):
    from mister_e import training

    monkeypatch.setattr("mister_e.training.quantization.find_spec", lambda name: object())  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    tiny_processor().save_pretrained(tmp_path / "processor")
    seen = {}

    def fake_train_encoder(dataset, modality, output_dir, processor, **kwargs):
        seen.update(kwargs)
        return {}

    monkeypatch.setattr(training, "train_encoder", fake_train_encoder)
    from datasets import Dataset, DatasetDict

    splits = DatasetDict({split: Dataset.from_dict({"labels": [[0]]}) for split in ("train", "validation")})
    monkeypatch.setattr("mister_e.data.storage.load_dialogues", lambda path: splits)
    arguments = ["train-encoder", "--dataset", "d", "--modality", "text", "--backbone", str(tmp_path),
                 "--processor", str(tmp_path / "processor"), "--output-dir", "o", "--dtype", "bfloat16",
                 "--gradient-checkpointing", "--set", "bf16=true", "--load-in-bits", "4"]
    assert main(arguments) == 0
    assert seen["dtype"] == torch.bfloat16 and seen["load_in_bits"] == 4
    checkpointing = {key for key, value in seen["training_overrides"].items() if key.endswith("_checkpointing")}
    assert checkpointing and all(seen["training_overrides"][key] for key in checkpointing)
    assert seen["training_overrides"]["bf16"] is True


def test_qwen2_audio_language_model_reads_only_the_longest_audio_of_the_batch():
    model = utterance_model("speech", "qwen2_audio").eval()
    batch = utterance_batch(model)
    batch.pop("labels")
    mask = batch["speech_attention_mask"]
    mask[:, 40:] = 0
    mask[2, 20:] = 0
    lengths = []
    hook = model.speech_encoder.backbone.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    with torch.no_grad():
        together = model(**batch).speech_embeds[batch["attention_mask"].bool()]
        alone = []
        for row in range(len(together)):
            single = dict(attention_mask=torch.ones(1, 1, dtype=torch.long),
                          input_features=batch["input_features"][row:row + 1],
                          speech_attention_mask=mask[row:row + 1])
            alone.append(model(**single).speech_embeds[0, 0])
    hook.remove()
    audio_tokens = model.speech_encoder.backbone.audio_tower._get_feat_extract_output_lengths(torch.tensor(40))[1]
    assert lengths[0] == int(audio_tokens) + 3  # the 3 prompt tokens of the tiny config
    torch.testing.assert_close(together, torch.stack(alone), rtol=1e-4, atol=1e-5)


# --- the paper-scale plan ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plan():
    start = time.perf_counter()
    plan = paper_scale_plan()
    plan["seconds"] = time.perf_counter() - start
    return plan


def _lora(config, r, targets):
    """LoRA parameters of a Llama/Qwen2 decoder: `r (in + out)` per targeted projection and layer."""
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (hidden, hidden),
              "gate_proj": (hidden, inner), "up_proj": (hidden, inner), "down_proj": (inner, hidden)}
    return config["num_hidden_layers"] * r * sum(sum(shapes[target]) for target in targets)


def test_paper_scale_plan_counts_parameters_without_weights(plan):
    from mister_e.training.memory_plan import PAPER_BACKBONES

    assert plan["seconds"] < 30
    speech, text = plan["encoders"]["speech"], plan["encoders"]["text"]
    # With the checkpoints' LM heads (which the encoders do not load): Qwen2-Audio-7B 8.4 B, Llama-3.1-8B 8.0 B.
    assert 8.35e9 < speech["backbone"] + speech["checkpoint_lm_head"] < 8.45e9
    assert 7.98e9 < text["backbone"] + text["checkpoint_lm_head"] < 8.08e9
    embed, labels = 2048, 6
    hidden = 4096
    speech_heads = 2 * hidden + hidden * embed + embed + embed * labels + labels  # norm, projection, classifier
    text_heads = 2 * hidden + hidden * hidden + 2 * hidden + 2 * hidden * embed + embed + embed * labels + labels
    speech_lora = _lora(PAPER_BACKBONES["speech"][1]["text_config"], 16, ["q_proj", "k_proj"])
    text_lora = _lora(PAPER_BACKBONES["text"][1], 8, text["lora_config"]["target_modules"])
    assert text["lora_config"]["target_modules"] == ["q_proj", "v_proj"]  # the authors' text LLM recipe
    assert (speech["lora"], speech["heads"]) == (speech_lora, speech_heads)
    assert (text["lora"], text["heads"]) == (text_lora, text_heads)
    assert speech["trainable"] == speech_lora + speech_heads and text["trainable"] == text_lora + text_heads
    assert speech["total"] == speech["backbone"] + speech_heads and text["total"] == text["backbone"] + text_heads
    assert speech["tokens_per_utterance"] == 125 + 10  # a 5 s crop's audio tokens, then the prompt
    assert 80e6 < plan["conversation_model"]["total"] < 100e6


def test_paper_scale_memory_falls_with_each_saving(plan):
    for encoder in plan["encoders"].values():
        gib = {(r["weights"], r["gradient_checkpointing"], r["gpus"], r["strategy"]): r["gib"]
               for r in encoder["memory"]}
        assert 20 < gib["bf16", False, 1, "single"] < 40  # 15 GB of bf16 weights, then activations
        for weights in ("bf16", "4bit"):
            assert gib[weights, True, 1, "single"] < gib[weights, False, 1, "single"]
            assert gib[weights, False, 8, "ddp"] >= gib[weights, False, 1, "single"]
        assert gib["4bit", False, 1, "single"] < gib["bf16", False, 1, "single"]
        assert gib["bf16", True, 8, "fsdp"] < gib["bf16", True, 2, "fsdp"] < gib["bf16", True, 2, "ddp"]
        assert gib["bf16", True, 8, "fsdp"] < 8


def test_plan_command_prints_counts_and_writes_json(tmp_path, capsys):
    assert main(["plan", "--json", str(tmp_path / "plan.json")]) == 0
    printed = capsys.readouterr().out
    assert "Qwen/Qwen2-Audio-7B-Instruct" in printed and "meta-llama/Llama-3.1-8B-Instruct" in printed
    assert "8.397 B with it" in printed and "8.030 B with it" in printed and "8x FSDP" in printed
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["encoders"]["text"]["trainable"] == 36_993_030  # LoRA q/v 3.41 M + heads 33.59 M


def test_stage1_smoke_script_runs_tiny_on_cpu(tmp_path):
    output = tmp_path / "smoke.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "stage1_smoke.py"), "--tiny", "--steps", "3",
                    "--output", str(output)], check=True, capture_output=True, timeout=120)
    runs = json.loads(output.read_text())["runs"]
    for run in runs.values():
        assert run["dtypes"] == {"backbone": ["bfloat16"], "lora": ["float32"], "heads": ["float32"]}
        assert run["every_lora_parameter_got_a_gradient"] and run["steps_per_second"] > 0
        assert run["gradient_checkpointing"]
    assert set(runs) == {"text", "speech"} and runs["text"]["estimated_activations_gib"] > 0
