"""Scoring a trained conversation model on a split: predictions, the report files, the robustness curve."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.utils import logging

from ..configuration_mister_e import MODALITIES, contradicts_recorded_embedding
from ..data.checks import check_experts_can_answer, check_finite_embeddings
from ..data.schema import DIALOGUE_ID, EMBED_COLUMN, LABELS, UTTERANCE_IDS
from ..data.splits import check_across_splits
from ..evaluation import clear_report, write_evaluation_report
from ..experts_mister_e import answerable
from ..modeling_mister_e import MisterEForEmotionRecognition
from ..pipeline_mister_e import non_finite
from ..robustness import DEFAULT_DROP_PROBABILITIES, ROBUSTNESS_CONDITIONS, robustness_curve, write_robustness_report
from .collator import MisterEDataCollator
from .fitting import data_config, label_names

logger = logging.get_logger(__name__)


@torch.inference_mode()
def predict_split(
    model, dataset: Dataset, collator: MisterEDataCollator, batch_size: int = 8, desc: str = "predict"
) -> dict:
    """Per-utterance logits (the mixture's and each expert's), gate weights, labels and modality masks (the collator's)
    of a split, padding removed."""
    model.eval()
    tensors = ("logits", "expert_logits", "gate_weights", "labels", "modality_mask")
    outputs = {key: [] for key in (*tensors, "dialogue_ids", "utterance_ids")}
    for batch_rows in tqdm(dataset.iter(batch_size), total=-(-len(dataset) // batch_size), desc=desc, unit="batch",
                           disable=None):  # none when not a terminal
        rows = [dict(zip(batch_rows, values)) for values in zip(*batch_rows.values())]
        batch = collator(rows)
        labels = batch.pop("labels")
        mask = batch["attention_mask"].bool()
        output = model(**{key: value.to(model.device) for key, value in batch.items()})
        outputs["logits"].append(output.logits.float().cpu()[mask])
        outputs["expert_logits"].append(output.expert_logits.float().cpu()[mask])
        outputs["gate_weights"].append(output.gate_weights.float().cpu()[mask])
        outputs["labels"].append(labels[mask])
        outputs["modality_mask"].append(batch["modality_mask"][mask])
        for row in rows:
            size = len(row[LABELS])
            outputs["dialogue_ids"].extend([row.get(DIALOGUE_ID)] * size)
            outputs["utterance_ids"].extend(row.get(UTTERANCE_IDS) or range(size))
    return {key: torch.cat(values).numpy() if key in tensors else np.asarray(values) for key, values in outputs.items()}


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
        `{"metrics": <metrics.json>, "robustness": <curve, or None when not asked for or when no utterance has both
        modalities (dropping one of them is never done to an utterance's only input, so the curve would be flat)>}`.
    """
    if not isinstance(model, PreTrainedModel):
        path = model
        model = MisterEForEmotionRecognition.from_pretrained(path)
        if processor is None and not any(column in dataset.column_names for column in EMBED_COLUMN.values()):
            if model.speech_encoder is None and model.text_encoder is None:
                raise ValueError(f"{path} is a stage-2 model (embeddings in) and the dataset has no speech_embeds / "
                                 "text_embeds columns: extract them first (`mister-e extract`).")
            from ..processing_mister_e import MisterEProcessor

            processor = MisterEProcessor.from_pretrained(path)
    check_finite_embeddings(dataset)
    # one width per column, before `_check_fits` holds the first to the model's; predictions.csv names each utterance
    # by its ids
    check_across_splits(dataset)
    check_experts_can_answer(model.config.experts, dataset, modalities, raw=processor is not None)
    _check_fits(model, dataset)
    if device is not None:
        model.to(device)
    collator = MisterEDataCollator(processor, modalities)
    predicted = predict_split(model, dataset, collator, batch_size, "evaluate")
    broken = np.flatnonzero(~np.isfinite(predicted["logits"]).all(-1))
    if len(broken):
        dialogue, utterance = (predicted[key][broken[0]].item() for key in ("dialogue_ids", "utterance_ids"))
        raise ValueError(f"dialogue {dialogue!r}, utterance {utterance!r}: {non_finite(model)} ({len(broken)} such "
                         "utterances).")
    logits = torch.from_numpy(predicted["logits"])
    clear_report(output_dir)  # a file this report does not write must not stay from another model's or split's
    curve = None
    # Dropping never removes an utterance's only input: without an utterance that has both, the curve would be flat.
    if robustness and not predicted["modality_mask"].all(-1).any():
        logger.warning("No robustness curve: every utterance has one modality at most, so there is nothing to drop.")
    elif robustness and (conditions := _answerable_conditions(model.config.expert_mask)):  # none: no empty report

        def predict_fn(drop_speech_p: float, drop_text_p: float, seed: int):
            dropped = dataclasses.replace(collator, modality_dropout=(drop_speech_p, drop_text_p), seed=seed)
            desc = f"robustness p=({drop_speech_p:.2f}, {drop_text_p:.2f})"
            run = predict_split(model, dataset, dropped, batch_size, desc)
            return run["logits"].argmax(-1), run["labels"]

        curve = robustness_curve(predict_fn, probabilities, seed, conditions)
        write_robustness_report(output_dir, curve)
    # After the curve: the report's metrics.json, written last, marks a finished evaluation.
    metrics = write_evaluation_report(
        output_dir,
        predictions=logits.argmax(-1).numpy(),
        references=predicted["labels"],
        label_names=label_names(dataset),
        gate_weights=predicted["gate_weights"],
        dialogue_ids=predicted["dialogue_ids"],
        utterance_ids=predicted["utterance_ids"],
        probabilities=logits.softmax(-1).numpy(),
        num_dialogues=len(dataset),
    )
    return {"metrics": metrics, "robustness": curve}


# What each robustness condition can leave of an utterance that has both modalities: (speech, text).
_LEFT_AFTER_DROPPING = {"speech": [[False, True]], "text": [[True, False]], "either": [[False, True], [True, False]]}


def _answerable_conditions(expert_mask) -> list[str]:
    """The robustness conditions after which some enabled expert can still answer every utterance. Dropping text
    from a text-only model leaves utterances it cannot answer; scored, their arbitrary predictions (class 0) made the
    curve rise or fall by the luck of that class's share, so such a condition gets no curve, and a warning."""
    kept = []
    for condition in ROBUSTNESS_CONDITIONS:
        if answerable(torch.tensor(_LEFT_AFTER_DROPPING[condition]), expert_mask).all():
            kept.append(condition)
        else:
            logger.warning(f"No 'drop {condition}' robustness curve: the model's experts cannot answer an utterance "
                           f"without {'one of its modalities' if condition == 'either' else condition}.")
    return kept


def _check_fits(model: MisterEForEmotionRecognition, dataset: Dataset) -> None:
    """The dataset's labels, embedding widths and (where both record them) embedding kinds are the model's: other label
    names (or order) under the same ids would make every score silently wrong."""
    data = data_config(dataset)
    model_labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    if list(data["id2label"].values()) != model_labels:
        raise ValueError(f"The dataset's labels {list(data['id2label'].values())} are not the model's {model_labels} "
                         "(same names, same order): prepare the data with the label set the model was trained on.")
    for modality, column in EMBED_COLUMN.items():
        width, expected = data.get(f"{modality}_embed_dim"), getattr(model.config, f"{modality}_embed_dim")
        if width is not None and width != expected:
            raise ValueError(f"The dataset's {column} are {width}-d; the model takes {expected}-d {modality} "
                             "embeddings: extract them with the stage-1 encoder this model was trained on.")
        found, trained_on = data.get(f"{modality}_embedding"), getattr(model.config, f"{modality}_embedding")
        if contradicts_recorded_embedding(trained_on, found):
            raise ValueError(f"The dataset's {column} are `{found}` embeddings; the model was trained on "
                             f"`{trained_on}` ones: extract them with `--embedding {trained_on}`.")
