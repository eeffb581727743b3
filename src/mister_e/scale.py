"""Kept so that `mister_e.scale` imports keep working: the memory plan now lives in `mister_e.training.memory_plan`,
quantized loading in `mister_e.training.quantization`."""

from .training.memory_plan import (
    PAPER_BACKBONES,
    activation_bytes,
    format_plan,
    paper_backbone_config,
    paper_scale_plan,
    parameter_sizes,
    training_memory,
)
from .training.quantization import prepare_quantized_backbones, quantization_kwargs

__all__ = [
    "PAPER_BACKBONES",
    "activation_bytes",
    "format_plan",
    "paper_backbone_config",
    "paper_scale_plan",
    "parameter_sizes",
    "prepare_quantized_backbones",
    "quantization_kwargs",
    "training_memory",
]
