"""The validation search that chose which vector of the stage-1 LoRA MiniLM encoder stage 2 reads, per data set
(`bench/accuracy.py`'s `LORA_TEXT_EMBEDDING`). Test scores are never read.

    python bench/search_lora_input.py  # -> bench/results/search_lora_input.{json,md}

The encoders are the stage-1 search's runs of each data set's chosen schedule (`search_stage_one.py`, run it first).
Candidates: the trained 256-d projection (the paper's choice: the encoder's embedding) and every hidden state of the
fine-tuned backbone, mean-pooled and concatenated (`extract --embedding backbone_layers`, 2688-d), as the frozen
backbone's every layer won on MELD. The score is the validation weighted F1 of the recipe's model as
`bench/accuracy.py` trains it (MELD: MiSTER-E text-only; CMU-MOSI standard folds: full MiSTER-E), mean over seeds 0-2;
the BiGRU baseline on the same inputs is reported beside it, not used for the choice. Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import disable_progress_bars
from transformers.utils import logging as hf_logging

from mister_e import MisterEForUtteranceClassification
from mister_e.training import run_ablations

import accuracy
import baselines
import search_stage_one

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
CANDIDATES = ("projection", "backbone_layers")
RECIPE_MODEL = {"mosi-standard": "runs/full", "meld": "context"}  # where `recipe_model` trains, under each seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "search-lora-input")
    parser.add_argument("--encoders", type=Path, default=ROOT.parent / "runs" / "search-stage-one",
                        help="`search_stage_one.py`'s work folder.")
    parser.add_argument("--dataset", nargs="+", choices=list(RECIPE_MODEL), default=list(RECIPE_MODEL))
    args = parser.parse_args()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    minilm = accuracy.required_minilm()
    processor = accuracy.text_processor(minilm)
    for dataset in args.dataset:
        folder, build = search_stage_one.DATASETS[dataset]
        dialogues = build(args.data / folder)
        schedule = next(name for name, values in search_stage_one.CANDIDATES.items()
                        if values == accuracy.ENCODER_SCHEDULE[folder])  # the chosen one, under its search name
        for seed in SEEDS:
            encoder = search_stage_one.run_dir(args.encoders, dataset, schedule, seed) / "merged"
            if not encoder.is_dir():
                raise SystemExit(f"No stage-1 encoder at {encoder}: run `python bench/search_stage_one.py --dataset "
                                 f"{dataset} --candidates '{schedule}'` first.")
            merged = MisterEForUtteranceClassification.from_pretrained(encoder).eval()
            for embedding in CANDIDATES:
                work = args.work / dataset / embedding / f"seed_{seed}"
                embedded = accuracy.embed_text(dialogues, merged, processor, work, embedding)
                baselines.run_bigru(embedded, work / "bigru" / f"seed_{seed}", seed)
                recipe_model(dataset, embedded, work, seed)
    report(args.work)


def recipe_model(dataset: str, embedded, work: Path, seed: int) -> None:
    """Train the recipe's model of the data set as `bench/accuracy.py` does (into `work/<RECIPE_MODEL>/seed_X`)."""
    if dataset == "meld":
        accuracy.stage_two(embedded, work / "context" / f"seed_{seed}", accuracy.TEXT_ONLY, seed, ["text"], False)
    else:
        run_ablations(accuracy.small_recipe(False), ["full"], [seed], embedded, work / "runs")


def report(work: Path) -> None:
    """Validation weighted F1 of the recipe's model and of the BiGRU per data set and candidate, over the seeds."""
    results, lines = {}, []
    for dataset, model in RECIPE_MODEL.items():
        for embedding in CANDIDATES:
            for name, sub in (("MiSTER-E", model), ("BiGRU", "bigru")):
                paths = [work / dataset / embedding / f"seed_{seed}" / sub / f"seed_{seed}" / "results.json"
                         for seed in SEEDS]
                if all(path.is_file() for path in paths):
                    values = [100 * json.loads(path.read_text())["validation"]["weighted_f1"] for path in paths]
                    results.setdefault(dataset, {}).setdefault(embedding, {})[name] = {
                        "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)), "seeds": values}
        if dataset not in results or len(results[dataset]) < len(CANDIDATES):
            continue
        best = max(CANDIDATES, key=lambda embedding: results[dataset][embedding]["MiSTER-E"]["mean"])
        lines += [f"{dataset}:", "", "| stage-2 input | MiSTER-E (the choice) | BiGRU |", "|---|---|---|"]
        for embedding in CANDIDATES:
            cells = [f"{r['mean']:.1f} ± {r['std']:.1f}" for r in results[dataset][embedding].values()]
            lines.append(f"| {embedding}{' (best)' if embedding == best else ''} | {' | '.join(cells)} |")
        lines.append("")
    (ROOT / "results" / "search_lora_input.json").write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "results" / "search_lora_input.md").write_text(
        "Stage 2 on the LoRA MiniLM encoder's projection or its backbone's every layer: validation weighted F1 (%), "
        f"mean ± std over seeds {', '.join(map(str, SEEDS))}; (best): the higher MiSTER-E.\n\n" + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
