"""Stage-1 embedding extraction: every utterance of a dialogue dataset through the trained encoders, resumably.

Utterances are processed in fixed shards in dataset order. Each finished shard is written to the cache folder under a
temporary name and renamed, so an interrupted run leaves only whole shards, and a rerun computes just the missing ones:
the result has no duplicates or holes and equals an uninterrupted run (the model runs in eval mode, without crops).

Under `torchrun` / `accelerate launch` the missing shards are dealt out in rounds, one shard per process: each process
embeds its shard, the main process gathers the round and writes it, so the cache has one writer and the same shards as
a single-process run. Every process then reads the whole cache and returns the whole dataset (a shared filesystem is
assumed, as for Trainer checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from accelerate.utils import gather_object
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers.utils import logging

from .data.schema import (
    AUDIO, DIALOGUE_ID, EMBED_COLUMN, TEXTS, UTTERANCE_IDS, UTTERANCE_KEYS, embedding_feature, processor_utterances,
)
from .configuration_mister_e import EMBEDDINGS
from .modeling_mister_e import MisterEForUtteranceClassification
from .processing_mister_e import cut_texts_warning
from .utils import atomic_path, process_state

logger = logging.get_logger(__name__)

MODALITIES = ("speech", "text")


def extract_embeddings(
    dataset: Dataset | DatasetDict,
    model: MisterEForUtteranceClassification,
    processor,
    cache_dir: str | os.PathLike,
    batch_size: int = 16,
    shard_size: int = 512,
    embedding: str = "projection",
    device: str | torch.device | None = None,
) -> Dataset | DatasetDict:
    """Add `speech_embeds` / `text_embeds` columns for the modalities the model has encoders for.

    Args:
        dataset: Dialogue dataset (one row per conversation with `audio` and `texts` lists), or a `DatasetDict`.
        model: Stage-1 model; its encoders decide which columns are (re)computed, other columns are kept.
        processor: `MisterEProcessor` matching the model's backbones.
        cache_dir: Folder for the finished shards; rerunning with the same folder resumes.
        batch_size: Utterances per forward pass.
        shard_size: Utterances per cached shard (the unit of resumption).
        embedding: `"projection"` (the trained encoder's embedding, taken before the classifier's ReLU) or
            `"backbone_mean"` (the backbone's last hidden states, mean-pooled: frozen-backbone baselines) or
            `"backbone_layers"` (every hidden state of the backbone, the embeddings' included, each mean-pooled and
            concatenated: `num_hidden_layers + 1` times the backbone's width; a sentence encoder's last layer is tuned
            for similarity, and on MELD its middle layers carry more of the emotion, see BENCHMARKS.md).
        device: Where to run the model (defaults to the model's device); under a launcher `"cuda"` is each process's
            own GPU.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"`embedding` must be one of {EMBEDDINGS}, got {embedding!r}.")
    modalities = [m for m in MODALITIES if getattr(model, f"{m}_encoder") is not None]
    if not modalities:
        raise ValueError("The model has no utterance encoder to extract with.")
    for modality in modalities:
        _width(model, modality, embedding)  # openSMILE functionals have no layers to extract
        splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
        source = {"speech": AUDIO, "text": TEXTS}[modality]
        if not any(_has_values(split, source) for split in splits):
            raise ValueError(f"The model encodes {modality}, but no utterance of the data set has any (its `{source}` "
                             "column is empty or missing): extract with an encoder of a modality the data holds.")
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {
                split: extract_embeddings(part, model, processor, Path(cache_dir) / split, batch_size, shard_size,
                                          embedding, device)
                for split, part in dataset.items()
            }
        )
    cache_dir = Path(cache_dir)
    state = process_state()
    lengths = np.fromiter((len(ids) for ids in dataset[UTTERANCE_IDS]), dtype=np.int64, count=len(dataset))
    manifest = _manifest(dataset, int(lengths.sum()), model, processor, modalities, shard_size, embedding, batch_size)
    if state.is_main_process:
        _claim_cache(cache_dir, manifest)
    device = torch.device(device) if device is not None else model.device
    model.to(device).eval()

    utterances = _flatten(dataset, modalities)
    shards = range(0, len(utterances), shard_size)
    sizes = {start: min(shard_size, len(utterances) - start) for start in shards}
    missing = _missing_shards(cache_dir, len(utterances), shard_size)
    done = len(utterances) - sum(sizes[start] for start in missing)
    if done and missing and state.is_main_process:
        logger.warning(f"Resuming the extraction in {cache_dir}: {done} of {len(utterances)} utterances are done.")
    cut, texts = [], 0  # the utterances whose text is cut at max_text_length, said once for the run
    with tqdm(total=len(utterances), initial=done, desc=f"extract {'+'.join(modalities)}", unit="utt",
              disable=None if state.is_main_process else True) as progress:  # no bar when not a terminal
        for first in range(0, len(missing), state.num_processes):
            round_starts = missing[first : first + state.num_processes]
            own = round_starts[state.process_index : state.process_index + 1]  # one shard, none in a short round
            embedded = gather_object([_embed(utterances[start : start + shard_size], model, processor, modalities,
                                             batch_size, embedding, device) for start in own])
            if state.is_main_process:
                for start, (tensors, shard_cut, shard_texts) in zip(round_starts, embedded):
                    with atomic_path(_shard_path(cache_dir, start)) as temporary:
                        save_file(tensors, str(temporary))
                    cut, texts = cut + shard_cut, texts + shard_texts
            progress.update(sum(sizes[start] for start in round_starts))
    if cut:
        logger.warning(cut_texts_warning(f"utterance {cut[0]!r}", len(cut), texts, processor.max_text_length))
    state.wait_for_everyone()

    shard_tensors = [load_file(_shard_path(cache_dir, start)) for start in shards]
    columns = {
        m: (np.concatenate([t[m].numpy() for t in shard_tensors]),
            np.concatenate([t[f"{m}_present"].numpy() for t in shard_tensors]))
        for m in modalities
    }
    if any(len(present) != len(utterances) for _, present in columns.values()):
        raise RuntimeError(f"The cache in {cache_dir} does not cover the dataset; delete it and extract again.")
    return _attach(dataset, lengths, columns, embedding, json.dumps(manifest, sort_keys=True))


def holds_every_shard(dataset: Dataset | DatasetDict, cache_dir: str | os.PathLike, shard_size: int) -> bool:
    """Whether `cache_dir` holds every shard of an extraction of `dataset` in `shard_size` shards: run again,
    `extract_embeddings` then reads the cache and runs no encoder."""
    if isinstance(dataset, DatasetDict):
        return all(holds_every_shard(part, Path(cache_dir) / split, shard_size) for split, part in dataset.items())
    utterances = sum(len(ids) for ids in dataset[UTTERANCE_IDS])
    return not _missing_shards(Path(cache_dir), utterances, shard_size)


def _missing_shards(cache_dir: Path, utterances: int, shard_size: int) -> list[int]:
    """The first utterance of each shard that `cache_dir` does not hold yet."""
    return [start for start in range(0, utterances, shard_size) if not _shard_path(cache_dir, start).exists()]


def _shard_path(cache_dir: Path, start: int) -> Path:
    return cache_dir / f"shard-{start:09d}.safetensors"


def _flatten(dataset: Dataset, modalities) -> list[dict]:
    """One-utterance conversations in dataset order, holding only the modalities being extracted."""
    rows = []
    columns = [c for c in (DIALOGUE_ID, UTTERANCE_IDS, AUDIO, TEXTS) if c in dataset.column_names]
    for dialogue in dataset.select_columns(columns):
        for utterance_id, utterance in zip(dialogue[UTTERANCE_IDS], processor_utterances(dialogue, modalities)):
            rows.append({"id": f"{dialogue[DIALOGUE_ID]}/{utterance_id}", **utterance})
    return rows


@torch.no_grad()
def _embed(rows, model, processor, modalities, batch_size, embedding, device) -> tuple[dict, list[str], int]:
    """The shard's tensors, the ids of its utterances whose text was cut at `max_text_length`, and its text count."""
    outputs = {m: [] for m in modalities}
    present = {m: [] for m in modalities}
    cut = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        # An utterance without any extracted modality (text-only row during speech extraction) is kept as a hole.
        usable = [row for row in chunk if len(row) > 1]
        batch = processor([{"id": row["id"], "utterances": [row]} for row in usable], cut_texts=cut) if usable else None
        for modality in modalities:
            has = [UTTERANCE_KEYS[modality] in row for row in chunk]
            present[modality].extend(has)
            vectors = _modality_vectors(model, batch, modality, embedding, device) if any(has) else None
            width = _width(model, modality, embedding)
            filled, cursor = torch.zeros(len(chunk), width), 0
            for i, flag in enumerate(has):
                if flag:
                    filled[i] = vectors[cursor]
                    cursor += 1
            outputs[modality].append(filled)
    tensors = {m: torch.cat(outputs[m]).contiguous() for m in modalities}
    tensors.update({f"{m}_present": torch.tensor(present[m], dtype=torch.bool) for m in modalities})
    return tensors, [utterance["id"] for utterance in cut], sum(UTTERANCE_KEYS["text"] in row for row in rows)


def _modality_vectors(model, batch, modality, embedding, device) -> torch.Tensor:
    """The rows of one modality, in processor order (row-major over the one-utterance conversations)."""
    encoder = getattr(model, f"{modality}_encoder")
    if modality == "speech":
        inputs = batch["input_values"] if "input_values" in batch else batch["input_features"]
        mask = batch.get("speech_attention_mask")
    else:
        inputs, mask = batch["input_ids"], batch["text_attention_mask"]
    inputs, mask = inputs.to(device), mask.to(device) if mask is not None else None
    if embedding != "projection":
        return encoder.pooled_states(inputs, mask, embedding).float().cpu()
    return encoder(inputs, mask)[0].float().cpu()


def _width(model, modality, embedding) -> int:
    return getattr(model, f"{modality}_encoder").embedding_width(embedding)


def _attach(dataset: Dataset, lengths: np.ndarray, columns: dict[str, tuple[np.ndarray, np.ndarray]], embedding: str,
            key: str) -> Dataset:
    """Regroup the flat utterance vectors (`(vectors, present)` per modality) by dialogue and (re)place the embedding
    columns, which record `embedding` (`embedding_feature`). Built as Arrow arrays, with a fingerprint derived from the
    extraction's `key`: as Python lists, 13k utterances x 2048 floats take seconds to convert and far longer to hash."""
    dialogue_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    for modality, (vectors, present) in columns.items():
        name = EMBED_COLUMN[modality]
        values = int(present.sum()) * vectors.shape[1]
        if values > np.iinfo(np.int32).max:  # int32 offsets would wrap around silently
            raise ValueError(f"{name}: {values} floats exceed the 2**31 values of one Arrow list array; "
                             "extract the dataset in smaller parts (e.g. `dataset.shard`) and concatenate them.")
        utterance_offsets = np.concatenate([[0], np.cumsum(present * vectors.shape[1])]).astype(np.int32)
        utterances = pa.ListArray.from_arrays(pa.array(utterance_offsets), pa.array(vectors[present].reshape(-1)),
                                              mask=pa.array(~present))
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        fingerprint = hashlib.sha256(f"{dataset._fingerprint}/{name}/{key}".encode()).hexdigest()[:32]
        dataset = dataset.add_column(name, pa.ListArray.from_arrays(dialogue_offsets, utterances),
                                     feature=embedding_feature(embedding), new_fingerprint=fingerprint)
    return dataset


def _has_values(dataset: Dataset, column: str) -> bool:
    """Whether some utterance of `dataset` has a value in the per-utterance list `column`."""
    if column not in dataset.column_names:
        return False
    values = pa.chunked_array(dataset.with_format("arrow")[column]).combine_chunks().flatten()
    return values.null_count < len(values)


def _manifest(dataset, utterances: int, model, processor, modalities, shard_size, embedding, batch_size) -> dict:
    """What a cache folder holds: this dataset, model, processor and layout, so that a resume never mixes two runs
    (the processor's settings, e.g. `max_text_length`, change the embeddings as much as the weights do, and the batch
    size changes the padding some speech backbones see)."""
    weights = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        weights.update(name.encode())
        weights.update(_tensor_bytes(param))
    settings = _without_auto_map(processor.to_dict())
    preprocessing = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    backend = getattr(getattr(processor, "tokenizer", None), "backend_tokenizer", None)
    if backend is not None:  # its vocabulary and normalisation; not the padding and truncation each call sets
        state = {key: value for key, value in json.loads(backend.to_str()).items() if key not in ("padding", "truncation")}
        preprocessing.update(json.dumps(state, sort_keys=True).encode())
    return {
        "dataset": dataset._fingerprint,
        "utterances": utterances,
        "model": weights.hexdigest(),
        "processor": preprocessing.hexdigest(),
        "modalities": modalities,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "embedding": embedding,
    }


def _without_auto_map(settings):
    """A processor's settings less `auto_map`, which saving it adds (where its remote code lives, not how it
    preprocesses): a processor saved by stage 1 and the same one built afresh on a rerun share one cache."""
    if isinstance(settings, dict):
        return {key: _without_auto_map(value) for key, value in settings.items() if key != "auto_map"}
    return settings


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's bytes, for the weights' hash (its sum, where its storage cannot be read as bytes: quantized)."""
    try:
        return tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):
        return repr(float(tensor.double().sum())).encode()


def _claim_cache(cache_dir: Path, manifest: dict) -> None:
    """Tie the cache folder to `manifest`, or check that it already holds the same extraction."""
    path = cache_dir / "manifest.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != manifest:
            changed = sorted(k for k in manifest if found.get(k) != manifest[k])
            raise ValueError(f"{cache_dir} holds an extraction with another {', '.join(changed)}; use a new cache dir.")
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2))


__all__ = ["extract_embeddings", "holds_every_shard"]
