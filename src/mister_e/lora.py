"""Kept so that `mister_e.lora` imports keep working: LoRA now lives in `mister_e.training.lora`."""

from .training.lora import LORA_DEFAULTS, LORA_TARGETS, apply_lora, load_lora, lora_config, merge_lora

__all__ = ["LORA_DEFAULTS", "LORA_TARGETS", "apply_lora", "load_lora", "lora_config", "merge_lora"]
