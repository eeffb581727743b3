"""Recipes: the packaged YAML files of stage-2 settings (`<name>.yaml`) and of the ablations (`ablations.yaml`), and the
one loader that applies overrides to them. Light on purpose: the CLI reads the ablation names from here to build its
`--help` without importing the training stack.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

from ..configuration_mister_e import MODALITIES, MisterEConfig
from ..summaries import SCALAR_METRICS

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
# What `scores.compute_metrics` reports on validation (plus the Trainer's `loss`): what a model can be selected on.
SELECTION_METRICS = (*SCALAR_METRICS, "log_loss", "loss")
# The types a training field's value is checked against, and how a message names them.
_BASIC_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
# The packages (any one of them) the Trainer's logging integrations need, by `report_to` name: `none`, `all` (the
# installed ones) and kubeflow (an environment variable, no package) need none.
_LOGGER_PACKAGES = {"azure_ml": ("azureml",), "comet_ml": ("comet_ml",), "mlflow": ("mlflow",),
                    "neptune": ("neptune",), "tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",),
                    "wandb": ("wandb",), "codecarbon": ("codecarbon",), "clearml": ("clearml",),
                    "dagshub": ("dagshub",), "flyte": ("flytekit",), "dvclive": ("dvclive",), "swanlab": ("swanlab",)}
# Training fields below these train nothing or fail deep inside the Trainer.
# A `save_total_limit` below 1 kept every checkpoint (null's meaning); a negative `dataloader_num_workers` failed
# once the data had loaded.
_TRAINING_MINIMA = {"per_device_train_batch_size": 1, "per_device_eval_batch_size": 1,
                    "gradient_accumulation_steps": 1, "learning_rate": 0, "weight_decay": 0, "adam_epsilon": 0,
                    "save_total_limit": 1, "dataloader_num_workers": 0}
# Schedules that `transformers.get_scheduler` builds without `lr_scheduler_kwargs`: any given would change nothing.
_SCHEDULES_WITHOUT_ARGUMENTS = ("constant", "constant_with_warmup")
# Training fields in [0, 1): torch's optimizer refuses others once training starts, naming no field.
_TRAINING_FRACTIONS = ("adam_beta1", "adam_beta2")
# `MisterEConfig` fields a recipe cannot set: the classes come with the data (a renaming would train and report under
# the wrong names), and a stage-2 model reads embeddings (a backbone config gave it an encoder of random weights, built
# and saved but never read).
_REFUSED_CONFIG = {
    **dict.fromkeys(("id2label", "label2id", "num_labels"), "the classes come with the data (its label names, in "
                    "order); build the data with the names you want instead"),
    **{f"{modality}_config": f"stage 2 reads embeddings, so a {modality} backbone would have random weights and read "
                             "nothing: train it with `train-encoder`, `extract` its embeddings, and join it to the "
                             "trained model (`predict --encoder`)" for modality in MODALITIES},
}
# `TrainingArguments` fields the recipe sets otherwise: each seed seeds its run (`seeds`), the loss is MiSTER-E's
# (the Trainer's label smoother would silently replace it), and selection keeps the best validation epoch.
_REFUSED_TRAINING = {"seed": "each run's seed is given by --seeds (train) or --seed (train-encoder)",
                     "data_seed": "the data order follows each run's seed (--seeds, --seed)",
                     "label_smoothing_factor": "it would replace MiSTER-E's loss",
                     "greater_is_better": "the direction follows metric_for_best_model (lower for log_loss)"}


@functools.cache
def training_types() -> dict[str, Any]:
    """`MisterETrainingArguments` fields and their types (imported on first use: it pulls in accelerate)."""
    from ..training.trainer import MisterETrainingArguments

    hints = typing.get_type_hints(MisterETrainingArguments)
    return {field.name: hints[field.name] for field in dataclasses.fields(MisterETrainingArguments) if field.init}


def training_fields() -> frozenset[str]:
    """`MisterETrainingArguments` field names."""
    return frozenset(training_types())


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
    loaded = _load_yaml(path.read_bytes(), f"Recipe {path}")
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, Mapping):
        raise ValueError(f"Recipe {path} must be a mapping of recipe keys {list(RECIPE_KEYS)}, "
                         f"got a {type(loaded).__name__}.")
    for section in ("config", "training"):
        if loaded.get(section) is not None and not isinstance(loaded[section], Mapping):
            raise ValueError(f"Recipe {path}: `{section}` must be a mapping of field: value, got {loaded[section]!r}.")
    recipe = {"modalities": list(MODALITIES), **RECIPE_OPTIONS, **loaded, "config": dict(loaded.get("config") or {})}
    recipe["training"] = {**PAPER_TRAINING, **(loaded.get("training") or {})}
    for key in ("dataset", "output_dir"):  # `~/data` in a YAML file is the home folder's, as in a shell
        if isinstance(recipe.get(key), str):
            recipe[key] = os.path.expanduser(recipe[key])
    for key, value in (overrides or {}).items():
        *sections, field = route(key)
        if not sections and field in ("config", "training"):  # a whole section: its fields one by one instead
            raise ValueError(f"--set {key}=...: set its fields one by one ({key}.<field>=value), not the section.")
        target = recipe
        for section in sections:
            target = target.setdefault(section, {})
        target[field] = value
    refused = sorted(set(recipe["config"]) & _REFUSED_CONFIG.keys())
    if refused:
        raise ValueError(f"Recipe {name_or_path!s} sets config.{refused[0]}: {_REFUSED_CONFIG[refused[0]]}.")
    unknown = sorted(set(recipe) - set(RECIPE_KEYS) - {"ablation"}, key=str)
    unknown += sorted(f"training.{key}" for key in set(recipe["training"]) - training_fields())
    unknown += sorted(f"config.{key}" for key in set(recipe["config"]) - set(MisterEConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"Recipe {name_or_path!s} has unknown keys {unknown}.")
    # Wrong values fail now, naming their field, not after the data has loaded (which sets the embeddings' widths:
    # until then a text width that `text_layers` divides).
    layers = recipe["config"].get("text_layers", 1)
    width = 384 * layers if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0 else 384
    MisterEConfig(**{"text_embed_dim": width, **recipe["config"]})
    _check_recipe_values(recipe)
    recipe["training"] = check_training(recipe["training"])
    return recipe


def check_seeds(seeds: Any) -> None:
    """Seeds to train: a non-empty list of distinct integers >= 0 (a string would be iterated as seeds, and a repeat
    would count one run as several in the mean and std)."""
    _require(isinstance(seeds, (list, tuple)) and len(seeds) > 0
             and all(_is_integer(seed) and seed >= 0 for seed in seeds) and len(set(seeds)) == len(seeds),
             "seeds", "a non-empty list of distinct integers >= 0", seeds)


def _check_recipe_values(recipe: Mapping[str, Any]) -> None:
    """The recipe keys that reach training as they are: a wrong one would fail deep inside it (a string of seeds is
    even iterated as seeds)."""
    if "seeds" in recipe:  # else `train_seeds` is given them
        check_seeds(recipe["seeds"])
    for key in ("dataset", "output_dir"):  # else the command line gives them
        if key in recipe:
            _require(isinstance(recipe[key], (str, os.PathLike)) and str(recipe[key]) != "", key,
                     "a path (an empty one would be the working folder)" if key == "output_dir" else "a path",
                     recipe[key])
    _require(isinstance(recipe.get("name", ""), str), "name", "a string", recipe.get("name"))
    modalities = recipe["modalities"]
    _require(isinstance(modalities, (list, tuple)) and len(modalities) > 0 and all(m in MODALITIES for m in modalities),
             "modalities", f"a non-empty list of {list(MODALITIES)}", modalities)
    dropout = recipe["modality_dropout"]
    _require(_is_number(dropout) and 0 <= dropout < 1, "modality_dropout", "a number in [0, 1)", dropout)
    rate = recipe["gate_learning_rate"]
    _require(rate is None or _is_number(rate) and 0 < rate < math.inf, "gate_learning_rate",
             "a positive number or null (the experts' rate)", rate)
    patience = recipe["early_stopping_patience"]
    _require(patience is None or _is_integer(patience) and patience >= 1, "early_stopping_patience",
             "a positive integer or null (no early stopping)", patience)


def check_training(training: Mapping[str, Any]) -> dict[str, Any]:
    """`TrainingArguments` fields checked before any data or folder is touched: each value against its field's type
    (an integral float for an int field, as `1e3` reads, made an int), and the values that would train nothing
    (0 epochs) or fail deep inside the Trainer refused, naming the field."""
    fields = training_types()
    for key in training.keys() & _REFUSED_TRAINING.keys():
        raise ValueError(f"training.{key} cannot be set: {_REFUSED_TRAINING[key]}.")
    training = {key: _typed(f"training.{key}", value, fields.get(key, object)) for key, value in training.items()}
    _require(training.get("load_best_model_at_end", True) is True, "training.load_best_model_at_end",
             "true (the run's model is the epoch selected on validation, the one results.json names)",
             training.get("load_best_model_at_end"))
    for key, least in _TRAINING_MINIMA.items():
        if training.get(key) is not None:  # null where the field takes it (`save_total_limit`: keep every checkpoint)
            _require(training[key] >= least, f"training.{key}", f">= {least}", training[key])
    for key in _TRAINING_FRACTIONS:
        if key in training:
            _require(0 <= training[key] < 1, f"training.{key}", "in [0, 1)", training[key])
    steps = training.get("max_steps", -1)  # Trainer: a negative `max_steps` is unset, 0 is zero steps
    _require(steps != 0, "training.max_steps", "> 0, or -1 to train for num_train_epochs", steps)
    if steps < 0:
        epochs = training.get("num_train_epochs", 1)
        _require(epochs > 0, "training.num_train_epochs", "> 0", epochs)
    metric = training.get("metric_for_best_model")
    _require(metric is None or metric in SELECTION_METRICS or str(metric).startswith("f1_"),
             "training.metric_for_best_model", f"one of {list(SELECTION_METRICS)} or f1_<label>", metric)
    check_checkpoint_budget(training.get("checkpoint_budget", 0))
    check_half_life(training.get("weight_average_half_life", 0))
    _check_report_to(training.get("report_to"))
    schedule = training.get("lr_scheduler_type", PAPER_TRAINING["lr_scheduler_type"])  # both stages start from it
    _check_scheduler_arguments(schedule, training.get("lr_scheduler_kwargs"))
    return training


def _check_report_to(report_to: Any) -> None:
    """`report_to` names logging integrations the Trainer knows, whose packages are installed: a name it does not
    know, or one whose package is missing, was refused once the data had loaded (naming no field). Their packages are
    looked up, not imported (transformers' `is_wandb_available` imports wandb)."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [report_to] if isinstance(report_to, str) else report_to
    known = ["none", "all", *INTEGRATION_TO_CALLBACK]
    _require(names is None or isinstance(names, list) and all(name in known for name in names), "training.report_to",
             f"one or a list of {known}", report_to)
    for name in names or ():
        packages = _LOGGER_PACKAGES.get(name, ())
        if packages and all(find_spec(package) is None for package in packages):
            raise ValueError(f"training.report_to names {name}, but its package `{packages[0]}` is not installed: "
                             "install it, or leave it out.")


def _check_scheduler_arguments(schedule: str, arguments: Any) -> None:
    """`lr_scheduler_kwargs` are arguments of the `lr_scheduler_type` schedule: the schedule is built on a stand-in
    optimizer, as `transformers.get_scheduler` builds it, since anything else (an argument it does not take or cannot
    use, or none where it needs one) failed with Python's error at the first step or, for a schedule that takes none,
    changed nothing."""
    _require(arguments is None or isinstance(arguments, Mapping) and all(isinstance(key, str) for key in arguments),
             "training.lr_scheduler_kwargs", "a mapping of the schedule's arguments (e.g. {num_cycles: 2})", arguments)
    if schedule in _SCHEDULES_WITHOUT_ARGUMENTS:
        if arguments:
            raise ValueError(f"training.lr_scheduler_kwargs {dict(arguments)!r}: the {schedule} schedule takes no "
                             "arguments.")
        return
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:  # no warmup, so that the first step's factor reads the arguments
        get_scheduler(schedule, optimizer, num_warmup_steps=0, num_training_steps=2,
                      scheduler_specific_kwargs=dict(arguments or {}))
    except (TypeError, ValueError) as error:
        raise ValueError(f"training.lr_scheduler_kwargs {dict(arguments or {})!r} do not fit the {schedule} schedule: "
                         f"{error}.") from None


def _typed(name: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type `hint` of field `name` where the hint is made of basic types (a float field
    takes ints, an int field integral floats, made ints, a bool field only bools); richer hints (dicts, lists,
    literals) are left to `TrainingArguments`."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    basic = [next((kind for kind in _BASIC_TYPES if typing.get_origin(option) is None and isinstance(option, type)
                   and issubclass(option, kind)), None) for option in options]
    if None in basic:
        return value
    if isinstance(value, float) and int in basic and float not in basic and value.is_integer():
        return int(value)
    _require(not isinstance(value, float) or math.isfinite(value), name, "a finite number", value)
    accepted = (*basic, int) if float in basic else tuple(basic)
    expected = " or ".join(dict.fromkeys(_BASIC_TYPES[kind] for kind in basic))
    if isinstance(value, bool) and str in basic and bool not in basic:  # YAML reads no/yes/off/on as booleans
        expected += " (YAML reads no, yes, off and on as false or true: quote the word, e.g. 'no')"
    _require(isinstance(value, accepted) and (bool in basic or not isinstance(value, bool)), name, expected, value)
    for option in options:  # `SchedulerType | str` and the like: the str must name a member
        if isinstance(option, type) and issubclass(option, enum.Enum):
            choices = [member.value for member in option]
            _require(isinstance(value, option) or value in choices, name, f"one of {choices}", value)
    return value


def _require(ok: bool, name: str, expected: str, value: Any) -> None:
    """Refuse a value in the one line the CLI prints: the field, what it must be, what it got."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}.")


def _is_number(value: Any) -> bool:
    """An int or a float, not a bool (YAML's `true` is an int to Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_checkpoint_budget(budget: float) -> None:
    """`checkpoint_budget` (a share of training time, `training/checkpoints.py`) must lie in [0, 1)."""
    if not _is_number(budget) or not 0 <= budget < 1:
        raise ValueError(f"checkpoint_budget must be in [0, 1) (a share of training time), got {budget!r}.")


def check_half_life(half_life: float) -> None:
    """`weight_average_half_life` (epochs, `training/averaging.py`) must be a finite number >= 0 (0: off)."""
    if not _is_number(half_life) or not 0 <= half_life < math.inf:
        raise ValueError(f"weight_average_half_life must be a finite number of epochs >= 0 (0: off), got {half_life!r}.")


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """`key=value` pairs; values are YAML, so `0.1`, `true`, `[speech]` get their types, and so does `1e-5`, which
    YAML 1.1 reads as a string (it wants `1.0e-5`)."""
    overrides = {}
    for pair in pairs or ():
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}.")
        value = _load_yaml(text, f"--set {pair!r}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[key.strip()] = value
    return overrides


def _load_yaml(text: str | bytes, source: str) -> Any:
    """YAML `text` (bytes are decoded by PyYAML, so a bad encoding is a YAML error too); an error is one line naming
    `source`, not PyYAML's report on "<unicode string>"."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]  # an encoding error has no mark
        raise ValueError(f"{source} is not valid YAML: {problem}{where}.") from error



__all__ = ["ABLATIONS", "PAPER_TRAINING", "RECIPE_KEYS", "RECIPE_OPTIONS", "check_checkpoint_budget", "check_half_life",
           "check_seeds", "check_training", "load_recipe", "parse_sets", "route", "training_fields", "training_types"]
