# Copyright 2026 The MiSTER-E authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Training and evaluation of MiSTER-E with the 🤗 `Trainer`: stage-1 encoders, stage-2 experts, recipes, ablations.

Both stages share one collator (`MisterEDataCollator`) and one Trainer factory (`build_trainer`): stage 1 sees each
utterance as a one-utterance conversation, so the batch format of the two models is the same.

Gradient accumulation: the models set `accepts_loss_kwargs = False`, so Trainer 5.23 divides every micro-batch loss by
the number of micro-batches it accumulates (`training_step`) and never passes `num_items_in_batch`. The accumulated
gradient is therefore the mean of the micro-batch means, equal to the full batch's when the micro-batches hold as many
labelled utterances each (tests/test_training.py checks this); the authors' code divided twice.

Multi-process runs (`torchrun`, `accelerate launch`): Trainer does DDP, and DDP averages the per-process mean losses,
which again equals the global batch mean when every process holds as many labelled utterances. Everything written after
training (selected model, merged encoder, test report, `results.json`, summaries) comes from the main process; the
others wait for it in `_finish` and return its results, so they never start a next seed early or read a half-written
file. The output folders must be on a filesystem every process sees, as Trainer's checkpoints already require.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate.utils import broadcast_object_list
from datasets import Dataset, DatasetDict, load_from_disk
from tqdm.auto import tqdm
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .configuration_mister_e import MisterEConfig
from .evaluation import (
    DEFAULT_DROP_PROBABILITIES,
    SCALAR_METRICS,
    _write_json,
    _write_text,
    compute_metrics,
    format_seed_table,
    robustness_curve,
    summarize_seeds,
    write_evaluation_report,
    write_robustness_report,
)
from .modeling_mister_e import (
    MisterEForEmotionRecognition,
    MisterEForUtteranceClassification,
    MisterEFunctionalsEncoder,
    MisterEOutput,
    MisterEUtteranceOutput,
)
from .utils import launched_on_cpu, process_state


logger = logging.get_logger(__name__)

MODALITIES = ("speech", "text")
# Dataset column of each modality's raw input, and of its precomputed embeddings.
_RAW_COLUMNS = {"speech": "audio", "text": "texts"}
_EMBED_COLUMNS = {"speech": "speech_embeds", "text": "text_embeds"}
_IGNORE_INDEX = -100
# Per-conversation flag of the training split: held out from the experts' losses, for the gate (`gate_holdout_fraction`).
GATE_HOLDOUT_COLUMN = "gate_holdout"

# Named config overrides of the paper's ablations; `run_ablations` trains each into its own folder.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "speech_only": {"experts": ["speech"]},
    "text_only": {"experts": ["text"]},
    "cross_modal_only": {"experts": ["cross_modal"]},
    "no_gate": {"gate_mode": "mean"},
    "logit_mixture": {"mixture_space": "logits"},
    "no_supcon": {"supcon_weight": 0.0},
    "no_kl": {"kl_weight": 0.0},
    "conv_only": {"context_module": "conv"},
    "gru_only": {"context_module": "gru"},
    "causal": {"causal": True},
}

# Stage 2 as in the authors' code: Adam (AdamW without weight decay is the same update), lr 1e-5 held constant,
# 8 conversations a batch, 100 epochs, grad-norm clip 1.0. Selection on validation weighted F1, every epoch.
CONVERSATION_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-5,
    "num_train_epochs": 100,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "lr_scheduler_type": "constant",
    "max_grad_norm": 1.0,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "weighted_f1",
    "greater_is_better": True,
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
# Trainer settings the dialogue batches need whatever a recipe says (stack notes).
_TRAINER_REQUIRED = {"remove_unused_columns": False, "label_names": ["labels"]}
_RECIPE_KEYS = ("name", "dataset", "output_dir", "seeds", "modalities", "modality_dropout", "gate_learning_rate",
                "early_stopping_patience", "config", "training")
# Recipe keys that go to `train_conversation_model` as they are, and their defaults (the paper's behaviour).
_RECIPE_OPTIONS = {"modality_dropout": 0.0, "gate_learning_rate": None, "early_stopping_patience": None}
_TRAINING_FIELDS = frozenset(field.name for field in dataclasses.fields(TrainingArguments) if field.init)
_OUTPUT_KEYS = frozenset(
    field.name for output in (MisterEOutput, MisterEUtteranceOutput) for field in dataclasses.fields(output)
)


# --- batches -------------------------------------------------------------------------------------------------------


def drop_modalities(
    presence: np.ndarray, drop_speech_p: float, drop_text_p: float, generator: np.random.Generator
) -> np.ndarray:
    """Take one modality away from some utterances that have both, never both and never an utterance's only one.

    An utterance with speech and text loses one with probability `max(drop_speech_p, drop_text_p)`; the one it loses
    is speech with probability `drop_speech_p / (drop_speech_p + drop_text_p)`. So `(p, 0)` drops speech w.p. `p`,
    and `(p, p)` drops speech w.p. `p/2` or text w.p. `p/2`. Two uniforms are drawn per utterance whatever the
    probabilities, so with one seed the utterances dropped at a larger `p` include those dropped at a smaller one.

    Args:
        presence: `(utterances, 2)` booleans, [has speech, has text].
    """
    presence = np.asarray(presence, dtype=bool)
    draws = generator.random((2, len(presence)))
    total = max(drop_speech_p, drop_text_p)
    if total == 0:
        return presence
    lose = presence.all(-1) & (draws[0] < total)
    pick_speech = draws[1] < drop_speech_p / (drop_speech_p + drop_text_p)
    dropped = presence.copy()
    dropped[lose & pick_speech, 0] = False
    dropped[lose & ~pick_speech, 1] = False
    return dropped


@dataclasses.dataclass
class MisterEDataCollator:
    """Dialogue rows (the `mister_e.data` schema) to a batch for `MisterEForEmotionRecognition` and
    `MisterEForUtteranceClassification` alike.

    Rows that carry `speech_embeds`/`text_embeds` are padded to `(B, N, D)` tensors (a `None` vector marks the modality
    missing for that utterance); other rows go through `processor` as raw audio paths and texts. Either way the batch
    has `attention_mask` (B, N), `modality_mask` (B, N, 2) and `labels` (B, N; -100 on padding and unlabelled
    utterances). Speaker columns are never read: the model must not see speaker identity.

    Args:
        processor: `MisterEProcessor` for rows without embeddings.
        modalities: Modalities to feed; the others are treated as missing (text-only runs on a bimodal dataset).
        modality_dropout: Drop one modality of an utterance that has both (`drop_modalities`): `p` for either modality
            w.p. `p` (an augmentation; the paper does not use it), or `(speech_p, text_p)`. The Trainer built by
            `build_trainer` applies it to training batches only.
        training: Random audio crops in the processor (`train_crop_seconds`).
        seed: Seed of the collator's own random draws. `None` (the default for training) draws each batch's seed from
            torch's global generator, which the Trainer seeds and stores in checkpoints, so resumed runs repeat the
            same draws.
    """

    processor: Any = None
    modalities: Sequence[str] = MODALITIES
    modality_dropout: float | tuple[float, float] = 0.0
    training: bool = False
    seed: int | None = None

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        if not self.modalities or not set(self.modalities) <= set(MODALITIES):
            raise ValueError(f"`modalities` must be a non-empty subset of {MODALITIES}, got {self.modalities}.")
        drop = self.modality_dropout
        self._drop = (float(drop), float(drop)) if isinstance(drop, (int, float)) else tuple(map(float, drop))
        if len(self._drop) != 2 or not all(0 <= p <= 1 for p in self._drop):
            raise ValueError(f"`modality_dropout` must be p or (speech_p, text_p) in [0, 1], got {drop!r}.")
        self._generator = None if self.seed is None else np.random.default_rng(self.seed)

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        embedded = [m for m in self.modalities if _EMBED_COLUMNS[m] in features[0]]
        columns = {m: (_EMBED_COLUMNS if embedded else _RAW_COLUMNS)[m] for m in (embedded or self.modalities)}
        generator = self._batch_generator(raw=not embedded)
        presence = []
        for row in features:
            present = np.zeros((len(row["labels"]), 2), dtype=bool)
            for modality, column in columns.items():
                if row.get(column) is not None:
                    present[:, MODALITIES.index(modality)] = [value is not None for value in row[column]]
            self._check_inputs(row, present, columns)
            if any(self._drop):
                present = drop_modalities(present, *self._drop, generator)
            presence.append(present)

        lengths = [len(present) for present in presence]
        modality_mask = torch.zeros(len(features), max(lengths), 2, dtype=torch.bool)
        for b, present in enumerate(presence):
            modality_mask[b, : len(present)] = torch.from_numpy(present)
        if embedded:
            batch = {"attention_mask": _length_mask(lengths), "modality_mask": modality_mask}
            for modality, column in columns.items():
                embeds = _pad_embeddings([row[column] for row in features], presence, MODALITIES.index(modality))
                if embeds is not None:
                    batch[column] = embeds
        else:
            batch = self._process(features, presence, generator)
        labels = torch.full((len(features), max(lengths)), _IGNORE_INDEX, dtype=torch.long)
        for b, row in enumerate(features):
            row_labels = torch.as_tensor(row["labels"], dtype=torch.long)
            labels[b, : len(row_labels)] = row_labels.masked_fill(row_labels < 0, _IGNORE_INDEX)
        batch["labels"] = labels
        if GATE_HOLDOUT_COLUMN in features[0]:
            batch[GATE_HOLDOUT_COLUMN] = torch.tensor([bool(row[GATE_HOLDOUT_COLUMN]) for row in features])
        return batch

    def _batch_generator(self, raw: bool) -> np.random.Generator | None:
        if not (any(self._drop) or (raw and self.training)):
            return None  # Draw nothing: evaluation must not move the training random stream.
        if self._generator is not None:
            return self._generator
        return np.random.default_rng(int(torch.randint(2**62, ()).item()))

    @staticmethod
    def _check_inputs(row: Mapping, present: np.ndarray, columns: Mapping[str, str]) -> None:
        empty = np.flatnonzero(~present.any(-1))
        if len(empty):
            utterance = (row.get("utterance_ids") or range(len(present)))[empty[0]]
            raise ValueError(
                f"dialogue {row.get('dialogue_id')!r}: utterance {utterance!r} has none of the columns "
                f"{sorted(columns.values())}; drop it from the dataset or feed other modalities."
            )

    def _process(self, features, presence, generator) -> dict[str, torch.Tensor]:
        if self.processor is None:
            raise ValueError("Rows without `speech_embeds`/`text_embeds` need a `processor` to read audio and text.")
        conversations = []
        for row, present in zip(features, presence):
            audio = row.get("audio") or [None] * len(present)
            texts = row.get("texts") or [None] * len(present)
            utterances = []
            for (has_speech, has_text), path, text in zip(present, audio, texts):
                utterance = {"audio": path} if has_speech else {}
                if has_text:
                    utterance["text"] = text
                utterances.append(utterance)
            conversations.append({"id": row.get("dialogue_id"), "utterances": utterances})
        return dict(self.processor(conversations, training=self.training, generator=generator, return_tensors="pt"))


def _length_mask(lengths: Sequence[int]) -> torch.Tensor:
    return (torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]).long()


def _pad_embeddings(rows: Sequence[Sequence], presence: Sequence[np.ndarray], column: int) -> torch.Tensor | None:
    """`(B, N, D)` float32 with zeros where absent; `None` when no utterance of the batch has the modality."""
    kept = [
        [np.asarray(vectors[i], dtype=np.float32) for i in np.flatnonzero(present[:, column])]
        for vectors, present in zip(rows, presence)
    ]
    width = next((vectors[0].shape[-1] for vectors in kept if vectors), None)
    if width is None:
        return None
    padded = torch.zeros(len(rows), max(len(p) for p in presence), width)
    for b, (vectors, present) in enumerate(zip(kept, presence)):
        if vectors:
            padded[b, torch.from_numpy(np.flatnonzero(present[:, column]))] = torch.from_numpy(np.stack(vectors))
    return padded


def flatten_utterances(dataset: Dataset, modality: str) -> Dataset:
    """One-utterance conversations of the labelled utterances that have `modality`, for stage-1 training.

    Only the columns stage 1 reads are kept, so precomputed embeddings of another run never reach the collator.
    """
    column = _RAW_COLUMNS[modality]
    keep = ["dialogue_id", "utterance_ids", column, "labels"]
    dataset = dataset.select_columns(keep)

    def explode(batch):
        rows = {key: [] for key in keep}
        for dialogue_id, utterance_ids, values, labels in zip(*(batch[key] for key in keep)):
            for utterance_id, value, label in zip(utterance_ids, values, labels):
                if value is not None and label >= 0:
                    for key, item in zip(keep, (dialogue_id, [utterance_id], [value], [label])):
                        rows[key].append(item)
        return rows

    return dataset.map(explode, batched=True, remove_columns=keep, features=dataset.features, keep_in_memory=True)


# --- Trainer -------------------------------------------------------------------------------------------------------


class MisterETrainer(Trainer):
    """`Trainer` whose evaluation batches carry no training randomness and whose predictions are one logits tensor.

    Args:
        prediction_key: Output field handed to `compute_metrics` (`"logits"` for stage 2, `"<modality>_logits"` for a
            stage-1 encoder); every other output stays out of the gathered predictions.
    """

    def __init__(self, *args, prediction_key: str = "logits", gate_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.prediction_key = prediction_key
        self.gate_learning_rate = gate_learning_rate

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the gate's parameters in a group of their own at `gate_learning_rate`: Adam moves
        a weight by about the learning rate per step, so a gate trained at the experts' rate barely leaves its
        initial, near-uniform weights within a schedule that is long enough for the experts."""
        optimizer = super().create_optimizer(model)
        if self.gate_learning_rate is None or getattr(optimizer, "_gate_group", False):
            return optimizer
        gate = {id(param) for name, param in (model or self.model).named_parameters() if name.startswith("gate.")}
        for group in list(optimizer.param_groups):
            params = [param for param in group["params"] if id(param) in gate]
            if params:
                group["params"] = [param for param in group["params"] if id(param) not in gate]
                optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": params,
                                           "lr": self.gate_learning_rate})
        optimizer._gate_group = True
        return optimizer

    def _get_dataloader(self, *args, is_training: bool = False, **kwargs):
        # Every loader of Trainer 5.x is built here; `is_training` tells the training loader from the others.
        collator = self.data_collator
        dropout = collator.modality_dropout if is_training else 0.0
        self.data_collator = dataclasses.replace(collator, training=is_training, modality_dropout=dropout)
        try:
            return super()._get_dataloader(*args, is_training=is_training, **kwargs)
        finally:
            self.data_collator = collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            ignore_keys = sorted(_OUTPUT_KEYS - {self.prediction_key})
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


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

    Launched as several processes on a machine without CUDA, `use_cpu` defaults to True: it makes them one DDP run.
    """
    if "validation" not in dataset:
        raise ValueError(f"Model selection needs a `validation` split; got {list(dataset)}.")
    args = TrainingArguments(
        output_dir=str(output_dir),
        seed=seed,
        data_seed=seed,
        **{"dataloader_pin_memory": torch.cuda.is_available(), "use_cpu": launched_on_cpu(), **training_arguments,
           **_TRAINER_REQUIRED},
    )
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


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """Newest complete checkpoint: Trainer writes `trainer_state.json` last, so a folder without it was cut short."""
    folders = Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
    complete = [f for f in folders if f.name.split("-")[-1].isdigit() and (f / "trainer_state.json").is_file()]
    return str(max(complete, key=lambda f: int(f.name.split("-")[-1]))) if complete else None


def _fit(trainer: MisterETrainer, splits: Sequence[str], dataset: DatasetDict) -> dict[str, dict[str, float]]:
    """Train (resuming from the newest checkpoint), then score the selected model on each split."""
    checkpoint = last_checkpoint(trainer.args.output_dir)
    if checkpoint:
        logger.warning(f"Resuming from {checkpoint}.")
    trainer.train(resume_from_checkpoint=checkpoint)
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
        _write_json(output_dir / "results.json", results)
        if not keep_checkpoints:
            for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(checkpoint)
    return broadcast_object_list([results])[0]


def label_names(dataset: Dataset) -> list[str]:
    """Class names from the dataset's `ClassLabel` features: the label set is the data's, not the recipe's."""
    return list(dataset.features["labels"].feature.names)


def _data_config(dataset: Dataset) -> dict[str, Any]:
    """Config fields the data decides: labels, and the width of each embedding column present."""
    fields = {"id2label": dict(enumerate(label_names(dataset)))}
    for modality, column in _EMBED_COLUMNS.items():
        if column in dataset.column_names:
            for row in dataset.select_columns(column):  # row by row: the column can be gigabytes as Python lists
                width = next((len(vector) for vector in row[column] if vector is not None), None)
                if width is not None:
                    fields[f"{modality}_embed_dim"] = width
                    break
    return fields


# --- stage 2 -------------------------------------------------------------------------------------------------------


def train_conversation_model(
    dataset: DatasetDict,
    output_dir: str | os.PathLike,
    config_overrides: Mapping[str, Any] | None = None,
    training_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
    modality_dropout: float = 0.0,
    model: MisterEForEmotionRecognition | None = None,
    processor: Any = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    report: bool = True,
    keep_checkpoints: bool = False,
    gate_learning_rate: float | None = None,
    early_stopping_patience: int | None = None,
) -> dict[str, Any]:
    """Train MiSTER-E (stage 2) on a dialogue `DatasetDict`, select on validation, score on test, save.

    Reruns with the same `output_dir` resume from its newest complete checkpoint. Writes the selected model
    (`model.safetensors`, `config.json`) and `results.json` (validation and test scores, seed, config; with `report`
    also the mean test gate weight per expert, `test.gate`) to `output_dir` and, with `report`, the test split's
    evaluation artefacts to `output_dir/test` (see `evaluate_model`). Once
    `results.json` is written the checkpoints (about 1 GB each at the paper's sizes) are deleted, unless
    `keep_checkpoints`.

    Args:
        dataset: Splits `train`, `validation` and optionally `test`, with embedding columns (or raw columns and a
            `model` with utterance encoders plus its `processor`).
        config_overrides: `MisterEConfig` fields over the paper's defaults; labels and embedding widths come from the
            data.
        training_overrides: `TrainingArguments` fields over `CONVERSATION_TRAINING_DEFAULTS`.
        seed: Seeds model initialisation, data order (`data_seed`), the gate's held-out conversations and every
            random draw of training.
        gate_learning_rate: Learning rate of the gate's own optimizer group (default: the experts').
        early_stopping_patience: Stop after this many evaluations without a better validation weighted F1.

    With `config.standardize_inputs`, the input statistics are fitted on the training split's embeddings first; with
    `config.gate_holdout_fraction`, that fraction of the training conversations (drawn with `seed`) is held out from
    the experts' losses for the gate.
    """
    output_dir = Path(output_dir)
    set_seed(seed)
    if model is None:
        if not set(_EMBED_COLUMNS.values()) & set(dataset["train"].column_names):
            raise ValueError(
                "The dataset has no `speech_embeds`/`text_embeds` columns: extract them first (`mister-e extract`), "
                "or pass a `model` with utterance encoders and its `processor`."
            )
        config = MisterEConfig(**{**_data_config(dataset["train"]), **(config_overrides or {})})
        model = MisterEForEmotionRecognition(config)
    fit_input_statistics(model, dataset["train"])
    if model.gate is not None and model.config.gate_holdout_fraction and len(model.config.experts) > 1:
        dataset = with_gate_holdout(dataset, model.config.gate_holdout_fraction, seed)
    if early_stopping_patience:
        callbacks = [*(callbacks or []), EarlyStoppingCallback(early_stopping_patience)]
    collator = MisterEDataCollator(processor, modalities, modality_dropout)
    trainer = build_trainer(
        model, dataset, output_dir, collator, {**CONVERSATION_TRAINING_DEFAULTS, **(training_overrides or {})}, seed,
        "logits", processor, callbacks, gate_learning_rate,
    )
    results = {
        "seed": seed,
        **_fit(trainer, ("validation", "test"), dataset),
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "config": json.loads(trainer.model.config.to_json_string()),
    }
    trainer.save_model(str(output_dir))
    if report and "test" in dataset and trainer.is_world_process_zero():  # a single-process pass, no collectives
        metrics = evaluate_model(trainer.model, dataset["test"], output_dir / "test", robustness=False,
                                 processor=processor, modalities=modalities,
                                 batch_size=trainer.args.per_device_eval_batch_size)["metrics"]
        if "gates" in metrics:  # which expert the selected model trusts, on average
            results["test"]["gate"] = metrics["gates"]["mean"]
    return _finish(trainer, results, keep_checkpoints)


@torch.no_grad()
def fit_input_statistics(model: MisterEForEmotionRecognition, train: Dataset) -> None:
    """Fit the model's input standardizers (`config.standardize_inputs`) on the embeddings of the training split's
    utterances that have each modality; modalities without an embedding column keep the identity."""
    for modality, column in _EMBED_COLUMNS.items():
        standardizer = getattr(model, f"{modality}_standardizer", None)
        if standardizer is None or column not in train.column_names:
            continue
        vectors = [np.asarray(vector, dtype=np.float32) for batch in train.select_columns(column).iter(256)
                   for row in batch[column] for vector in row if vector is not None]
        if vectors:
            standardizer.fit(torch.from_numpy(np.stack(vectors)))


def with_gate_holdout(dataset: DatasetDict, fraction: float, seed: int) -> DatasetDict:
    """The dataset with the training split's `gate_holdout` column: `fraction` of its conversations (at least one,
    never all), drawn with `seed`, whose utterances only the gate learns from."""
    train = dataset["train"]
    if len(train) < 2:
        raise ValueError("A gate hold-out needs at least 2 training conversations; set `gate_holdout_fraction=0`.")
    count = min(max(round(fraction * len(train)), 1), len(train) - 1)
    held_out = np.zeros(len(train), dtype=bool)
    held_out[np.random.default_rng(seed).choice(len(train), count, replace=False)] = True
    return DatasetDict({**dataset, "train": train.add_column(GATE_HOLDOUT_COLUMN, held_out.tolist())})


_SUMMARY_METRICS = [f"test/{metric}" for metric in SCALAR_METRICS] + [f"validation/{m}" for m in SCALAR_METRICS]


def train_seeds(
    recipe: str | os.PathLike | Mapping[str, Any],
    seeds: Sequence[int] | None = None,
    dataset: DatasetDict | None = None,
    output_dir: str | os.PathLike | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    keep_checkpoints: bool = False,
) -> dict[str, Any]:
    """Train a recipe once per seed into `output_dir/seed_<k>` and summarise the seeds (mean ± sample std).

    A seed whose `results.json` exists is not trained again, and an unfinished one resumes, so an interrupted
    multi-seed run is continued by running the same command. Writes `summary.json` and `summary.md`.
    """
    recipe = load_recipe(recipe) if not isinstance(recipe, Mapping) else recipe
    seeds = list(recipe["seeds"] if seeds is None else seeds)
    dataset = load_from_disk(str(recipe["dataset"])) if dataset is None else dataset
    output_dir = Path(output_dir or recipe["output_dir"])
    runs = {}
    for seed in seeds:
        run_dir = output_dir / f"seed_{seed}"
        if (run_dir / "results.json").is_file():
            logger.warning(f"Seed {seed} already trained: reading {run_dir / 'results.json'}.")
            runs[seed] = json.loads((run_dir / "results.json").read_text())
        else:
            runs[seed] = train_conversation_model(
                dataset, run_dir, recipe["config"], recipe["training"], seed, recipe["modalities"],
                callbacks=callbacks, keep_checkpoints=keep_checkpoints,
                **{key: recipe.get(key, default) for key, default in _RECIPE_OPTIONS.items()},
            )
    scores = {seed: {split: run[split] for split in ("validation", "test") if split in run}
              for seed, run in runs.items()}
    summary = summarize_seeds(list(scores.values()))
    if process_state().is_main_process:
        _write_json(output_dir / "summary.json", {"recipe": recipe, "seeds": seeds, "summary": summary, "runs": scores})
        names = [f"test/f1_{name}" for name in label_names(dataset["train"])]
        title = f"# {recipe.get('name', 'MiSTER-E')}{' / ' + recipe['ablation'] if recipe.get('ablation') else ''}"
        table = format_seed_table(summary, _SUMMARY_METRICS + names)
        _write_text(output_dir / "summary.md", f"{title}\n\nSeeds {seeds}.\n\n{table}")
    return summary


def apply_ablation(recipe: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The recipe with one of `ABLATIONS` applied to its model config."""
    if name not in ABLATIONS:
        raise ValueError(f"Unknown ablation {name!r}; expected one of {list(ABLATIONS)}.")
    recipe = copy.deepcopy(dict(recipe))
    recipe["config"] = {**recipe["config"], **ABLATIONS[name]}
    recipe["ablation"] = name
    return recipe


def run_ablations(
    recipe: str | os.PathLike | Mapping[str, Any],
    names: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    dataset: DatasetDict | None = None,
    output_dir: str | os.PathLike | None = None,
    keep_checkpoints: bool = False,
) -> dict[str, dict[str, Any]]:
    """Train every ablation (all of `ABLATIONS` by default) over the seeds into `output_dir/<name>`, then write one
    table, `ablations.md` (a column per ablation), and `ablations.json`."""
    recipe = load_recipe(recipe) if not isinstance(recipe, Mapping) else recipe
    names = list(ABLATIONS if names is None else names)
    for name in names:
        apply_ablation(recipe, name)  # Reject a typo before hours of training.
    dataset = load_from_disk(str(recipe["dataset"])) if dataset is None else dataset
    output_dir = Path(output_dir or recipe["output_dir"])
    summaries = {
        name: train_seeds(apply_ablation(recipe, name), seeds, dataset, output_dir / name,
                          keep_checkpoints=keep_checkpoints)
        for name in names
    }
    if process_state().is_main_process:
        _write_json(output_dir / "ablations.json", summaries)
        _write_text(output_dir / "ablations.md", f"# {recipe.get('name', 'MiSTER-E')} ablations\n\n"
                    + format_seed_table(summaries, _SUMMARY_METRICS))
    return summaries


# --- stage 1 -------------------------------------------------------------------------------------------------------


def train_encoder(
    dataset: DatasetDict,
    modality: str,
    output_dir: str | os.PathLike,
    processor: Any,
    backbone: str | os.PathLike | None = None,
    model: MisterEForUtteranceClassification | None = None,
    lora: Mapping[str, Any] | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    training_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    callbacks: Sequence[TrainerCallback] | None = None,
    keep_checkpoints: bool = False,
    load_in_bits: int | None = None,
) -> dict[str, Any]:
    """Fine-tune one utterance encoder with LoRA as an utterance emotion classifier (stage 1).

    Each labelled utterance with `modality` is a one-utterance conversation; the loss is the model's focal loss.
    The adapters of the epoch with the best validation weighted F1 go to `output_dir/adapter`; merged into the
    backbone they give a plain model (`output_dir/merged`, with `processor`) for `mister-e extract`.

    Args:
        backbone: Local folder or Hub id (resolved by the caller) of the pretrained backbone, unless `model` is
            given.
        lora: `apply_lora` overrides (`r`, `lora_alpha`, `lora_dropout`, `target_modules`) over `LORA_DEFAULTS`.
        config_overrides: `MisterEConfig` fields for a new model (`<modality>_embed_dim`, pooling, dropout, ...).
        training_overrides: `TrainingArguments` fields over `ENCODER_TRAINING_DEFAULTS`; `gradient_checkpointing`
            recomputes the backbone's layers in backward, `bf16`/`fp16` turn on autocast.
        dtype: dtype of a new model's backbone (float32 when `None`); its heads and the LoRA weights train in float32.
        load_in_bits: 4 (QLoRA, NF4) or 8 to quantize a new model's backbone with bitsandbytes on the GPU; fails
            before any weight loads without bitsandbytes or a CUDA GPU.
    """
    from .lora import apply_lora, load_lora, merge_lora  # peft is needed here only.

    if modality not in MODALITIES:
        raise ValueError(f"`modality` must be one of {MODALITIES}, got {modality!r}.")
    if load_in_bits and model is not None:
        raise ValueError("`load_in_bits` quantizes the backbone of a new model: pass `backbone`, not `model`.")
    output_dir = Path(output_dir)
    set_seed(seed)
    if model is None:
        if backbone is None:
            raise ValueError("Pass a `backbone` to build the encoder from, or a `model`.")
        labels = {"id2label": dict(enumerate(label_names(dataset["train"])))}
        build = functools.partial(MisterEForUtteranceClassification.from_backbones, **{modality: str(backbone)},
                                  **{**labels, **(config_overrides or {})})
        quantization = None
        if load_in_bits:
            from .scale import prepare_quantized_backbones, quantization_kwargs

            quantization = quantization_kwargs(load_in_bits, dtype)
        model = build(dtype=dtype, backbone_kwargs=quantization)
        if load_in_bits:
            prepare_quantized_backbones(model)
    utterances = DatasetDict({split: flatten_utterances(part, modality) for split, part in dataset.items()})
    functionals = isinstance(getattr(model, f"{modality}_encoder"), MisterEFunctionalsEncoder)
    if functionals:  # no network to adapt: the standardisation is fitted on train, then the head trains fully
        fit_functionals_statistics(model, processor, utterances["train"])
    trainer = build_trainer(
        model if functionals else apply_lora(model, modality, **(lora or {})), utterances, output_dir,
        MisterEDataCollator(processor, (modality,)), {**ENCODER_TRAINING_DEFAULTS, **(training_overrides or {})},
        seed, f"{modality}_logits", processor, callbacks,
    )
    results = {"seed": seed, "modality": modality, **_fit(trainer, ("validation", "test"), utterances),
               "best_checkpoint": trainer.state.best_model_checkpoint}
    if trainer.is_world_process_zero():  # `_finish` hands the merged config to the other processes
        merged = trainer.model
        if not functionals:
            trainer.model.save_pretrained(output_dir / "adapter")
            trained = trainer.model
            if load_in_bits:  # merged into quantized weights the adapters would be re-quantized: use a bf16 backbone
                trained = load_lora(build(dtype=dtype or torch.bfloat16), output_dir / "adapter")
            merged = merge_lora(trained)
        merged.save_pretrained(output_dir / "merged")
        if processor is not None:
            processor.save_pretrained(output_dir / "merged")
        results["config"] = json.loads(merged.config.to_json_string())
    return _finish(trainer, results, keep_checkpoints)


def speech_features(processor: Any, paths: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """The processor's speech features of audio files, `(len(paths), width)` for one-vector-per-utterance extractors
    (openSMILE functionals), computed in batches of one-utterance conversations."""
    return torch.cat([
        processor([{"id": path, "utterances": [{"audio": path}]} for path in paths[start : start + batch_size]])[
            "input_features"]
        for start in range(0, len(paths), batch_size)
    ])


@torch.no_grad()
def fit_functionals_statistics(model: MisterEForUtteranceClassification, processor: Any, utterances: Dataset,
                               batch_size: int = 64) -> None:
    """Fit the speech functionals encoder's standardisation on the training utterances (`flatten_utterances` rows);
    the statistics then travel inside the model and are never recomputed at inference."""
    paths = [audio[0] for audio in utterances[_RAW_COLUMNS["speech"]]]
    if not paths:
        raise ValueError("The training split has no utterance with audio to fit the functionals' statistics on.")
    model.speech_encoder.standardizer.fit(speech_features(processor, paths, batch_size))


# --- evaluation ----------------------------------------------------------------------------------------------------


@torch.inference_mode()
def _predict(model, dataset: Dataset, collator: MisterEDataCollator, batch_size: int, desc: str) -> dict:
    """Per-utterance logits, gate weights and labels of a split, padding removed."""
    model.eval()
    outputs = {key: [] for key in ("logits", "gate_weights", "labels", "dialogue_ids", "utterance_ids")}
    for batch_rows in tqdm(dataset.iter(batch_size), total=-(-len(dataset) // batch_size), desc=desc, unit="batch"):
        rows = [dict(zip(batch_rows, values)) for values in zip(*batch_rows.values())]
        batch = collator(rows)
        labels = batch.pop("labels")
        mask = batch["attention_mask"].bool()
        output = model(**{key: value.to(model.device) for key, value in batch.items()})
        outputs["logits"].append(output.logits.float().cpu()[mask])
        outputs["gate_weights"].append(output.gate_weights.float().cpu()[mask])
        outputs["labels"].append(labels[mask])
        for row in rows:
            size = len(row["labels"])
            outputs["dialogue_ids"].extend([row.get("dialogue_id")] * size)
            outputs["utterance_ids"].extend(row.get("utterance_ids") or range(size))
    return {key: torch.cat(values).numpy() if key in ("logits", "gate_weights", "labels") else np.asarray(values)
            for key, values in outputs.items()}


def evaluate_model(
    model: MisterEForEmotionRecognition | str | os.PathLike,
    dataset: Dataset,
    output_dir: str | os.PathLike,
    robustness: bool = True,
    probabilities: Sequence[float] = DEFAULT_DROP_PROBABILITIES,
    processor: Any = None,
    modalities: Sequence[str] = MODALITIES,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Score a conversation model on one split and write its report (and modality-robustness curve).

    Writes `write_evaluation_report`'s artefacts (metrics, per-class report, confusion matrix, per-utterance CSV with
    the three gate weights, gate plots) to `output_dir`; with `robustness`, also `robustness.json`/`.png`: scores when
    speech, text or either is dropped from each utterance with probability `p` in `probabilities` at test time
    (`drop_modalities`: never both modalities, never an utterance's only one).

    Returns:
        `{"metrics": <metrics.json>, "robustness": <curve or None>}`.
    """
    if not isinstance(model, PreTrainedModel):
        path = model
        model = MisterEForEmotionRecognition.from_pretrained(path)
        if processor is None and not any(column in dataset.column_names for column in _EMBED_COLUMNS.values()):
            from .processing_mister_e import MisterEProcessor

            processor = MisterEProcessor.from_pretrained(path)
    if device is not None:
        model.to(device)
    collator = MisterEDataCollator(processor, modalities)
    predicted = _predict(model, dataset, collator, batch_size, "evaluate")
    logits = torch.from_numpy(predicted["logits"])
    metrics = write_evaluation_report(
        output_dir,
        predictions=logits.argmax(-1).numpy(),
        references=predicted["labels"],
        label_names=label_names(dataset),
        gate_weights=predicted["gate_weights"],
        dialogue_ids=predicted["dialogue_ids"],
        utterance_ids=predicted["utterance_ids"],
        probabilities=logits.softmax(-1).numpy(),
    )
    curve = None
    if robustness:

        def predict_fn(drop_speech_p: float, drop_text_p: float, seed: int):
            dropped = dataclasses.replace(collator, modality_dropout=(drop_speech_p, drop_text_p), seed=seed)
            desc = f"robustness p=({drop_speech_p:.2f}, {drop_text_p:.2f})"
            run = _predict(model, dataset, dropped, batch_size, desc)
            return run["logits"].argmax(-1), run["labels"]

        curve = robustness_curve(predict_fn, probabilities, seed)
        write_robustness_report(output_dir, curve)
    return {"metrics": metrics, "robustness": curve}


# --- recipes -------------------------------------------------------------------------------------------------------


def _route(key: str) -> tuple[str, ...]:
    """Where an override goes: `config.x`/`training.x` as written, a recipe key, or the config/training field named."""
    section, _, field = key.partition(".")
    if field and section in ("config", "training"):
        return section, field
    if key in _RECIPE_KEYS:
        return (key,)
    if key in MisterEConfig.__dataclass_fields__:
        return "config", key
    if key in _TRAINING_FIELDS:
        return "training", key
    raise ValueError(
        f"{key!r} is neither a recipe key {list(_RECIPE_KEYS)}, a MisterEConfig field nor a TrainingArguments field."
    )


def load_recipe(name_or_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A training recipe: a packaged name (`iemocap`, `meld`, `mosi`) or a YAML file, with overrides applied.

    Override keys are recipe keys (`dataset`, `seeds`, ...), `MisterEConfig` or `TrainingArguments` field names, or
    explicit `config.<field>` / `training.<field>`.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = resources.files("mister_e") / "recipes" / f"{name_or_path}.yaml"
        if not path.is_file():
            available = sorted(p.name.removesuffix(".yaml") for p in path.parent.iterdir())
            raise ValueError(f"No recipe named {name_or_path!r}; packaged recipes: {available}.")
    recipe = {"modalities": list(MODALITIES), **_RECIPE_OPTIONS, "config": {}, "training": {},
              **(yaml.safe_load(path.read_text()) or {})}
    for key, value in (overrides or {}).items():
        *sections, field = _route(key)
        target = recipe
        for section in sections:
            target = target.setdefault(section, {})
        target[field] = value
    unknown = sorted(set(recipe) - set(_RECIPE_KEYS) - {"ablation"})
    unknown += sorted(f"training.{key}" for key in set(recipe["training"]) - _TRAINING_FIELDS)
    unknown += sorted(f"config.{key}" for key in set(recipe["config"]) - set(MisterEConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Recipe {name_or_path!s} has unknown keys {unknown}.")
    return recipe


# --- command line --------------------------------------------------------------------------------------------------


def _parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """`key=value` pairs; values are YAML, so `0.1`, `true`, `[speech]` get their types, and so does `1e-5`, which
    YAML 1.1 reads as a string (it wants `1.0e-5`)."""
    overrides = {}
    for pair in pairs or ():
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        value = yaml.safe_load(text)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[key.strip()] = value
    return overrides


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="Keep the Trainer checkpoints of finished runs (deleted by default to save disk).")
    parser.add_argument(
        "--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
        help="Override a MisterEConfig or TrainingArguments field (e.g. kl_weight=0.0, learning_rate=3e-5).",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `mister-e train` (stage 2)."""
    parser.add_argument("--recipe", required=True, help="Packaged recipe (iemocap, meld, mosi) or a YAML file.")
    parser.add_argument("--dataset", help="Dialogue DatasetDict folder with embedding columns (overrides the recipe).")
    parser.add_argument("--output-dir", help="Where runs go (overrides the recipe).")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds to train (default: the recipe's).")
    parser.add_argument("--ablation", nargs="+", choices=[*ABLATIONS, "all"],
                        help="Train these ablations (or all) into <output-dir>/<name> and write one table.")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, help="Modalities to feed (default: both).")
    _add_common_arguments(parser)
    return parser


def run_train(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _parse_sets(args.overrides)
    for key in ("dataset", "output_dir", "seeds", "modalities"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    recipe = load_recipe(args.recipe, overrides)
    if args.ablation:
        names = list(ABLATIONS) if "all" in args.ablation else args.ablation
        summaries = run_ablations(recipe, names, keep_checkpoints=args.keep_checkpoints)
        _print_once(format_seed_table(summaries, _SUMMARY_METRICS))
        return summaries
    summary = train_seeds(recipe, keep_checkpoints=args.keep_checkpoints)
    _print_once(format_seed_table(summary, _SUMMARY_METRICS))
    return summary


def add_train_encoder_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `mister-e train-encoder` (stage 1)."""
    parser.add_argument("--dataset", required=True, help="Dialogue DatasetDict folder (audio paths and texts).")
    parser.add_argument("--modality", required=True, choices=MODALITIES)
    parser.add_argument("--backbone", help="Backbone folder or Hub id (default: the package's default per modality); "
                                           "for speech also opensmile:ComParE_2016 or opensmile:eGeMAPSv02 "
                                           "(openSMILE functionals, extra `mister-e[opensmile]`).")
    parser.add_argument("--processor", help="Saved MisterEProcessor folder (default: built from the backbone).")
    parser.add_argument("--tokenizer", help="Text tokenizer stored in the processor of a speech encoder "
                                            "(default: the default text backbone's).")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-r", type=int, help="LoRA rank (default: 16 speech, 8 text).")
    parser.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: 8 speech, 32 text).")
    parser.add_argument("--lora-dropout", type=float, help="LoRA dropout (default: 0.05 speech, 0.1 text).")
    parser.add_argument("--lora-targets", nargs="+", help="LoRA target modules (default: the family's preset).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="dtype the backbone loads in (default float32; the compute dtype of a quantized one, "
                             "default bfloat16); heads and LoRA weights train in float32 whatever it is. Autocast is "
                             "the Trainer's: --set bf16=true (or fp16=true).")
    parser.add_argument("--load-in-bits", type=int, choices=[4, 8],
                        help="Quantize the backbone (4: QLoRA, NF4); needs bitsandbytes and a CUDA GPU.")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="Recompute the backbone's layer activations in backward: less memory, slower steps.")
    _add_common_arguments(parser)
    return parser


def _processor_for(modality: str, backbone: str, tokenizer: str | None):
    """A `MisterEProcessor` for one encoder: the backbone's own preprocessing, a stand-in for the other modality."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, Wav2Vec2FeatureExtractor

    from .backbones import DEFAULT_TEXT_BACKBONE, resolve_backbone
    from .configuration_mister_e import MisterEOpenSmileConfig
    from .feature_extraction_mister_e import MisterEFunctionalsFeatureExtractor
    from .processing_mister_e import MisterEProcessor

    if modality == "speech":
        functionals = MisterEOpenSmileConfig.from_backbone_name(backbone)
        feature_extractor = (MisterEFunctionalsFeatureExtractor(functionals.feature_set) if functionals
                             else AutoFeatureExtractor.from_pretrained(backbone))
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(tokenizer or DEFAULT_TEXT_BACKBONE))
    else:
        feature_extractor, tokenizer = Wav2Vec2FeatureExtractor(), AutoTokenizer.from_pretrained(backbone)
    return MisterEProcessor(feature_extractor, tokenizer)


def run_train_encoder(args: argparse.Namespace) -> dict[str, Any]:
    from .backbones import DEFAULT_SPEECH_BACKBONE, DEFAULT_TEXT_BACKBONE, resolve_backbone
    from .processing_mister_e import MisterEProcessor

    default = DEFAULT_SPEECH_BACKBONE if args.modality == "speech" else DEFAULT_TEXT_BACKBONE
    backbone = resolve_backbone(args.backbone or default)
    processor = (MisterEProcessor.from_pretrained(args.processor) if args.processor
                 else _processor_for(args.modality, backbone, args.tokenizer))
    lora = {key: value for key, value in (("r", args.lora_r), ("lora_alpha", args.lora_alpha),
                                          ("lora_dropout", args.lora_dropout), ("target_modules", args.lora_targets))
            if value is not None}
    sections = {"config": {}, "training": {}}
    for key, value in _parse_sets(args.overrides).items():
        route = _route(key)
        if route[0] not in sections:
            raise ValueError(f"--set {key}: train-encoder takes MisterEConfig and TrainingArguments fields only.")
        sections[route[0]][route[1]] = value
    if args.gradient_checkpointing:
        # transformers 5.2x renamed it `activation_checkpointing`, keeping the old name as a deprecated alias.
        new = "activation_checkpointing" in _TRAINING_FIELDS
        sections["training"]["activation_checkpointing" if new else "gradient_checkpointing"] = True
    results = train_encoder(
        load_from_disk(args.dataset), args.modality, args.output_dir, processor, backbone=backbone, lora=lora,
        config_overrides=sections["config"], training_overrides=sections["training"], seed=args.seed,
        dtype=args.dtype and getattr(torch, args.dtype), keep_checkpoints=args.keep_checkpoints,
        load_in_bits=args.load_in_bits,
    )
    _print_once(json.dumps({split: results[split] for split in ("validation", "test") if split in results}, indent=2))
    return results


def _print_once(text: str) -> None:
    """Print from the main process only: under a launcher every process holds the same results."""
    if process_state().is_main_process:
        print(text)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `mister-e evaluate`."""
    parser.add_argument("--model", required=True, help="Folder of a trained conversation model.")
    parser.add_argument("--dataset", required=True, help="Dialogue DatasetDict folder.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output-dir", help="Where the report goes (default: <model>/evaluation/<split>).")
    parser.add_argument("--no-robustness", dest="robustness", action="store_false",
                        help="Skip the missing-modality robustness curve.")
    parser.add_argument("--probabilities", type=float, nargs="+", default=list(DEFAULT_DROP_PROBABILITIES),
                        help="Drop probabilities of the robustness curve.")
    parser.add_argument("--modalities", nargs="+", choices=MODALITIES, default=list(MODALITIES))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the robustness curve's random drops.")
    parser.add_argument("--device", help="Where to run the model (default: cuda when available, else cpu).")
    return parser


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    output_dir = args.output_dir or Path(args.model) / "evaluation" / args.split
    result = evaluate_model(
        args.model, load_from_disk(args.dataset)[args.split], output_dir, robustness=args.robustness,
        probabilities=args.probabilities, modalities=args.modalities, batch_size=args.batch_size, seed=args.seed,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    print(json.dumps({metric: result["metrics"][metric] for metric in SCALAR_METRICS}, indent=2))
    return result


__all__ = [
    "ABLATIONS",
    "CONVERSATION_TRAINING_DEFAULTS",
    "ENCODER_TRAINING_DEFAULTS",
    "MisterEDataCollator",
    "MisterETrainer",
    "add_evaluate_arguments",
    "add_train_arguments",
    "add_train_encoder_arguments",
    "apply_ablation",
    "build_trainer",
    "drop_modalities",
    "evaluate_model",
    "fit_functionals_statistics",
    "fit_input_statistics",
    "flatten_utterances",
    "label_names",
    "last_checkpoint",
    "load_recipe",
    "run_ablations",
    "run_evaluate",
    "run_train",
    "run_train_encoder",
    "speech_features",
    "train_conversation_model",
    "train_encoder",
    "train_seeds",
    "with_gate_holdout",
]
