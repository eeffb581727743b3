"""Dialogue datasets for emotion recognition in conversations, and builders from the official releases.

`schema` holds the dataset layout every builder shares, `checks` what one split must hold, `splits` how its splits must
agree, `building` makes a dataset from plain values, `storage` saves and loads it, `releases` holds the helpers the
release builders share; each data set has its own module (`iemocap`, `meld`, `mosi`, `cosmic`, `emodb`, and the
synthetic `demo`). This package holds the registry of `mister-e prepare` and re-exports the public names. They are
imported on first use, so that the CLI can list `PREPARE_DATASETS` without `datasets`.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import DatasetDict

logger = logging.getLogger(__name__)

# The data sets of `mister-e prepare`: name -> (module of this package, builder). The one list of the choices.
_REGISTRY = {
    "iemocap": ("iemocap", "build_iemocap"),
    "meld": ("meld", "build_meld"),
    "mosi": ("mosi", "build_mosi"),
    "cosmic": ("cosmic", "build_cosmic_pickle"),
    "emodb": ("emodb", "build_emodb"),
}
PREPARE_DATASETS = tuple(sorted(_REGISTRY))

# Public name -> the module of this package that defines it.
_EXPORTS = {
    **dict.fromkeys(
        ("SPLITS", "DIALOGUE_ID", "UTTERANCE_IDS", "TEXTS", "AUDIO", "LABELS", "SPEAKERS", "SPEECH_EMBEDS",
         "TEXT_EMBEDS", "EMBED_COLUMNS", "UTTERANCE_COLUMNS", "describe", "dialogue_features"),
        "schema",
    ),  # fmt: skip
    **dict.fromkeys(("attach_embeddings", "make_dialogue_dataset"), "building"),
    "validate_dialogues": "checks",
    **dict.fromkeys(("load_dialogues", "save_dialogues"), "storage"),
    **dict.fromkeys(("IEMOCAP_LABELS", "IEMOCAP_DROPPED_LABELS", "build_iemocap"), "iemocap"),
    # The clip folders are private, but tests name them through this package.
    **dict.fromkeys(("MELD_LABELS", "build_meld", "build_meld_csv", "_MELD_CLIP_FOLDERS"), "meld"),
    **dict.fromkeys(
        ("MOSI_LABELS", "MOSI_LABEL_RULES", "MOSI_CSV", "MOSI_FOLDS", "build_mosi", "load_mosi_acoustic",
         "mosi_release_folds"),
        "mosi",
    ),  # fmt: skip
    **dict.fromkeys(("COSMIC_SOURCES", "DAILYDIALOG_LABELS", "EMORYNLP_LABELS", "build_cosmic_pickle"), "cosmic"),
    **dict.fromkeys(("EMODB_LABELS", "EMODB_TRANSCRIPTS", "build_emodb", "emodb_folds"), "emodb"),
}


def prepare(
    dataset: str, root: str | os.PathLike, output_dir: str | os.PathLike, /, *, overwrite: bool = False, **options: Any
) -> DatasetDict:
    """``mister-e prepare``: build ``dataset`` (a key of `BUILDERS`) from ``root``, save it atomically, print counts.

    ``options`` go to the builder (positional-only arguments leave their names free, so COSMIC's own ``dataset``
    option, `--source`, reaches it); for ``"cosmic"``, ``root`` is the pickle file.
    """
    from .schema import describe
    from .storage import check_save_target, save_dialogues

    if dataset not in _REGISTRY:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(PREPARE_DATASETS)}")
    builder = _builder(dataset)
    accepted = list(inspect.signature(builder).parameters)[1:]  # after the release folder (or pickle)
    unknown = [key for key in options if key not in accepted]
    if unknown:  # options of another data set: one line, not the builder's TypeError
        raise ValueError(f"{dataset} takes no {', '.join(_option(key) for key in unknown)} (its options: "
                         f"{', '.join(_option(key) for key in accepted) or 'none'}).")
    check_save_target(Path(output_dir), overwrite)  # fail before a long build, not after
    logger.info("Building %s from %s", dataset, root)
    dialogues = builder(root, **options)
    save_dialogues(dialogues, output_dir, overwrite=overwrite)
    print(f"Saved {dataset} to {output_dir}\n{describe(dialogues)}")
    return dialogues


def _option(key: str) -> str:
    """A builder option as `mister-e prepare` spells it."""
    return {"audio": "--text-only", "dataset": "--source"}.get(key, f"--{key.replace('_', '-')}")


def _builder(dataset: str) -> Callable[..., Any]:
    module, name = _REGISTRY[dataset]
    return getattr(import_module(f".{module}", __name__), name)


def __getattr__(name: str) -> Any:
    """`BUILDERS` (name -> builder function) and the re-exported names, imported on first access (PEP 562)."""
    if name == "BUILDERS":
        value = {dataset: _builder(dataset) for dataset in _REGISTRY}
    elif name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups find it directly
    return value


__all__ = ["BUILDERS", "PREPARE_DATASETS", "prepare", *(name for name in _EXPORTS if not name.startswith("_"))]
