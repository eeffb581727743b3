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
"""Share a trained MiSTER-E model on the Hugging Face Hub: model card, a self-contained folder, upload.

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
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelCardData

from . import (
    configuration_mister_e,
    encoders_mister_e,
    experts_mister_e,
    losses_mister_e,
    modeling_mister_e,
    modeling_utterance_mister_e,
    pipeline_mister_e,
    processing_mister_e,
    segmentation_mister_e,
)
from .configuration_mister_e import modalities_of
from .evaluation import SCALAR_METRICS, summarize_seeds
from .pipeline_mister_e import TASK


MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
TAGS = ["emotion-recognition", "audio", "text", "mister-e"]
_MODALITY_TAGS = {"speech": "audio", "text": "text"}  # tagged only where the model reads the modality
# What a self-contained (remote-code) checkpoint folder must hold besides the weights.
CODE_FILES = {
    "configuration_mister_e.py": configuration_mister_e,
    "modeling_mister_e.py": modeling_mister_e,
    "modeling_utterance_mister_e.py": modeling_utterance_mister_e,
    "experts_mister_e.py": experts_mister_e,
    "losses_mister_e.py": losses_mister_e,
    "encoders_mister_e.py": encoders_mister_e,
    "processing_mister_e.py": processing_mister_e,
    "pipeline_mister_e.py": pipeline_mister_e,
    "segmentation_mister_e.py": segmentation_mister_e,
}
PROCESSOR_CONFIG_NAMES = ("processor_config.json", "preprocessor_config.json")
_SPLITS = ("test", "validation")
_SKIPPED_METRICS = ("epoch",)
_HUB_METRICS = {"weighted_f1": "f1", "macro_f1": "f1", "accuracy": "accuracy", "unweighted_recall": "recall"}


# ---------------------------------------------------------------------------------------------------- metrics


def _read_results(results: Any) -> Any:
    """`results` as given, or read from its file when it is a path (one reading for every part of the card)."""
    if not isinstance(results, (str, os.PathLike)):
        return results
    if not Path(results).is_file():
        raise FileNotFoundError(f"No results file at {results} (a run's results.json or a summary.json of "
                                "`mister-e train`).")
    try:
        return json.loads(Path(results).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{results} is not a readable results file: {error}") from None


def _metric_summary(results: Any) -> tuple[list | None, dict[str, dict[str, float]]]:
    """`(seeds, {"split/metric": {"mean", "std", "n"}})` from any of the shapes training writes.

    Accepted: a `results.json` dict of one run (`train_conversation_model`), a `summary.json` dict (`train_seeds`:
    `{"seeds", "summary", "runs", ...}`), a bare `summarize_seeds` result (what `train_seeds` returns), or a list of
    `results.json` dicts (one per seed); each also as the path of its file.
    """
    results = _read_results(results)
    if isinstance(results, Mapping) and isinstance(results.get("summary"), Mapping):
        return list(results.get("seeds") or []) or None, dict(results["summary"])
    if isinstance(results, Mapping) and results and all(
        isinstance(value, Mapping) and "mean" in value for value in results.values()
    ):
        return None, dict(results)
    runs = [results] if isinstance(results, Mapping) else list(results)
    if not runs:
        raise ValueError("`results` is empty.")
    splits = [{split: run[split] for split in _SPLITS if isinstance(run.get(split), Mapping)} for run in runs]
    if not any(splits):
        raise ValueError(
            "`results` has no `test`/`validation` scores: pass a `results.json` dict, a list of them, a `summary.json` "
            "dict or a `train_seeds` summary."
        )
    seeds = [run.get("seed") for run in runs]
    return (seeds if all(seed is not None for seed in seeds) else None), summarize_seeds(splits)


def _is_score(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return name in SCALAR_METRICS or name.startswith(("f1_", "recall_", "precision_"))


def _metrics_section(results: Any, labels: Sequence[str]) -> tuple[str, list[str]]:
    """The metrics section of the card and the metric names for the YAML header; per-class scores must name the
    model's `labels` (scores of another model's run would otherwise be published as this one's)."""
    seeds, summary = _metric_summary(results)
    for metric in summary:
        name = metric.rsplit("/", 1)[-1]
        prefix = next((p for p in ("f1_", "recall_", "precision_") if name.startswith(p)), None)
        if prefix and name[len(prefix):] not in labels:
            raise ValueError(f"`results` scores `{metric}`, but the model has no label {name[len(prefix):]!r} "
                             f"(its labels: {list(labels)}): these are another model's scores.")
    rows = [
        (metric, value)
        for split in _SPLITS
        for metric, value in summary.items()
        if metric.startswith(f"{split}/") and metric.rsplit("/", 1)[-1] not in _SKIPPED_METRICS
    ]
    rows += [(m, v) for m, v in summary.items() if not m.startswith(tuple(f"{s}/" for s in _SPLITS))]
    n = max((int(value.get("n", 1)) for _, value in rows), default=1)
    if seeds:
        runs = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(str(seed) for seed in seeds)})"
    else:
        runs = f"{n} run{'s' if n > 1 else ''}"
    if n > 1:
        intro = (
            f"Mean ± sample standard deviation over {runs}. Scores (F1, accuracy, recall) are percentages; "
            "the uploaded weights are a single model, one of these runs'."
        )
    else:
        intro = (f"One training run: {runs} (the uploader gives the scores of the run whose weights these are). "
                 "Scores (F1, accuracy, recall) are percentages.")
    lines = [intro, "", "| split | metric | value |", "|---|---|---|"]
    for metric, value in rows:
        if _is_score(metric) and not 0 <= value["mean"] <= 1:  # 61.0 would print as 6100.00
            raise ValueError(f"`{metric}` is {value['mean']}: scores are fractions in [0, 1], as training writes them "
                             "(results.json), not percentages.")
        split, _, name = metric.partition("/") if "/" in metric else ("", "", metric)
        scale = 100.0 if _is_score(metric) else 1.0
        digits = 2 if scale == 100.0 else 4
        cell = f"{value['mean'] * scale:.{digits}f}"
        if int(value.get("n", 1)) > 1:
            cell += f" ± {value['std'] * scale:.{digits}f}"
        lines.append(f"| {split or '–'} | {name} | {cell} |")
    names = sorted({metric.rsplit("/", 1)[-1] for metric, _ in rows if metric.rsplit("/", 1)[-1] in SCALAR_METRICS})
    return "\n".join(lines), names


# ---------------------------------------------------------------------------------------------------- card

# The card's example conversation, for what the model reads.
_EXAMPLES = {
    ("speech", "text"): '{"utterances": [{"audio": "a.wav", "text": "hi"}, {"text": "oh no"}, {"audio": "c.wav"}]}',
    ("text",): '{"utterances": [{"text": "hi"}, {"text": "oh no"}, {"text": "that is great"}]}',
    ("speech",): '{"utterances": [{"audio": "a.wav"}, {"audio": "b.wav"}, {"audio": "c.wav"}]}',
}


# The card's first paragraph, for what the model reads.
_DESCRIPTIONS = {
    ("speech", "text"): "MiSTER-E is a speech + text mixture of experts for **emotion recognition in conversations**: "
                        "given the utterances of a conversation (audio and/or transcript), it predicts one emotion per "
                        "utterance, using the conversational context.",
    ("text",): "This MiSTER-E model reads **text only** (its speech and cross-modal experts are switched off): given "
               "the transcripts of a conversation's utterances, it predicts one emotion per utterance, using the "
               "conversational context.",
    ("speech",): "This MiSTER-E model reads **speech only** (its text and cross-modal experts are switched off): given "
                 "the audio of a conversation's utterances, it predicts one emotion per utterance, using the "
                 "conversational context.",
}


def _backbone(sub_config) -> tuple[str, str | None] | None:
    if sub_config is None:
        return None
    model_type = getattr(sub_config, "model_type", None) or type(sub_config).__name__
    name = getattr(sub_config, "_name_or_path", None) or getattr(sub_config, "name_or_path", None) or None
    return model_type, (str(name) if name else None)


def _hub_id(name: str | None) -> str | None:
    """`name` if it looks like a Hub model id (not a local path), for the `base_model` metadata."""
    if name and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) and not os.path.exists(name):
        return name
    return None


def model_card(
    model,
    results: Any = None,
    dataset_name: str | None = None,
    training_data: str | None = None,
    *,
    license: str | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    pipeline_tag: str | None = None,
    datasets: Sequence[str] | None = None,
) -> str:
    """The `README.md` model card of a MiSTER-E model: `templates/model_card.md` (YAML metadata, then labels, model
    summary, training data, metrics with seeds, intended use, limitations and how to load it) filled in from the model's
    config and the scores.

    Args:
        model: A `MisterEForEmotionRecognition` (only its `config` and parameter count are read).
        results: Scores to report: a `results.json` dict (or its path) of `train_conversation_model`, a list of
            them (one per seed), a `summary.json` dict (or path) of `train_seeds`, or the summary `train_seeds`
            returns. Several seeds show as mean ± std. `None` leaves a placeholder.
        dataset_name: Name of the training corpus (e.g. `"IEMOCAP"`), shown in the text.
        training_data: Free text describing the training data (splits, preprocessing, label mapping).
        license: The `license` metadata, a Hub license id such as `"apache-2.0"` (default: none written; the Hub's
            `"other"` also wants a `license_name` and `license_link`, so it is not a placeholder to leave).
        repo_id: Used in the loading snippets (default: a placeholder).
        model_name: Title of the card (default: from `repo_id`, else "MiSTER-E").
        pipeline_tag: Optional Hub `pipeline_tag` (it must be one of the Hub's tasks, e.g. `"audio-classification"`;
            "emotion-recognition" is given as a tag since it is not one).
        datasets: Hub dataset ids for the `datasets` metadata.
    """
    config = model.config
    repo = repo_id or "<user>/<model>"
    title = model_name or (repo_id.split("/")[-1] if repo_id else "MiSTER-E")
    id2label = {int(index): label for index, label in config.id2label.items()}
    backbones = {
        modality: _backbone(getattr(config, f"{modality}_config", None)) for modality in ("speech", "text")
    }
    base_models = [hub for b in backbones.values() if b and (hub := _hub_id(b[1]))]

    metric_names: list[str] = []
    results = _read_results(results)
    if results is not None:
        metrics_text, metric_names = _metrics_section(results, list(id2label.values()))
    else:
        metrics_text = "No scores were given when this card was written."

    recipe = results.get("recipe") if isinstance(results, Mapping) else None
    experts = list(getattr(config, "experts", ()))
    # What the model reads: what its experts read, of the modalities it has an encoder for (all, for a model on
    # embeddings): a text-only model is no audio model, on the Hub or in its examples.
    encoded = [modality for modality, backbone in backbones.items() if backbone] or ["speech", "text"]
    reads = [modality for modality in modalities_of(experts) if modality in encoded]
    metadata = ModelCardData(
        library_name="transformers",
        license=license,
        tags=[tag for tag in TAGS if tag not in _MODALITY_TAGS.values()] + [_MODALITY_TAGS[m] for m in reads],
        pipeline_tag=pipeline_tag,
        datasets=list(datasets) if datasets else None,
        base_model=base_models or None,
        metrics=sorted({_HUB_METRICS[name] for name in metric_names}) or None,
    )

    summary = [
        f"**Experts**: {', '.join(experts)} (a speech expert, a text expert and a cross-modal expert exist in the "
        "full model; ablations switch some off).",
        f"**Gate**: `{config.gate_mode}`"
        + (" (a learned gate weighs the experts per utterance)" if config.gate_mode == "learned" else ""),
        f"**Causal**: {bool(config.causal)} — "
        + ("each prediction uses the current and past utterances only, so it can run online (streaming)."
           if config.causal else "each prediction uses the whole conversation (past and future utterances)."),
    ]
    if set(experts) - {"cross_modal"}:  # the co-attention expert has no context module
        summary.append(f"**Context module**: `{getattr(config, 'context_module', 'conv_gru')}`")
    for modality, backbone in backbones.items():
        if modality not in reads:
            continue
        if backbone is None:
            summary.append(f"**{modality.capitalize()} backbone**: none (this model takes precomputed "
                           f"{modality} embeddings)")
        else:
            model_type, name = backbone  # a local folder's path is the uploader's machine's business, not the card's
            origin = f" (from `{name}`)" if _hub_id(name) else " (from a local folder)" if name else ""
            summary.append(f"**{modality.capitalize()} backbone**: `{model_type}`{origin}")
    try:
        summary.append(f"**Parameters**: {model.num_parameters():,}")
    except Exception:  # noqa: BLE001  (a card must not fail over a count)
        pass

    if dataset_name or training_data or recipe:
        data_lines = []
        if dataset_name:
            data_lines.append(f"Trained on **{dataset_name}**.")
        if training_data:
            data_lines.append(training_data.strip())
        if isinstance(recipe, Mapping):
            overridden = sorted({*(recipe.get("config") or {})})  # the recipe's own settings and `--set` ones alike
            details = [f"recipe `{recipe['name']}`" if recipe.get("name") else None,
                       f"data folder `{Path(str(recipe['dataset'])).name}`" if recipe.get("dataset") else None,
                       f"config fields set: {', '.join(overridden)}" if overridden else None,
                       f"ablation `{recipe['ablation']}`" if recipe.get("ablation") else None,
                       f"modalities {list(recipe['modalities'])}" if recipe.get("modalities") else None,
                       f"modality dropout {recipe['modality_dropout']}" if "modality_dropout" in recipe else None]
            details = [d for d in details if d]
            if details:
                data_lines.append("Training: " + ", ".join(details) + ".")
        data_text = "\n\n".join(data_lines)
    else:
        data_text = "[More information needed: the corpus, its splits and how its labels were mapped.]"

    card = ModelCard.from_template(
        metadata, template_path=str(MODEL_CARD_TEMPLATE), title=title, labels=sorted(id2label.items()),
        summary=summary, training_data=data_text, metrics=metrics_text, domain=dataset_name or "its training data",
        inputs={("speech",): "audio", ("text",): "transcript"}.get(tuple(reads), "audio and/or transcript"),
        example=_EXAMPLES[tuple(reads)], reads_audio="speech" in reads, task=TASK, repo=repo,
        description=_DESCRIPTIONS[tuple(reads)], both_modalities=len(reads) == 2,
        needs_opensmile=bool(backbones["speech"]) and backbones["speech"][0] == "opensmile",
    )
    return str(card) + "\n"


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
        results, card_kwargs: Passed to [`model_card`].

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
    """
    card_kwargs.setdefault("repo_id", repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mister-e-hub-") as tmp:
        folder = save_for_hub(model, processor, tmp, results=results, **card_kwargs)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
            for path in sorted(folder.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts
        ]
        repo_url = api.create_repo(repo_id, exist_ok=True, private=private, repo_type="model")
        return api.create_commit(
            repo_id=getattr(repo_url, "repo_id", None) or repo_id,
            operations=operations,
            commit_message=commit_message,
            repo_type="model",
        )


__all__ = ["model_card", "push_to_hub", "save_for_hub"]
