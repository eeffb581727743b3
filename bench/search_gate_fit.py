"""Should the gate be fitted on the experts' out-of-fold predictions (cross-fitting) rather than jointly? Validation only.

    python bench/search_gate_fit.py        # -> bench/results/search_gate_fit.{json,md}

The recipe trains the gate jointly with the experts, so it learns whom to trust from the experts' predictions on their
own training conversations. The candidate fits the gate instead (`fit_gate`, full batch) on out-of-fold
predictions: the training conversations are cut into `FOLDS` groups, the recipe trains a model without each
group (same seed) and predicts it. Both gates then weigh the same experts: those of one 40-epoch run of the recipe,
every epoch's validation predictions recorded (`search_selection.record`). The jointly trained gate is that run's own;
the cross-fitted one is applied to each epoch's expert predictions. An epoch is picked on half of the validation
conversations (weighted F1, the recipe's early stopping) and scored on the other half (`search_selection`'s split-half
check), so neither gate is judged on the data that picked its epoch; the experts alone are scored the same way.
Test is never read. (The fold models pick their epoch on the validation split, as every model of the recipe does, so
the cross-fitted gate has seen validation through that choice alone.)

Reads the datasets of `bench/accuracy.py`'s CMU-MOSI runs (run it first): the only data sets where the gate has two
useful experts to weigh (MELD is text only; EmoDB's text carries no emotion and gets 0.00 already).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict, disable_progress_bars, load_from_disk
from torch import nn
from transformers.utils import logging as hf_logging

from mister_e import MisterEForEmotionRecognition
from mister_e.configuration_mister_e import EXPERTS
from mister_e.experts_mister_e import MisterEGate, available_experts, mix_experts, weigh_experts
from mister_e.training import predict_split, train_recipe
from mister_e.training.collator import MisterEDataCollator

import accuracy
from search_selection import CRITERIA, SPLITS, held_out_scores, record

ROOT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
FOLDS = 5
SELECTION = {"weighted_f1": CRITERIA["weighted_f1"]}  # the recipe's criterion
DATASETS = ("standard", "release")


# L2 strength of the gate's full-batch fit (its two weight matrices; biases free): a first look on the same runs gave
# 0.01 and 0.1 the same validation scores and 0.001 slightly lower ones.
GATE_L2 = 1e-2


def gate_folds(dataset: DatasetDict, seed: int) -> list[DatasetDict]:
    """`FOLDS` copies of the dataset, each with one group of the training conversations (drawn with `seed`) moved out
    of `train` into `held_out`."""
    train = dataset["train"]
    groups = np.array_split(np.random.default_rng(seed).permutation(len(train)), FOLDS)
    return [DatasetDict(train=train.select(np.sort(np.concatenate(groups[:k] + groups[k + 1:]))),
                        validation=dataset["validation"], held_out=train.select(np.sort(group)))
            for k, group in enumerate(groups)]


def masked(config, expert_logits: np.ndarray, modality_mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Recorded expert logits `(..., experts, classes)`, zero where an expert cannot answer (as the model masks
    them), and which experts can."""
    mask = torch.from_numpy(modality_mask).bool()
    available = available_experts(mask[..., 0], mask[..., 1], config.expert_mask)
    return torch.from_numpy(expert_logits).float() * available[..., None], available


def fit_gate(gate: MisterEGate, config, held_out: dict, seed: int) -> None:
    """Fit `gate` from a fresh (seeded) initialisation to the mixture's likelihood of the held-out utterances' labels
    given their out-of-fold expert logits: full batch by L-BFGS, + `GATE_L2 / 2` x its squared weights."""
    logits, available = masked(config, held_out["expert_logits"], held_out["modality_mask"])
    labels = torch.from_numpy(held_out["labels"]).long()
    torch.manual_seed(seed)
    linears = [layer for layer in gate.mlp if isinstance(layer, nn.Linear)]
    for layer in linears:
        layer.reset_parameters()
    optimizer = torch.optim.LBFGS(list(gate.parameters()), max_iter=200, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        mixture = mix_experts(config.mixture_space, weigh_experts("learned", gate, logits, available), logits)
        loss = nn.functional.cross_entropy(mixture, labels)
        loss = loss + GATE_L2 / 2 * sum(layer.weight.square().sum() for layer in linears)
        loss.backward()
        return loss

    optimizer.step(objective)


@torch.no_grad()
def gated(gate, config, expert_logits: np.ndarray, modality_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mixture's logits of `gate` over recorded expert predictions, and its weights."""
    logits, available = masked(config, expert_logits, modality_mask)
    weights = weigh_experts("learned", gate, logits, available)
    return mix_experts(config.mixture_space, weights, logits).numpy(), weights.numpy()


def out_of_fold(dataset: DatasetDict, work: Path, seed: int, collator) -> dict:
    """Every training utterance's expert logits from the recipe's model trained without its fold."""
    parts = []
    for k, fold in enumerate(gate_folds(dataset, seed)):
        folder = work / f"fold_{k}"
        train_recipe(accuracy.small_recipe(False), DatasetDict(train=fold["train"], validation=fold["validation"]),
                     folder, seed, report=False)
        model = MisterEForEmotionRecognition.from_pretrained(folder)
        parts.append(predict_split(model, fold["held_out"], collator, desc=f"fold {k}"))
    return {key: np.concatenate([part[key] for part in parts]) for key in ("expert_logits", "modality_mask", "labels")}


def compare(dataset: DatasetDict, work: Path, seed: int) -> dict:
    """Held-out weighted F1 of the joint gate, the cross-fitted gate and each expert alone, and the gates' weights."""
    held_out = out_of_fold(dataset, work, seed, MisterEDataCollator())
    config = MisterEForEmotionRecognition.from_pretrained(work / "fold_0").config
    gate = MisterEGate(config)
    fit_gate(gate, config, held_out, seed)
    data = np.load(record(dataset, work / "epochs", seed, ["speech", "text"]))
    cross_fitted, weights = gated(gate, config, data["expert_logits"], data["modality_mask"][None])
    series = {"joint gate (recipe)": data["logits"], "cross-fitted gate": cross_fitted,
              **{f"{expert} expert alone": data["expert_logits"][:, :, index]
                 for index, expert in enumerate(EXPERTS) if expert != "speech"}}
    scores = {name: held_out_scores(logits, data["labels"], data["dialogues"], seed, SELECTION)["weighted_f1"]
              for name, logits in series.items()}
    return {"held_out_weighted_f1": scores, "cross_fitted_gate_mean": weights.mean((0, 1)).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "bench-accuracy")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    path = ROOT / "results" / "search_gate_fit.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.datasets:
        dataset = load_from_disk(str(args.work / "mosi" / name / "dataset"))
        for seed in args.seeds:
            results[f"mosi-{name}/seed_{seed}"] = compare(dataset, args.work / "search-gate-fit" / name
                                                          / f"seed_{seed}", seed)
            print(name, seed, json.dumps(results[f"mosi-{name}/seed_{seed}"]), flush=True)
    path.write_text(json.dumps(results, indent=2))
    (ROOT / "results" / "search_gate_fit.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    """Mean held-out weighted F1 per data set over its seeds; beside the cross-fitted gate's, its paired difference
    from the joint gate's (mean ± std over seeds)."""
    names = sorted({key.split("/")[0] for key in results})
    series = list(next(iter(results.values()))["held_out_weighted_f1"])
    lines = [f"Held-out weighted F1 (%), mean over seeds, {SPLITS} halvings of validation each way; in brackets the "
             "paired difference from the joint gate.\n", "| gate | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for name in series:
        cells = []
        for data_set in names:
            runs = [run["held_out_weighted_f1"] for key, run in results.items() if key.startswith(data_set + "/")]
            cell = f"{100 * np.mean([run[name] for run in runs]):.1f}"
            if name != series[0]:
                gaps = 100 * np.array([run[name] - run[series[0]] for run in runs])
                cell += f" ({gaps.mean():+.1f} ± {gaps.std(ddof=1) if len(gaps) > 1 else 0:.1f})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    gates = {data_set: np.mean([run["cross_fitted_gate_mean"] for key, run in results.items()
                                if key.startswith(data_set + "/")], 0) for data_set in names}
    lines.append("\nThe cross-fitted gate's mean validation weights (speech / text / cross-modal): "
                 + "; ".join(f"{name} {' / '.join(f'{w:.2f}' for w in weights)}" for name, weights in gates.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
