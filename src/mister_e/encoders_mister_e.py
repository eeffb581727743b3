"""The utterance encoders of MiSTER-E (stage 1): a pretrained backbone, or openSMILE functionals, turned into one
embedding and one emotion prediction per utterance; `modeling_mister_e.py` builds them into its models."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .configuration_mister_e import MisterEOpenSmileConfig

# The modules of an utterance encoder around its backbone: trained in stage 1, absent from a frozen-backbone embedding.
HEAD_MODULES = ("norm", "pooling", "feature_dropout", "projection", "classifier")


class MisterEAttentiveStatisticsPooling(nn.Module):
    """`[mu; sigma]` of the valid positions under learned attention weights `softmax(v . tanh(W h + b))`."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.attention = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.attention(hidden))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).unsqueeze(-1)
        mean = (weights * hidden).sum(1)
        variance = (weights * hidden.pow(2)).sum(1) - mean.pow(2)
        return torch.cat([mean, variance.clamp(min=1e-5).sqrt()], dim=-1)


class MisterEMeanPooling(nn.Module):
    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class MisterEBackboneFamily:
    """How one family of backbones is built, loaded, sized and run. Chosen once per encoder, from its config
    (`backbone_family`); a new family is one subclass and one entry of `BACKBONE_FAMILIES`. The default: a text model
    (any `AutoModel` on `input_ids`: BERT-family encoders, Llama/Qwen2-style decoders)."""

    prompted = False  # whether the encoder feeds a text prompt after the audio (`speech_prompt_ids`)

    def build(self, config: PreTrainedConfig) -> nn.Module:
        return AutoModel.from_config(config)

    def load(self, path: str, **kwargs) -> nn.Module:
        return AutoModel.from_pretrained(path, **kwargs)

    def hidden_size(self, config: PreTrainedConfig) -> int:
        return getattr(config, "hidden_size", None) or config.d_model

    def num_hidden_states(self, config: PreTrainedConfig) -> int:
        """How many hidden states `output_hidden_states` gives: the embeddings' and one per layer."""
        return config.num_hidden_layers + 1

    def states(self, encoder, inputs, attention_mask, all_layers=False):
        """Last hidden states (with `all_layers`, every layer's, concatenated) and the mask of their valid positions
        (`None`: all valid)."""
        outputs = encoder.backbone(input_ids=inputs, attention_mask=attention_mask, output_hidden_states=all_layers)
        return _hidden(outputs, all_layers), attention_mask


class MisterESelfSupervisedSpeechFamily(MisterEBackboneFamily):
    """Wav2Vec2-style speech encoders (Wav2Vec2, HuBERT, WavLM, data2vec-audio) on raw `input_values`."""

    def states(self, encoder, inputs, attention_mask, all_layers=False):
        backbone = encoder.backbone
        if attention_mask is None:
            return self._hidden(backbone, inputs, None, all_layers), None
        lengths = attention_mask.sum(-1).tolist()
        if getattr(backbone.config, "feat_extract_norm", None) == "group" and min(lengths) < inputs.shape[1]:
            # A group-norm front end (wav2vec2-base, HuBERT-base, WavLM-base) normalises each channel over the whole
            # padded clip, so padding would move an utterance's embedding with its batch-mates' lengths (and a causal
            # model's answer with later utterances'): each utterance is encoded at its own length; clips of one length
            # (a micro-batch of `encoder_batch_size` rows padded to a longer clip elsewhere) together, unpadded.
            frames = int(backbone._get_feat_extract_output_lengths(inputs.shape[1]))
            groups = [list(range(len(lengths)))] if len(set(lengths)) == 1 else [[i] for i in range(len(lengths))]
            rows = [self._hidden(backbone, inputs[group, :lengths[group[0]]], attention_mask[group, :lengths[group[0]]],
                                 all_layers) for group in groups]
            hidden = torch.cat([nn.functional.pad(row, (0, 0, 0, frames - row.shape[1])) for row in rows])
        else:
            hidden = self._hidden(backbone, inputs, attention_mask, all_layers)
        return hidden, backbone._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)

    @staticmethod
    def _hidden(backbone, inputs, attention_mask, all_layers):
        with warnings.catch_warnings():
            # transformers' WavLM attention hands torch a boolean padding mask beside its float position bias, which
            # torch converts correctly but warns about on every call (the warning is transformers' to fix).
            warnings.filterwarnings("ignore", "Support for mismatched key_padding_mask and attn_mask")
            outputs = backbone(input_values=inputs, attention_mask=attention_mask, output_hidden_states=all_layers)
        return _hidden(outputs, all_layers)


class MisterEWhisperFamily(MisterEBackboneFamily):
    """The Whisper encoder alone, on log-mel `input_features`."""

    def build(self, config):
        return WhisperEncoder(config)

    def load(self, path, **kwargs):
        from transformers import WhisperModel

        return WhisperModel.from_pretrained(path, **kwargs).get_encoder()

    def states(self, encoder, inputs, attention_mask, all_layers=False):
        hidden = _hidden(encoder.backbone(input_features=inputs, output_hidden_states=all_layers), all_layers)
        # The encoder's stride-2 convolution halves the mel frames.
        return hidden, attention_mask[:, ::2] if attention_mask is not None else None


class MisterESpeechLLMFamily(MisterEBackboneFamily):
    """Qwen2-Audio: the audio tower, then the language model on `[audio tokens; prompt]`, as the authors' encoder."""

    prompted = True

    def hidden_size(self, config):
        return config.text_config.hidden_size

    def num_hidden_states(self, config):
        return config.text_config.num_hidden_layers + 1

    def states(self, encoder, features, feature_mask, all_layers=False):
        """Run the language model on `[audio tokens; prompt]`, right-padded."""
        backbone = encoder.backbone
        audio = backbone.multi_modal_projector(backbone.audio_tower(features).last_hidden_state)
        if feature_mask is None:
            feature_mask = torch.ones(features.shape[0], features.shape[-1], dtype=torch.long, device=features.device)
        audio_lengths = backbone.audio_tower._get_feat_extract_output_lengths(feature_mask.sum(-1))[1]
        # The tower reads a fixed 30 s window; the language model needs only the batch's longest audio (a 5 s crop is
        # 125 of the 750 positions), which cuts its activations and compute to match.
        audio = audio[:, : int(audio_lengths.max())]
        count, max_audio, width = audio.shape
        prompt = backbone.get_input_embeddings()(encoder.prompt_ids).to(audio.dtype)
        positions = torch.arange(max_audio + len(prompt), device=audio.device)[None, :]
        in_audio = positions < audio_lengths[:, None]
        in_prompt = ~in_audio & (positions < audio_lengths[:, None] + len(prompt))
        embeds = audio.new_zeros(count, positions.shape[1], width)
        embeds[in_audio] = audio[torch.arange(max_audio, device=audio.device)[None, :] < audio_lengths[:, None]]
        embeds[in_prompt] = prompt.repeat(count, 1)
        mask = in_audio | in_prompt
        outputs = backbone.language_model(inputs_embeds=embeds, attention_mask=mask.long(),
                                          output_hidden_states=all_layers)
        return _hidden(outputs, all_layers), mask


def _hidden(outputs, all_layers: bool) -> torch.Tensor:
    """The last hidden states, or every layer's (the embeddings' included) concatenated along the features."""
    return torch.cat(outputs.hidden_states, dim=-1) if all_layers else outputs.last_hidden_state


# `model_type` -> family; any other type is a text model, or a Wav2Vec2-style speech encoder when the built backbone
# has the feature-vector mask of one (see `backbone_family`).
BACKBONE_FAMILIES: dict[str, MisterEBackboneFamily] = {
    "whisper": MisterEWhisperFamily(),
    "qwen2_audio": MisterESpeechLLMFamily(),
    **dict.fromkeys(("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "unispeech",
                     "unispeech-sat", "sew", "sew-d"), MisterESelfSupervisedSpeechFamily()),
}


def backbone_family(config: PreTrainedConfig, backbone: nn.Module | None = None) -> MisterEBackboneFamily:
    if config.model_type in BACKBONE_FAMILIES:
        return BACKBONE_FAMILIES[config.model_type]
    if hasattr(backbone, "_get_feature_vector_attention_mask"):
        return MisterESelfSupervisedSpeechFamily()
    return MisterEBackboneFamily()


class MisterEFeatureStandardizer(nn.Module):
    """`(x - mean) / std` with training-split statistics held as buffers: saved and reloaded with the model, applied
    identically in training and inference, and never recomputed from the data seen at inference."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The standardised features in float32 (or finer), whatever the model's dtype: in bf16 features far from zero
        lose their spread to rounding, in fp16 they overflow. Callers cast the result to their weights' dtype."""
        dtype = torch.promote_types(self.mean.dtype, torch.float32)
        return (features.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype)

    def _apply(self, fn, recurse=True):
        """A cast of the model to 16 bits after loading (`model.to(torch.bfloat16)`, `.half()`) keeps the statistics
        float32, as `from_pretrained(dtype=...)` does (`_keep_in_fp32_modules_strict`): cast, a mean near 1e5 lost its
        spread to bf16 rounding. Device moves, and casts to float32 or finer, apply as to any buffer."""

        def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
            applied = fn(tensor)
            if applied.is_floating_point() and torch.finfo(applied.dtype).bits < 32:
                return tensor.to(applied.device, torch.promote_types(tensor.dtype, torch.float32))
            return applied

        return super()._apply(at_least_float32, recurse)

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> None:
        """Take the statistics of `features` `(rows, width)`; a constant column gets std 1 (it is only shifted)."""
        features = features.to(torch.float64)
        std = features.std(0, unbiased=False)
        self.mean.copy_(features.mean(0))
        self.std.copy_(torch.where(std > 1e-8 * features.abs().amax(0).clamp(min=1), std, torch.ones_like(std)))


class MisterELayerMix(nn.Module):
    """A learned softmax-weighted mean of `count` equal-width states concatenated along the last axis (ELMo's scalar
    mix): which of a backbone's layers carry the task is learned, at one state's width, rather than chosen."""

    def __init__(self, count: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(count))  # uniform at first

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        stacked = states.unflatten(-1, (len(self.weights), -1))
        return torch.einsum("...lw,l->...w", stacked, self.weights.softmax(0).to(stacked.dtype))


class MisterEFunctionalsEncoder(nn.Module):
    """openSMILE functionals -> standardisation (training-split statistics) -> dropout -> projection (the embedding)
    -> utterance classifier: the head of `MisterEUtteranceEncoder` on a fixed vector instead of a backbone's frames.
    With `embedding="backbone_mean"` it has no head: the standardised functionals are the embedding."""

    model_type = MisterEOpenSmileConfig.model_type

    def __init__(self, backbone_config: MisterEOpenSmileConfig, embed_dim, num_labels, dropout, embedding="projection"):
        super().__init__()
        self.hidden_size = backbone_config.hidden_size
        self.standardizer = MisterEFeatureStandardizer(self.hidden_size)
        self.embedding = embedding
        if embedding == "projection":
            self.feature_dropout = nn.Dropout(backbone_config.feature_dropout)
            self.projection = nn.Linear(self.hidden_size, embed_dim)
            self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(embed_dim, num_labels))
        self.embedding_width(embedding)  # openSMILE functionals have no layers

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None):
        """`(embeddings, utterance logits)`; the logits are `None` without a head."""
        if self.embedding != "projection":
            return self.pooled_states(inputs, attention_mask, self.embedding), None
        embeds = self.projection(self.feature_dropout(self.standardizer(inputs).to(self.projection.weight.dtype)))
        return embeds, self.classifier(embeds)

    def pooled_states(self, inputs, attention_mask, embedding: str) -> torch.Tensor:
        """The standardised functionals (the frozen-features embedding: one frame, so its mean is itself)."""
        self.embedding_width(embedding)
        return self.standardizer(inputs)

    def embedding_width(self, embedding: str) -> int:
        if embedding == "backbone_layers":
            raise ValueError("The speech encoder reads openSMILE functionals, which have no layers: use the "
                             "`backbone_mean` embedding.")
        return self.hidden_size if embedding == "backbone_mean" else self.projection.out_features


class MisterEUtteranceEncoder(nn.Module):
    """Backbone -> LayerNorm -> pooling over valid positions -> projection (the embedding) -> utterance classifier.

    Speech backbones: Wav2Vec2-style encoders (Wav2Vec2, HuBERT, WavLM, data2vec-audio) on `input_values`, the Whisper
    encoder and the Qwen2-Audio speech LLM on `input_features`. Text backbones: any `AutoModel` on `input_ids`
    (BERT-family encoders, Llama/Qwen2-style decoders). With `embedding="backbone_mean"` or `"backbone_layers"` it has
    no head: the backbone's states, mean-pooled, are the embedding (`MisterEConfig.<modality>_embedding`).
    """

    def __init__(self, backbone_config, embed_dim, pooling, num_labels, dropout, prompt_ids=None, backbone=None,
                 embedding="projection"):
        super().__init__()
        self.model_type = backbone_config.model_type
        self.backbone = backbone if backbone is not None else backbone_family(backbone_config).build(backbone_config)
        self.family = backbone_family(backbone_config, self.backbone)
        hidden_size = self.hidden_size = self.family.hidden_size(backbone_config)
        self.num_hidden_states = self.family.num_hidden_states(backbone_config)
        self.embedding = embedding
        if embedding == "projection":
            self.norm = nn.LayerNorm(hidden_size)
            self.pooling = (MisterEAttentiveStatisticsPooling(hidden_size) if pooling == "attentive"
                            else MisterEMeanPooling())
            self.projection = nn.Linear(2 * hidden_size if pooling == "attentive" else hidden_size, embed_dim)
            self.classifier = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(embed_dim, num_labels))
        self.register_buffer("prompt_ids", torch.tensor(prompt_ids or [], dtype=torch.long), persistent=False)

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None):
        """`(embeddings, utterance logits)`; the logits are `None` without a head."""
        if self.embedding != "projection":
            return self.pooled_states(inputs, attention_mask, self.embedding), None
        hidden, mask = self.backbone_states(inputs, attention_mask)
        # A bf16/fp16 (or quantized) backbone feeds a head that trains in its own dtype, fp32 by default.
        embeds = self.projection(self.pooling(self.norm(hidden.to(self.norm.weight.dtype)), mask))
        return embeds, self.classifier(embeds)

    def pooled_states(self, inputs, attention_mask, embedding: str) -> torch.Tensor:
        """The backbone's states mean-pooled over valid positions: the last layer's (`"backbone_mean"`) or every
        layer's, concatenated (`"backbone_layers"`): the frozen-backbone embeddings."""
        hidden, mask = self.backbone_states(inputs, attention_mask, all_layers=embedding == "backbone_layers")
        return MisterEMeanPooling()(hidden, mask)

    def embedding_width(self, embedding: str) -> int:
        if embedding == "backbone_layers":
            return self.hidden_size * self.num_hidden_states
        return self.hidden_size if embedding == "backbone_mean" else self.projection.out_features

    def backbone_states(self, inputs, attention_mask, all_layers=False):
        """Last hidden states (with `all_layers`, every layer's, the embeddings' included, concatenated along the
        features) and the mask of their valid positions."""
        if inputs.is_floating_point():
            inputs = inputs.to(self.backbone.dtype)
        hidden, mask = self.family.states(self, inputs, attention_mask, all_layers)
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        return hidden, mask.bool()


def build_encoders(config, speech_backbone: nn.Module | None = None, text_backbone: nn.Module | None = None):
    """`(speech_encoder, text_encoder)` of a `MisterEConfig`: one for each modality whose backbone config is set, else
    `None`. A given backbone module is used as is; otherwise one is built (randomly initialised) from its config."""
    speech_encoder = text_encoder = None
    # By model type, not class: a remote-code copy of the config module holds its own class object.
    if getattr(config.speech_config, "model_type", None) == MisterEOpenSmileConfig.model_type:
        speech_encoder = MisterEFunctionalsEncoder(
            config.speech_config, config.speech_embed_dim, config.num_labels, config.encoder_dropout,
            config.speech_embedding,
        )
    elif config.speech_config is not None:
        speech_encoder = MisterEUtteranceEncoder(
            config.speech_config, config.speech_embed_dim, config.speech_pooling, config.num_labels,
            config.encoder_dropout, config.speech_prompt_ids, speech_backbone, config.speech_embedding,
        )
    if config.text_config is not None:
        text_encoder = MisterEUtteranceEncoder(
            config.text_config, config.text_embed_dim, config.text_pooling, config.num_labels,
            config.encoder_dropout, backbone=text_backbone, embedding=config.text_embedding,
        )
    return speech_encoder, text_encoder


def encode_in_chunks(encoder: nn.Module, inputs: torch.Tensor, mask: torch.Tensor | None, size: int | None):
    """The encoder over the utterance rows, `size` rows a pass (all at once when `None`), so that the backbone's
    activations stay bounded however many utterances a conversation has. The result equals one pass up to float
    error: audio keeps the batch's padding (a group-norm front end encodes each row at its own length), and token
    ids lose only the trailing
    columns that are padding in every row of the pass (attention masks them; positions do not move)."""
    size = size or len(inputs)
    if len(inputs) <= size:
        return encoder(inputs, mask)
    parts = []
    for start in range(0, len(inputs), size):
        rows, rows_mask = inputs[start : start + size], None if mask is None else mask[start : start + size]
        if rows_mask is not None and not rows.is_floating_point() and rows_mask.any():
            width = int(rows_mask.any(0).nonzero().max()) + 1
            rows, rows_mask = rows[:, :width], rows_mask[:, :width]
        parts.append(encoder(rows, rows_mask))
    logits = None if parts[0][1] is None else torch.cat([logits for _, logits in parts])
    return torch.cat([embeds for embeds, _ in parts]), logits
