"""One end-to-end model (raw audio and text in) from the folders the two training stages write."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .modeling_mister_e import MisterEForEmotionRecognition, MisterEForUtteranceClassification
from .processing_mister_e import MisterEProcessor


FOLDER_KINDS = {
    "stage-1": "a stage-1 encoder folder (`mister-e train-encoder` output `merged/`: utterances in, embeddings out)",
    "stage-2": "a stage-2 model (`mister-e train` output: it reads embeddings, so it needs its stage-1 encoders)",
    "end-to-end": "an end-to-end model (raw audio and text in)",
}


def folder_kind(path: str | os.PathLike) -> str:
    """What a saved MiSTER-E folder holds, from its `config.json` alone: "stage-1", "stage-2" or "end-to-end"."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"No saved model (config.json) in {path}.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path} is not a readable config: {error}") from None
    architectures = config.get("architectures") or []
    if "MisterEForUtteranceClassification" in architectures:
        return "stage-1"
    if "MisterEForEmotionRecognition" not in architectures:
        raise ValueError(f"{path} holds no MiSTER-E model (its config names {architectures or 'no architecture'}).")
    return "end-to-end" if config.get("speech_config") or config.get("text_config") else "stage-2"


def require_kind(path: str | os.PathLike, kinds: tuple[str, ...], use: str) -> None:
    """Raise, naming the folder, what it is and what `use` needs, unless it is one of `kinds`."""
    kind = folder_kind(path)
    if kind not in kinds:
        wanted = " or ".join(FOLDER_KINDS[k] for k in kinds)
        raise ValueError(f"{path} is {FOLDER_KINDS[kind]}; {use} needs {wanted}.")


def encoders_by_modality(folders: list[str | os.PathLike], option: str) -> dict[str, str | os.PathLike]:
    """The stage-1 encoder folder of each modality, from its config alone; `option` names the argument in errors. Two
    folders encoding one modality are refused: which one the model would use is otherwise a matter of order."""
    encodes = {}
    for folder in folders:
        require_kind(folder, ("stage-1",), f"`{option}`")
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        for modality in ("speech", "text"):
            if config.get(f"{modality}_config"):
                if modality in encodes:
                    raise ValueError(f"{option}: {encodes[modality]} and {folder} both encode {modality}; give one "
                                     "encoder per modality.")
                encodes[modality] = folder
    return encodes


def join_stages(
    conversation_model: str | os.PathLike, encoders: list[str | os.PathLike], embedding: str | None = None
) -> tuple[MisterEForEmotionRecognition, MisterEProcessor]:
    """The stage-2 model at `conversation_model` with the stage-1 encoders at `encoders` (each a `train-encoder`
    `merged/` folder, one per modality), and the processor that feeds them: audio preprocessing from the speech
    encoder's processor, the tokenizer from the text encoder's. Save both to one folder for the pipeline.
    `embedding` names the encoders' vectors the stage-2 model was trained on (`extract --embedding`); by default the
    one recorded in its config when it was trained on extracted data, else the trained projection."""
    require_kind(conversation_model, ("stage-2",), "`--model` with `--encoder`")
    encoders_by_modality(encoders, "--encoder")  # one per modality
    model = MisterEForEmotionRecognition.from_pretrained(conversation_model)
    processors = {}
    for folder in encoders:
        encoder = MisterEForUtteranceClassification.from_pretrained(folder)
        model = MisterEForEmotionRecognition.from_stages(encoder, model, embedding)
        for modality in ("speech", "text"):
            if getattr(encoder, f"{modality}_encoder") is not None:
                processors[modality] = MisterEProcessor.from_pretrained(folder)
    if not processors:
        raise ValueError("`encoders` named no stage-1 encoder folder.")
    speech, text = processors.get("speech", processors.get("text")), processors.get("text", processors.get("speech"))
    options = {key: getattr(speech, key) for key in ("max_audio_seconds", "min_audio_seconds", "train_crop_seconds")}
    processor = MisterEProcessor(speech.feature_extractor, text.tokenizer, max_text_length=text.max_text_length,
                                 **options)
    return model.eval(), processor


def load_end_to_end(
    folder: str | os.PathLike, encoders: list[str | os.PathLike] | None, embedding: str | None, use: str
) -> tuple[MisterEForEmotionRecognition, MisterEProcessor]:
    """The end-to-end model and processor a verb `use` reads: the end-to-end folder at `folder`, or the stage-2 model
    there joined to its stage-1 `encoders` (`join_stages`). Every wrong folder is refused naming it."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"No model folder at {folder}.")
    if embedding and not encoders:
        raise ValueError("--embedding says which vector of the --encoder folders a stage-2 model reads; give the "
                         "encoders too (an end-to-end model already holds its own).")
    if encoders:
        return join_stages(folder, encoders, embedding)
    require_kind(folder, ("end-to-end",), f"{use} (without `--encoder`)")
    return MisterEForEmotionRecognition.from_pretrained(folder), MisterEProcessor.from_pretrained(folder)


_ENCODERS = ("speech_encoder", "text_encoder")  # the stage-1 part of an end-to-end model's state dict
WEIGHTS_KEY = "weights_sha256"  # where a run's results (`results.json`, `summary.json` runs) record the fingerprint


def conversation_fingerprint(model: MisterEForEmotionRecognition) -> str:
    """sha256 of the conversation model's weights: every tensor of its state dict but the utterance encoders', by
    name in sorted order (name, dtype, shape and bytes). A stage-2 model joined to its encoders (`from_stages`) keeps
    it, so a run's `results.json` (which records it) can be checked against the end-to-end model that is shared."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.split(".")[0] in _ENCODERS:
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


__all__ = ["WEIGHTS_KEY", "conversation_fingerprint", "encoders_by_modality", "join_stages", "load_end_to_end"]
