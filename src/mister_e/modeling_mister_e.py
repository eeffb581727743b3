"""PyTorch MiSTER-E: a mixture of speech, text and cross-modal experts over the utterances of a conversation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_mister_e import EXPERTS, MisterEConfig

SPEECH, TEXT, CROSS_MODAL = range(3)


@dataclass
class MisterEOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
        Focal loss on the mixture and on each enabled expert, plus the weighted SupCon and symmetric KL terms.
    logits (`torch.FloatTensor` of shape `(batch, utterances, num_labels)`):
        Gated mixture of the experts' logits; `argmax` is the prediction.
    expert_logits (`torch.FloatTensor` of shape `(batch, utterances, 3, num_labels)`):
        Logits of the speech, text and cross-modal experts, in that order (zeros for a disabled expert).
    gate_weights (`torch.FloatTensor` of shape `(batch, utterances, 3)`):
        Weight of each expert per utterance. Zero for disabled or unavailable experts; rows of real utterances sum to
        1, rows of padding are 0.
    speech_representations (`torch.FloatTensor` of shape `(batch, utterances, cross_modal_dim)`, *optional*):
        The cross-modal expert's speech vectors (`A_hat`) that the contrastive loss aligns with the text vectors.
    text_representations (`torch.FloatTensor` of shape `(batch, utterances, cross_modal_dim)`, *optional*):
        The cross-modal expert's text vectors (`T_hat`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    expert_logits: torch.FloatTensor | None = None
    gate_weights: torch.FloatTensor | None = None
    speech_representations: torch.FloatTensor | None = None
    text_representations: torch.FloatTensor | None = None


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean of `(1 - p) ** gamma * CE` over the utterances selected by `mask` (zero when none is)."""
    if not mask.any():
        return logits.sum() * 0.0
    cross_entropy = F.cross_entropy(logits[mask], labels[mask], reduction="none")
    return ((1 - torch.exp(-cross_entropy)) ** gamma * cross_entropy).mean()


def supervised_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al., 2020): every other vector with the same label is a positive of an anchor."""
    features = F.normalize(features, dim=-1)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives = (labels[:, None] == labels[None, :]) & not_self
    anchors = positives.any(1)
    if not anchors.any():
        return features.sum() * 0.0
    similarity = (features @ features.T / temperature).masked_fill(~not_self, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    log_prob = log_prob.masked_fill(~positives, 0.0)
    return -(log_prob.sum(1)[anchors] / positives.sum(1)[anchors]).mean()


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """`(KL(p||q) + KL(q||p)) / 2` per row, for rows of logits."""
    log_p, log_q = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


class MisterEContextModule(nn.Module):
    """Convolutional-recurrent context over one modality's utterance sequence, with a linear skip and classifier.

    `C = sum_k ReLU(Conv_k(X))`, `H = GRU(C)`, `Z = H + Linear(X)`, `logits = Linear(Z)`. Padded and missing
    utterances must arrive as zero vectors: the convolutions then see exactly the zero padding a shorter batch gives,
    and the GRU is packed so that no state passes through padding.
    """

    def __init__(self, config: MisterEConfig, input_dim: int):
        super().__init__()
        self.causal = config.causal
        self.kernel_sizes = config.conv_kernel_sizes if config.context_module in ("conv_gru", "conv") else []
        self.convs = nn.ModuleList(nn.Conv1d(input_dim, config.context_dim, k) for k in self.kernel_sizes)
        self.gru = None
        if config.context_module in ("conv_gru", "gru"):
            self.gru = nn.GRU(
                input_size=config.context_dim if self.convs else input_dim,
                hidden_size=config.context_dim if self.causal else config.context_dim // 2,
                num_layers=config.gru_layers,
                batch_first=True,
                bidirectional=not self.causal,
            )
        self.skip = nn.Linear(input_dim, config.context_dim)
        self.classifier = nn.Linear(config.context_dim, config.num_labels)

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        if self.convs:
            channels_first = inputs.transpose(1, 2)
            hidden = sum(
                F.relu(conv(F.pad(channels_first, self._padding(k)))) for conv, k in zip(self.convs, self.kernel_sizes)
            ).transpose(1, 2)
        if self.gru is not None:
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(hidden, lengths, batch_first=True, enforce_sorted=False)
            hidden = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=inputs.shape[1])[0]
        return self.classifier(hidden + self.skip(inputs))

    def _padding(self, kernel_size: int) -> tuple[int, int]:
        if self.causal:
            return kernel_size - 1, 0
        return (kernel_size - 1) // 2, kernel_size // 2


class MisterEAttention(nn.Module):
    """Multi-head attention narrower than its input (`attention_dim`), with key masks that may empty a row."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.num_heads = config.attention_heads
        self.dropout = config.attention_dropout
        self.causal = config.causal
        self.q_proj = nn.Linear(config.cross_modal_dim, config.attention_dim)
        self.k_proj = nn.Linear(config.cross_modal_dim, config.attention_dim)
        self.v_proj = nn.Linear(config.cross_modal_dim, config.attention_dim)
        self.out_proj = nn.Linear(config.attention_dim, config.cross_modal_dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = queries.shape
        q, k, v = (
            proj(x).view(batch, x.shape[1], self.num_heads, -1).transpose(1, 2)
            for proj, x in ((self.q_proj, queries), (self.k_proj, keys), (self.v_proj, keys))
        )
        allowed = key_mask[:, None, None, :]
        if self.causal:
            allowed = allowed & torch.ones(length, keys.shape[1], dtype=torch.bool, device=keys.device).tril()
        # A query with no key to look at (a text-only conversation's speech side, say) gets a zero output.
        has_key = allowed.any(-1, keepdim=True)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed | ~has_key, dropout_p=self.dropout if self.training else 0.0
        )
        attended = (attended * has_key).transpose(1, 2).reshape(batch, length, -1)
        return self.out_proj(attended)


class MisterEAttentionSublayer(nn.Module):
    """Post-LayerNorm residual attention: `LayerNorm(x + Dropout(Attention(x, context)))`."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.attention = MisterEAttention(config)
        self.dropout = nn.Dropout(config.residual_dropout)
        self.layer_norm = nn.LayerNorm(config.cross_modal_dim, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(hidden + self.dropout(self.attention(hidden, context, context_mask)))


class MisterECoAttentionLayer(nn.Module):
    """Cross-attention both ways in parallel, then self-attention within each modality."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.speech_cross = MisterEAttentionSublayer(config)
        self.text_cross = MisterEAttentionSublayer(config)
        self.speech_self = MisterEAttentionSublayer(config)
        self.text_self = MisterEAttentionSublayer(config)

    def forward(self, speech, text, speech_mask, text_mask):
        speech, text = self.speech_cross(speech, text, text_mask), self.text_cross(text, speech, speech_mask)
        return self.speech_self(speech, speech, speech_mask), self.text_self(text, text, text_mask)


class MisterECrossModalExpert(nn.Module):
    """Co-attention over the raw speech and text sequences; returns logits and the `A_hat`, `T_hat` vectors."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        width = config.cross_modal_dim
        self.speech_proj = nn.Linear(config.speech_embed_dim, width)
        self.text_proj = nn.Linear(config.text_embed_dim, width)
        self.layers = nn.ModuleList(MisterECoAttentionLayer(config) for _ in range(config.coattention_layers))
        self.speech_skip = nn.Linear(config.speech_embed_dim, width)
        self.text_skip = nn.Linear(config.text_embed_dim, width)
        self.layer_norm = nn.LayerNorm(2 * width, eps=config.layer_norm_eps)
        self.classifier = nn.Sequential(
            nn.Linear(2 * width, config.fusion_hidden_size), nn.ReLU(), nn.Linear(config.fusion_hidden_size, config.num_labels)
        )

    def forward(self, speech_embeds, text_embeds, speech_mask, text_mask):
        speech, text = self.speech_proj(speech_embeds), self.text_proj(text_embeds)
        for layer in self.layers:
            speech, text = layer(speech, text, speech_mask, text_mask)
        speech = speech + self.speech_skip(speech_embeds)
        text = text + self.text_skip(text_embeds)
        logits = self.classifier(self.layer_norm(torch.cat([text, speech], dim=-1)))
        return logits, speech, text


class MisterEGate(nn.Module):
    """Per-utterance softmax gate over the three experts' logits (`3C -> hidden -> ReLU -> 3`, temperature `tau`)."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.temperature = config.gate_temperature
        self.mlp = nn.Sequential(
            nn.Linear(len(EXPERTS) * config.num_labels, config.gate_hidden_size),
            nn.ReLU(),
            nn.Linear(config.gate_hidden_size, len(EXPERTS)),
        )

    def forward(self, expert_logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mlp(expert_logits.flatten(-2)) / self.temperature, dim=-1)


class MisterEPreTrainedModel(PreTrainedModel):
    config_class = MisterEConfig
    base_model_prefix = "mister_e"
    main_input_name = "attention_mask"
    # `forward(**kwargs)`-free: the loss is a per-utterance mean, so Trainer must scale it for accumulation itself.
    accepts_loss_kwargs = False
    _no_split_modules = ["MisterEContextModule", "MisterECoAttentionLayer"]

    def _init_weights(self, module):
        """PyTorch's default initialisation (the authors' code relies on it) for linear, conv and GRU weights."""
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(module, nn.GRU):
            bound = 1 / math.sqrt(module.hidden_size)
            for param in module.parameters():
                init.uniform_(param, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class MisterEForEmotionRecognition(MisterEPreTrainedModel):
    """MiSTER-E on the per-utterance embeddings of whole conversations: one emotion per utterance.

    Speaker identity is never an input. Missing modalities are masked per utterance (`modality_mask`): an expert that
    needs a missing modality gets gate weight 0 there and the other weights renormalise.
    """

    def __init__(self, config: MisterEConfig):
        super().__init__(config)
        self.speech_expert = MisterEContextModule(config, config.speech_embed_dim) if "speech" in config.experts else None
        self.text_expert = MisterEContextModule(config, config.text_embed_dim) if "text" in config.experts else None
        self.cross_modal_expert = MisterECrossModalExpert(config) if "cross_modal" in config.experts else None
        self.gate = MisterEGate(config) if config.gate_mode == "learned" else None
        self.post_init()

    def forward(
        self,
        speech_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> MisterEOutput:
        r"""
        Args:
            speech_embeds (`torch.FloatTensor` of shape `(batch, utterances, speech_embed_dim)`, *optional*):
                One speech embedding per utterance. `None` means no utterance has speech.
            text_embeds (`torch.FloatTensor` of shape `(batch, utterances, text_embed_dim)`, *optional*):
                One text embedding per utterance. `None` means no utterance has text.
            attention_mask (`torch.LongTensor` of shape `(batch, utterances)`, *optional*):
                1 for real utterances, 0 for padding. Defaults to all real.
            labels (`torch.LongTensor` of shape `(batch, utterances)`, *optional*):
                Class ids, -100 for padding or unlabelled utterances.
            modality_mask (`torch.BoolTensor` of shape `(batch, utterances, 2)`, *optional*):
                Whether each utterance has speech (`[..., 0]`) and text (`[..., 1]`). Defaults to what was given.
        """
        if kwargs:
            raise TypeError(f"MisterEForEmotionRecognition.forward got unexpected inputs {sorted(kwargs)}.")
        reference = speech_embeds if speech_embeds is not None else text_embeds
        if reference is None:
            raise ValueError("MiSTER-E needs `speech_embeds`, `text_embeds` or both.")
        batch, length = reference.shape[:2]
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.bool, device=reference.device)
        attention_mask = attention_mask.bool()
        if modality_mask is None:
            modality_mask = torch.stack(
                [attention_mask & (speech_embeds is not None), attention_mask & (text_embeds is not None)], dim=-1
            )
        has_speech = modality_mask[..., 0].bool() & attention_mask
        has_text = modality_mask[..., 1].bool() & attention_mask
        speech_embeds = self._masked_inputs(speech_embeds, has_speech, self.config.speech_embed_dim, reference)
        text_embeds = self._masked_inputs(text_embeds, has_text, self.config.text_embed_dim, reference)

        available = torch.stack([has_speech, has_text, has_speech & has_text], dim=-1)
        available &= torch.tensor(self.config.expert_mask, device=available.device)
        expert_logits = reference.new_zeros(batch, length, len(EXPERTS), self.config.num_labels)
        speech_representations = text_representations = None
        if self.speech_expert is not None:
            expert_logits[:, :, SPEECH] = self.speech_expert(speech_embeds, attention_mask)
        if self.text_expert is not None:
            expert_logits[:, :, TEXT] = self.text_expert(text_embeds, attention_mask)
        if self.cross_modal_expert is not None:
            expert_logits[:, :, CROSS_MODAL], speech_representations, text_representations = self.cross_modal_expert(
                speech_embeds, text_embeds, has_speech, has_text
            )
        expert_logits = expert_logits * available[..., None]

        gate_weights = self._gate_weights(expert_logits, available)
        logits = (gate_weights[..., None] * expert_logits).sum(-2)

        loss = None
        if labels is not None:
            loss = self._loss(logits, expert_logits, available, labels, attention_mask,
                              speech_representations, text_representations, has_speech, has_text)
        return MisterEOutput(
            loss=loss,
            logits=logits,
            expert_logits=expert_logits,
            gate_weights=gate_weights,
            speech_representations=speech_representations,
            text_representations=text_representations,
        )

    @staticmethod
    def _masked_inputs(embeds, present, width, reference):
        """Zero the embeddings of padded and missing utterances (or make zeros for a modality not given at all)."""
        if embeds is None:
            return reference.new_zeros(*present.shape, width)
        if embeds.shape[-1] != width:
            raise ValueError(f"Expected embeddings of width {width}, got shape {tuple(embeds.shape)}.")
        return embeds * present[..., None]

    def _gate_weights(self, expert_logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        mode = self.config.gate_mode
        if mode == "learned":
            prior = self.gate(expert_logits)
        elif mode == "mean":
            prior = torch.ones_like(available, dtype=expert_logits.dtype)
        else:
            prior = F.one_hot(torch.tensor(EXPERTS.index(mode)), len(EXPERTS)).to(expert_logits)
        weights = prior * available
        total = weights.sum(-1, keepdim=True)
        # A named single expert that is unavailable here falls back to the mean of the available ones.
        fallback = available / available.sum(-1, keepdim=True).clamp(min=1)
        return torch.where(total > 0, weights / total.clamp(min=torch.finfo(total.dtype).tiny), fallback)

    def _loss(self, logits, expert_logits, available, labels, attention_mask,
              speech_representations, text_representations, has_speech, has_text):
        config = self.config
        labelled = (labels != -100) & attention_mask
        labels = labels.masked_fill(~labelled, 0)
        loss = logits.new_zeros(())
        if config.mixture_loss_weight:
            loss = loss + config.mixture_loss_weight * focal_loss(
                logits, labels, labelled & available.any(-1), config.focal_gamma
            )
        enabled = [i for i, on in enumerate(config.expert_mask) if on]
        if config.expert_loss_weight:
            loss = loss + config.expert_loss_weight * sum(
                focal_loss(expert_logits[:, :, i], labels, labelled & available[..., i], config.focal_gamma)
                for i in enabled
            )
        if config.supcon_weight and speech_representations is not None:
            speech_rows, text_rows = labelled & has_speech, labelled & has_text
            features = torch.cat([speech_representations[speech_rows], text_representations[text_rows]])
            loss = loss + config.supcon_weight * supervised_contrastive_loss(
                features, torch.cat([labels[speech_rows], labels[text_rows]]), config.supcon_temperature
            )
        pairs = list(combinations(enabled, 2))
        if config.kl_weight and pairs:
            kl = logits.new_zeros(())
            for i, j in pairs:
                both = available[..., i] & available[..., j]
                if both.any():
                    kl = kl + symmetric_kl(expert_logits[:, :, i][both], expert_logits[:, :, j][both]).mean()
            loss = loss + config.kl_weight * kl / len(pairs)
        return loss


__all__ = ["MisterEPreTrainedModel", "MisterEForEmotionRecognition", "MisterEOutput"]
