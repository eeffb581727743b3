"""The training losses of MiSTER-E: focal loss on the mixture and on each expert (and, in stage 1, on each utterance
classifier), supervised contrastive alignment of the cross-modal expert's speech and text vectors, and the symmetric
KL that keeps the experts' predictions close."""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F


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


def conversation_loss(config, logits, expert_logits, available, labels, expert_rows, mixture_rows, expert_utterances,
                      speech_representations, text_representations, has_speech, has_text) -> torch.Tensor:
    """Stage 2's loss (spec), each term weighted by its `config` field: focal loss on the mixture (labelled
    `mixture_rows`) and on each enabled expert (labelled `expert_rows`), SupCon over the cross-modal expert's vectors
    (`expert_rows`), and the mean symmetric KL between pairs of enabled experts over every utterance they learn from,
    labelled or not (`expert_utterances`). `labels` holds any valid class where it is unlabelled."""
    loss = logits.new_zeros(())
    if config.mixture_loss_weight:
        loss = loss + config.mixture_loss_weight * focal_loss(
            logits, labels, mixture_rows & available.any(-1), config.focal_gamma
        )
    enabled = [i for i, on in enumerate(config.expert_mask) if on]
    if config.expert_loss_weight:
        loss = loss + config.expert_loss_weight * sum(
            focal_loss(expert_logits[:, :, i], labels, expert_rows & available[..., i], config.focal_gamma)
            for i in enabled
        )
    if config.supcon_weight and speech_representations is not None:
        speech_rows, text_rows = expert_rows & has_speech, expert_rows & has_text
        features = torch.cat([speech_representations[speech_rows], text_representations[text_rows]])
        loss = loss + config.supcon_weight * supervised_contrastive_loss(
            features, torch.cat([labels[speech_rows], labels[text_rows]]), config.supcon_temperature
        )
    pairs = list(combinations(enabled, 2))
    if config.kl_weight and pairs:
        kl = logits.new_zeros(())
        for i, j in pairs:
            both = available[..., i] & available[..., j] & expert_utterances
            if both.any():
                kl = kl + symmetric_kl(expert_logits[:, :, i][both], expert_logits[:, :, j][both]).mean()
        loss = loss + config.kl_weight * kl / len(pairs)
    return loss
