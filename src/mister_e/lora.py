"""Kept so that `mister_e.lora` imports keep working: LoRA now lives in `mister_e.training.lora`."""

from .training import lora
from .training.lora import *  # noqa: F403

__all__ = lora.__all__
