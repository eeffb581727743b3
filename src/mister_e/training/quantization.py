"""Quantized (QLoRA) backbones for stage 1 on a GPU: bitsandbytes 4-bit NF4 or 8-bit loading, and peft's k-bit
preparation."""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

import torch
from transformers import BitsAndBytesConfig

from ..modeling_mister_e import MisterEForUtteranceClassification


def require_quantization(bits: int) -> None:
    """Raise, naming what is missing, before anything loads: bitsandbytes quantizes on CUDA GPUs only."""
    if bits not in (4, 8):
        raise ValueError(f"Quantized loading takes 4 or 8 bits, got {bits!r}.")
    missing = [what for what, present in (("the `bitsandbytes` package (pip install bitsandbytes)",
                                            find_spec("bitsandbytes") is not None),
                                           ("a CUDA GPU", torch.cuda.is_available())) if not present]
    if missing:
        raise ValueError(f"{bits}-bit loading of the backbone (QLoRA) needs {' and '.join(missing)}; "
                         "load it in bfloat16 instead (`--dtype bfloat16`).")


def quantization_kwargs(bits: int, compute_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """`from_pretrained` arguments that load a backbone in 4-bit NF4 (QLoRA) or 8-bit on this process's GPU."""
    require_quantization(bits)
    from accelerate import PartialState

    if bits == 4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    # Each data-parallel process holds its whole copy on its own GPU.
    return {"quantization_config": config, "device_map": {"": PartialState().local_process_index}}


def prepare_quantized_backbones(model: MisterEForUtteranceClassification) -> MisterEForUtteranceClassification:
    """peft's k-bit preparation of each quantized backbone: frozen, with its unquantized weights upcast to fp32.

    Checkpointing stays the Trainer's to switch on (`gradient_checkpointing`), as for any other backbone.
    """
    from peft import prepare_model_for_kbit_training

    for encoder in (model.speech_encoder, model.text_encoder):
        if encoder is not None:
            prepare_model_for_kbit_training(encoder.backbone, use_gradient_checkpointing=False)
    return model


__all__ = ["prepare_quantized_backbones", "quantization_kwargs", "require_quantization"]
