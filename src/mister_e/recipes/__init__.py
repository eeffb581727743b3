"""Recipes: the packaged YAML files of stage-2 settings (`<name>.yaml`) and of the ablations (`ablations.yaml`), and the
one loader that applies overrides to them. Light on purpose: the CLI reads the ablation names from here to build its
`--help` without importing the training stack.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..configuration_mister_e import MODALITIES, MisterEConfig

ABLATIONS_FILE = "ablations.yaml"
PAPER_TRAINING_FILE = "paper_training.yaml"
_NOT_RECIPES = (ABLATIONS_FILE, PAPER_TRAINING_FILE)
# Named MisterEConfig overrides; `run_ablations` trains each into its own folder.
ABLATIONS: dict[str, dict[str, Any]] = yaml.safe_load((resources.files(__name__) / ABLATIONS_FILE).read_text())
# The authors' stage-2 optimisation (`TrainingArguments` fields): every recipe's training starts from it.
PAPER_TRAINING: dict[str, Any] = yaml.safe_load((resources.files(__name__) / PAPER_TRAINING_FILE).read_text())
RECIPE_KEYS = ("name", "dataset", "output_dir", "seeds", "modalities", "modality_dropout", "gate_learning_rate",
               "early_stopping_patience", "config", "training")
# Recipe keys that go to `train_conversation_model` as they are, and their defaults (the paper's behaviour).
RECIPE_OPTIONS = {"modality_dropout": 0.0, "gate_learning_rate": None, "early_stopping_patience": None}


@functools.cache
def training_fields() -> frozenset[str]:
    """`MisterETrainingArguments` field names (imported on first use: it pulls in accelerate)."""
    from ..training.trainer import MisterETrainingArguments

    return frozenset(field.name for field in dataclasses.fields(MisterETrainingArguments) if field.init)


def route(key: str) -> tuple[str, ...]:
    """Where an override goes: `config.x`/`training.x` as written, a recipe key, or the config/training field named."""
    section, _, field = key.partition(".")
    if field and section in ("config", "training"):
        return section, field
    if key in RECIPE_KEYS:
        return (key,)
    if key in MisterEConfig.__dataclass_fields__:
        return "config", key
    if key in training_fields():
        return "training", key
    raise ValueError(
        f"{key!r} is neither a recipe key {list(RECIPE_KEYS)}, a MisterEConfig field nor a TrainingArguments field."
    )


def load_recipe(name_or_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A training recipe: a packaged name (`iemocap`, `meld`, `mosi`, `small`) or a YAML file, with overrides applied;
    its `training` starts from `PAPER_TRAINING`.

    Override keys are recipe keys (`dataset`, `seeds`, ...), `MisterEConfig` or `TrainingArguments` field names, or
    explicit `config.<field>` / `training.<field>`.
    """
    path = Path(name_or_path)
    if not path.is_file():
        path = resources.files(__name__) / f"{name_or_path}.yaml"
        if not path.is_file():
            available = sorted(p.stem for p in path.parent.glob("*.yaml") if p.name not in _NOT_RECIPES)
            raise ValueError(f"No recipe named {name_or_path!r}; packaged recipes: {available}.")
    recipe = {"modalities": list(MODALITIES), **RECIPE_OPTIONS, "config": {},
              **(yaml.safe_load(path.read_text()) or {})}
    recipe["training"] = {**PAPER_TRAINING, **(recipe.get("training") or {})}
    for key, value in (overrides or {}).items():
        *sections, field = route(key)
        target = recipe
        for section in sections:
            target = target.setdefault(section, {})
        target[field] = value
    unknown = sorted(set(recipe) - set(RECIPE_KEYS) - {"ablation"})
    unknown += sorted(f"training.{key}" for key in set(recipe["training"]) - training_fields())
    unknown += sorted(f"config.{key}" for key in set(recipe["config"]) - set(MisterEConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Recipe {name_or_path!s} has unknown keys {unknown}.")
    # Wrong values fail now, naming their field, not after the data has loaded.
    MisterEConfig(**recipe["config"])
    check_checkpoint_budget(recipe["training"].get("checkpoint_budget", 0))
    check_half_life(recipe["training"].get("weight_average_half_life", 0))
    return recipe


def check_checkpoint_budget(budget: float) -> None:
    """`checkpoint_budget` (a share of training time, `training/checkpoints.py`) must lie in [0, 1)."""
    if not 0 <= budget < 1:
        raise ValueError(f"checkpoint_budget must be in [0, 1) (a share of training time), got {budget}.")


def check_half_life(half_life: float) -> None:
    """`weight_average_half_life` (epochs, `training/averaging.py`) must be a finite number >= 0 (0: off)."""
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not 0 <= half_life < math.inf:
        raise ValueError(f"weight_average_half_life must be a finite number of epochs >= 0 (0: off), got {half_life!r}.")


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """`key=value` pairs; values are YAML, so `0.1`, `true`, `[speech]` get their types, and so does `1e-5`, which
    YAML 1.1 reads as a string (it wants `1.0e-5`)."""
    overrides = {}
    for pair in pairs or ():
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        value = yaml.safe_load(text)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[key.strip()] = value
    return overrides



__all__ = ["ABLATIONS", "PAPER_TRAINING", "RECIPE_KEYS", "RECIPE_OPTIONS", "check_checkpoint_budget", "check_half_life",
           "load_recipe",
           "parse_sets", "route", "training_fields"]
