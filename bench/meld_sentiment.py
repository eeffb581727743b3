"""MELD-3 sentiment: a check of the `small` recipe on a task no search ever looked at.

    python bench/meld_sentiment.py            # -> bench/results/meld_sentiment.{json,md}
    python bench/meld_sentiment.py --quick    # harness check: subsets, 1 seed, 1 epoch, temp folders

Every choice of the recipe and of the text input was made on validation splits of MELD-7 emotions, CMU-MOSI and
EmoDB; MELD's utterances also carry a sentiment label (neutral / positive / negative), which nothing was tuned on.
The same utterances, the same frozen MiniLM input as MELD-7 (`accuracy.FROZEN_TEXT_EMBEDDING["meld"]`), the same
three models as `accuracy.py`'s MELD table (the BiGRU baseline, MiSTER-E text-only without and with context), the
epoch selected on the dev split, scored once on test. A figure that holds only where the recipe was tuned would
show here.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

from datasets import ClassLabel, DatasetDict, List, disable_progress_bars
from transformers.utils import logging as hf_logging

import accuracy
from mister_e.data import build_meld_csv

SENTIMENTS = ("neutral", "positive", "negative")
CSV_FILES = {"train": "train_sent_emo.csv", "validation": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}


def sentiments(root: Path) -> dict[str, dict[str, int]]:
    """Per split, utterance id (as `build_meld_csv` names it: `dia{D}_utt{U}`) -> sentiment class."""
    found = {}
    for split, name in CSV_FILES.items():
        with open(root / name, newline="", encoding="utf-8") as handle:
            found[split] = {f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}": SENTIMENTS.index(row["Sentiment"])
                            for row in csv.DictReader(handle)}
    return found


def relabelled(dataset: DatasetDict, root: Path) -> DatasetDict:
    """The embedded MELD-7 dialogues with their sentiment labels in place of the emotions (the embeddings do not
    depend on labels, so MELD-7's extraction serves both)."""
    labels = sentiments(root)
    parts = {}
    for split, part in dataset.items():
        part = part.map(lambda row: {"labels": [labels[split][u] for u in row["utterance_ids"]]})
        parts[split] = part.cast_column("labels", List(ClassLabel(names=list(SENTIMENTS))))
    return DatasetDict(parts)


def run(data: Path, work: Path, seeds, quick: bool) -> dict:
    dialogues = build_meld_csv(data)
    if quick:
        dialogues = accuracy.subset(dialogues, 12)
    id2label = dict(enumerate(dialogues["train"].features["labels"].feature.names))
    minilm = accuracy.required_minilm()
    embedding = accuracy.FROZEN_TEXT_EMBEDDING["meld"]
    embedded = accuracy.embed_text(dialogues, accuracy.frozen_minilm(minilm, id2label),
                                   accuracy.text_processor(minilm), work / f"frozen-{embedding}", embedding)
    dataset = relabelled(embedded, data)
    runs = {name: [] for name in ("bigru", *accuracy.TEXT_MODELS)}
    for seed in seeds:
        for name, result in accuracy.text_models(dataset, work, seed, quick).items():
            runs[name].append(result)
    return {"seeds": list(seeds), "quick": quick, "embedding": embedding,
            "labels": {split: [sum(row.count(k) for row in part["labels"]) for k in range(len(SENTIMENTS))]
                       for split, part in dataset.items()},
            "summaries": {name: accuracy.summary(seed_runs) for name, seed_runs in runs.items()}}


def markdown(results: dict) -> str:
    summaries = results["summaries"]
    lines = [f"Seeds {results['seeds']}; mean ± sample std; selection on dev only.\n",
             "| metric | BiGRU baseline | no-context classifier | MiSTER-E text-only (text expert + context) |",
             "|---|---|---|---|"]
    for metric in ("test/weighted_f1", "test/accuracy", "validation/weighted_f1"):
        lines.append(f"| {metric} | " + " | ".join(accuracy.cell(summaries[name], metric)
                                                   for name in ("bigru", *accuracy.TEXT_MODELS)) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=accuracy.ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=accuracy.ROOT.parent / "runs" / "bench-meld-sentiment",
                        help="Runs, caches and datasets (reused by a rerun).")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(accuracy.SEEDS))
    parser.add_argument("--quick", action="store_true", help="Harness check: subsets, 1 seed, 1 epoch, temp folders.")
    args = parser.parse_args()
    meld = args.data / "meld"
    if not (meld / CSV_FILES["train"]).is_file():
        raise SystemExit(f"No MELD CSVs at {meld}.")
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    if args.quick:
        os.environ["TQDM_DISABLE"] = "1"
        with tempfile.TemporaryDirectory() as work:
            print(markdown(run(meld, Path(work), args.seeds[:1], True)))
        return
    results = run(meld, args.work, args.seeds, False)
    path = accuracy.ROOT / "results" / "meld_sentiment.json"
    path.write_text(json.dumps(results, indent=2))
    path.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
