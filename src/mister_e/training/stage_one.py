"""Stage 1: one utterance encoder fine-tuned (LoRA; or an openSMILE functionals head fitted whole, `functionals.py`)
as an utterance emotion classifier, then merged into a plain model for `mister-e extract`."""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import DatasetDict
from transformers import TrainerCallback, set_seed

from ..configuration_mister_e import MODALITIES, MisterEOpenSmileConfig
from ..encoders_mister_e import MisterEFunctionalsEncoder
from ..data.splits import check_across_splits, require_splits
from ..modeling_mister_e import MisterEForUtteranceClassification
from .collator import MisterEDataCollator, flatten_utterances
from .functionals import FUNCTIONALS_L2, check_l2, fit_functionals_head, fit_functionals_statistics, train_labels
from .runs import record_run
from .fitting import ENCODER_TRAINING_DEFAULTS, _finish, _fit, _score, build_trainer, label_names, selected_evaluation


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
    solver: str | None = None,
    l2: float | None = None,
    run_settings: Mapping[str, Any] | None = None,
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
        solver: `"trainer"`: epochs of the Trainer, the best validation epoch kept (the only way for a backbone);
            `"lbfgs"` (the default for openSMILE functionals): the head fitted full batch to convergence with an L2
            penalty `l2` (default `FUNCTIONALS_L2`), validation only scored (`functionals.py`); it takes no
            `training_overrides` (they set the Trainer's epochs, which it has none of).
        run_settings: What defines the run, written to `output_dir/run.json` as training begins (`record_run`), so
            that a rerun with other settings is refused (`check_run`) rather than resumed or read back.
    """
    from .lora import apply_lora, load_lora, merge_lora  # peft is needed here only.

    if modality not in MODALITIES:
        raise ValueError(f"`modality` must be one of {MODALITIES}, got {modality!r}.")
    require_splits(dataset)
    check_across_splits(dataset, embeddings=False)
    if load_in_bits and model is not None:
        raise ValueError("`load_in_bits` quantizes the backbone of a new model: pass `backbone`, not `model`.")
    if model is None and backbone is None:
        raise ValueError("Pass a `backbone` to build the encoder from, or a `model`.")
    functionals = (isinstance(getattr(model, f"{modality}_encoder"), MisterEFunctionalsEncoder) if model is not None
                   else MisterEOpenSmileConfig.from_backbone_name(str(backbone)) is not None)
    solver = _check_solver(solver, functionals, modality, training_overrides, l2)
    output_dir = Path(output_dir)
    utterances = DatasetDict({split: flatten_utterances(part, modality) for split, part in dataset.items()})
    for split in ("train", "validation"):  # an empty one failed after the first epoch, inside Trainer (KeyError)
        if not len(utterances[split]):
            raise ValueError(f"split {split!r} has no labelled utterance with {modality} (a blank text is none): "
                             f"stage 1 {'fits on' if split == 'train' else 'selects its epoch on'} them.")
    set_seed(seed)
    if model is None:
        labels = {"id2label": dict(enumerate(label_names(dataset["train"])))}
        build = functools.partial(MisterEForUtteranceClassification.from_backbones, **{modality: str(backbone)},
                                  **{**labels, **(config_overrides or {})})
        quantization = None
        if load_in_bits:
            from .quantization import prepare_quantized_backbones, quantization_kwargs

            quantization = quantization_kwargs(load_in_bits, dtype)
        model = build(dtype=dtype, backbone_kwargs=quantization)
        if load_in_bits:
            prepare_quantized_backbones(model)
    if not functionals:  # no network to adapt in functionals: their standardisation is fitted, then the head trains
        model = apply_lora(model, modality, **(lora or {}))
    record_run(output_dir, run_settings)
    if functionals:
        features = fit_functionals_statistics(model, processor, utterances["train"])
        if solver == "lbfgs":
            fit_functionals_head(model.speech_encoder, features, train_labels(utterances["train"]),
                                 FUNCTIONALS_L2 if l2 is None else l2)
    trainer = build_trainer(
        model, utterances, output_dir,
        MisterEDataCollator(processor, (modality,)), {**ENCODER_TRAINING_DEFAULTS, **(training_overrides or {})},
        seed, f"{modality}_logits", processor, callbacks,
    )
    splits = ("validation", "test")
    scores = _score(trainer, splits, utterances) if solver == "lbfgs" else _fit(trainer, splits, utterances)
    results = {"seed": seed, "modality": modality, "solver": solver, **scores,
               **selected_evaluation(trainer)}
    if trainer.is_world_process_zero():  # `_finish` hands the merged config to the other processes
        merged = trainer.model
        if not functionals:
            save_whole(output_dir / "adapter", trainer.model)
            trained = trainer.model
            if load_in_bits:  # merged into quantized weights the adapters would be re-quantized: use a bf16 backbone
                trained = load_lora(build(dtype=dtype or torch.bfloat16), output_dir / "adapter")
            merged = merge_lora(trained)
        save_whole(output_dir / "merged", merged, processor)
        results["config"] = json.loads(merged.config.to_json_string())
    return _finish(trainer, results, keep_checkpoints)


def _check_solver(solver: str | None, functionals: bool, modality: str, training_overrides, l2) -> str:
    """The solver `train_encoder` uses (`lbfgs` by default for functionals), refused with its settings before any
    weight loads when they do not go together."""
    solver = solver or ("lbfgs" if functionals else "trainer")
    allowed = ("lbfgs", "trainer") if functionals else ("trainer",)
    if solver not in allowed:
        raise ValueError(f"`solver` must be one of {allowed} for this {modality} encoder, got {solver!r} (L-BFGS fits "
                         "the head of openSMILE functionals encoders only).")
    if solver == "lbfgs" and training_overrides:
        raise ValueError(f"Training fields {sorted(training_overrides)} set the Trainer's epochs, but the functionals "
                         "head is fitted by L-BFGS (the default for openSMILE backbones): pass solver 'trainer' "
                         "(`--solver trainer`) to train it in epochs, or drop them.")
    if l2 is not None and solver != "lbfgs":
        raise ValueError("`l2` is the L2 strength of solver 'lbfgs'; the Trainer's is `weight_decay`.")
    if l2 is not None:
        check_l2(l2)  # before any feature is computed
    return solver


def save_frozen_encoder(
    dataset: DatasetDict,
    modality: str,
    output_dir: str | os.PathLike,
    processor: Any,
    backbone: str | os.PathLike,
    config_overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A stage-1 folder without training (`output_dir/merged`): the pretrained backbone with seeded, untrained heads,
    for `extract --embedding backbone_mean` or `backbone_layers` (frozen-feature baselines); openSMILE functionals get
    their training-split standardisation. Written whole under a temporary name, then renamed into place."""
    if modality not in MODALITIES:
        raise ValueError(f"`modality` must be one of {MODALITIES}, got {modality!r}.")
    require_splits(dataset)
    set_seed(seed)
    model = MisterEForUtteranceClassification.from_backbones(
        **{modality: str(backbone)}, id2label=dict(enumerate(label_names(dataset["train"]))), **(config_overrides or {})
    ).eval()
    if isinstance(getattr(model, f"{modality}_encoder"), MisterEFunctionalsEncoder):
        fit_functionals_statistics(model, processor, flatten_utterances(dataset["train"], modality))
    return save_whole(Path(output_dir) / "merged", model, processor)


def save_whole(folder: Path, *parts) -> Path:
    """Save `parts` (a model, a processor; `None` skipped) into `folder` whole or not at all: written into
    `<folder>.tmp`, then renamed, so a run killed while saving leaves no folder that loads without its processor."""
    partial = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(partial, ignore_errors=True)
    for part in parts:
        if part is not None:
            part.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def processor_for(modality: str, backbone: str, tokenizer: str | None):
    """A `MisterEProcessor` for one encoder: the backbone's own preprocessing, a stand-in for the other modality."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, Wav2Vec2FeatureExtractor

    from ..backbones import DEFAULT_TEXT_BACKBONE, resolve_backbone
    from ..configuration_mister_e import MisterEOpenSmileConfig
    from ..feature_extraction_mister_e import MisterEFunctionalsFeatureExtractor
    from ..processing_mister_e import MisterEProcessor

    if modality == "speech":
        functionals = MisterEOpenSmileConfig.from_backbone_name(backbone)
        feature_extractor = (MisterEFunctionalsFeatureExtractor(functionals.feature_set) if functionals
                             else AutoFeatureExtractor.from_pretrained(backbone))
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(tokenizer or DEFAULT_TEXT_BACKBONE))
    else:
        feature_extractor, tokenizer = Wav2Vec2FeatureExtractor(), AutoTokenizer.from_pretrained(backbone)
    return MisterEProcessor(feature_extractor, tokenizer)


