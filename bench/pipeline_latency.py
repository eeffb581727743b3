"""Pipeline inference on one 20-utterance conversation (WAV files + transcripts), against the backbones' own forward.

    python bench/pipeline_latency.py           # bench/results/pipeline_latency.json
    python bench/pipeline_latency.py --quick   # one repeat, short clips, nothing written

End-to-end model: the real all-MiniLM-L6-v2 text encoder, a small randomly initialised WavLM speech encoder (4 layers,
hidden 256, the standard 7-layer convolutional front end; no speech weights ship offline) and a paper-size
conversation model. The pipeline reads 20 WAV files (2-4 s, 16 kHz), tokenises, runs both encoders on all utterances
of the conversation at once and the conversation model, and formats the answers. "Backbones" is the backbones'
forward alone on the processor's output for the same conversation; "model" the whole model's forward on it (backbones,
encoder heads, conversation model), so pipeline - model is the pipeline's own cost (reading audio, tokenising,
formatting). Pipeline, model and backbone passes alternate; medians.
The same conversation without its audio (transcripts only) is timed too: there MiniLM is the only backbone, and the
paper-size conversation model and the processor weigh most.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor, WavLMConfig, pipeline

from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEForUtteranceClassification, MisterEProcessor
from mister_e.backbones import packaged_minilm

ROOT = Path(__file__).resolve().parent
UTTERANCES = 20
SMALL_WAVLM = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
SENTENCES = ["I can't believe you did that!", "Oh, that's wonderful news.", "Whatever, I don't care.",
             "Why would you say that to me?", "Okay, fine.", "I'm so sorry for your loss, really."]


def build(folder: Path, seconds: tuple[float, float] = (2, 4)):
    torch.manual_seed(0)
    minilm = packaged_minilm()
    encoders = MisterEForUtteranceClassification.from_backbones(text=minilm)
    speech = MisterEForUtteranceClassification(MisterEConfig(speech_config=WavLMConfig(**SMALL_WAVLM)))
    conversation = MisterEForEmotionRecognition(MisterEConfig())
    model = MisterEForEmotionRecognition.from_stages(encoders, conversation)
    model = MisterEForEmotionRecognition.from_stages(speech, model).eval()
    processor = MisterEProcessor(Wav2Vec2FeatureExtractor(return_attention_mask=True),
                                 AutoTokenizer.from_pretrained(minilm))
    rng = np.random.default_rng(0)
    utterances = []
    for i in range(UTTERANCES):
        path = folder / f"utt{i:02d}.wav"
        sf.write(path, 0.1 * rng.standard_normal(int(16000 * rng.uniform(*seconds))).astype(np.float32), 16000)
        utterances.append({"audio": str(path), "text": SENTENCES[i % len(SENTENCES)]})
    return model, processor, {"utterances": utterances}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 1 if args.quick else 10
    with tempfile.TemporaryDirectory() as folder:
        model, processor, conversation = build(Path(folder), (0.5, 1) if args.quick else (2, 4))
        pipe = pipeline("emotion-recognition-in-conversation", model=model, processor=processor)
        transcripts = {"utterances": [{"text": u["text"]} for u in conversation["utterances"]]}
        results = {"utterances": UTTERANCES, "threads": torch.get_num_threads()}
        for name, inputs in (("speech_and_text", conversation), ("text_only", transcripts)):
            results[name] = measure(pipe, model, processor(inputs), inputs, repeats)
        results["audio_seconds"] = float(processor(conversation)["speech_attention_mask"].sum()) / 16000
    print(json.dumps({name: {k: v for k, v in value.items() if k != "seconds"} if isinstance(value, dict) else value
                      for name, value in results.items()}, indent=2))
    if not args.quick:
        (ROOT / "results" / "pipeline_latency.json").write_text(json.dumps(results, indent=2))


def measure(pipe, model, batch, inputs, repeats: int) -> dict:
    """Median latency of the pipeline on `inputs` and of the backbones alone on its processed `batch`, alternating."""

    @torch.inference_mode()
    def backbones() -> float:
        start = time.perf_counter()
        if "input_values" in batch:
            model.speech_encoder.backbone_states(batch["input_values"], batch["speech_attention_mask"])
        model.text_encoder.backbone_states(batch["input_ids"], batch["text_attention_mask"])
        return time.perf_counter() - start

    @torch.inference_mode()
    def whole_model() -> float:
        start = time.perf_counter()
        model(**batch)
        return time.perf_counter() - start

    def end_to_end() -> float:
        start = time.perf_counter()
        pipe(inputs)
        return time.perf_counter() - start

    end_to_end(), backbones(), whole_model()  # warm-up
    timings = {"pipeline": [], "model": [], "backbones": []}
    for _ in range(repeats):
        timings["pipeline"].append(end_to_end())
        timings["model"].append(whole_model())
        timings["backbones"].append(backbones())
    median = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "pipeline_ms": 1000 * median["pipeline"],
        "model_ms": 1000 * median["model"],
        "backbones_ms": 1000 * median["backbones"],
        "pipeline_utterances_per_s": UTTERANCES / median["pipeline"],
        "overhead_over_backbones": median["pipeline"] / median["backbones"] - 1,
        "pipeline_over_model": median["pipeline"] / median["model"] - 1,
        "seconds": timings,
    }


if __name__ == "__main__":
    main()
