"""The conversation model's input checks: each input at fault named in one line, before torch fails deep inside an
expert with a message that names none, or a mask gives a silently wrong answer; `modeling_mister_e.py` runs them on
every `forward` and `step`."""

from __future__ import annotations

import torch

from .configuration_mister_e import MODALITIES, MisterEConfig, modalities_read
from .experts_mister_e import answerable


_GRID_SHAPES = {"speech_embeds": "(batch, utterances, width)", "text_embeds": "(batch, utterances, width)",
                "modality_mask": "(batch, utterances, 2)"}  # any other input: "(batch, utterances)"


def _check_grid(config: MisterEConfig, **inputs) -> None:
    """Name the input at fault before torch fails deep inside an expert with a message that names none: every input
    is a tensor on the same `(batch, utterances)` grid, labels are class ids or -100, and the masks are sound
    (`_check_masks`)."""
    num_labels = config.num_labels
    grid = None
    for name, value in inputs.items():
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch tensor, got {type(value).__name__}.")
        shape = _GRID_SHAPES.get(name, "(batch, utterances)")
        if value.dim() != shape.count(",") + 1 or (name == "modality_mask" and value.shape[-1] != 2):
            raise ValueError(f"`{name}` must have shape {shape}, got {tuple(value.shape)}.")
        if grid is None:
            grid, first = tuple(value.shape[:2]), name
        elif tuple(value.shape[:2]) != grid:
            raise ValueError(f"`{name}` has {tuple(value.shape[:2])} (batch, utterances), `{first}` {grid}.")
    if grid is not None and 0 in grid:
        raise ValueError(f"Got an empty batch {grid} (batch, utterances): nothing to predict.")
    labels = inputs.get("labels")
    if labels is not None and (labels.is_floating_point() or labels.dtype == torch.bool):
        raise TypeError(f"`labels` must be integer class ids (or -100 for none), got dtype {labels.dtype}.")
    if labels is not None and ((labels != -100) & ((labels < 0) | (labels >= num_labels))).any():
        raise ValueError(f"`labels` must be class ids 0..{num_labels - 1} (or -100 for none), got "
                         f"{sorted(set(labels[labels != -100].tolist()) - set(range(num_labels)))[:5]}.")
    _check_masks(config, inputs.get("attention_mask"), inputs.get("modality_mask"),
                 inputs.get("speech_embeds") is not None, inputs.get("text_embeds") is not None)


def _check_masks(config: MisterEConfig, attention_mask, modality_mask, has_speech_embeds: bool,
                 has_text_embeds: bool) -> None:
    """Refuse masks that would give a silently wrong answer: padding before an utterance (the experts pack each
    conversation's first `sum(mask)` positions), a modality claimed without its embeddings (read as zeros), and a real
    utterance that no enabled expert can answer, having neither modality or only one no expert reads alone (a text-only
    model given speech): the gate would have nothing to weigh, its logits would be zeros, its argmax class 0."""
    real = None
    if attention_mask is not None:
        real = attention_mask.bool()
        if not real.any():
            raise ValueError("`attention_mask` marks no utterance: nothing to predict.")
        late = real[:, 1:] & ~real[:, :-1]
        if late.any():
            raise ValueError(f"`attention_mask` must mark each conversation's utterances first and its padding after "
                             f"them; conversation {int(late.any(1).nonzero()[0])} has padding before an utterance.")
    reads = f"no enabled expert of this model reads alone (the experts read {modalities_read(config.experts)})"
    if modality_mask is None:  # every utterance has the modalities given
        given = [modality for modality, has in zip(MODALITIES, (has_speech_embeds, has_text_embeds)) if has]
        if not answerable(torch.tensor([has_speech_embeds, has_text_embeds]), config.expert_mask):
            raise ValueError(f"Only {given[0]} embeddings were given, which {reads}: every answer would be arbitrary.")
        return
    claimed = modality_mask.bool() if real is None else modality_mask.bool() & real[..., None]
    for index, (modality, given) in enumerate((("speech", has_speech_embeds), ("text", has_text_embeds))):
        if not given and claimed[..., index].any():
            raise ValueError(f"`modality_mask` marks utterances as having {modality}, but no `{modality}_embeds` (or "
                             f"raw {modality} inputs) were given.")
    unanswered = ~answerable(claimed, config.expert_mask)
    if real is not None:
        unanswered &= real
    if unanswered.any():
        conversation, utterance = (int(i) for i in unanswered.nonzero()[0])
        has = [modality for modality, present in zip(MODALITIES, claimed[conversation, utterance].tolist()) if present]
        if not has:
            raise ValueError(f"Conversation {conversation}, utterance {utterance} has neither speech nor text "
                             "(`modality_mask`): no expert can answer it.")
        raise ValueError(f"Conversation {conversation}, utterance {utterance} has {has[0]} alone (`modality_mask`), "
                         f"which {reads}: its answer would be arbitrary.")
