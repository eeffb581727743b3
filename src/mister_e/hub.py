# Copyright 2026 The MiSTER-E authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Share a trained MiSTER-E model on the Hugging Face Hub: a self-contained folder with its card (`model_card.py`),
upload.

The uploaded folder loads with or without this package:

```python
import mister_e
from transformers import pipeline

pipe = pipeline("emotion-recognition-in-conversation", model="user/mister-e-iemocap")

# or, without `mister_e` installed (the code files travel with the weights):
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("user/mister-e-iemocap", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("user/mister-e-iemocap", trust_remote_code=True)
```

This is a training-side module: it is never copied next to a checkpoint as remote code.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, is_offline_mode
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from . import (
    audio_mister_e,
    configuration_mister_e,
    encoders_mister_e,
    experts_mister_e,
    input_checks_mister_e,
    losses_mister_e,
    modeling_mister_e,
    modeling_utterance_mister_e,
    pipeline_mister_e,
    processing_mister_e,
    segmentation_mister_e,
)
from .model_card import model_card
from .utils import check_not_broken_link


# What a self-contained (remote-code) checkpoint folder must hold besides the weights.
CODE_FILES = {
    "configuration_mister_e.py": configuration_mister_e,
    "modeling_mister_e.py": modeling_mister_e,
    "modeling_utterance_mister_e.py": modeling_utterance_mister_e,
    "experts_mister_e.py": experts_mister_e,
    "input_checks_mister_e.py": input_checks_mister_e,
    "losses_mister_e.py": losses_mister_e,
    "encoders_mister_e.py": encoders_mister_e,
    "processing_mister_e.py": processing_mister_e,
    "audio_mister_e.py": audio_mister_e,
    "pipeline_mister_e.py": pipeline_mister_e,
    "segmentation_mister_e.py": segmentation_mister_e,
}
PROCESSOR_CONFIG_NAMES = ("processor_config.json", "preprocessor_config.json")


# ---------------------------------------------------------------------------------------------------- folder


def _ensure_code_files(folder: Path) -> None:
    """Make `folder` load with `trust_remote_code` alone: code files present, `auto_map` in the configs."""
    package_dir = Path(processing_mister_e.__file__).parent
    for name in CODE_FILES:
        if not (folder / name).is_file():
            shutil.copyfile(package_dir / name, folder / name)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    auto_map = config.setdefault("auto_map", {})
    changed = False
    for auto_class, target in (("AutoConfig", "configuration_mister_e.MisterEConfig"),
                               ("AutoModel", "modeling_mister_e.MisterEForEmotionRecognition")):
        if auto_class not in auto_map:
            auto_map[auto_class] = target
            changed = True
    if "custom_pipelines" not in config:
        config["custom_pipelines"] = configuration_mister_e.CUSTOM_PIPELINES
        changed = True
    if changed:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    processor_path = next((folder / n for n in PROCESSOR_CONFIG_NAMES if (folder / n).is_file()), None)
    if processor_path is None:
        raise RuntimeError(f"processor.save_pretrained wrote none of {PROCESSOR_CONFIG_NAMES} in {folder}.")
    processor_config = json.loads(processor_path.read_text())
    if processor_config.get("auto_map", {}).get("AutoProcessor") is None:
        processor_config.setdefault("auto_map", {})["AutoProcessor"] = "processing_mister_e.MisterEProcessor"
        processor_path.write_text(json.dumps(processor_config, indent=2, sort_keys=True) + "\n")


def _check_folder(folder: Path) -> None:
    names = {path.name for path in folder.iterdir()}
    missing = [name for name in ("config.json", "README.md", *CODE_FILES) if name not in names]
    if not ({"model.safetensors", "model.safetensors.index.json"} & names):
        missing.append("model.safetensors")
    if not (set(PROCESSOR_CONFIG_NAMES) & names):
        missing.append("processor_config.json")
    if missing:
        raise RuntimeError(f"The Hub folder {folder} lacks {missing}.")
    pickled = sorted(name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl")))
    if pickled:
        raise RuntimeError(f"The Hub folder {folder} holds pickled weights {pickled}; only safetensors are shared.")


def save_for_hub(model, processor, folder: str | os.PathLike, results: Any = None, **card_kwargs) -> Path:
    """Write a self-contained Hub folder: weights (safetensors), config and code files, processor, `README.md`.

    The folder loads with `AutoModel`/`AutoProcessor.from_pretrained(folder, trust_remote_code=True)` without this
    package, and with `pipeline("emotion-recognition-in-conversation", model=folder)` with it.

    Args:
        model: A `MisterEForEmotionRecognition` with utterance encoders (an end-to-end model).
        processor: Its `MisterEProcessor`.
        folder: Where to write (created if needed).
        results, card_kwargs: Passed to [`model_card`], which refuses scores recorded for other weights (a run's
            `weights_sha256`) and warns of scores that recorded none.

    Returns:
        The folder.
    """
    if processor is None:
        raise ValueError("save_for_hub needs the model's processor: the shared model must come with it.")
    config = model.config
    if getattr(config, "speech_config", None) is None and getattr(config, "text_config", None) is None:
        raise ValueError("save_for_hub needs an end-to-end model (utterance encoders inside): this one reads "
                         "embeddings; join it to its encoders with `MisterEForEmotionRecognition.from_stages`.")
    card = model_card(model, results, **card_kwargs)  # reads `results` first: a bad one must leave nothing behind
    folder = Path(folder)
    check_not_broken_link(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; save the Hub folder to a new or empty folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}.tmp", dir=folder.parent) as tmp:
        staged = Path(tmp) / "folder"
        model.save_pretrained(staged)
        processor.save_pretrained(staged)
        _ensure_code_files(staged)
        (staged / "README.md").write_text(card, encoding="utf-8")
        _check_folder(staged)
        if folder.exists():
            folder.rmdir()
        staged.rename(folder)
    return folder


def check_pushable(repo_id: str) -> None:
    """Refuse, before any model is loaded or folder written, a push that cannot happen: a `repo_id` the Hub would
    refuse, or offline mode (`HF_HUB_OFFLINE`), where the upload would fail deep in the HTTP client."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a Hub repository id (you/name): {error}") from None
    if is_offline_mode():
        raise OSError(f"Cannot push to {repo_id}: HF_HUB_OFFLINE is set. Unset it, or write the folder with "
                      "`save_for_hub` (CLI: `share --folder OUT`) and upload it later.")


def push_to_hub(
    model,
    processor,
    repo_id: str,
    results: Any = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload MiSTER-E model",
    **card_kwargs,
):
    """Upload the model, its processor, code files and card to the Hub model repository `repo_id` in one commit.

    Creates the repository if needed (`private` only applies then). Returns the `CommitInfo` of the commit.
    `results` and `card_kwargs` go to [`model_card`] (`repo_id` defaults to this one for the card's snippets).
    A malformed `repo_id` and offline mode are refused first (`check_pushable`).
    """
    check_pushable(repo_id)
    card_kwargs.setdefault("repo_id", repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mister-e-hub-") as tmp:
        folder = save_for_hub(model, processor, tmp, results=results, **card_kwargs)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(folder.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts
        ]
        try:
            repo_url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
            return api.create_commit(
                repo_id=getattr(repo_url, "repo_id", None) or repo_id,
                operations=operations,
                commit_message=commit_message,
                repo_type="model",
            )
        except Exception as error:
            if not _from_the_http_client(error):
                raise
            raise OSError(f"Could not push to {repo_id}: {error} (no network, or a token without write access: "
                          "`hf auth login`, or HF_TOKEN). Write the folder with `share --folder OUT` (`save_for_hub`) "
                          "and upload it later.") from error


def _from_the_http_client(error: Exception) -> bool:
    """Whether `error` is the Hub client's HTTP library's (httpx's; the Hub's own HTTP errors derive from it): a
    connection that failed, or a refusal (401, 403), which came as a traceback of the library's own type."""
    return any(cls.__module__.partition(".")[0].startswith("httpx") for cls in type(error).__mro__)


__all__ = ["check_pushable", "model_card", "push_to_hub", "save_for_hub"]
