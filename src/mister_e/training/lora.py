"""LoRA for the utterance encoders' backbones through peft, with per-family targets that really train."""

from __future__ import annotations

import re

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..encoders_mister_e import HEAD_MODULES, MisterEFunctionalsEncoder
from ..modeling_mister_e import MisterEForUtteranceClassification

_SSL_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")
# The authors' text LLM recipe: peft's default targets for decoder LLMs, the attention's q/v projections.
_DECODER_TARGETS = ("q_proj", "v_proj")
_BERT_TARGETS = ("query", "key", "value", "dense")

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    # WavLM hands raw q/k/v weights to `F.multi_head_attention_forward`: LoRA on its attention gets no gradient.
    "wavlm": ("intermediate_dense", "output_dense"),
    "wav2vec2": _SSL_TARGETS,
    "hubert": _SSL_TARGETS,
    "data2vec-audio": _SSL_TARGETS,
    "whisper": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    # The authors' speech LLM recipe: LoRA on the language model's q/k only; the audio tower stays frozen.
    "qwen2_audio": ("q_proj", "k_proj"),
    "bert": _BERT_TARGETS,
    "roberta": _BERT_TARGETS,
    "xlm-roberta": _BERT_TARGETS,
    "electra": _BERT_TARGETS,
    "mpnet": ("q", "k", "v", "o", "intermediate.dense", "output.dense"),
    "deberta-v2": ("query_proj", "key_proj", "value_proj", "dense"),
    "llama": _DECODER_TARGETS,
    "mistral": _DECODER_TARGETS,
    "qwen2": _DECODER_TARGETS,
    "qwen3": _DECODER_TARGETS,
    "gemma": _DECODER_TARGETS,
}

# The authors' settings: speech LLM r=16, alpha=8, dropout 0.05; text LLM r=8, alpha=32, dropout 0.1.
LORA_DEFAULTS = {"speech": dict(r=16, lora_alpha=8, lora_dropout=0.05), "text": dict(r=8, lora_alpha=32, lora_dropout=0.1)}
# Only under these sub-modules of a backbone: poolers and other unused heads would get no gradient.
_SCOPES = {"qwen2_audio": r"language_model\.", "bert": r"encoder\.", "roberta": r"encoder\.", "xlm-roberta": r"encoder\.",
           "electra": r"encoder\.", "mpnet": r"encoder\.", "deberta-v2": r"encoder\."}


def lora_config(model: MisterEForUtteranceClassification, modality: str, target_modules=None, **overrides) -> LoraConfig:
    """A `LoraConfig` for one encoder's backbone; its head (norm, pooling, projection, classifier) trains fully."""
    if modality not in LORA_DEFAULTS:
        raise ValueError(f"`modality` must be one of {list(LORA_DEFAULTS)}, got {modality!r}.")
    encoder = getattr(model, f"{modality}_encoder", None)
    if encoder is None:
        raise ValueError(f"The model has no {modality} encoder (set `{modality}_config`).")
    if isinstance(encoder, MisterEFunctionalsEncoder):
        raise ValueError(f"The {modality} encoder computes openSMILE functionals: it has no network for LoRA to adapt "
                         "(its head trains fully without it).")
    targets = target_modules or LORA_TARGETS.get(encoder.model_type)
    if not targets:
        raise ValueError(
            f"No LoRA preset for backbone type {encoder.model_type!r}; pass `target_modules` "
            f"(presets exist for {sorted(LORA_TARGETS)})."
        )
    scope = _SCOPES.get(encoder.model_type, "")
    pattern = rf"{modality}_encoder\.backbone\.{scope}(?:.*\.)?(?:{'|'.join(map(re.escape, targets))})"
    heads = [
        f"{modality}_encoder.{name}"
        for name in HEAD_MODULES
        if any(True for _ in getattr(encoder, name, nn.Identity()).parameters())
    ]
    return LoraConfig(target_modules=pattern, modules_to_save=heads, **{**LORA_DEFAULTS[modality], **overrides})


def apply_lora(model: MisterEForUtteranceClassification, modality: str, target_modules=None, **overrides) -> PeftModel:
    """Wrap the model so that only the LoRA weights of one backbone and that encoder's head train."""
    config = lora_config(model, modality, target_modules, **overrides)
    targets = list(target_modules) if target_modules else "of the family's preset"
    unmatched = ValueError(f"LoRA target modules {targets} match no module of the {modality} backbone; check "
                           "`target_modules` (CLI: --lora-targets).")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as error:  # peft's own message names neither the modules nor the option
        if "target" in str(error):
            raise unmatched from error
        raise
    if not any("lora_" in name for name, _ in peft_model.named_parameters()):
        raise unmatched
    return peft_model


def load_lora(base_model: MisterEForUtteranceClassification, adapter_dir, trainable: bool = False) -> PeftModel:
    """Adapters (and trained heads) saved by `PeftModel.save_pretrained`, on the same base backbone."""
    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=trainable)


def merge_lora(peft_model: PeftModel) -> MisterEForUtteranceClassification:
    """Fold the adapters into the backbone: a plain model that `from_pretrained` loads without peft."""
    return peft_model.merge_and_unload()


__all__ = ["LORA_DEFAULTS", "LORA_TARGETS", "apply_lora", "load_lora", "lora_config", "merge_lora"]
