"""An exponential moving average of the trainable weights, evaluated and kept in place of the raw weights.

On small conversation data sets (MELD, CMU-MOSI, EmoDB) the validation score of the raw weights swings by one to two
points from one epoch to the next, so keeping the best epoch keeps partly noise. The average of the recent steps'
weights (Polyak averaging; an EMA whose half-life is given in epochs, so that it means the same on 7 steps an epoch as
on 260) moves smoothly, and is what each evaluation scores, what model selection keeps and what training ends with.

The average starts from nothing rather than from the initial weights: after `n` steps it is the decay-weighted mean of
those `n` steps' weights (the sum is divided by `1 - decay**n`, as Adam corrects its moments), so an early epoch is not
pulled toward the random initialisation. It is written into every checkpoint and read back on resume, so a resumed run
averages exactly as an uninterrupted one.

`torch.optim.swa_utils.AveragedModel` is not used: it deep-copies the whole module, frozen backbones included, while
only the trainable weights (all of stage 2; the adapters and heads of a LoRA encoder) move.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from ..recipes import check_half_life
from ..utils import atomic_path

AVERAGE_WEIGHTS = "average_weights.safetensors"
_STEPS = "__steps__"


class MisterEWeightAverage(TrainerCallback):
    """The running average (`on_step_end`, after each optimizer step); the trainer swaps it in to evaluate."""

    def __init__(self, half_life_epochs: float):
        check_half_life(half_life_epochs)
        self.half_life = half_life_epochs
        self.decay = 0.0
        self.sums: dict[str, torch.Tensor] | None = None  # decay-weighted sums of the weights, one per parameter
        self.steps = 0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        steps_per_epoch = max(1, math.ceil(len(train_dataloader) / args.gradient_accumulation_steps))
        self.decay = 0.5 ** (1 / (self.half_life * steps_per_epoch))
        if self.sums is None:  # not read back from a checkpoint
            self.sums = {name: torch.zeros_like(parameter) for name, parameter in _trainable(model)}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for name, parameter in _trainable(model):
                self.sums[name].mul_(self.decay).add_(parameter.detach(), alpha=1 - self.decay)
        self.steps += 1

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not args.load_best_model_at_end and self.steps:  # otherwise the trainer has loaded the best average
            self._copy_into(model)

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module):
        """`model` holds the average inside the block (the raw weights when no step has been taken yet)."""
        if not self.steps:
            yield
            return
        raw = {name: parameter.detach().clone() for name, parameter in _trainable(model)}
        self._copy_into(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, parameter in _trainable(model):
                    parameter.copy_(raw[name])

    def _copy_into(self, model: torch.nn.Module) -> None:
        scale = 1 / (1 - self.decay**self.steps)
        with torch.no_grad():
            for name, parameter in _trainable(model):
                parameter.copy_(self.sums[name] * scale)

    def save(self, folder: Path) -> None:
        """`AVERAGE_WEIGHTS` in `folder` through a temporary name (`atomic_path`: a cut-short write leaves no file that
        looks whole)."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.sums.items()}
        with atomic_path(folder / AVERAGE_WEIGHTS) as tmp:
            save_file({**tensors, _STEPS: torch.tensor(self.steps)}, str(tmp))

    def load(self, folder: Path, model: torch.nn.Module) -> None:
        path = Path(folder) / AVERAGE_WEIGHTS
        if not path.is_file():
            return
        tensors = load_file(path)
        self.steps = int(tensors.pop(_STEPS))
        devices = {name: parameter.device for name, parameter in _trainable(model)}
        self.sums = {name: value.to(devices[name]) for name, value in tensors.items()}


def _trainable(model: torch.nn.Module):
    return ((name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad)
