"""A tiny end-to-end MiSTER-E (tiny WavLM + tiny BERT encoders) and its processor, shared by the pipeline/Hub tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import BertConfig, BertTokenizerFast, Wav2Vec2FeatureExtractor, WavLMConfig

from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEProcessor

from tiny import tiny_sizes

SR = 16000
TASK = "emotion-recognition-in-conversation"
LABELS = ["anger", "joy", "neutral", "sadness"]
WORDS = ["hello", "world", "yes", "no", "oh", "okay", "really", "fine"]
_SSL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, conv_dim=(8, 8),
    conv_stride=(5, 4), conv_kernel=(10, 4), num_feat_extract_layers=2, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, num_buckets=16, max_bucket_distance=20,
)


def tiny_model(causal: bool = False) -> MisterEForEmotionRecognition:
    torch.manual_seed(0)
    config = MisterEConfig(
        speech_config=WavLMConfig(**_SSL),
        text_config=BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                               vocab_size=len(WORDS) + 5),
        speech_embed_dim=12, text_embed_dim=10, **tiny_sizes(layers=2), causal=causal, id2label=dict(enumerate(LABELS)),
    )
    return MisterEForEmotionRecognition(config).eval()


def tiny_processor() -> MisterEProcessor:
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)})
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SR, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    return MisterEProcessor(extractor, tokenizer, min_audio_seconds=0.2)


def write_clips(folder: Path, count: int = 4) -> list[str]:
    """`count` 0.5 s clips of different noise, all the same length (so no padding differs between runs)."""
    paths = []
    for seed in range(count):
        path = folder / f"clip{seed}.wav"
        sf.write(path, 0.3 * np.random.default_rng(seed).standard_normal(SR // 2).astype(np.float32), SR)
        paths.append(str(path))
    return paths
