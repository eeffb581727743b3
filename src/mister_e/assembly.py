"""One end-to-end model (raw audio and text in) from the folders the two training stages write."""

from __future__ import annotations

import os
from pathlib import Path

from .modeling_mister_e import MisterEForEmotionRecognition, MisterEForUtteranceClassification
from .processing_mister_e import MisterEProcessor


def join_stages(
    conversation_model: str | os.PathLike, encoders: list[str | os.PathLike]
) -> tuple[MisterEForEmotionRecognition, MisterEProcessor]:
    """The stage-2 model at `conversation_model` with the stage-1 encoders at `encoders` (each a `train-encoder`
    `merged/` folder, one per modality), and the processor that feeds them: audio preprocessing from the speech
    encoder's processor, the tokenizer from the text encoder's. Save both to one folder for the pipeline."""
    for path in (conversation_model, *encoders):
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"No saved model (config.json) in {path}.")
    model = MisterEForEmotionRecognition.from_pretrained(conversation_model)
    processors = {}
    for folder in encoders:
        encoder = MisterEForUtteranceClassification.from_pretrained(folder)
        model = MisterEForEmotionRecognition.from_stages(encoder, model)
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


__all__ = ["join_stages"]
