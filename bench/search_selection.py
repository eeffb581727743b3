"""Which validation criterion should pick stage 2's epoch? A split-half check on validation only (test never read).

    python bench/search_selection.py        # -> bench/results/search_selection.{json,md}

Stage 2 keeps the epoch with the best validation weighted F1 (early stopping, patience 10, up to 40 epochs). On small
validation splits (CMU-MOSI: 229 utterances in ~10 videos; EmoDB: one speaker, ~50) that maximum is partly noise:
a criterion that varies more smoothly with the model's quality, such as the mixture's log loss on validation, may
pick epochs that generalise better. A criterion cannot be judged on the validation data it selected on (the best
weighted F1 always wins there), so each is judged on validation conversations it did not see: the validation
conversations are split into random halves, the criterion picks an epoch on one half (with the recipe's early
stopping), and the other half scores that epoch's weighted F1; both ways round, `SPLITS` splits.

The runs: the `small` recipe without early stopping (all 40 epochs), on the training and validation splits only,
recording every epoch's validation logits, the mixture's and each expert's (`validation_logits.npz` in the run
folder; recordings made before the experts' were added hold the mixture's only), on the frozen-MiniLM data sets
`bench/accuracy.py` prepares (run it first): CMU-MOSI standard and release (speech + text), MELD-7 (text only, every
layer) and EmoDB (speech + emotion-free text, 7 leave-one-speaker-out folds).

Outcome (BENCHMARKS.md): no criterion leads everywhere; the recipe keeps weighted F1, and EmoDB, whose validation is one
speaker and where log loss led beyond its spread, selects on log loss (`emodb.SELECTION`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from datasets import DatasetDict, disable_progress_bars, load_from_disk
from transformers import AutoTokenizer, TrainerCallback
from transformers.utils import logging as hf_logging

from mister_e import MisterEForUtteranceClassification, MisterEFunctionalsFeatureExtractor, MisterEProcessor
from mister_e.data import build_emodb, emodb_folds
from mister_e.evaluation import log_loss
from mister_e.extraction import extract_embeddings
from mister_e.training import load_recipe, predict_split, train_recipe
from mister_e.training.collator import MisterEDataCollator

import accuracy
import emodb as emodb_bench

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
SPLITS = 200
PATIENCE = 10  # the recipe's early stopping
DATASETS = {"mosi-standard": "mosi/standard/dataset", "mosi-release": "mosi/release/dataset",
            "meld": "meld/frozen-backbone_layers/dataset"}


def weighted_f1(logits: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's `f1_score(average="weighted")` of the argmax, in numpy (it runs ~10^5 times here)."""
    predicted, classes = logits.argmax(-1), logits.shape[-1]
    support = np.bincount(labels, minlength=classes)
    both = support + np.bincount(predicted, minlength=classes)  # 2 TP + FP + FN
    true_positives = np.bincount(labels[predicted == labels], minlength=classes)
    f1 = np.divide(2 * true_positives, both, out=np.zeros(classes), where=both > 0)
    return float((f1 * support).sum() / support.sum())


def per_epoch(score):
    """A criterion from a per-epoch score of the selecting half's logits (higher is better)."""
    return lambda logits, labels: np.array([score(epoch, labels) for epoch in logits])


def smoothed(criterion, width: int = 3):
    """`criterion` averaged over a window of `width` epochs centred on each (shorter at the ends)."""
    def windowed(logits, labels):
        scores = criterion(logits, labels)
        return np.array([scores[max(0, e - width // 2): e + width // 2 + 1].mean() for e in range(len(scores))])
    return windowed


# criterion -> per-epoch scores of the selecting half (higher is better); early stopping runs on them
CRITERIA = {
    "weighted_f1": per_epoch(weighted_f1),
    "weighted_f1, 3-epoch mean": smoothed(per_epoch(weighted_f1)),
    "log_loss": per_epoch(lambda logits, labels: -log_loss(logits, labels)),
    "accuracy": per_epoch(lambda logits, labels: float((logits.argmax(-1) == labels).mean())),
    "none (the last epoch)": lambda logits, labels: np.arange(len(logits)),  # a reference: no selection at all
}


class ValidationLogits(TrainerCallback):
    """Every epoch's validation logits, labels and conversation of each utterance (the model without any dropout)."""

    def __init__(self, validation, modalities):
        self.validation, self.collator, self.epochs = validation, MisterEDataCollator(modalities=modalities), {}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self.epochs:  # not the selected model's scoring after training
            self.epochs[state.global_step] = predict_split(model, self.validation, self.collator)
        model.train()


def record(dataset: DatasetDict, output_dir: Path, seed: int, modalities) -> Path:
    """One 40-epoch run of the recipe, its validation logits per epoch (reused when recorded)."""
    path = output_dir / "validation_logits.npz"
    if path.is_file():
        return path
    recipe = load_recipe("small", {"early_stopping_patience": None, "modalities": list(modalities)})
    if modalities == ["text"]:
        recipe["config"]["experts"] = ["text"]
    recorder = ValidationLogits(dataset["validation"], modalities)
    train_recipe(recipe, DatasetDict(train=dataset["train"], validation=dataset["validation"]), output_dir, seed,
                 callbacks=[recorder], report=False)
    steps = sorted(recorder.epochs)
    first = recorder.epochs[steps[0]]
    np.savez(path.with_suffix(".tmp.npz"), logits=np.stack([recorder.epochs[s]["logits"] for s in steps]),
             expert_logits=np.stack([recorder.epochs[s]["expert_logits"] for s in steps]),
             modality_mask=first["modality_mask"], labels=first["labels"], dialogues=first["dialogue_ids"].astype(str))
    path.with_suffix(".tmp.npz").rename(path)
    return path


def selected_epoch(scores: np.ndarray) -> int:
    """The epoch early stopping (patience `PATIENCE`, strict improvement) would keep on these per-epoch scores."""
    best, waited = 0, 0
    for epoch in range(1, len(scores)):
        if scores[epoch] > scores[best]:
            best, waited = epoch, 0
        else:
            waited += 1
            if waited >= PATIENCE:
                break
    return best


def held_out_scores(logits: np.ndarray, labels: np.ndarray, dialogues: np.ndarray, seed: int,
                    criteria=CRITERIA) -> dict[str, float]:
    """Each criterion's mean weighted F1 on the half it did not select on, over `SPLITS` random halvings of the
    validation conversations (`logits`: per epoch, `(epochs, utterances, classes)`)."""
    names = np.unique(dialogues)
    rng = np.random.default_rng(seed)
    scores = {name: [] for name in criteria}
    for _ in range(SPLITS):
        half = np.isin(dialogues, rng.permutation(names)[: len(names) // 2])
        for selecting, scoring in ((half, ~half), (~half, half)):
            for name, criterion in criteria.items():
                epoch = selected_epoch(criterion(logits[:, selecting], labels[selecting]))
                scores[name].append(weighted_f1(logits[epoch][scoring], labels[scoring]))
    return {name: float(np.mean(values)) for name, values in scores.items()}


def emodb_datasets(data: Path, work: Path, seed: int):
    """EmoDB's full-model data sets of `bench/emodb.py` (ComParE speech + MiniLM text), one per fold, from its caches."""
    root, minilm = data / "emodb", accuracy.required_minilm()
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    for test_speaker, validation_speaker in emodb_folds(emodb_bench.speakers(root)):
        fold = work / "emodb" / f"test_{test_speaker}"
        dialogues = build_emodb(root, test_speaker, validation_speaker, conversation_size=emodb_bench.CONVERSATION_SIZE)
        labels = dialogues["train"].features["labels"].feature.names
        processor = MisterEProcessor(MisterEFunctionalsFeatureExtractor("ComParE_2016"), tokenizer)
        text = extract_embeddings(dialogues, accuracy.frozen_minilm(minilm, dict(enumerate(labels))), processor,
                                  fold / "text-cache", embedding="backbone_mean")
        encoder = MisterEForUtteranceClassification.from_pretrained(fold / f"seed_{seed}" / "encoder-ComParE_2016"
                                                                     / "merged").eval()
        yield f"test_{test_speaker}", extract_embeddings(text, encoder, processor,
                                                         emodb_bench.speech_cache(fold, seed, "full/context"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "bench-accuracy")
    parser.add_argument("--only", nargs="+", choices=[*DATASETS, "emodb"], default=[*DATASETS, "emodb"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    search = args.work / "search-selection"
    results = {}
    for seed in args.seeds:
        for name in args.only:
            if name == "emodb":
                runs = [(f"emodb/{fold}", dataset, ["speech", "text"])
                        for fold, dataset in emodb_datasets(args.data, args.work, seed)]
            else:
                dataset = load_from_disk(str(args.work / DATASETS[name]))
                modalities = ["speech", "text"] if "speech_embeds" in dataset["train"].column_names else ["text"]
                runs = [(name, dataset, modalities)]
            for run_name, dataset, modalities in runs:
                data = np.load(record(dataset, search / run_name / f"seed_{seed}", seed, modalities))
                results.setdefault(name, []).append(held_out_scores(data["logits"], data["labels"],
                                                                    data["dialogues"], seed))
    path = ROOT / "results" / "search_selection.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    payload = {"seeds": args.seeds, "splits": SPLITS, "patience": PATIENCE,
               "runs": {**previous.get("runs", {}), **results}}  # data set -> per run: criterion -> held-out F1
    path.write_text(json.dumps(payload, indent=2))
    (ROOT / "results" / "search_selection.md").write_text(markdown(payload))
    print(markdown(payload))


def markdown(payload: dict) -> str:
    """Mean held-out weighted F1 per data set; beside each criterion's, its paired difference from the recipe's
    (`weighted_f1`) over the same runs and halvings, mean ± std over runs."""
    runs = payload["runs"]
    names = list(runs)
    lines = [f"Held-out weighted F1 (%), mean over runs (seeds {payload['seeds']}; EmoDB: 7 folds each), "
             f"{payload['splits']} halvings of validation each way; in brackets the difference from `weighted_f1`.\n",
             "| criterion | " + " | ".join(names) + " | mean |", "|---" * (len(names) + 2) + "|"]
    for criterion in CRITERIA:
        cells, means = [], []
        for name in names:
            scores = np.array([row[criterion] for row in runs[name]])
            difference = 100 * (scores - np.array([row["weighted_f1"] for row in runs[name]]))
            means.append(100 * scores.mean())
            cells.append(f"{means[-1]:.1f}" + ("" if criterion == "weighted_f1"
                                               else f" ({difference.mean():+.1f} ± {difference.std(ddof=1):.1f})"))
        lines.append(f"| {criterion} | " + " | ".join(cells) + f" | {np.mean(means):.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
