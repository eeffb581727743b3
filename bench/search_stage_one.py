"""The validation search that chose stage 1's schedule for the LoRA MiniLM text encoder per data set
(`bench/accuracy.py`'s `ENCODER_SCHEDULE`). Test scores are never read.

    python bench/search_stage_one.py                 # CMU-MOSI -> bench/results/search_stage_one.{json,md}
    python bench/search_stage_one.py --dataset meld  # MELD's candidates (15-40 min a run here)

Each candidate (learning rate x epochs; the best validation epoch is kept, as `train_encoder` does) trains the stage-1
text classifier exactly as `bench/accuracy.py` does; the score is its validation weighted F1 (MELD dev; CMU-MOSI's
standard "valid" fold). The first candidate is the schedule set on MELD dev before (2 epochs of lr 2e-4): CMU-MOSI has
a tenth of MELD's training utterances (1284), so there its two epochs are 82 steps. Finished runs are reused, and
every data set's finished runs are reported, whatever `--dataset` trains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import disable_progress_bars
from transformers.utils import logging as hf_logging

from mister_e.data import build_meld_csv, build_mosi

import accuracy

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
DATASETS = {"mosi-standard": ("mosi", lambda root: build_mosi(root, acoustic=True)), "meld": ("meld", build_meld_csv)}
CANDIDATES = {
    "2 epochs, lr 2e-4 (the first)": dict(learning_rate=2e-4, num_train_epochs=2),
    "2 epochs, lr 5e-4": dict(learning_rate=5e-4, num_train_epochs=2),
    "4 epochs, lr 2e-4": dict(learning_rate=2e-4, num_train_epochs=4),
    "5 epochs, lr 5e-4": dict(learning_rate=5e-4, num_train_epochs=5),
    "5 epochs, lr 1e-3": dict(learning_rate=1e-3, num_train_epochs=5),
    "10 epochs, lr 5e-4": dict(learning_rate=5e-4, num_train_epochs=10),
}
# The candidates searched per data set (a rerun repeats that search rather than widening it).
SEARCHED = {
    "mosi-standard": ("2 epochs, lr 2e-4 (the first)", "5 epochs, lr 5e-4", "5 epochs, lr 1e-3", "10 epochs, lr 5e-4"),
    "meld": ("2 epochs, lr 2e-4 (the first)", "2 epochs, lr 5e-4", "4 epochs, lr 2e-4"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "search-stage-one")
    parser.add_argument("--dataset", choices=list(DATASETS), default="mosi-standard")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        help="Default: the data set's searched candidates (`SEARCHED`).")
    args = parser.parse_args()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    minilm = accuracy.required_minilm()
    folder, build = DATASETS[args.dataset]
    dialogues = build(args.data / folder)
    processor = accuracy.text_processor(minilm)
    for name in args.candidates or SEARCHED[args.dataset]:
        for seed in args.seeds:
            accuracy.stage_one(dialogues, run_dir(args.work, args.dataset, name, seed), minilm, processor, seed,
                               CANDIDATES[name])
    report(args.work)


def run_dir(work: Path, dataset: str, candidate: str, seed: int) -> Path:
    return work / dataset / "-".join(f"{key}={value}" for key, value in CANDIDATES[candidate].items()) / f"seed_{seed}"


def report(work: Path) -> None:
    """Every finished run's validation score, per data set and candidate (mean ± std over its seeds)."""
    results, lines = {}, []
    for dataset in DATASETS:
        for name in CANDIDATES:
            scores = {seed: 100 * json.loads(path.read_text())["validation"]["weighted_f1"] for seed in SEEDS
                      if (path := run_dir(work, dataset, name, seed) / "results.json").is_file()}
            if scores:
                values = list(scores.values())
                results.setdefault(dataset, {})[name] = {"mean": float(np.mean(values)), "seeds": scores,
                                                         "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}
        if dataset not in results:
            continue
        # The best among the candidates run on the most seeds: a one-seed pilot is not compared with 3-seed means.
        most = max(len(r["seeds"]) for r in results[dataset].values())
        best = max((name for name, r in results[dataset].items() if len(r["seeds"]) == most),
                   key=lambda name: results[dataset][name]["mean"])
        lines += [f"{dataset}:", "", "| candidate | seeds | validation weighted F1 |", "|---|---|---|"]
        for name, r in results[dataset].items():
            spread = f" ± {r['std']:.1f}" if r["std"] is not None else ""
            lines.append(f"| {name}{' (best)' if name == best else ''} | {', '.join(map(str, r['seeds']))} | "
                         f"{r['mean']:.1f}{spread} |")
        lines.append("")
    (ROOT / "results" / "search_stage_one.json").write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "results" / "search_stage_one.md").write_text(
        "Stage-1 LoRA MiniLM text classifier: validation weighted F1 (%), mean ± std over seeds; (best): the best of the "
        "candidates run on the most seeds.\n\n"
        + "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
