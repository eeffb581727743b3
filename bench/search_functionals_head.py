"""The validation search that chose how stage 1 fits an openSMILE functionals encoder (`FUNCTIONALS_L2` in
`src/mister_e/training/functionals.py`). Test speakers are never scored.

    python bench/search_functionals_head.py          # -> bench/results/search_functionals_head.{json,md}

On EmoDB's leave-one-speaker-out folds of `bench/emodb.py` (five speakers train, the validation speaker scores): the
full-batch L-BFGS fit of the encoder's head (`fit_functionals_head`) at each L2 strength, for ComParE and eGeMAPS,
seeds 0-2 (the head's initial weights), beside the logistic-regression reference on the same features. Score: mean
validation weighted F1 over folds and seeds; the Trainer's epochs are not a candidate here, because their own
validation score is the one they were selected on (optimistic by construction: 76 on validation, 64-67 on test).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import AutoTokenizer, set_seed

from mister_e import MisterEForUtteranceClassification, MisterEFunctionalsFeatureExtractor, MisterEProcessor
from mister_e.backbones import DEFAULT_TEXT_BACKBONE, resolve_backbone
from mister_e.data import EMODB_LABELS, build_emodb, emodb_folds
from mister_e.training import fit_functionals_head, speech_features

from emodb import reference_predictions

ROOT = Path(__file__).resolve().parent
FEATURE_SETS = ("ComParE_2016", "eGeMAPSv02")
L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
EMBED_DIM = 256  # bench/emodb.py's encoder width


def features_of(root: Path, feature_set: str, work: Path) -> dict[str, np.ndarray]:
    """Every EmoDB file's functionals (cached in `work`), labels and speakers, in file-name order."""
    cache = work / f"{feature_set}.npz"
    if not cache.is_file():
        dataset = build_emodb(root, conversation_size=1)
        rows = [row for split in dataset.values() for row in split]
        paths = [row["audio"][0] for row in rows]
        processor = MisterEProcessor(MisterEFunctionalsFeatureExtractor(feature_set),
                                     AutoTokenizer.from_pretrained(resolve_backbone(DEFAULT_TEXT_BACKBONE)))
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cache.with_suffix(".tmp.npz"), features=speech_features(processor, paths).numpy(),
                 labels=np.array([row["labels"][0] for row in rows]),
                 speakers=np.array([Path(path).name[:2] for path in paths]))
        cache.with_suffix(".tmp.npz").replace(cache)
    return dict(np.load(cache))


def head_score(data: dict, train: np.ndarray, validation: np.ndarray, feature_set: str, l2: float, seed: int) -> float:
    """Validation weighted F1 of the encoder fitted as `train_encoder(solver="lbfgs")` fits it."""
    set_seed(seed)
    model = MisterEForUtteranceClassification.from_backbones(
        speech=f"opensmile:{feature_set}", speech_embed_dim=EMBED_DIM, id2label=dict(enumerate(EMODB_LABELS))).eval()
    features = torch.from_numpy(data["features"])
    model.speech_encoder.standardizer.fit(features[train])
    fit_functionals_head(model.speech_encoder, features[train], data["labels"][train].tolist(), l2)
    with torch.no_grad():
        predicted = model.speech_encoder(features[validation], None)[1].argmax(-1).numpy()
    return 100 * f1_score(data["labels"][validation], predicted, average="weighted")


def reference_score(data: dict, train: np.ndarray, validation: np.ndarray) -> float:
    """Validation weighted F1 of `bench/emodb.py`'s logistic-regression reference."""
    predicted = reference_predictions(data["features"][train], data["labels"][train], data["features"][validation])
    return 100 * f1_score(data["labels"][validation], predicted, average="weighted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data" / "emodb")
    parser.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "search-functionals-head")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {}
    for feature_set in FEATURE_SETS:
        data = features_of(args.data, feature_set, args.work)
        scores = {}
        for test, validation_speaker in emodb_folds(sorted(set(data["speakers"]))):
            train = ~np.isin(data["speakers"], [test, validation_speaker])
            validation = data["speakers"] == validation_speaker
            scores.setdefault("reference: logistic regression C=0.1", []).append(
                reference_score(data, train, validation))
            for l2 in L2_GRID:
                for seed in SEEDS:
                    scores.setdefault(f"lbfgs l2={l2}", []).append(
                        head_score(data, train, validation, feature_set, l2, seed))
            print(feature_set, f"validation {validation_speaker} done", flush=True)
        results[feature_set] = {name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))}
                                for name, v in scores.items()}
    lines = ["| candidate | " + " | ".join(FEATURE_SETS) + " | mean |", "|---" * (len(FEATURE_SETS) + 2) + "|"]
    for name in results[FEATURE_SETS[0]]:
        means = [results[feature_set][name]["mean"] for feature_set in FEATURE_SETS]
        lines.append(f"| {name} | " + " | ".join(f"{results[f][name]['mean']:.1f} ± {results[f][name]['std']:.1f}"
                                                  for f in FEATURE_SETS) + f" | {np.mean(means):.1f} |")
    (ROOT / "results" / "search_functionals_head.json").write_text(json.dumps(results, indent=2) + "\n")
    (ROOT / "results" / "search_functionals_head.md").write_text(
        "Validation weighted F1 (%), mean ± std over 7 folds x 3 seeds (the reference: 7 folds).\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
