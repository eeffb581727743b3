"""The paper-scale memory plan (`mister-e plan`): parameters and per-GPU training memory of stage 1, without weights.

`paper_scale_plan` builds the stage-1 encoders around the paper's LLM backbones (Qwen2-Audio-7B-Instruct for speech,
Llama-3.1-8B-Instruct for text) on the meta device from the configs below, so it needs neither the Hub nor the 30 GB of
weights, applies the authors' LoRA settings and estimates the training memory per GPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from ..configuration_mister_e import MisterEConfig
from ..modeling_mister_e import MisterEForEmotionRecognition, MisterEForUtteranceClassification
from .lora import LORA_DEFAULTS, LORA_TARGETS, apply_lora

# The structural fields of the checkpoints' config.json files (offline copies: the Hub is not needed for a plan).
PAPER_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "speech": ("Qwen/Qwen2-Audio-7B-Instruct", {
        "model_type": "qwen2_audio",
        "audio_token_index": 151646,
        "audio_config": {
            "model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": 32,
            "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "d_model": 1280, "max_source_positions": 1500,
        },
        "text_config": {
            "model_type": "qwen2", "vocab_size": 156032, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "max_position_embeddings": 8192, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
            "bos_token_id": 151643, "eos_token_id": 151645,
        },
    }),
    "text": ("meta-llama/Llama-3.1-8B-Instruct", {
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    }),
}
# "What is the emotion of the person?:" in the Qwen2 tokenizer, about; only its length matters to a plan.
PROMPT_TOKENS = 10
MEL_FRAMES_PER_SECOND = 100
# NF4 with double quantization: 4 bits a weight plus 8-bit absmax per 64 and fp32 per 256 x 64 weights.
NF4_BYTES_PER_PARAM = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# fp32 weight, fp32 gradient and the two fp32 AdamW moments of every trainable (LoRA and head) parameter.
TRAINABLE_BYTES_PER_PARAM = 16
CUDA_CONTEXT_GIB = 1.0
GIB = 2**30


def paper_backbone_config(modality: str) -> PreTrainedConfig:
    """The config of the paper's backbone for `modality`, from the embedded copy."""
    fields = dict(PAPER_BACKBONES[modality][1])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _language_model_config(config: PreTrainedConfig) -> PreTrainedConfig:
    return config.text_config if config.model_type == "qwen2_audio" else config


def activation_bytes(config: PreTrainedConfig, lora_inputs: int, lora_dropout: bool, tokens: int,
                     checkpointing: bool, element_bytes: int = 2) -> float:
    """Activations a LoRA training step keeps for backward through a Llama/Qwen2-style decoder.

    Per token and layer: the two norms' inputs and outputs, q, k, v, the attention output (SDPA keeps no score matrix)
    and the MLP's gate, up, activation and product, `6h + 2h_kv + 4i` elements of `element_bytes` (2 for a bf16
    backbone; 4 after peft's k-bit preparation, whose fp32 embeddings and norms keep the residual stream in fp32).
    Frozen linears keep no input; each LoRA linear keeps its input in fp32 (`lora_inputs` is the sum of their input
    widths over all layers), plus a dropout mask. With checkpointing, only each layer's input stays, and one layer is
    recomputed at a time.
    """
    config = _language_model_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    hidden, kv = config.hidden_size, getattr(config, "num_key_value_heads", heads) * head_dim
    layers = config.num_hidden_layers
    layer = element_bytes * (6 * hidden + 2 * kv + 4 * config.intermediate_size)
    layer += (4 + lora_dropout) * lora_inputs / layers
    if checkpointing:
        return tokens * (layers * element_bytes * hidden + layer)
    return tokens * layers * layer


def _count(module: nn.Module, frozen_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if not (frozen_only and p.requires_grad))


def parameter_sizes(peft_model, modality: str) -> dict[str, int]:
    """Parameter counts of one LoRA-wrapped encoder, split the way memory is spent on them.

    Count an unquantized (or meta) model: a 4-bit weight holds two values per stored element.
    """
    backbone = getattr(peft_model.base_model.model, f"{modality}_encoder").backbone
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    lora = _count(backbone) - _count(backbone, frozen_only=True)
    return {
        "backbone": _count(backbone, frozen_only=True),
        "backbone_linear": sum(m.weight.numel() for name, m in backbone.named_modules()
                               if isinstance(m, nn.Linear) and "lora_" not in name),
        "lora": lora,
        "heads": trainable - lora,
        "trainable": trainable,
        "embeddings": _count(backbone.get_input_embeddings()),
        "largest_layer": max(_count(m, frozen_only=True) for m in backbone.modules()
                             if isinstance(m, GradientCheckpointingLayer)),
        "lora_inputs": sum(m.in_features for m in backbone.modules() if hasattr(m, "lora_A")),
    }


def training_memory(sizes: dict[str, int], config: PreTrainedConfig, tokens: int, weights: str, checkpointing: bool,
                    gpus: int, strategy: str, lora_dropout: bool = True) -> dict[str, float]:
    """Estimated bytes per GPU of a stage-1 LoRA step, by kind; see `paper_scale_plan` for the assumptions."""
    if weights == "bf16":
        frozen = 2 * sizes["backbone"]
        layer_bytes = 2 * sizes["largest_layer"]
    else:  # 4-bit linears; what peft's k-bit preparation leaves unquantized is upcast to fp32
        frozen = NF4_BYTES_PER_PARAM * sizes["backbone_linear"] + 4 * (sizes["backbone"] - sizes["backbone_linear"])
        layer_bytes = NF4_BYTES_PER_PARAM * sizes["largest_layer"]
    frozen += 4 * sizes["heads"]  # peft keeps the original of every head it trains a copy of
    states = TRAINABLE_BYTES_PER_PARAM * sizes["trainable"]
    memory = {"frozen_weights": frozen, "trainable_states": states, "communication": 0.0}
    if gpus > 1 and strategy == "ddp":
        memory["communication"] = 4 * sizes["trainable"]  # gradient buckets
    elif gpus > 1:  # FSDP / ZeRO-3: everything sharded; gathered: the embeddings and two layers (prefetch)
        memory["frozen_weights"] = frozen / gpus
        memory["trainable_states"] = states / gpus
        memory["communication"] = 2 * sizes["embeddings"] + 2 * layer_bytes
    memory["activations"] = activation_bytes(config, sizes["lora_inputs"], lora_dropout, tokens, checkpointing,
                                             element_bytes=2 if weights == "bf16" else 4)
    memory["cuda_context"] = CUDA_CONTEXT_GIB * GIB
    memory["total"] = sum(memory.values())
    return memory


def paper_scale_plan(batch_size: int = 8, text_tokens: int = 128, speech_seconds: float = 5.0, num_labels: int = 6,
                     gpus: tuple[int, ...] = (1, 2, 8)) -> dict[str, Any]:
    """Parameters and per-GPU training memory of both stage-1 encoders at the paper's sizes, and of stage 2.

    Nothing is downloaded or allocated: the models live on the meta device. Tokens per utterance are `text_tokens`
    for text, and for speech the audio tokens of a `speech_seconds` training crop plus the prompt.
    """
    plan: dict[str, Any] = {"batch_size": batch_size, "gpus": list(gpus), "encoders": {}}
    for modality in ("speech", "text"):
        backbone_config = paper_backbone_config(modality)
        config = MisterEConfig(**{f"{modality}_config": backbone_config}, num_labels=num_labels,
                               speech_prompt_ids=list(range(PROMPT_TOKENS)))
        with torch.device("meta"):
            model = MisterEForUtteranceClassification(config)
            total = _count(model)
            peft_model = apply_lora(model, modality)
        sizes = parameter_sizes(peft_model, modality)
        if modality == "speech":
            tower = peft_model.base_model.model.speech_encoder.backbone.audio_tower
            frames = torch.tensor(int(speech_seconds * MEL_FRAMES_PER_SECOND))
            tokens = int(tower._get_feat_extract_output_lengths(frames)[1]) + PROMPT_TOKENS
        else:
            tokens = text_tokens
        language_model = _language_model_config(backbone_config)
        lm_head = 0 if language_model.tie_word_embeddings else language_model.vocab_size * language_model.hidden_size
        memory = []
        for weights in ("bf16", "4bit"):
            for checkpointing in (False, True):
                for count in gpus:
                    for strategy in (("single",) if count == 1 else ("ddp", "fsdp")):
                        estimate = training_memory(sizes, backbone_config, tokens * batch_size, weights, checkpointing,
                                                   count, strategy, LORA_DEFAULTS[modality]["lora_dropout"] > 0)
                        memory.append({"weights": weights, "gradient_checkpointing": checkpointing, "gpus": count,
                                       "strategy": strategy, "gib": estimate["total"] / GIB,
                                       "breakdown_gib": {k: v / GIB for k, v in estimate.items() if k != "total"}})
        lora = peft_model.peft_config["default"]
        plan["encoders"][modality] = {
            "checkpoint": PAPER_BACKBONES[modality][0],
            "model_type": backbone_config.model_type,
            "total": total,
            "checkpoint_lm_head": lm_head,
            "lora_config": {"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
                            "target_modules": list(LORA_TARGETS[backbone_config.model_type])},
            "tokens_per_utterance": tokens,
            "memory": memory,
            **sizes,
        }
    with torch.device("meta"):
        conversation_model = MisterEForEmotionRecognition(MisterEConfig(num_labels=num_labels))
    count = _count(conversation_model)
    plan["conversation_model"] = {"total": count, "trainable": count,
                                  "weights_grads_adam_gib": TRAINABLE_BYTES_PER_PARAM * count / GIB}
    return plan


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: counts, a memory table per encoder, and the assumptions behind it."""
    gpus = plan["gpus"]
    columns = [(1, "single")] if 1 in gpus else []
    columns += [(n, s) for n in gpus if n > 1 for s in ("ddp", "fsdp")]
    header = "".join(f"{(f'{n} GPU' if n == 1 else f'{n}x {s.upper()}'):>10}" for n, s in columns)
    lines = ["MiSTER-E at paper scale: architectures built on the meta device (no weights, no Hub).", ""]
    for modality, encoder in plan["encoders"].items():
        lora = encoder["lora_config"]
        targets = lora["target_modules"]
        lines += [
            f"Stage 1, {modality} encoder: {encoder['checkpoint']} architecture ({encoder['model_type']})",
            f"  parameters      {encoder['total'] / 1e9:7.3f} B  (backbone {encoder['backbone'] / 1e9:.3f} B; the "
            f"checkpoint's {encoder['checkpoint_lm_head'] / 1e9:.3f} B LM head is not loaded: "
            f"{(encoder['backbone'] + encoder['checkpoint_lm_head']) / 1e9:.3f} B with it)",
            f"  trainable       {encoder['trainable'] / 1e6:7.2f} M  = LoRA {encoder['lora'] / 1e6:.2f} M "
            f"(r={lora['r']}, alpha={lora['lora_alpha']:g}, dropout={lora['lora_dropout']:g} on {', '.join(targets)})"
            f" + heads {encoder['heads'] / 1e6:.2f} M",
            f"  training memory per GPU, GiB, {plan['batch_size']} utterances x {encoder['tokens_per_utterance']} "
            "tokens per GPU and step:",
            f"    {'weights':<8}{'checkpointing':<15}{header}",
        ]
        gib = {(r["weights"], r["gradient_checkpointing"], r["gpus"], r["strategy"]): r["gib"]
               for r in encoder["memory"]}
        for weights in ("bf16", "4bit"):
            for checkpointing in (False, True):
                cells = ""
                for n, strategy in columns:
                    size = gib[weights, checkpointing, n, strategy]
                    cells += f"{'n/a' if weights == '4bit' and strategy == 'fsdp' else f'{size:.1f}':>10}"
                lines.append(f"    {weights:<8}{'on' if checkpointing else 'off':<15}{cells}")
        lines.append("")
    stage2 = plan["conversation_model"]
    lines += [
        f"Stage 2, MisterEForEmotionRecognition (paper sizes): {stage2['total'] / 1e6:.1f} M parameters, all trained; "
        f"weights + grads + Adam {stage2['weights_grads_adam_gib']:.2f} GiB (fits any one GPU; no LLM in the loop).",
        "",
        "Assumptions (estimates, +-20%; allocator fragmentation and temporaries come on top):",
        "- weights: frozen backbone in bf16 (2 B/param) or NF4 with double quantization (~0.52 B/param for linear",
        "  weights, the rest upcast to fp32 by peft's k-bit preparation); LoRA and heads in fp32 with fp32 grads and",
        "  two AdamW moments (16 B/param), plus the frozen originals of the heads that peft trains copies of;",
        "- activations: Llama/Qwen2 decoder layers with SDPA/flash attention (no score matrix), in bf16, or in fp32",
        "  with 4-bit weights (peft's k-bit preparation upcasts embeddings and norms); LoRA inputs kept in fp32 with",
        "  dropout masks; the frozen audio tower keeps none; checkpointing keeps each layer's input and recomputes",
        f"  one layer at a time; the batch is per GPU (global batch = GPUs x {plan['batch_size']});",
        "- DDP replicates everything and adds fp32 gradient buckets; FSDP/ZeRO-3 shards weights, grads and optimizer",
        "  states and gathers the embeddings and two layers at a time;",
        f"- +{CUDA_CONTEXT_GIB:g} GiB CUDA context per GPU;",
        "- 4-bit with FSDP (n/a) needs bnb_4bit_quant_storage and no fp32 upcast, which this code does not set up:",
        "  use 4-bit on one GPU or with DDP;",
        "- FSDP columns are what sharding would save: `mister-e train-encoder` itself supports one GPU and DDP only",
        "  (the adapters are merged on the main process after training, which needs the full weights there).",
    ]
    return "\n".join(lines)


__all__ = [
    "PAPER_BACKBONES",
    "activation_bytes",
    "format_plan",
    "paper_backbone_config",
    "paper_scale_plan",
    "parameter_sizes",
    "training_memory",
]
