"""🤗 `Trainer` subclass of both stages (`MisterETrainer`) and its arguments; `fitting.py` builds and runs it.

Gradient accumulation: the models set `accepts_loss_kwargs = False`, so Trainer 5.23 divides every micro-batch loss by
the number of micro-batches it accumulates (`training_step`) and never passes `num_items_in_batch`. The accumulated
gradient is therefore the mean of the micro-batch means, equal to the full batch's when the micro-batches hold as many
labelled utterances each (tests/test_training_runs.py checks this); the authors' code divided twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.schema import LABELS
from ..modeling_mister_e import MisterEOutput, MisterEUtteranceOutput
from ..recipes import check_checkpoint_budget, check_half_life
from ..utils import reuse_freed_memory
from .optimization import clip_into_fused_step, fused_adam
from .averaging import MisterEWeightAverage
from .checkpoints import (
    BEST_WEIGHTS, MisterECheckpointPacing, load_trainable_weights, trainable_weights, write_best_weights,
)
from .collator import MisterEDataCollator
from .progress import MisterEProgressCallback

_OUTPUT_KEYS = frozenset(
    field.name for output in (MisterEOutput, MisterEUtteranceOutput) for field in dataclasses.fields(output)
)


@dataclasses.dataclass
class MisterETrainingArguments(TrainingArguments):
    """`TrainingArguments` plus `checkpoint_budget`: the largest share of training time that checkpoint writes may
    take (`checkpoints.py`; 0 writes at every `save_strategy` point, as Trainer does), and `weight_average_half_life`:
    evaluate and keep a moving average of the weights with this half-life in epochs (`averaging.py`; 0: the raw
    weights, as the paper)."""

    checkpoint_budget: float = dataclasses.field(
        default=0.05, metadata={"help": "Largest share of training time spent writing checkpoints (0: every save)."}
    )
    weight_average_half_life: float = dataclasses.field(
        default=0.0, metadata={"help": "Half-life in epochs of the weight average evaluated and kept (0: off)."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_checkpoint_budget(self.checkpoint_budget)
        check_half_life(self.weight_average_half_life)


class MisterETrainer(Trainer):
    """`Trainer` whose evaluation batches carry no training randomness and whose predictions are one logits tensor.

    Args:
        prediction_key: Output field handed to `compute_metrics` (`"logits"` for stage 2, `"<modality>_logits"` for a
            stage-1 encoder); every other output stays out of the gathered predictions.
    """

    def __init__(self, *args, prediction_key: str = "logits", gate_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        for noisy in (PrinterCallback, ProgressCallback):
            self.remove_callback(noisy)
        self.add_callback(MisterEProgressCallback)
        self.prediction_key = prediction_key
        self.gate_learning_rate = gate_learning_rate
        if self.args.device.type == "cpu":
            reuse_freed_memory()
        self.best_weights = None  # trainable weights of the best evaluation so far (see checkpoints.py)
        if getattr(self.args, "checkpoint_budget", 0):
            self.add_callback(MisterECheckpointPacing(self.args.checkpoint_budget))
        self.weight_average = None
        if getattr(self.args, "weight_average_half_life", 0):
            self.weight_average = MisterEWeightAverage(self.args.weight_average_half_life)
            self.add_callback(self.weight_average)

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        """Trainer's loss, refused when it is not finite: the logs would hide it (Trainer averages NaN away) and every
        weight would be NaN from that update on, then selected, saved and reported as a trained model. Before the first
        update the learning rate cannot be the cause, and the message says what can."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        loss = result[0] if return_outputs else result
        if model.training and not torch.isfinite(loss.detach()).all():
            value = loss.detach().float().mean().item()
            if self.state.global_step == 0:  # no update yet: the learning rate is not the cause
                raise ValueError(f"The loss is {value} at the first step, before any update (so not the learning "
                                 "rate): the inputs overflow the model's arithmetic (finite, but far from unit scale: "
                                 "rescale them, or for stage 2 set standardize_inputs=true), or its initial weights "
                                 "hold NaN or inf.")
            epoch = int(self.state.epoch or 0) + 1
            raise ValueError(f"Training diverged: the loss is {value} at step {self.state.global_step + 1} (epoch "
                             f"{epoch}); lower the learning rate ({self.args.learning_rate:g}) or check the inputs.")
        return result

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log, whose undefined values (`None`: the F1 of a class without reference utterances) stay in the
        log history (the state file's null) but reach no callback: the logging integrations (`report_to`) take
        numbers, and TensorBoard's and MLflow's warned about each at every evaluation."""
        defined = {key: value for key, value in logs.items() if value is not None}
        super().log(defined, start_time)
        logs.update(defined)  # with what Trainer adds (`epoch`), as Trainer's own log leaves `logs`
        self.state.log_history[-1] = {**logs, "step": self.state.global_step}

    def _averaged(self):
        """Inside the block the model holds the weight average when training keeps one (else its own weights)."""
        if self.weight_average is None:
            return contextlib.nullcontext()
        return self.weight_average.swapped_into(self.model)

    def _evaluate(self, *args, **kwargs):
        with self._averaged():  # the evaluations inside training, which select the model
            return super()._evaluate(*args, **kwargs)

    def _determine_best_metric(self, metrics, trial):
        is_new_best = super()._determine_best_metric(metrics, trial)
        if is_new_best and self.args.load_best_model_at_end:
            with self._averaged():
                self.best_weights = trainable_weights(self.model, self.best_weights)
        return is_new_best

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint, holding the best evaluation's weights too when they are not its own."""
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        # The checkpoint's own weights are the best ones only when they are evaluated as they are (no average).
        own_is_best = self.weight_average is None and self.state.best_global_step == self.state.global_step
        if self.best_weights is not None and not own_is_best:
            if self.args.should_save:
                write_best_weights(self.best_weights, folder)
            self.state.best_model_checkpoint = str(folder)
        if self.weight_average is not None and self.args.should_save:
            self.weight_average.save(folder)
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / BEST_WEIGHTS
        if self.args.load_best_model_at_end and path.is_file():
            self.best_weights = load_file(path)
        if self.weight_average is not None:
            self.weight_average.load(resume_from_checkpoint, model or self.model)

    def _load_best_model(self):
        """The in-memory copy when there is one; otherwise (best = the resumed checkpoint's own) Trainer's loading."""
        if self.best_weights is None:
            return super()._load_best_model()
        load_trainable_weights(self.model, self.best_weights)

    def _clip_grad_norm(self, model):
        """Trainer's clipping, handed to a fused Adam(W) (`clip_into_fused_step`) when nothing else scales the
        gradients (no loss scaler, DeepSpeed or FSDP); otherwise Trainer's own."""
        plain = (self.accelerator.scaler is None and not self.is_deepspeed_enabled and not self.is_fsdp_enabled
                 and not self._has_mixed_mesh_grads(model))
        if plain and fused_adam(self.optimizer) is not None:
            return clip_into_fused_step(self.optimizer, model.parameters(), self.args.max_grad_norm)
        return super()._clip_grad_norm(model)

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the gate's parameters in a group of their own at `gate_learning_rate`: Adam moves
        a weight by about the learning rate per step, so a gate trained at the experts' rate barely leaves its
        initial, near-uniform weights within a schedule that is long enough for the experts."""
        optimizer = super().create_optimizer(model)
        if self.gate_learning_rate is None or getattr(optimizer, "_gate_group", False):
            return optimizer
        # The layer mix's few weights are as slow to leave their uniform start: they join the gate's group.
        gate = {id(param) for name, param in (model or self.model).named_parameters()
                if name.startswith(("gate.", "text_layer_mix."))}
        for group in list(optimizer.param_groups):
            params = [param for param in group["params"] if id(param) in gate]
            if params:
                group["params"] = [param for param in group["params"] if id(param) not in gate]
                optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": params,
                                           "lr": self.gate_learning_rate})
        optimizer._gate_group = True
        return optimizer

    def _get_train_sampler(self, train_dataset=None):
        """`train_sampling_strategy: group_by_length` groups conversations of similar length (Trainer's sampler), their
        lengths read from the label column: dialogue rows have no `input_ids` for Trainer to measure."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        columns = getattr(dataset, "column_names", None) or []
        per_utterance_labels = LABELS in columns and hasattr(dataset.features[LABELS], "feature")
        if (self.args.train_sampling_strategy == "group_by_length" and self.args.length_column_name not in columns
                and per_utterance_labels):
            lengths = [len(labels) for labels in dataset[LABELS]]
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        lengths=lengths)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation in the data set's order: Trainer 5 groups evaluation batches by length too under
        `group_by_length`, measuring `input_ids` that dialogue rows lack (it failed at the first evaluation)."""
        if self.args.train_sampling_strategy == "group_by_length" and eval_dataset is not None:
            return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None
        return super()._get_eval_sampler(eval_dataset)

    def _collator(self, is_training: bool) -> MisterEDataCollator:
        """The collator of training batches (crops, modality dropout) or of the others (neither)."""
        collator = self.data_collator
        dropout = collator.modality_dropout if is_training else 0.0
        return dataclasses.replace(collator, training=is_training, modality_dropout=dropout)

    def _get_dataloader(self, *args, is_training: bool = False, **kwargs):
        # Every loader of Trainer 5.x is built here; `is_training` tells the training loader from the others.
        collator = self.data_collator
        self.data_collator = self._collator(is_training)
        try:
            return super()._get_dataloader(*args, is_training=is_training, **kwargs)
        finally:
            self.data_collator = collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's step; a last batch that accelerate filled up with repeated dialogues has its loss taken on its
        own dialogues alone (a second forward): gathering drops the repeats' predictions, but the batch's mean loss
        counted them, so a multi-process evaluation loss differed from a single-process one."""
        if ignore_keys is None:
            ignore_keys = sorted(_OUTPUT_KEYS - {self.prediction_key})
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        rows = self._own_rows_of_filled_batch()
        if loss is not None and rows is not None:
            own = self._prepare_inputs(self._collator(is_training=False)(rows))
            loss = super().prediction_step(model, own, True, ignore_keys=ignore_keys)[0]
        return loss, logits, labels

    def _own_rows_of_filled_batch(self) -> list[dict] | None:
        """The split's rows in this process's last evaluation batch when accelerate filled it up with repeats.

        With several processes, batch k of the split (in order: evaluation is never shuffled) goes to process
        k % N, and the last round's batches are filled up with rows from the split's start to a whole batch each;
        `remainder` rows of that round are the split's own, the first ones in process order (as
        `gather_for_metrics` keeps them). None when this batch holds no repeat, or nothing else."""
        state, size = self.accelerator.gradient_state, self.args.eval_batch_size
        if self.accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
            return None
        own = state.remainder - self.accelerator.process_index * size
        if not 0 < own < size:
            return None
        dataset = self.callback_handler.eval_dataloader.dataset
        start = len(dataset) - state.remainder + self.accelerator.process_index * size
        return [dataset[index] for index in range(start, start + own)]
