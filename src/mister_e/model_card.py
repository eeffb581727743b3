"""The model card of a shared MiSTER-E model: what it reads, its backbones, its training data and its scores (mean ±
std over seeds, from a run's results), rendered from `templates/model_card.md` with the Hub's metadata block."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .assembly import WEIGHTS_KEY, conversation_fingerprint
from .configuration_mister_e import modalities_of
from .pipeline_mister_e import TASK
from .summaries import SCALAR_METRICS, runs_counted, seed_cell, summarize_seeds

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
TAGS = ["emotion-recognition", "audio", "text", "mister-e"]
_MODALITY_TAGS = {"speech": "audio", "text": "text"}  # tagged only where the model reads the modality
_SPLITS = ("test", "validation")
_SKIPPED_METRICS = ("epoch",)
_HUB_METRICS = {"weighted_f1": "f1", "macro_f1": "f1", "accuracy": "accuracy", "unweighted_recall": "recall"}

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- metrics


def read_results(results: Any) -> Any:
    """`results` as given, or read from its file when it is a path (one reading for every part of the card). A stage-1
    encoder's scores (`train_encoder`'s results.json, which records its `modality` and `solver`) are refused: its
    labels are the conversation model's, so nothing else would tell them from the model's own."""
    loaded = results
    if isinstance(results, (str, os.PathLike)):
        if not Path(results).is_file():
            raise FileNotFoundError(f"No results file at {results} (a run's results.json or a summary.json of "
                                    "`mister-e train`).")
        try:
            loaded = json.loads(Path(results).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{results} is not a readable results file: {error}") from None
    runs = [loaded] if isinstance(loaded, Mapping) else loaded if isinstance(loaded, Sequence) else []
    encoder = next((run for run in runs if isinstance(run, Mapping) and {"modality", "solver"} <= run.keys()), None)
    if encoder is not None:
        where = str(results) if isinstance(results, (str, os.PathLike)) else "`results`"
        raise ValueError(f"{where} holds the scores of a {encoder['modality']} encoder (`train-encoder`), not of a "
                         "conversation model: give the results.json of the `mister-e train` run whose model you "
                         "share.")
    return loaded


def _summary_file(results: Any) -> bool:
    """Whether `results` is a `summary.json` dict (`train_seeds`: `{"seeds", "summary", "runs", ...}`)."""
    return isinstance(results, Mapping) and isinstance(results.get("summary"), Mapping)


def _bare_summary(results: Any) -> bool:
    """Whether `results` is a bare `summarize_seeds` result (what `train_seeds` returns), which names no run."""
    return isinstance(results, Mapping) and bool(results) and all(
        isinstance(value, Mapping) and "mean" in value for value in results.values()
    )


def _metric_summary(results: Any) -> tuple[list | None, dict[str, dict[str, float]]]:
    """`(seeds, {"split/metric": {"mean", "std", "n"}})` from any of the shapes training writes, as `read_results`
    gives them: a `results.json` dict of one run (`train_conversation_model`), a `summary.json` dict, a bare
    `summarize_seeds` result, or a list of `results.json` dicts (one per seed).
    """
    if _summary_file(results):
        return list(results.get("seeds") or []) or None, dict(results["summary"])
    if _bare_summary(results):
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


def _recorded_weights(results: Any) -> dict[str, str | None]:
    """Each run `results` holds the scores of ("seed 3", else "run 2") and the `weights_sha256` it recorded (`None`:
    written before runs recorded one); a bare `summarize_seeds` result names no run."""
    if _summary_file(results):
        runs = results.get("runs") if isinstance(results.get("runs"), Mapping) else {}
        return {f"seed {seed}": run.get(WEIGHTS_KEY) if isinstance(run, Mapping) else None
                for seed, run in runs.items()}
    if _bare_summary(results):
        return {}
    runs = [results] if isinstance(results, Mapping) else list(results)
    return {f"seed {run['seed']}" if run.get("seed") is not None else f"run {index}": run.get(WEIGHTS_KEY)
            for index, run in enumerate(runs)}


def _check_weights(model, results: Any, source: Any) -> str | None:
    """The run of `results` whose recorded weights are `model`'s (by `conversation_fingerprint`). Raises when no run
    is, and every run recorded its weights: these are another model's scores. Warns when that cannot be told (runs
    written before they recorded their weights); returns `None` then."""
    recorded = _recorded_weights(results)
    own = conversation_fingerprint(model)
    match = next((run for run, fingerprint in recorded.items() if fingerprint == own), None)
    if match is not None:
        return match
    where = str(source) if isinstance(source, (str, os.PathLike)) else "`results`"
    unrecorded = [run for run, fingerprint in recorded.items() if fingerprint is None]
    if unrecorded and len(unrecorded) < len(recorded):  # some runs recorded other weights, others none
        others = [run for run in recorded if run not in unrecorded]
        logger.warning(f"{where}: the model is not {', '.join(others)}, which recorded "
                       f"{'its' if len(others) == 1 else 'their'} weights, and "
                       f"{', '.join(unrecorded)} recorded none (trained before runs recorded one), so the scores "
                       "cannot be checked to be this model's: make sure they are.")
        return None
    if not recorded or unrecorded:
        logger.warning(f"{where}: {'these scores record' if recorded else 'a bare summary records'} no fingerprint "
                       "of the weights they were scored on (runs trained before they recorded one), so they cannot "
                       "be checked to be this model's: make sure they are.")
        return None
    folder = f" in {Path(source).absolute().parent}" if isinstance(source, (str, os.PathLike)) else ""
    if len(recorded) == 1:
        raise ValueError(f"{where} holds the scores of the run{folder} ({next(iter(recorded))}), whose weights are "
                         "not the model being shared: give the results of the run whose model you share.")
    raise ValueError(f"{where} holds the scores of the runs{folder} ({', '.join(recorded)}), and the model being "
                     "shared is none of them: share one of those runs' model, or give the results of the run whose "
                     "model you share.")


def _is_score(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1]
    return name in SCALAR_METRICS or name.startswith(("f1_", "recall_", "precision_"))


def _metrics_section(model, results: Any, source: Any) -> tuple[str, list[str]]:
    """The metrics section of the card and the metric names for the YAML header. The scores must be `model`'s: their
    per-class scores name its labels, and their run recorded its weights (`_check_weights`; `source`: what `results`
    was read from); scores of another model's run would otherwise be published as this one's."""
    seeds, summary = _metric_summary(results)
    labels = list(model.config.id2label.values())
    for metric in summary:
        name = metric.rsplit("/", 1)[-1]
        prefix = next((p for p in ("f1_", "recall_", "precision_") if name.startswith(p)), None)
        if prefix and name[len(prefix):] not in labels:
            raise ValueError(f"`results` scores `{metric}`, but the model has no label {name[len(prefix):]!r} "
                             f"(its labels: {list(labels)}): these are another model's scores.")
    shared = _check_weights(model, results, source)
    rows = [
        (metric, value)
        for split in _SPLITS
        for metric, value in summary.items()
        if metric.startswith(f"{split}/") and metric.rsplit("/", 1)[-1] not in _SKIPPED_METRICS
    ]
    rows += [(m, v) for m, v in summary.items() if not m.startswith(tuple(f"{s}/" for s in _SPLITS))]
    n = runs_counted(dict(rows))
    if seeds:
        runs = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(str(seed) for seed in seeds)})"
    else:
        runs = f"{n} run{'s' if n > 1 else ''}"
    if n > 1:
        intro = (
            f"Mean ± sample standard deviation over {runs}. Scores (F1, accuracy, recall) are percentages; "
            "the uploaded weights are a single model, "
            + (f"{shared}'s (checked against the weights that run recorded)." if shared else "one of these runs'.")
        )
    else:
        whose = ("these weights are the ones it scored, checked against the weights it recorded" if shared
                 else "the uploader gives the scores of the run whose weights these are")
        intro = f"One training run: {runs} ({whose}). Scores (F1, accuracy, recall) are percentages."
    if any(value["mean"] is None for _, value in rows):
        intro += " n/a: no utterance of that class in the split, so no F1 to report."
    lines = [intro, "", "| split | metric | value |", "|---|---|---|"]
    for metric, value in rows:
        if _is_score(metric) and value["mean"] is not None and not 0 <= value["mean"] <= 1:  # 61.0: 6100.00
            raise ValueError(f"`{metric}` is {value['mean']}: scores are fractions in [0, 1], as training writes them "
                             "(results.json), not percentages.")
        split, _, name = metric.partition("/") if "/" in metric else ("", "", metric)
        scale = 100.0 if _is_score(metric) else 1.0
        lines.append(f"| {split or '–'} | {name} | {seed_cell(value, n, scale, 2 if scale == 100.0 else 4)} |")
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
        model: A `MisterEForEmotionRecognition` (its `config`, parameter count and weights' fingerprint are read).
        results: Scores to report: a `results.json` dict (or its path) of `train_conversation_model`, a list of
            them (one per seed), a `summary.json` dict (or path) of `train_seeds`, or the summary `train_seeds`
            returns. Several seeds show as mean ± std. `None` leaves a placeholder. Scores whose run recorded the
            fingerprint of other weights than `model`'s (`weights_sha256`) are refused; scores without one (runs
            trained before it was recorded, a bare summary) are taken with a warning that they cannot be checked.
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
    source, results = results, read_results(results)
    if results is not None:
        metrics_text, metric_names = _metrics_section(model, results, source)
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


__all__ = ["MODEL_CARD_TEMPLATE", "TAGS", "model_card"]
