"""Checkpoints paced to a share of training time, with model selection and resuming kept exact.

Trainer writes a full checkpoint (weights, optimizer state, random states, trainer state) at every evaluation: about
1 GB at the paper's sizes, a large part of a short epoch (CMU-MOSI trains in seconds per epoch). `MisterECheckpointPacing`
lets a write through only once the training time since the last one is at least `1 / budget` times what that write
took, so writing costs at most `budget` of the run (the first evaluation always writes, to measure). Skipped epochs are
not lost: a resumed run replays them from the last checkpoint with its random states, to the same weights.

Selection no longer needs the best epoch's own checkpoint: the trainer copies the trainable weights of each new best
evaluation in memory (`trainable_weights`), writes that copy into the next checkpoint (`BEST_WEIGHTS`, before
`trainer_state.json` marks the folder complete), reads it back on resume, and loads it at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from safetensors.torch import save_file
from transformers import TrainerCallback

from ..utils import atomic_path

BEST_WEIGHTS = "best_weights.safetensors"


class MisterECheckpointPacing(TrainerCallback):
    """Clears Trainer's `should_save` until the time since the last write pays for the next one at `budget`."""

    def __init__(self, budget: float):
        self.budget = budget
        self.write_seconds = 0.0
        self.since = self.write_started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.since = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._pace(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._pace(control)

    def on_evaluate(self, args, state, control, **kwargs):
        self.write_started = time.perf_counter()  # the save, if any, follows the evaluation

    def on_save(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.write_seconds, self.since = now - self.write_started, now

    def _pace(self, control) -> None:
        if not control.should_save:
            return
        now = time.perf_counter()
        due = (now - self.since) * self.budget >= self.write_seconds
        # Every process must take the same decision (the write has collective steps under DDP): the main one's.
        control.should_save = broadcast_object_list([due])[0]
        self.write_started = now


def trainable_weights(model: torch.nn.Module, into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A CPU copy of `model`'s trainable parameters (all of stage 2; adapters and heads of a LoRA encoder), reusing the
    tensors of `into` when given."""
    into = {} if into is None else into
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            if name in into:
                into[name].copy_(parameter.detach())
            else:
                into[name] = parameter.detach().to("cpu", copy=True)
    return into


def load_trainable_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            parameters[name].copy_(value)


def write_best_weights(weights: dict[str, torch.Tensor], folder: Path) -> None:
    """`BEST_WEIGHTS` in `folder`, through a temporary name (`atomic_path`): a cut-short write leaves no file that looks
    whole."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / BEST_WEIGHTS) as tmp:
        save_file({name: value.contiguous() for name, value in weights.items()}, str(tmp))
