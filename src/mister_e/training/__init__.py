"""Training and evaluation of MiSTER-E with the 🤗 `Trainer`.

- `collator`: dialogue rows -> batches, for both stages (stage 1 sees one-utterance conversations).
- `trainer`: the Trainer class and its arguments.
- `fitting`: building and running it for a data set: the stages' defaults, resuming, scoring the splits, finishing a
  run (`results.json`, then checkpoints deleted), and the config fields the data decides.
- `stage_one`: an utterance encoder fine-tuned as an emotion classifier (`lora`, `quantization` beside it;
  `functionals`: the openSMILE functionals encoder's statistics and full-batch head fit).
- `stage_two`: MiSTER-E on dialogues of embeddings; over seeds; the ablations of `mister_e.recipes`.
- `evaluate`: a trained model's report and robustness curve on a split.
- `memory_plan`: parameters and per-GPU memory of the paper-scale stage 1, without weights (`mister-e plan`).

Everything public is importable from `mister_e.training`.
"""

from ..configuration_mister_e import MODALITIES
from ..recipes import ABLATIONS, load_recipe
from .collator import GATE_HOLDOUT_COLUMN, MisterEDataCollator, drop_modalities, flatten_utterances
from .evaluate import evaluate_model, predict_split
from .functionals import fit_functionals_head, fit_functionals_statistics, speech_features
from .stage_one import save_frozen_encoder, train_encoder
from .stage_two import (
    apply_ablation,
    fit_input_statistics,
    run_ablations,
    train_conversation_model,
    train_recipe,
    train_seeds,
    useful_modality_dropout,
    with_gate_holdout,
)
from .runs import check_run, data_identity, finished_results, last_checkpoint, record_run
from .fitting import CONVERSATION_TRAINING_DEFAULTS, ENCODER_TRAINING_DEFAULTS, build_trainer, label_names
from .trainer import MisterETrainer

__all__ = [
    "ABLATIONS",
    "CONVERSATION_TRAINING_DEFAULTS",
    "ENCODER_TRAINING_DEFAULTS",
    "GATE_HOLDOUT_COLUMN",
    "MODALITIES",
    "MisterEDataCollator",
    "MisterETrainer",
    "apply_ablation",
    "build_trainer",
    "check_run",
    "data_identity",
    "drop_modalities",
    "evaluate_model",
    "fit_functionals_head",
    "fit_functionals_statistics",
    "finished_results",
    "fit_input_statistics",
    "flatten_utterances",
    "label_names",
    "last_checkpoint",
    "load_recipe",
    "predict_split",
    "record_run",
    "run_ablations",
    "save_frozen_encoder",
    "speech_features",
    "train_conversation_model",
    "train_encoder",
    "train_recipe",
    "train_seeds",
    "useful_modality_dropout",
    "with_gate_holdout",
]
