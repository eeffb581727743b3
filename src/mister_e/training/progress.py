"""What a training run prints: one progress bar over the run's steps (only on a terminal) and one line per epoch,
instead of Trainer's raw log dictionaries and a second, nested bar per evaluation (which leaves `[A` debris in a log
file)."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.utils import logging as transformers_logging


class MisterEProgressCallback(TrainerCallback):
    """Replaces Trainer's `ProgressCallback` / `PrinterCallback`: per epoch, `epoch 3/40: loss 0.512, validation
    weighted F1 0.623 (best 0.640)` on stderr; the bar only where stderr is a terminal and `disable_tqdm` is unset."""

    def __init__(self) -> None:
        self.bar = None
        self.loss = None
        self.weight_bars = None

    def on_train_begin(self, args, state, control, **kwargs):
        # Checkpoint saves would each draw a "Writing model shards" bar: off for the run, restored after it.
        self.weight_bars = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()
        if state.is_world_process_zero and not args.disable_tqdm:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, dynamic_ncols=True, leave=False,
                            disable=not sys.stderr.isatty(), file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """One line per evaluation during training; scoring splits afterwards (`test_*` keys) prints nothing."""
        key = f"eval_{args.metric_for_best_model}"
        if not state.is_world_process_zero or not metrics or key not in metrics:
            return
        score = metrics[key]
        best = score if state.best_metric is None else (max if args.greater_is_better else min)(state.best_metric, score)
        loss = f"loss {self.loss:.4g}, " if self.loss is not None else ""
        line = (f"epoch {round(state.epoch or 0)}/{round(args.num_train_epochs)}: {loss}validation "
                f"{args.metric_for_best_model.replace('_', ' ')} {score:.4f} (best {best:.4f})")
        (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)
        self.loss = None  # an epoch without a training log (`logging_steps` longer than an epoch) shows none

    def on_train_end(self, args, state, control, **kwargs):
        if self.weight_bars:
            transformers_logging.enable_progress_bar()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
