"""Kept so that `mister_e.scale` imports keep working: the memory plan now lives in `mister_e.training.memory_plan`,
quantized loading in `mister_e.training.quantization`."""

from .training import memory_plan, quantization
from .training.memory_plan import *  # noqa: F403
from .training.quantization import *  # noqa: F403

__all__ = [*memory_plan.__all__, *quantization.__all__]
