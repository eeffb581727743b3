"""Building and running a `MisterETrainer` on a dialogue `DatasetDict`, for both stages: their Trainer defaults, the
factory (validation-only selection, label-aware metrics, seeded data order), training with resume, scoring the splits,
finishing the run (`results.json`, then checkpoints deleted); and the config fields the data decides.

Multi-process runs (`torchrun`, `accelerate launch`): Trainer does DDP, and DDP averages the per-process mean losses,
which equals the global batch mean when every process holds as many labelled utterances (as gradient accumulation's mean
does: `trainer.py`). Everything written after training (selected model, merged encoder, test report, `results.json`,
summaries) comes from the main process; the others wait for it in `_finish` and return its results, so they never start
a next seed early or read a half-written file. The output folders must be on a filesystem every process sees, as
Trainer's checkpoints already require.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset, DatasetDict
from transformers import EarlyStoppingCallback, PreTrainedModel, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..configuration_mister_e import EMBEDDINGS
from ..data.schema import EMBED_COLUMN, LABELS, column_embedding
from ..data.splits import labels_of
from ..recipes import PAPER_TRAINING
from ..scores import compute_metrics
from ..utils import launched_on_cpu, write_json
from .collator import MisterEDataCollator
from .runs import last_checkpoint
from .trainer import MisterETrainer, MisterETrainingArguments

logger = logging.get_logger(__name__)
# Stage 2: the authors' optimisation (`recipes/paper_training.yaml`), validated and saved every epoch, the epoch with
# the best validation weighted F1 kept.
CONVERSATION_TRAINING_DEFAULTS: dict[str, Any] = {
    **PAPER_TRAINING,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "load_best_model_at_end": True,
    "metric_for_best_model": "weighted_f1",  # `greater_is_better` follows the name (False for `log_loss`)
    "report_to": "none",
}
# Stage 1 (spec): AdamW lr 1e-5 (torch's default weight decay 0.01), text 20 epochs of 8 utterances.
ENCODER_TRAINING_DEFAULTS: dict[str, Any] = {
    **CONVERSATION_TRAINING_DEFAULTS,
    "num_train_epochs": 20,
    "weight_decay": 0.01,
    "logging_strategy": "steps",
    "logging_steps": 50,
}
# Trainer settings the dialogue batches need whatever a recipe says (stack notes), and the callbacks' state restored on
# resuming: early stopping's count of evaluations without gain restarted at 0 otherwise, so a resumed run trained on
# past the epoch where the uninterrupted one stopped, and could select another epoch.
_TRAINER_REQUIRED = {"remove_unused_columns": False, "label_names": ["labels"],
                     "restore_callback_states_from_checkpoint": True}


def build_trainer(
    model: PreTrainedModel,
    dataset: DatasetDict,
    output_dir: str | os.PathLike,
    collator: MisterEDataCollator,
    training_arguments: Mapping[str, Any],
    seed: int = 0,
    prediction_key: str = "logits",
    processor: Any = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    gate_learning_rate: float | None = None,
) -> MisterETrainer:
    """The Trainer of both stages: validation-only selection, label-aware metrics, seeded data order.

    On a machine without CUDA, `use_cpu` defaults to True when several processes are launched (it makes them one DDP
    run) or `bf16` is asked for (CPU autocast).
    """
    if "validation" not in dataset:
        raise ValueError(f"Model selection needs a `validation` split; got {list(dataset)}.")
    # Trainer refuses `bf16` without a GPU unless told that it runs on the CPU (where it is autocast to bfloat16).
    use_cpu = launched_on_cpu() or (bool(training_arguments.get("bf16")) and not torch.cuda.is_available())
    args = MisterETrainingArguments(
        # absolute: TrainingArguments reads a leading `~` as the home folder, where this package (as pathlib) does not,
        # and would write the checkpoints and results.json of `~/run` to another folder than the model
        output_dir=os.path.abspath(output_dir),
        seed=seed,
        data_seed=seed,
        **{"dataloader_pin_memory": torch.cuda.is_available(), "use_cpu": use_cpu, **training_arguments,
           **_TRAINER_REQUIRED},
    )
    check_selection_metric(args.metric_for_best_model, dataset)
    return MisterETrainer(
        model=model,
        args=args,
        data_collator=collator,
        train_dataset=dataset["train"],
        eval_dataset=dataset["validation"],
        processing_class=processor,
        compute_metrics=functools.partial(compute_metrics, label_names=label_names(dataset["train"])),
        callbacks=list(callbacks or []),
        prediction_key=prediction_key,
        gate_learning_rate=gate_learning_rate,
    )


def check_selection_metric(metric: str | None, dataset: DatasetDict) -> None:
    """Selecting on `f1_<label>` needs a class of that name with validation utterances: without them its F1 is
    undefined (None) at every evaluation, which the Trainer cannot compare (as 0.0 it kept the first epoch whatever
    followed; a name that is no class failed after the first epoch, with the Trainer's KeyError)."""
    name = (metric or "").removeprefix("eval_")
    if not name.startswith("f1_"):
        return
    names, label = label_names(dataset["train"]), name.removeprefix("f1_")
    if label not in names:
        raise ValueError(f"metric_for_best_model {metric!r} names no class of the data (its classes: {names}).")
    if not pc.any(pc.equal(labels_of(dataset["validation"]), names.index(label))).as_py():
        raise ValueError(f"metric_for_best_model {metric!r}: split 'validation' has no {label!r} utterance, so that "
                         "F1 is undefined at every evaluation; select on another metric or move some there.")


def _fit(trainer: MisterETrainer, splits: Sequence[str], dataset: DatasetDict) -> dict[str, dict[str, float]]:
    """Train (resuming from the newest checkpoint), then score the selected model on each split."""
    checkpoint = last_checkpoint(trainer.args.output_dir)
    if checkpoint:
        logger.warning(f"Resuming from {checkpoint}.")
    trainer.train(resume_from_checkpoint=checkpoint)
    # Training is over: early stopping would warn, on each split scored below, that it finds no validation metric.
    trainer.remove_callback(EarlyStoppingCallback)
    return _score(trainer, splits, dataset)


def selected_evaluation(trainer: MisterETrainer) -> dict[str, Any]:
    """The evaluation that selected the model, by step and epoch, for `results.json`. Its weights are the run folder's
    own; no checkpoint is named, since paced checkpoints need not include the selected step (the field that named one
    could point at another epoch's weights)."""
    state = trainer.state
    evaluations = [log for log in state.log_history if any(key.startswith("eval_") for key in log)]
    epoch = next((log.get("epoch") for log in evaluations if log.get("step") == state.best_global_step), None)
    return {"best_step": state.best_global_step, "best_epoch": epoch}


def _score(trainer: MisterETrainer, splits: Sequence[str], dataset: DatasetDict) -> dict[str, dict[str, float]]:
    """The model's metrics on each split present, without the split's prefix."""
    scores = {}
    for split in splits:
        if split in dataset:
            metrics = trainer.evaluate(dataset[split], metric_key_prefix=split)
            scores[split] = {
                key.removeprefix(f"{split}_"): value
                for key, value in metrics.items()
                if key.startswith(f"{split}_") and not key.endswith(("_runtime", "_per_second"))
            }
    return scores


def _finish(trainer: MisterETrainer, results: dict[str, Any], keep_checkpoints: bool) -> dict[str, Any]:
    """Write `results.json`, which marks the run finished; only then are its checkpoints dead weight.

    The main process writes; every process returns the main process's `results` once they are written (a barrier
    under a launcher).
    """
    if trainer.is_world_process_zero():
        output_dir = Path(trainer.args.output_dir)
        write_json(output_dir / "results.json", results)
        if not keep_checkpoints:
            for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(checkpoint)
    return broadcast_object_list([results])[0]


def label_names(dataset: Dataset) -> list[str]:
    """Class names from the dataset's `ClassLabel` features: the label set is the data's, not the recipe's."""
    feature = dataset.features.get(LABELS)
    names = getattr(getattr(feature, "feature", None), "names", None)
    if not names:
        raise ValueError(f"The `{LABELS}` column holds {feature} values, not class labels, so the classes have no "
                         "names: build the data set with `mister-e prepare` or `make_dialogue_dataset`, which name "
                         "them.")
    return list(names)


def data_config(dataset: Dataset) -> dict[str, Any]:
    """Config fields the data decides: labels, and the width of each embedding column present, with the encoder vector
    it holds where extraction recorded it (`<modality>_embedding`, which `join_stages` then defaults to)."""
    fields = {"id2label": dict(enumerate(label_names(dataset)))}
    for modality, column in EMBED_COLUMN.items():
        if column in dataset.column_names:
            if (embedding := column_embedding(dataset, column)) in EMBEDDINGS:
                fields[f"{modality}_embedding"] = embedding
            for row in dataset.select_columns(column):  # row by row: the column can be gigabytes as Python lists
                width = next((len(vector) for vector in row[column] if vector is not None), None)
                if width is not None:
                    fields[f"{modality}_embed_dim"] = width
                    break
    return fields
