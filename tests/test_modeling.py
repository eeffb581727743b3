"""MiSTER-E conversation model: config, save/load, masking, causality, missing modalities, losses, remote code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from huggingface_hub.errors import StrictDataclassError

from mister_e import MisterEConfig, MisterEForEmotionRecognition
from mister_e.experts_mister_e import _LOW_PRECISION_KERNELS, gru_packed
from mister_e.losses_mister_e import focal_loss, supervised_contrastive_loss, symmetric_kl

import tiny

SPEECH_DIM, TEXT_DIM, NUM_LABELS = 10, 6, 4


def tiny_config(**overrides) -> MisterEConfig:
    return tiny.tiny_config(SPEECH_DIM, TEXT_DIM, NUM_LABELS, layers=2, **overrides)


def layered_text_config() -> MisterEConfig:
    """Text embeddings that concatenate 3 states of TEXT_DIM, mixed by the model (`text_layers`)."""
    return tiny.tiny_config(SPEECH_DIM, 3 * TEXT_DIM, NUM_LABELS, layers=2, text_layers=3)


def tiny_model(**overrides) -> MisterEForEmotionRecognition:
    torch.manual_seed(0)
    return MisterEForEmotionRecognition(tiny_config(**overrides)).eval()


def conversations(lengths=(5, 3), seed=0):
    """A padded batch: embeddings, utterance mask and labels (-100 on padding)."""
    generator = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), max(lengths)
    attention_mask = torch.zeros(batch, length, dtype=torch.long)
    for i, n in enumerate(lengths):
        attention_mask[i, :n] = 1
    labels = torch.randint(0, NUM_LABELS, (batch, length), generator=generator).masked_fill(attention_mask == 0, -100)
    return dict(
        speech_embeds=torch.randn(batch, length, SPEECH_DIM, generator=generator),
        text_embeds=torch.randn(batch, length, TEXT_DIM, generator=generator),
        attention_mask=attention_mask,
        labels=labels,
    )


# --- config -----------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_papers():
    config = MisterEConfig()
    assert (config.speech_embed_dim, config.text_embed_dim, config.context_dim) == (2048, 2048, 1024)
    assert (config.conv_kernel_sizes, config.gru_layers, config.coattention_layers) == ([1, 3, 5], 3, 4)
    assert (config.attention_dim, config.attention_heads, config.gate_hidden_size, config.gate_temperature) == (120, 3, 10, 2.0)
    assert (config.focal_gamma, config.supcon_weight, config.kl_weight) == (3.0, 2.0, 0.1)
    assert list(config.id2label.values()) == ["hap", "sad", "neu", "ang", "exc", "fru"]


def test_config_json_round_trip(tmp_path):
    config = tiny_config(causal=True, experts=["text", "cross_modal"], gate_mode="mean", context_module="gru")
    config.save_pretrained(tmp_path)
    reloaded = MisterEConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.id2label == {i: f"emotion_{i}" for i in range(NUM_LABELS)}
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "mister_e"
    config.finetuning_task = "erc"  # attributes transformers and users set on any config; `_name_or_path` too
    assert MisterEConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_a_misspelled_attribute_is_refused_when_saved_not_when_loaded(tmp_path):
    """Set after construction, a typo was written to config.json and refused only by the next load (maybe someone
    else's, after an upload): the save refuses it now."""
    model = MisterEForEmotionRecognition(tiny_config())
    model.config.gate_mdoe = "mean"
    with pytest.raises(StrictDataclassError, match=r"unknown field\(s\) \['gate_mdoe'\]"):
        model.save_pretrained(tmp_path)


def test_weights_a_config_has_no_place_for_are_refused(tmp_path):
    """Loading under an edited config (here without the standardiser whose statistics were saved) dropped those
    tensors with only a log line, and the model predicted from unstandardised inputs."""
    MisterEForEmotionRecognition(tiny_config(standardize_inputs=True)).save_pretrained(tmp_path)
    for edit in ({"standardize_inputs": False}, {"experts": ["text"]}):
        with pytest.raises(OSError, match=r"tensors this configuration has no place for \(.*\): loading would drop"):
            MisterEForEmotionRecognition.from_pretrained(tmp_path, **edit)
    assert MisterEForEmotionRecognition.from_pretrained(tmp_path).speech_standardizer is not None


@pytest.mark.parametrize(
    "field, value",
    [
        ("gate_mode", "softmax"),
        ("experts", ["speach"]),
        ("experts", []),
        ("context_module", "lstm"),
        ("context_module", {"txt": "gru"}),
        ("context_module", {"text": "lstm"}),
        ("gru_layers", {"text": 0}),
        ("gru_layers", {"txt": 1}),
        ("speech_pooling", "max"),
        ("attention_dim", 7),
        ("conv_kernel_sizes", [2]),
        ("residual_dropout", 1.5),
        ("gate_temperature", 0),
        ("kl_weight", -1.0),
        ("context_dim", "wide"),
        ("gate_temprature", 3.0),
        ("causal", "yes"),
        ("standardize_inputs", 1),
        ("id2label", {0: "a", 1: "b", 7: "c"}),
        ("id2label", {0: "a", 1: "a"}),
        ("context_dim", 8.0),
        ("encoder_batch_size", 2.5),
        ("conv_kernel_sizes", [3.0]),
        ("conv_kernel_sizes", "3"),
        ("speech_prompt_ids", "abc"),
        ("text_layers", 4),  # does not divide text_embed_dim (6)
        ("text_layers", 0),
        ("problem_type", "regression"),  # transformers' own fields that this model cannot honour
        ("output_attentions", True),
        ("output_hidden_states", True),
        ("experts", None),  # a list where the config reads one: Python's TypeError, a traceback from the CLI
        ("experts", 3),
        ("conv_kernel_sizes", 3),
        ("speech_prompt_ids", 5),
        ("id2label", ["a", "b"]),
        ("label2id", ["a", "b"]),  # was kept as it was, beside the default classes
        ("text_config", 3),
    ],
)
def test_config_rejects_invalid_values_naming_the_field(field, value):
    """The errors the CLI turns into one line and exit 2 (a TypeError would be a traceback), naming the field."""
    with pytest.raises((ValueError, StrictDataclassError)) as error:
        tiny_config(**{field: value})
    assert field in str(error.value.__cause__ or error.value)


@pytest.mark.parametrize("setting", [{"context_module": {"speech": "gru"}}, {"gru_layers": {"speech": 1}}])
def test_a_per_modality_setting_for_an_expert_that_is_off_is_refused(setting):
    """`context_module: {speech: gru}` with `experts: [text, cross_modal]` was taken and changed nothing (only the
    speech and text experts have a context module)."""
    with pytest.raises(StrictDataclassError) as error:
        tiny_config(experts=["text", "cross_modal"], **setting)
    field = next(iter(setting))
    assert str(error.value.__cause__) == (f"`{field}` sets speech ({setting[field]['speech']!r}), but the speech "
                                          "expert is off (`experts=['text', 'cross_modal']`): that entry would change "
                                          "nothing.")
    assert tiny_config(experts=["speech", "cross_modal"], **setting).context_settings("speech")[field] == \
        setting[field]["speech"]


def test_a_saved_per_modality_setting_for_an_expert_that_is_off_is_dropped_when_loaded(tmp_path, caplog):
    """Such a setting saved by an earlier version (a text-only ablation of a recipe with one per modality) changed
    nothing: the folder keeps loading, without it, and answers as before."""
    model, inputs = tiny_model(experts=["text"], context_module={"text": "gru"}), conversations()
    inputs.pop("labels")
    _save_edited(model, tmp_path, context_module={"speech": "conv", "text": "gru"})
    loaded = _load_logged(tmp_path)
    assert loaded.config.context_module == {"text": "gru"}
    assert "Dropping the saved `context_module` entry for speech: the speech expert is off" in caplog.text
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("field, value, named", [
    ("conv_kernel_sizes", 3, "`conv_kernel_sizes` must be a list of whole numbers, got 3"),
    ("experts", None, "`experts` must be an expert's name or a list of them, got None"),
    ("gate_temperature", 0, "`gate_temperature` must be positive, got 0"),
    ("mixture_space", "probabilites", "`mixture_space` got 'probabilites'; expected one of"),
])
def test_a_hand_edited_config_json_is_refused_naming_the_field(field, value, named, tmp_path):
    _save_edited(tiny_config(), tmp_path, **{field: value})
    with pytest.raises((ValueError, StrictDataclassError)) as error:
        MisterEConfig.from_pretrained(tmp_path)
    assert named in str(error.value.__cause__ or error.value)


@pytest.mark.parametrize("change, error, match", [
    (lambda b: {**b, "speech_embeds": b["speech_embeds"].numpy()}, TypeError, "`speech_embeds` must be a torch tensor"),
    (lambda b: {**b, "text_embeds": b["text_embeds"][:, :2]}, ValueError, r"`text_embeds` has \(2, 2\)"),
    (lambda b: {**b, "attention_mask": b["attention_mask"][:, :2]}, ValueError, "`attention_mask` has"),
    (lambda b: {**b, "modality_mask": torch.ones(2, 7, 3)}, ValueError, r"`modality_mask` must have shape"),
    (lambda b: {**b, "speech_embeds": b["speech_embeds"][0]}, ValueError, "`speech_embeds` must have shape"),
    (lambda b: {**b, "labels": b["labels"] + 5}, ValueError, "`labels` must be class ids 0.."),
    (lambda b: {key: value[:, :0] for key, value in b.items()}, ValueError, "empty batch"),
    (lambda b: {**b, "attention_mask": torch.zeros_like(b["attention_mask"])}, ValueError, "marks no utterance"),
    (lambda b: {**b, "attention_mask": b["attention_mask"].flip(1)}, ValueError,
     "conversation 0 has padding before an utterance"),
    (lambda b: {**b, "speech_embeds": None, "modality_mask": torch.ones(2, 7, 2, dtype=torch.bool)}, ValueError,
     "marks utterances as having speech, but no `speech_embeds`"),
    (lambda b: {**b, "modality_mask": torch.ones(2, 7, 2, dtype=torch.bool).index_fill(1, torch.tensor([1]), False)},
     ValueError, r"Conversation 0, utterance 1 has neither speech nor text"),
    (lambda b: {**b, "labels": b["labels"].float()}, TypeError, "`labels` must be integer class ids"),
])
def test_inputs_off_the_grid_are_named(change, error, match):
    """Mismatched inputs name the one at fault, rather than torch's shape error from inside an expert."""
    with pytest.raises(error, match=match):
        tiny_model()(**change(conversations(lengths=(3, 7))))


def test_an_utterance_no_enabled_expert_reads_is_refused_not_answered_as_class_0():
    """A text-only model given an utterance with speech alone: no expert could weigh in, so its logits and gate
    weights were zeros and its class 0, without an error, from `forward` and `step` alike (the pipeline and evaluation
    refuse such data; the model now does too)."""
    batch = conversations(lengths=(3, 3))
    speech_alone = torch.ones(2, 3, 2, dtype=torch.bool).index_put((torch.tensor([1]), torch.tensor([2]),
                                                                     torch.tensor([1])), torch.tensor(False))
    with pytest.raises(ValueError, match=r"Conversation 1, utterance 2 has speech alone \(`modality_mask`\), which no "
                                         r"enabled expert of this model reads alone \(the experts read \{'text'"):
        tiny_model(experts=["text"])(**batch, modality_mask=speech_alone)
    with pytest.raises(ValueError, match="Only speech embeddings were given, which no enabled expert"):
        tiny_model(experts=["text"])(**{**batch, "text_embeds": None})
    with pytest.raises(ValueError, match="Only text embeddings were given"):
        tiny_model(experts=["speech", "cross_modal"], causal=True).step(text_embeds=batch["text_embeds"][:, 0])
    assert tiny_model()(**batch, modality_mask=speech_alone).logits[1, 2].any()  # the speech expert answers


@pytest.mark.parametrize("experts, modality", [(["text"], "speech"), (["speech"], "text")])
def test_config_refuses_an_encoder_no_expert_reads(experts, modality):
    """A backbone that no enabled expert reads was built, loaded and run for nothing; the other modality's passes."""
    from transformers import BertConfig

    backbone = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    with pytest.raises((ValueError, StrictDataclassError), match=f"`{modality}_config` is set but no expert reads"):
        tiny_config(experts=experts, **{f"{modality}_config": backbone})
    other = "text" if modality == "speech" else "speech"
    assert tiny_config(experts=experts, **{f"{other}_config": backbone}).experts == experts


def test_inputs_in_other_dtypes_give_the_same_answers():
    """int32 labels and float64 embeddings are converted, also when only one modality is given (its missing
    modality's zeros took the input's dtype, and the first layer refused them)."""
    model, batch = tiny_model(), conversations(lengths=(3, 7))
    with torch.no_grad():
        expected = model(**batch)
        as_int32 = model(**{**batch, "labels": batch["labels"].int()})
        text_only = model(text_embeds=batch["text_embeds"], attention_mask=batch["attention_mask"]).logits
        text_float64 = model(text_embeds=batch["text_embeds"].double(), attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(as_int32.loss, expected.loss)
    torch.testing.assert_close(text_float64, text_only)


def test_return_dict_false_gives_the_outputs_as_a_tuple():
    """transformers' convention (tracing, export): `return_dict=False` was refused as an unexpected input."""
    model, batch = tiny_model(), conversations(lengths=(3, 7))
    with torch.no_grad():
        output, as_tuple = model(**batch), model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(output.to_tuple())
    torch.testing.assert_close(as_tuple[1], output.logits)  # (loss, logits, ...): the batch has labels


def test_float64_embeddings_are_read_in_the_weights_dtype():
    model, batch = tiny_model(), conversations(lengths=(3, 7))
    with torch.no_grad():
        as_float64 = model(**{**batch, "speech_embeds": batch["speech_embeds"].double(),
                              "text_embeds": batch["text_embeds"].double()})
        torch.testing.assert_close(as_float64.logits, model(**batch).logits)


def test_config_refuses_labels_that_contradict_each_other():
    with pytest.raises(ValueError, match="`num_labels=4` contradicts `id2label`, which names 2 classes"):
        MisterEConfig(num_labels=4, id2label={0: "a", 1: "b"})  # was: LABEL_0..LABEL_3, names lost
    with pytest.raises(ValueError, match="`id2label` .* and `label2id` .* disagree"):
        MisterEConfig(id2label={0: "a", 1: "b"}, label2id={"x": 0, "y": 1})
    assert MisterEConfig(num_labels=2, id2label={0: "a", 1: "b"}).id2label == {0: "a", 1: "b"}


def test_config_reads_one_expert_name_and_labels_given_one_way_round():
    assert tiny_config(experts="text").experts == ["text"]  # `--set experts=text` (YAML gives a string)
    config = MisterEConfig(label2id={"calm": 0, "angry": 1})
    assert config.id2label == {0: "calm", 1: "angry"} and config.num_labels == 2


def test_config_rejects_a_single_expert_gate_on_a_disabled_expert():
    with pytest.raises(Exception, match="gate_mode"):
        tiny_config(experts=["text"], gate_mode="speech")


# --- save / load ------------------------------------------------------------------------------------------------


def test_save_load_save_load_gives_identical_logits(tmp_path):
    model, inputs = tiny_model(), conversations()
    inputs.pop("labels")
    model.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "model.safetensors").is_file()
    assert not list((tmp_path / "a").glob("*.bin"))
    first = MisterEForEmotionRecognition.from_pretrained(tmp_path / "a").eval()
    first.save_pretrained(tmp_path / "b")
    second = MisterEForEmotionRecognition.from_pretrained(tmp_path / "b").eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.equal(first(**inputs).logits, expected)
        assert torch.equal(second(**inputs).logits, expected)


def test_a_saved_backbone_no_expert_reads_is_dropped_when_loaded(tmp_path, caplog):
    """Earlier versions saved a text-only model with a speech backbone it never used (joined with a two-encoder stage
    1): such a folder keeps loading, without the backbone, and answers as before."""
    model, inputs = tiny_model(experts=["text"]), conversations()
    inputs.pop("labels")
    _save_edited(model, tmp_path, speech_config={"model_type": "wav2vec2", "hidden_size": 8, "num_hidden_layers": 1})
    loaded = _load_logged(tmp_path)
    assert loaded.config.speech_config is None and loaded.speech_encoder is None
    assert "Dropping the saved `speech_config`: no expert reads speech" in caplog.text
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def _save_edited(saved, folder, **fields) -> None:
    """`saved` (a model or config) into `folder`, then its config.json edited by hand to hold `fields`."""
    saved.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def _load_logged(folder) -> MisterEForEmotionRecognition:
    """The model in `folder`, with transformers' log propagated for `caplog` to read."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        return MisterEForEmotionRecognition.from_pretrained(folder).eval()
    finally:
        hf_logging.disable_propagation()


def _assert_initialised(model: MisterEForEmotionRecognition):
    """Every tensor holds values from our init ranges: uninitialised memory (or the meta device) cannot pass."""
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d)):
            bound = 1 / module.weight[0].numel() ** 0.5
            assert module.weight.abs().max() <= bound + 1e-6 and module.weight.std() > 0, name
            assert module.bias.abs().max() <= bound + 1e-6, name
        elif isinstance(module, torch.nn.GRU):
            for param in module.parameters():
                assert param.abs().max() <= 1 / module.hidden_size**0.5 + 1e-6 and param.std() > 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    assert all(p.device.type == "cpu" and torch.isfinite(p).all() for p in model.parameters())


def test_loading_without_weights_initialises_everything():
    model = MisterEForEmotionRecognition.from_pretrained(None, config=tiny_config(), state_dict={})
    _assert_initialised(model)


def test_meta_device_init_then_init_weights_initialises_everything():
    with torch.device("meta"):
        model = MisterEForEmotionRecognition(layered_text_config())
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    _assert_initialised(model)
    assert torch.equal(model.text_layer_mix.weights, torch.zeros(3))  # a uniform mix to start


def test_text_layer_mix_gives_the_experts_one_state_of_a_learned_mix(tmp_path):
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(layered_text_config()).eval()
    assert model.text_expert.skip.in_features == model.cross_modal_expert.text_proj.in_features == TEXT_DIM
    states = torch.randn(2, 5, 3 * TEXT_DIM)
    torch.testing.assert_close(model.text_layer_mix(states), states.unflatten(-1, (3, TEXT_DIM)).mean(-2))
    with torch.no_grad():
        model.text_layer_mix.weights.copy_(torch.tensor([0.0, 30.0, 0.0]))  # all but the second state weighed out
        torch.testing.assert_close(model.text_layer_mix(states), states[..., TEXT_DIM : 2 * TEXT_DIM])
    batch = {**conversations(), "text_embeds": torch.randn(2, 5, 3 * TEXT_DIM)}
    model.save_pretrained(tmp_path)
    loaded = MisterEForEmotionRecognition.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
        only_speech = model(speech_embeds=batch["speech_embeds"], attention_mask=batch["attention_mask"])
    assert torch.isfinite(only_speech.logits).all()  # text absent: the experts' zeros have one state's width
    assert tiny_model().text_layer_mix is None  # text_layers=1: the embeddings as they are


PER_MODALITY = {"speech": "conv_gru", "text": "gru"}  # one context module per modality


# --- masking, causality, missing modalities ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["conv_gru", "conv", "gru", PER_MODALITY])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_invariance(variant, causal):
    model = tiny_model(context_module=variant, causal=causal)
    batch = conversations(lengths=(3, 7))
    with torch.no_grad():
        batched = model(**batch)
        alone = model(
            speech_embeds=batch["speech_embeds"][:1, :3],
            text_embeds=batch["text_embeds"][:1, :3],
            attention_mask=batch["attention_mask"][:1, :3],
            labels=batch["labels"][:1, :3],
        )
    torch.testing.assert_close(batched.logits[0, :3], alone.logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.gate_weights[0, :3], alone.gate_weights[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_placeholders_in_padded_or_missing_slots_never_reach_real_utterances(causal):
    """NaN (or any value) where `attention_mask` or `modality_mask` says there is nothing is ignored: a NaN
    placeholder for a missing modality must not turn the conversation's predictions into NaN."""
    model = tiny_model(causal=causal)
    batch = conversations(lengths=(3, 5))
    batch["modality_mask"] = batch["attention_mask"][..., None].repeat(1, 1, 2).bool()
    batch["modality_mask"][1, 2, 0] = False  # utterance 2 of conversation 1 has no speech
    with torch.no_grad():
        clean = model(**batch)
        batch["speech_embeds"][1, 2] = float("nan")
        batch["speech_embeds"][0, 3:] = float("nan")  # padding
        batch["text_embeds"][0, 4] = float("inf")
        placeholders = model(**batch)
    torch.testing.assert_close(placeholders.logits, clean.logits)
    torch.testing.assert_close(placeholders.gate_weights, clean.gate_weights)


@pytest.mark.parametrize("causal", [False, True])
def test_context_convolutions_on_real_utterances_equal_torch_convolutions(causal):
    """The context module convolves real utterances only, as matrix products: the same numbers as `nn.Conv1d` over the
    zero-padded batch, values and gradients."""
    module = tiny_model(causal=causal).speech_expert
    batch = conversations(lengths=(2, 7, 4))
    rows = batch["attention_mask"].bool()
    inputs = (batch["speech_embeds"] * rows[..., None]).requires_grad_()
    for conv, kernel_size in zip(module.convs, module.kernel_sizes):
        ours = module._convolve(conv, inputs, rows)
        (ours_grad,) = torch.autograd.grad(ours.square().sum(), inputs)
        torch_conv = conv(F.pad(inputs.transpose(1, 2), module._padding(kernel_size))).transpose(1, 2)[rows]
        (torch_grad,) = torch.autograd.grad(torch_conv.square().sum(), inputs)
        torch.testing.assert_close(ours, torch_conv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours_grad, torch_grad, rtol=1e-5, atol=1e-5)
    assert max(module.kernel_sizes) > 1


def test_inference_under_autocast_keeps_the_kernels_low_precision_copy_and_its_exact_answers():
    """Without gradients under autocast, the convolutions' bfloat16 kernels are kept across forwards (autocast would
    cast their views afresh each time): the same logits as a forward that casts them, a copy made again when a weight
    changes, none kept once gradients are on, and nothing new in the state dict."""
    model, batch = tiny_model(), conversations()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    conv = model.speech_expert.convs[0]

    def casting_afresh():  # gradients on: autocast casts the views itself, nothing is kept
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**inputs).logits.detach()

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first, again = model(**inputs).logits, model(**inputs).logits
        kept = _LOW_PRECISION_KERNELS[conv][1]
        assert kept.dtype == torch.bfloat16 and model(**inputs).logits is not None
        assert _LOW_PRECISION_KERNELS[conv][1] is kept  # reused, not cast again
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.testing.assert_close(first, casting_afresh(), rtol=0, atol=0)
    assert conv not in _LOW_PRECISION_KERNELS
    with torch.no_grad():
        conv.weight.mul_(3.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            changed = model(**inputs).logits
    assert not torch.equal(changed, first)
    torch.testing.assert_close(changed, casting_afresh(), rtol=0, atol=0)
    assert not any("low_precision" in key for key in model.state_dict())


def test_kept_low_precision_kernels_follow_weights_replaced_and_stay_out_of_copies():
    """A weight replaced twice between two forwards (`load_state_dict(assign=True)`, `.data =`) can land on the first
    one's memory with the same version: a key of address and version kept the first weight's bfloat16 kernel, a
    silently wrong answer. A copy or pickle of the model after bfloat16 inference carries no kept kernel."""
    import copy
    import pickle

    model, batch = tiny_model(), conversations()
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    conv = model.speech_expert.convs[0]
    original = conv.weight.detach().clone()

    def bf16(grad: bool = False):
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(**inputs).logits.detach()

    for attempt in range(20):  # the allocator gives the first weight's memory back often, not always
        conv.weight.data = original.clone()
        bf16()
        conv.weight.data = original * 3  # the first weight's memory freed
        conv.weight.data = original * -2  # may land on it, with the parameter's unchanged version
        torch.testing.assert_close(bf16(), bf16(grad=True), rtol=0, atol=0)
    bf16()
    for replica in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert not any(isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16
                       for module in replica.modules() for value in vars(module).values()
                       for value in (value if isinstance(value, tuple) else (value,)))


@pytest.mark.parametrize("variant", ["conv_gru", "conv", "gru", PER_MODALITY])
def test_causal_mode_never_looks_ahead(variant):
    model = tiny_model(causal=True, context_module=variant)
    full = conversations(lengths=(8,))
    with torch.no_grad():
        whole = model(speech_embeds=full["speech_embeds"], text_embeds=full["text_embeds"]).logits
        for t in range(1, 8):
            prefix = model(speech_embeds=full["speech_embeds"][:, :t], text_embeds=full["text_embeds"][:, :t]).logits
            torch.testing.assert_close(prefix, whole[:, :t], rtol=1e-5, atol=1e-5)


def test_context_module_per_modality():
    model = tiny_model(context_module={"text": "gru"}, gru_layers={"speech": 2, "text": 1})
    assert len(model.speech_expert.convs) == 3 and model.speech_expert.gru.num_layers == 2  # unnamed: the paper's
    assert len(model.text_expert.convs) == 0 and model.text_expert.gru.num_layers == 1
    assert not any(key.startswith("text_expert.convs") for key in model.state_dict())


def test_bidirectional_mode_uses_future_utterances():
    model = tiny_model(causal=False)
    full = conversations(lengths=(8,))
    with torch.no_grad():
        whole = model(speech_embeds=full["speech_embeds"], text_embeds=full["text_embeds"]).logits
        prefix = model(speech_embeds=full["speech_embeds"][:, :4], text_embeds=full["text_embeds"][:, :4]).logits
    assert (prefix - whole[:, :4]).abs().max() > 1e-4


def test_text_only_conversation_is_answered_by_the_text_expert():
    model, batch = tiny_model(), conversations()
    with torch.no_grad():
        out = model(text_embeds=batch["text_embeds"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.equal(out.gate_weights[real], torch.tensor([[0.0, 1.0, 0.0]]).expand(int(real.sum()), 3))
    torch.testing.assert_close(out.logits[real], out.expert_logits[..., 1, :][real])
    assert torch.isfinite(out.logits).all()
    assert (out.gate_weights[~real] == 0).all()


def test_utterances_missing_a_modality_renormalise_over_the_other_experts():
    model, batch = tiny_model(), conversations(lengths=(5,))
    modality_mask = torch.ones(1, 5, 2, dtype=torch.bool)
    modality_mask[0, 1, 0] = False  # utterance 1 has no speech
    modality_mask[0, 3, 1] = False  # utterance 3 has no text
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, modality_mask=modality_mask)
        changed = model(
            speech_embeds=batch["speech_embeds"].index_fill(1, torch.tensor([1]), 9.0),
            text_embeds=batch["text_embeds"].index_fill(1, torch.tensor([3]), -9.0),
            attention_mask=batch["attention_mask"],
            modality_mask=modality_mask,
        )
    weights = out.gate_weights[0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(5))
    assert weights[1, 0] == 0 and weights[1, 2] == 0 and weights[1, 1] == 1
    assert weights[3, 1] == 0 and weights[3, 2] == 0 and weights[3, 0] == 1
    assert (weights[[0, 2, 4]] > 0).all()
    # What a missing modality's embedding holds never matters.
    torch.testing.assert_close(out.logits, changed.logits)


def test_disabled_experts_get_zero_weight_and_zero_logits():
    model, batch = tiny_model(experts=["speech", "cross_modal"]), conversations()
    with torch.no_grad():
        out = model(**batch)
    real = batch["attention_mask"].bool()
    assert (out.gate_weights[..., 1] == 0).all() and (out.expert_logits[..., 1, :] == 0).all()
    torch.testing.assert_close(out.gate_weights[real].sum(-1), torch.ones(int(real.sum())))
    assert model.text_expert is None


@pytest.mark.parametrize("mode", ["mean", "speech", "text", "cross_modal"])
def test_fixed_gate_modes(mode):
    model, batch = tiny_model(gate_mode=mode), conversations()
    with torch.no_grad():
        out = model(**batch)
    real = batch["attention_mask"].bool()
    expected = torch.full((3,), 1 / 3) if mode == "mean" else F.one_hot(
        torch.tensor(["speech", "text", "cross_modal"].index(mode)), 3
    ).float()
    torch.testing.assert_close(out.gate_weights[real], expected.expand(int(real.sum()), 3))
    assert model.gate is None


def test_single_expert_gate_falls_back_when_its_modality_is_missing():
    model, batch = tiny_model(gate_mode="speech"), conversations()
    with torch.no_grad():
        out = model(text_embeds=batch["text_embeds"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.equal(out.gate_weights[real][:, 1], torch.ones(int(real.sum())))


# --- losses -----------------------------------------------------------------------------------------------------


def test_loss_is_finite_and_reaches_every_trainable_parameter():
    model, batch = tiny_model(), conversations(lengths=(6, 4, 2))
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert silent == []


def test_padding_never_reaches_the_loss():
    model, batch = tiny_model(), conversations(lengths=(6, 3))
    pad = batch["attention_mask"] == 0
    noisy = dict(batch)
    noisy["speech_embeds"] = batch["speech_embeds"].masked_fill(pad[..., None], 1e3)
    noisy["text_embeds"] = batch["text_embeds"].masked_fill(pad[..., None], -1e3)
    with torch.no_grad():
        clean_out, noisy_out = model(**batch), model(**noisy)
    torch.testing.assert_close(clean_out.loss, noisy_out.loss)
    real = ~pad
    torch.testing.assert_close(clean_out.logits[real], noisy_out.logits[real])


def test_unlabelled_utterances_are_out_of_the_supervised_terms():
    model, batch = tiny_model(kl_weight=0.0), conversations(lengths=(6, 3))
    relabelled = dict(batch, labels=batch["labels"].clone())
    relabelled["labels"][0, 2] = -100
    flipped = dict(relabelled, labels=relabelled["labels"].clone())
    with torch.no_grad():
        reference = model(**relabelled).loss
        for value in range(NUM_LABELS):
            batch["labels"][0, 2] = value
            if not torch.isclose(model(**batch).loss, reference):
                break
        else:
            pytest.fail("the label of utterance (0, 2) never changes the loss")
        flipped["labels"][0, 2] = -100
        torch.testing.assert_close(model(**flipped).loss, reference)


LOSS_WEIGHTS = ("mixture_loss_weight", "expert_loss_weight", "supcon_weight", "kl_weight")


def test_every_term_switches_off_by_weight_zero():
    batch = conversations(lengths=(6, 3))
    zero_all = {name: 0.0 for name in LOSS_WEIGHTS}
    with torch.no_grad():
        assert tiny_model(**zero_all)(**batch).loss == 0
        terms = {name: tiny_model(**{**zero_all, name: 1.0})(**batch).loss for name in LOSS_WEIGHTS}
        total = tiny_model(**{name: 1.0 for name in LOSS_WEIGHTS})(**batch).loss
    assert all(value > 0 for value in terms.values()), terms
    torch.testing.assert_close(total, sum(terms.values()))


def test_supcon_term_equals_the_loss_on_the_returned_representations():
    model = tiny_model(mixture_loss_weight=0.0, expert_loss_weight=0.0, kl_weight=0.0, supcon_weight=2.0)
    batch = conversations(lengths=(6, 3))
    with torch.no_grad():
        out = model(**batch)
    real = batch["attention_mask"].bool()
    features = torch.cat([out.speech_representations[real], out.text_representations[real]])
    labels = torch.cat([batch["labels"][real]] * 2)
    torch.testing.assert_close(out.loss, 2.0 * supervised_contrastive_loss(features, labels, 1.0))


def test_focal_loss_matches_its_definition():
    logits, labels = torch.randn(7, 4), torch.randint(0, 4, (7,))
    mask = torch.tensor([1, 1, 0, 1, 1, 0, 1], dtype=torch.bool)
    ce = F.cross_entropy(logits, labels, reduction="none")
    expected = ((1 - torch.exp(-ce)) ** 3 * ce)[mask].mean()
    torch.testing.assert_close(focal_loss(logits, labels, mask, 3.0), expected)
    torch.testing.assert_close(focal_loss(logits, labels, mask, 0.0), ce[mask].mean())
    assert focal_loss(logits, labels, torch.zeros(7, dtype=torch.bool), 3.0) == 0


def test_supervised_contrastive_loss_matches_a_plain_loop():
    features, labels = torch.randn(9, 5), torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1])
    z = F.normalize(features, dim=-1)
    per_anchor = []
    for i in range(9):
        others = [a for a in range(9) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if positives:
            denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / 0.5 for a in others]), 0)
            per_anchor.append(-torch.stack([z[i] @ z[p] / 0.5 - denominator for p in positives]).mean())
    torch.testing.assert_close(supervised_contrastive_loss(features, labels, 0.5), torch.stack(per_anchor).mean())


def test_symmetric_kl_matches_torch():
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    forward = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="none", log_target=True).sum(-1)
    backward = F.kl_div(F.log_softmax(p, -1), F.log_softmax(q, -1), reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(symmetric_kl(p, q), (forward + backward) / 2)
    torch.testing.assert_close(symmetric_kl(p, p), torch.zeros(5))


def test_forward_rejects_bad_inputs():
    model, batch = tiny_model(), conversations()
    with pytest.raises(ValueError, match="speech_embeds"):
        model(attention_mask=batch["attention_mask"])
    with pytest.raises(ValueError, match=f"width {SPEECH_DIM}"):
        model(speech_embeds=batch["text_embeds"], attention_mask=batch["attention_mask"])
    with pytest.raises(TypeError, match="speaker"):
        model(**batch, speaker_ids=torch.zeros(2, 5))


# --- remote code ------------------------------------------------------------------------------------------------


def test_saved_folder_loads_as_remote_code_without_the_package(tmp_path):
    model, batch = tiny_model(causal=True), conversations()
    batch.pop("labels")
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mister_e.MisterEConfig",
        "AutoModel": "modeling_mister_e.MisterEForEmotionRecognition",
    }
    torch.save(batch, tmp_path / "inputs.pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["mister_e"] = None  # `import mister_e` now fails: only the copied code can serve
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.testing.assert_close(logits, torch.load({str(tmp_path / "expected.pt")!r}))
        try:
            import mister_e
        except ImportError:
            print("REMOTE-CODE-OK")
        """
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-CODE-OK" in result.stdout


@pytest.mark.parametrize("variant", ["conv_gru", "conv", "gru", PER_MODALITY])
def test_step_by_step_equals_the_whole_causal_conversation(variant):
    model = tiny_model(causal=True, context_module=variant)
    full = conversations(lengths=(7,))
    modality_mask = torch.ones(1, 7, 2, dtype=torch.bool)
    modality_mask[0, 2, 0] = modality_mask[0, 5, 1] = False
    with torch.no_grad():
        whole = model(speech_embeds=full["speech_embeds"], text_embeds=full["text_embeds"], modality_mask=modality_mask)
        state = None
        for t in range(7):
            out, state = model.step(full["speech_embeds"][:, t], full["text_embeds"][:, t], modality_mask[:, t], state)
            torch.testing.assert_close(out.logits[:, 0], whole.logits[:, t], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.gate_weights[:, 0], whole.gate_weights[:, t], rtol=1e-5, atol=1e-5)
    # Constant-size recurrent state: the convolution buffer never grows.
    assert state["speech"]["inputs"].shape[1] == (4 if variant != "gru" else 0)



def test_a_state_is_not_changed_by_the_step_it_feeds():
    """Stepping twice from one state (a retry, a corrected transcript) gives one answer: the cross-modal attention
    caches were updated in the caller's state, so the second step attended to the first one's utterance too."""
    model = tiny_model(causal=True, coattention_layers=2)
    full = conversations(lengths=(2,))
    with torch.no_grad():
        whole = model(speech_embeds=full["speech_embeds"], text_embeds=full["text_embeds"]).logits[:, 1]
        _, first = model.step(full["speech_embeds"][:, 0], full["text_embeds"][:, 0])
        answers = [model.step(full["speech_embeds"][:, 1], full["text_embeds"][:, 1], state=first)[0].logits[:, 0]
                   for _ in range(2)]
    for answer in answers:
        torch.testing.assert_close(answer, whole, rtol=1e-5, atol=1e-5)
    assert all(cache[0].shape[2] == 1 for layer in first["cross_modal"] for cache in layer.values())


@pytest.mark.parametrize("bidirectional", [True, False])
def test_packed_gru_for_cpu_training_equals_torch_gru_with_its_gradients(bidirectional):
    torch.manual_seed(0)
    gru = torch.nn.GRU(6, 5, num_layers=3, batch_first=True, bidirectional=bidirectional).double()
    inputs = torch.randn(5, 8, 6, dtype=torch.double, requires_grad=True)
    packed = pack_padded_sequence(inputs, torch.tensor([3, 8, 1, 8, 4]), batch_first=True, enforce_sorted=False)
    expected, found = gru(packed)[0], gru_packed(gru, packed)
    torch.testing.assert_close(found.data, expected.data, rtol=1e-12, atol=1e-12)
    assert torch.equal(found.batch_sizes, expected.batch_sizes)
    weights = torch.randn_like(expected.data)
    gradients = [torch.autograd.grad((out.data * weights).sum(), [inputs, *gru.parameters()], retain_graph=True)
                 for out in (expected, found)]
    for reference, ours in zip(*gradients):
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_grus_run_in_their_weights_precision_under_bfloat16_autocast(causal):
    model = tiny_model(causal=causal)
    seen = []
    for expert in (model.speech_expert, model.text_expert):
        expert.gru.register_forward_hook(lambda module, inputs, output: seen.append(output[1].dtype))
    batch = conversations(lengths=(4,))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = model(speech_embeds=batch["speech_embeds"], text_embeds=batch["text_embeds"])
        if causal:  # the streaming state stays float32 from step to step
            state = None
            for t in range(4):
                out, state = model.step(batch["speech_embeds"][:, t], batch["text_embeds"][:, t], state=state)
            torch.testing.assert_close(out.logits[:, 0].float(), whole.logits[:, -1].float(), rtol=0.05, atol=0.05)
    assert seen and set(seen) == {torch.float32}
    with torch.no_grad():  # a model cast to bfloat16 runs its GRUs in bfloat16
        logits = model.to(torch.bfloat16)(speech_embeds=batch["speech_embeds"], text_embeds=batch["text_embeds"]).logits
    assert seen[-1] == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_step_refuses_a_bidirectional_model():
    with pytest.raises(ValueError, match="causal"):
        tiny_model().step(text_embeds=torch.randn(1, TEXT_DIM))


def test_step_names_inputs_that_are_not_one_utterance_per_conversation():
    model = tiny_model(causal=True)
    s, t = model.config.speech_embed_dim, model.config.text_embed_dim
    speech, text = torch.randn(2, s), torch.randn(2, t)
    _, state = model.step(speech_embeds=speech, text_embeds=text)
    with pytest.raises(ValueError, match=rf"`speech_embeds` must have shape \(batch, width\), got \(2, 1, {s}\)"):
        model.step(speech_embeds=speech[:, None], text_embeds=text)
    with pytest.raises(ValueError, match=r"`text_embeds` has \(3, 1\)"):
        model.step(speech_embeds=speech, text_embeds=torch.randn(3, t), state=state)
    with pytest.raises(ValueError, match="`state` carries 2 conversations, the new utterances 3"):
        model.step(speech_embeds=torch.randn(3, s), text_embeds=torch.randn(3, t), state=state)
