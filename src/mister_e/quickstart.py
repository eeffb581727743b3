"""`mister-e quickstart`: the whole method on a built-in demo corpus, offline, in a few minutes on a laptop CPU.

Stage 1 fine-tunes the text encoder (the real all-MiniLM-L6-v2 when the `minilm` extra is installed, else a tiny
BERT) with LoRA, and trains the speech encoder on openSMILE eGeMAPS functionals (the `opensmile` extra): a real,
standard acoustic representation that runs offline. Without that extra no real speech weights ship offline, and LoRA
on a random backbone would teach nothing, so the speech encoder falls back to a frozen, randomly initialised tiny
Wav2Vec2 whose embedding is the mean of its LayerNorm-ed frames (random convolutional features still carry loudness,
pitch and timbre). Embeddings are extracted; stage 2 trains a small MiSTER-E; the two stages are joined into one
end-to-end model, saved with its processor, reloaded through the pipeline and run on a new conversation of WAV files
and transcripts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from importlib.util import find_spec

import torch
from datasets import disable_progress_bars
from transformers import BertConfig, BertTokenizerFast, Wav2Vec2Config, Wav2Vec2FeatureExtractor

from .backbones import packaged_minilm
from .configuration_mister_e import MisterEConfig
from .demo import EMOTIONS, build_demo_corpus, demo_conversation
from .extraction import extract_embeddings
from .feature_extraction_mister_e import MisterEFunctionalsFeatureExtractor
from .modeling_mister_e import MisterEForEmotionRecognition, MisterEForUtteranceClassification
from .processing_mister_e import MisterEProcessor
from .utils import atomic_path

# A small MiSTER-E: the paper's structure, widths for a CPU demo.
STAGE_TWO_SIZES = dict(context_dim=64, gru_layers=2, cross_modal_dim=64, coattention_layers=2, attention_dim=32,
                       attention_heads=2, fusion_hidden_size=64)
TINY_WAV2VEC2 = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                     conv_dim=(64, 64, 64), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_feat_extract_layers=3,
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
                     do_stable_layer_norm=True)
EMBED_DIM = 64
# 88 functionals: a tenth of a second per utterance, the field's minimal standard set.
SPEECH_FUNCTIONALS = "eGeMAPSv02"


def quickstart(output_dir: str | Path = "mister-e-quickstart", epochs: int = 30, seed: int = 0) -> dict:
    from .training import check_run, finished_results, load_recipe, train_conversation_model, train_encoder

    disable_progress_bars()
    output_dir = Path(output_dir)
    labels = {"id2label": dict(enumerate(EMOTIONS))}
    print("[1/5] Building the demo corpus (synthetic voices + transcripts) ...")
    corpus = build_demo_corpus(output_dir / "corpus", seed=seed)

    tokenizer, text_model = _text_encoder(corpus, labels)
    functionals = find_spec("opensmile") is not None
    # No per-utterance normalisation: loudness is an emotion cue the random encoder can only see unnormalised.
    extractor = (MisterEFunctionalsFeatureExtractor(SPEECH_FUNCTIONALS) if functionals
                 else Wav2Vec2FeatureExtractor(return_attention_mask=True, do_normalize=False))
    processor = MisterEProcessor(extractor, tokenizer, min_audio_seconds=0.5, train_crop_seconds=2.0)
    print("[2/5] Stage 1: fine-tuning the text encoder with LoRA" + (
        f", training the speech encoder on openSMILE {SPEECH_FUNCTIONALS} ..." if functionals else " ..."))
    # A rerun (another --epochs, or after an interruption) keeps the finished encoders and their extraction cache.
    results = finished_results(output_dir / "text-encoder", seed) or train_encoder(
        corpus, "text", output_dir / "text-encoder", processor, model=text_model, lora={"r": 8, "lora_alpha": 32},
        seed=seed, training_overrides={"num_train_epochs": 6, "learning_rate": 5e-4, "per_device_train_batch_size": 16},
    )
    stage_one_test = {"text": results["test"]}
    stage_one = {"text": MisterEForUtteranceClassification.from_pretrained(output_dir / "text-encoder" / "merged")}
    if functionals:
        results = finished_results(output_dir / "speech-encoder", seed) or train_encoder(
            corpus, "speech", output_dir / "speech-encoder", processor, backbone=f"opensmile:{SPEECH_FUNCTIONALS}",
            seed=seed, config_overrides={"speech_embed_dim": EMBED_DIM},  # its head fitted full batch (L-BFGS)
        )
        stage_one_test["speech"] = results["test"]
        stage_one["speech"] = MisterEForUtteranceClassification.from_pretrained(output_dir / "speech-encoder" / "merged")
    else:
        print("      (no `opensmile`: the speech encoder is a frozen random tiny Wav2Vec2; "
              'pip install "mister-e[opensmile]" for a real one)')
        stage_one["speech"] = _frozen_speech_encoder(labels, seed)
    for modality, scores in stage_one_test.items():
        print(f"      {modality} encoder alone: test weighted F1 {scores['weighted_f1']:.3f}")

    print("[3/5] Extracting utterance embeddings ...")
    embedded = corpus
    for modality, model in stage_one.items():
        embedded = extract_embeddings(embedded, model, processor, output_dir / "cache" / modality)

    print("[4/5] Stage 2: training MiSTER-E on whole conversations ...")
    recipe = load_recipe("small")  # the recipe for small encoders, at demo widths
    stage_two_dir, settings = output_dir / "conversation-model", {"quickstart_epochs": epochs, "seed": seed}
    try:  # another --epochs: its own stage 2, not the earlier one's checkpoints resumed or results read back
        check_run(stage_two_dir, settings)
    except ValueError:
        print(f"      (stage 2 in {stage_two_dir} was trained with other settings: training it again)")
        shutil.rmtree(stage_two_dir)
    # The same command again reads its finished stage 2 back, as it does the encoders.
    results = finished_results(stage_two_dir, seed) or train_conversation_model(
        embedded, stage_two_dir, run_settings=settings, config_overrides={**recipe["config"], **STAGE_TWO_SIZES},
        seed=seed, gate_learning_rate=recipe["gate_learning_rate"], modality_dropout=recipe["modality_dropout"],
        training_overrides={**recipe["training"], "num_train_epochs": epochs, "learning_rate": 1e-3,
                            "per_device_train_batch_size": 8},
    )
    conversation_model = MisterEForEmotionRecognition.from_pretrained(output_dir / "conversation-model")
    end_to_end = MisterEForEmotionRecognition.from_stages(stage_one["speech"], conversation_model)
    end_to_end = MisterEForEmotionRecognition.from_stages(stage_one["text"], end_to_end)
    model_dir = output_dir / "model"
    end_to_end.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    print("[5/5] Reloading through the pipeline and predicting a new conversation ...")
    from transformers import pipeline

    pipe = pipeline("emotion-recognition-in-conversation", model=str(model_dir))
    example = demo_conversation(output_dir, seed=seed)
    predictions = pipe({"utterances": example["utterances"]})
    for utterance, truth, prediction in zip(example["utterances"], example["labels"], predictions):
        weights = " ".join(f"{k}={v:.2f}" for k, v in prediction["expert_weights"].items())
        print(f"  {utterance['text'][:48]:<48} true={truth:<8} predicted={prediction['label']:<8} "
              f"({prediction['score']:.2f})  experts: {weights}")
    test = results["test"]
    print(f"\nTest metrics (stage 2, from this run): weighted F1 {test['weighted_f1']:.3f}, accuracy "
          f"{test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}")
    print(f"Model, processor and reports saved under {output_dir.resolve()}")
    summary = {"test": test, **{f"{m}_encoder_test": scores for m, scores in stage_one_test.items()},
               "model_dir": str(model_dir), "predictions": predictions}
    with atomic_path(output_dir / "quickstart.json") as partial:
        partial.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _frozen_speech_encoder(labels, seed):
    torch.manual_seed(seed)
    model = MisterEForUtteranceClassification(
        MisterEConfig(speech_config=Wav2Vec2Config(**TINY_WAV2VEC2), speech_embed_dim=EMBED_DIM, **labels)
    )
    with torch.no_grad():
        model.speech_encoder.projection.weight.copy_(torch.eye(EMBED_DIM))
        model.speech_encoder.projection.bias.zero_()
    return model.eval()


def _text_encoder(corpus, labels):
    """The real MiniLM when installed; otherwise a tiny BERT over the corpus vocabulary (still offline)."""
    minilm = packaged_minilm()
    if minilm is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(minilm), MisterEForUtteranceClassification.from_backbones(
            text=minilm, text_embed_dim=EMBED_DIM, **labels
        )
    words = sorted({w for texts in corpus["train"]["texts"] for t in texts if t for w in t.lower().split()})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    config = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        vocab_size=len(vocab))
    model = MisterEForUtteranceClassification(MisterEConfig(text_config=config, text_embed_dim=EMBED_DIM, **labels))
    return BertTokenizerFast(vocab=vocab), model


__all__ = ["quickstart"]
