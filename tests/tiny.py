"""The tiny stage-2 model every test builds (transformers' ModelTester idea): one place that says how small it is."""

from __future__ import annotations

from mister_e import MisterEConfig


def tiny_sizes(layers: int = 1, attention_dim: int = 4) -> dict:
    """`MisterEConfig` widths and depths for tests; `layers=2` where stacking matters (streaming, resuming)."""
    return dict(context_dim=8, gru_layers=layers, cross_modal_dim=8, coattention_layers=layers,
                attention_dim=attention_dim, attention_heads=2, fusion_hidden_size=8, gate_hidden_size=5)


def tiny_config(speech_embed_dim: int = 6, text_embed_dim: int = 5, num_labels: int = 3, layers: int = 1,
                **overrides) -> MisterEConfig:
    """A tiny stage-2 config; labels `emotion_0..` unless `id2label` is given."""
    labels = {} if "id2label" in overrides else {"id2label": {i: f"emotion_{i}" for i in range(num_labels)}}
    return MisterEConfig(**{**tiny_sizes(layers), "speech_embed_dim": speech_embed_dim,
                            "text_embed_dim": text_embed_dim, **labels, **overrides})
