"""Stage 2: MiSTER-E on dialogues of utterance embeddings; over seeds, and the paper's ablations."""

from __future__ import annotations

import copy
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import EarlyStoppingCallback, TrainerCallback, set_seed
from transformers.utils import logging

from ..assembly import WEIGHTS_KEY, conversation_fingerprint
from ..configuration_mister_e import MODALITIES, MisterEConfig, modalities_of, with_experts
from ..modeling_mister_e import MisterEForEmotionRecognition
from ..recipes import ABLATIONS, RECIPE_OPTIONS, check_seeds, load_recipe
from ..summaries import SCALAR_METRICS, format_seed_table, summarize_seeds
from ..utils import process_state, write_json, write_text
from ..data.checks import check_experts_can_answer, check_finite_embeddings, experts_never_given, modalities_given
from ..data.schema import EMBED_COLUMN, LABELS
from ..data.splits import check_across_splits, require_labelled, require_splits
from ..data.storage import load_dialogues
from .collator import GATE_HOLDOUT_COLUMN, MisterEDataCollator
from .evaluate import evaluate_model
from .runs import check_run, data_identity, finished_results, record_run
from .fitting import (
    CONVERSATION_TRAINING_DEFAULTS, _finish, _fit, build_trainer, data_config, label_names, selected_evaluation,
)

logger = logging.get_logger(__name__)


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
    run_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train MiSTER-E (stage 2) on a dialogue `DatasetDict`, select on validation, score on test, save.

    Reruns with the same `output_dir` resume from its newest complete checkpoint. Writes the selected model
    (`model.safetensors`, `config.json`) and `results.json` (validation and test scores, seed, config, the
    `weights_sha256` of the weights scored (`conversation_fingerprint`); with `report` also the mean test gate weight
    per expert, `test.gate`) to `output_dir` and, with `report`, the test split's
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
        early_stopping_patience: Stop after this many evaluations without a better validation score (the
            selection metric, `metric_for_best_model`: weighted F1 unless `training_overrides` say otherwise).
        run_settings: What defines the run, written to `output_dir/run.json` as training begins (`record_run`), so
            that a rerun with other settings is refused (`check_run`) rather than resumed or read back.

    With `config.standardize_inputs`, the input statistics are fitted on the training split's embeddings first; with
    `config.gate_holdout_fraction`, that fraction of the training conversations (drawn with `seed`) is held out from
    the experts' losses for the gate.
    """
    require_splits(dataset)
    check_across_splits(dataset)  # before `data_config` reads the labels and widths of `train` alone
    require_labelled(dataset)
    output_dir = Path(output_dir)
    set_seed(seed)
    if model is None:
        if not set(EMBED_COLUMN.values()) & set(dataset["train"].column_names):
            raise ValueError(
                "The dataset has no `speech_embeds`/`text_embeds` columns: extract them first (`mister-e extract`), "
                "or pass a `model` with utterance encoders and its `processor`."
            )
        settings = {**data_config(dataset["train"]), **(config_overrides or {})}
        experts, given = MisterEConfig(**settings).experts, modalities_given(dataset["train"], modalities)
        unfed = experts_never_given(experts, given)
        if unfed and len(unfed) < len(experts):  # (none left: `check_experts_can_answer` says so below)
            logger.warning(f"The {', '.join(unfed)} expert(s) would never be given what they read (given: "
                           f"{', '.join(given)}), so they are left out of the model: untrained, they would still "
                           "answer in `evaluate`, `predict` and the pipeline.")
            settings = with_experts(settings, [expert for expert in experts if expert not in unfed])
        model = MisterEForEmotionRecognition(MisterEConfig(**settings))
    elif unfed := experts_never_given(model.config.experts,
                                      modalities_given(dataset["train"], modalities, processor is not None)):
        raise ValueError(f"The model's {', '.join(unfed)} expert(s) would never be given what they read (fed: "
                         f"{list(modalities)}): they would stay untrained yet answer later; build the model with "
                         "`experts` that the fed modalities serve.")
    check_finite_embeddings(dataset)
    check_experts_can_answer(model.config.experts, dataset, modalities, raw=processor is not None)
    warn_of_unseen_classes(model.config, dataset["train"])
    fit_input_statistics(model, dataset["train"])
    if model.gate is not None and model.config.gate_holdout_fraction and len(model.config.experts) > 1:
        dataset = with_gate_holdout(dataset, model.config.gate_holdout_fraction, seed)
    if early_stopping_patience:
        callbacks = [*(callbacks or []), EarlyStoppingCallback(early_stopping_patience)]
    collator = MisterEDataCollator(processor, modalities, useful_modality_dropout(modality_dropout, model.config.experts))
    record_run(output_dir, run_settings)
    trainer = build_trainer(
        model, dataset, output_dir, collator, {**CONVERSATION_TRAINING_DEFAULTS, **(training_overrides or {})}, seed,
        "logits", processor, callbacks, gate_learning_rate,
    )
    results = {"seed": seed, **_fit(trainer, ("validation", "test"), dataset), **selected_evaluation(trainer)}
    trainer.save_model(str(output_dir))
    # After saving, which completes the config (`architectures`, `auto_map`), as a run resumed after its last
    # checkpoint has not yet done: its results.json then matched the uninterrupted run's but for those.
    results["config"] = json.loads(trainer.model.config.to_json_string())
    results[WEIGHTS_KEY] = conversation_fingerprint(trainer.model)  # what `save_for_hub` checks the scores against
    if report and "test" in dataset and trainer.is_world_process_zero():  # a single-process pass, no collectives
        metrics = evaluate_model(trainer.model, dataset["test"], output_dir / "test", robustness=False,
                                 processor=processor, modalities=modalities,
                                 batch_size=trainer.args.per_device_eval_batch_size)["metrics"]
        if "gates" in metrics:  # which expert the selected model trusts, on average
            results["test"]["gate"] = metrics["gates"]["mean"]
    return _finish(trainer, results, keep_checkpoints)


def warn_of_unseen_classes(config: MisterEConfig, train: Dataset) -> None:
    """Name the classes without a training utterance: the model cannot learn them."""
    seen = set(itertools.chain.from_iterable(train[LABELS]))
    missing = [name for index, name in config.id2label.items() if int(index) not in seen]
    if missing:
        logger.warning(f"No training utterance is labelled {', '.join(missing)}: the model cannot learn "
                       f"{'that class' if len(missing) == 1 else 'those classes'}.")


@torch.no_grad()
def fit_input_statistics(model: MisterEForEmotionRecognition, train: Dataset) -> None:
    """Fit the model's input standardizers (`config.standardize_inputs`) on the embeddings of the training split's
    utterances that have each modality; modalities without an embedding column keep their statistics (the identity,
    said, unless the model already holds fitted ones)."""
    for modality, column in EMBED_COLUMN.items():
        standardizer = getattr(model, f"{modality}_standardizer", None)
        if standardizer is None:
            continue
        if column not in train.column_names:
            if modality in modalities_of(model.config.experts) and not standardizer.mean.any() \
                    and bool((standardizer.std == 1).all()):
                logger.warning(f"`standardize_inputs`: the training split has no `{column}` column to fit the "
                               f"{modality} statistics on (end-to-end training reads raw inputs), so {modality} "
                               "inputs are not standardized; it applies to stage 2 on extracted embeddings.")
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


SUMMARY_METRICS = [f"test/{metric}" for metric in SCALAR_METRICS] + [f"validation/{m}" for m in SCALAR_METRICS]


def train_recipe(
    recipe: Mapping[str, Any],
    dataset: DatasetDict,
    output_dir: str | os.PathLike,
    seed: int,
    callbacks: Sequence[TrainerCallback] | None = None,
    keep_checkpoints: bool = False,
    report: bool = True,
) -> dict[str, Any]:
    """One seed of a loaded recipe into `output_dir` (`train_conversation_model` with the recipe's config, training,
    modalities and options). A finished run (its `results.json` exists) is read back instead, and an unfinished one
    resumes."""
    ignored = ("seeds", "output_dir", "dataset", "name")  # where and under what name; `data` says what it trains on
    settings = {**{key: value for key, value in recipe.items() if key not in ignored}, "seed": seed,
                "data": data_identity(dataset)}
    check_run(output_dir, settings)
    finished = finished_results(output_dir)
    if finished is not None:
        return finished
    return train_conversation_model(
        dataset, output_dir, recipe["config"], recipe["training"], seed, recipe["modalities"], callbacks=callbacks,
        report=report, keep_checkpoints=keep_checkpoints, run_settings=settings,
        **{key: recipe.get(key, default) for key, default in RECIPE_OPTIONS.items()},
    )


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
    multi-seed run is continued by running the same command. Writes `summary.json` (with each seed's scores and the
    `weights_sha256` of its weights, where its run recorded one) and `summary.md`.
    """
    recipe = load_recipe(recipe) if not isinstance(recipe, Mapping) else recipe
    seeds = list(recipe["seeds"] if seeds is None else seeds)
    check_seeds(seeds)
    dataset = load_dialogues(recipe["dataset"]) if dataset is None else dataset
    require_splits(dataset, recipe.get("dataset"))
    output_dir = Path(output_dir or recipe["output_dir"])
    runs = {seed: train_recipe(recipe, dataset, output_dir / f"seed_{seed}", seed, callbacks=callbacks,
                               keep_checkpoints=keep_checkpoints) for seed in seeds}
    scores = {seed: {split: run[split] for split in ("validation", "test") if split in run}
              for seed, run in runs.items()}
    summary = summarize_seeds(list(scores.values()))
    if process_state().is_main_process:
        weights = {seed: {WEIGHTS_KEY: run[WEIGHTS_KEY]} if WEIGHTS_KEY in run else {} for seed, run in runs.items()}
        write_json(output_dir / "summary.json", {"recipe": recipe, "seeds": seeds, "summary": summary,
                                                 "runs": {seed: {**scores[seed], **weights[seed]} for seed in seeds}})
        names = [f"test/f1_{name}" for name in label_names(dataset["train"])]
        title = f"# {recipe.get('name', 'MiSTER-E')}{' / ' + recipe['ablation'] if recipe.get('ablation') else ''}"
        table = format_seed_table(summary, SUMMARY_METRICS + names)
        write_text(output_dir / "summary.md", f"{title}\n\nSeeds {seeds}.\n\n{table}")
    return summary


def useful_modality_dropout(modality_dropout: float | tuple[float, float], experts) -> tuple[float, float]:
    """`(speech_p, text_p)` of modality dropout where it can teach something: a modality is dropped only when an enabled
    expert reads it (else the drop changes nothing the experts learn from) and another enabled expert can answer from
    the modality left (else it only deletes a training utterance). A single-expert model, such as the `text_only`
    ablation, so trains exactly as without modality dropout."""
    speech_p, text_p = (modality_dropout,) * 2 if isinstance(modality_dropout, (int, float)) else modality_dropout
    reads = modalities_of(experts)
    return (speech_p if "speech" in reads and "text" in experts else 0.0,
            text_p if "text" in reads and "speech" in experts else 0.0)


def apply_ablation(recipe: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The recipe with one of `ABLATIONS` applied to its model config."""
    if name not in ABLATIONS:
        raise ValueError(f"Unknown ablation {name!r}; expected one of {list(ABLATIONS)}.")
    recipe = copy.deepcopy(dict(recipe))
    recipe["config"] = {**recipe["config"], **ABLATIONS[name]}
    if "experts" in ABLATIONS[name]:  # the recipe's per-modality settings of the experts it switches off go too
        recipe["config"] = with_experts(recipe["config"], ABLATIONS[name]["experts"])
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
    dataset = load_dialogues(recipe["dataset"]) if dataset is None else dataset
    require_splits(dataset, recipe.get("dataset"))
    for name in names:  # and an ablation the data cannot serve (speech_only on text-only data) before the others train
        ablated = MisterEConfig(**{**data_config(dataset["train"]), **apply_ablation(recipe, name)["config"]})
        try:
            check_experts_can_answer(ablated.experts, dataset, recipe["modalities"])
        except ValueError as error:
            raise ValueError(f"Ablation {name!r}: {error}") from None
    output_dir = Path(output_dir or recipe["output_dir"])
    summaries = {
        name: train_seeds(apply_ablation(recipe, name), seeds, dataset, output_dir / name,
                          keep_checkpoints=keep_checkpoints)
        for name in names
    }
    if process_state().is_main_process:
        write_json(output_dir / "ablations.json", summaries)
        write_text(output_dir / "ablations.md", f"# {recipe.get('name', 'MiSTER-E')} ablations\n\n"
                   + format_seed_table(summaries, SUMMARY_METRICS))
    return summaries


