"""PyTorch MiSTER-E: a mixture of speech, text and cross-modal experts over the utterances of a conversation."""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_mister_e import (
    CUSTOM_PIPELINES,
    EMBEDDINGS,
    EXPERT_MODALITIES,
    EXPERTS,
    MisterEConfig,
    contradicts_recorded_embedding,
    modalities_of,
)
from .encoders_mister_e import HEAD_MODULES, MisterEFeatureStandardizer, MisterELayerMix, build_encoders
from .experts_mister_e import (
    MisterEContextModule,
    MisterECrossModalExpert,
    MisterEGate,
    available_experts,
    mix_experts,
    weigh_experts,
)
from .input_checks_mister_e import _check_grid
from .losses_mister_e import conversation_loss
from .modeling_utterance_mister_e import (
    MisterEForUtteranceClassification,
    MisterEPreTrainedModel,
    MisterEUtteranceOutput,
)


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


def _width_or_none(encoder, embedding: str) -> int | None:
    """`encoder.embedding_width(embedding)`, or `None` where the encoder has no such embedding."""
    try:
        return encoder.embedding_width(embedding)
    except ValueError:
        return None


class MisterEForEmotionRecognition(MisterEPreTrainedModel):
    """MiSTER-E on the per-utterance embeddings of whole conversations: one emotion per utterance.

    Speaker identity is never an input. Missing modalities are masked per utterance (`modality_mask`): an expert that
    needs a missing modality gets gate weight 0 there and the other weights renormalise.
    """

    def __init__(self, config: MisterEConfig):
        super().__init__(config)
        # `<expert>_expert` for each of EXPERTS (None when switched off): a unimodal expert is a context module over its
        # modality's embeddings, the expert needing both modalities the co-attention one.
        for expert in EXPERTS:
            modalities = EXPERT_MODALITIES[expert]
            module = None
            if expert in config.experts:
                module = (MisterECrossModalExpert(config) if len(modalities) > 1
                          else MisterEContextModule(config, config.expert_input_dim(modalities[0]), modalities[0]))
            setattr(self, f"{expert}_expert", module)
        self.gate = MisterEGate(config) if config.gate_mode == "learned" else None
        # Training-split statistics of each modality's embeddings (`train_conversation_model` fits them), so that
        # `forward`, `step` and the pipeline all see the inputs the experts were trained on.
        self.speech_standardizer = self.text_standardizer = None
        if config.standardize_inputs:
            self.speech_standardizer = MisterEFeatureStandardizer(config.speech_embed_dim)
            self.text_standardizer = MisterEFeatureStandardizer(config.text_embed_dim)
        self.text_layer_mix = MisterELayerMix(config.text_layers) if config.text_layers > 1 else None
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.speech_encoder, self.text_encoder = build_encoders(config)  # for raw inputs (`from_stages`)
        self.post_init()

    # The pipeline's module and the sibling modules it imports that the model's own code does not.
    PIPELINE_CODE = ("pipeline_mister_e.py", "segmentation_mister_e.py", "processing_mister_e.py", "audio_mister_e.py")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; a folder that gets the code files (`auto_map`) gets the conversation
        pipeline's too (`pipeline_mister_e.py`, `custom_pipelines` in config.json), so that `pipeline(model=folder,
        trust_remote_code=True)` works without the package installed."""
        pipeline_code = [Path(__file__).with_name(name) for name in self.PIPELINE_CODE]
        carries_code = getattr(self, "_auto_class", None) is not None and all(path.is_file() for path in pipeline_code)
        if carries_code:
            self.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
        elif getattr(self.config, "custom_pipelines", None):  # loaded through remote code: its pipeline files are not
            self.config.custom_pipelines = {}  # at hand, and a folder naming a file it lacks fails to load its pipeline
        super().save_pretrained(save_directory, *args, **kwargs)
        if carries_code:
            for path in pipeline_code:
                shutil.copyfile(path, Path(save_directory) / path.name)

    @classmethod
    def from_stages(cls, utterance_model: MisterEForUtteranceClassification, conversation_model,
                    embedding: str | None = None):
        """One end-to-end model (raw audio/text in) from trained stage-1 encoders and a trained stage-2 model.

        `embedding` names the encoders' vectors the conversation model was trained on (`extract --embedding`); by
        default the one its config recorded (`<modality>_embedding`, set by stage-2 training from extracted data).
        With `"backbone_mean"` or `"backbone_layers"` (a frozen backbone's states) the joined encoders keep no head.
        """
        config = copy.deepcopy(conversation_model.config)
        source = utterance_model.config
        state = conversation_model.state_dict()
        for modality in ("speech", "text"):
            encoder = getattr(utterance_model, f"{modality}_encoder")
            if encoder is None or modality not in modalities_of(config.experts):  # no expert would read it
                continue
            recorded = getattr(config, f"{modality}_embedding")
            if contradicts_recorded_embedding(recorded, embedding):
                raise ValueError(f"The conversation model was trained on `{recorded}` {modality} embeddings, not "
                                 f"`{embedding}`: leave `embedding` unset to use the recorded one.")
            chosen = embedding or recorded
            width, expected = encoder.embedding_width(chosen), getattr(config, f"{modality}_embed_dim")
            if width != expected:
                fitting = [name for name in EMBEDDINGS if _width_or_none(encoder, name) == expected]
                hint = (f" (its `{fitting[0]}` embeddings are: pass `embedding={fitting[0]!r}`; CLI: `--embedding "
                        f"{fitting[0]}`)" if fitting else "")
                raise ValueError(f"The conversation model reads {expected}-d {modality} embeddings; the utterance "
                                 f"model's `{chosen}` embeddings are {width}-d{hint}.")
            for key in (f"{modality}_config", f"{modality}_pooling"):
                setattr(config, key, getattr(source, key))
            setattr(config, f"{modality}_embedding", chosen)
            head = () if chosen == "projection" else HEAD_MODULES
            state.update({f"{modality}_encoder.{key}": value for key, value in encoder.state_dict().items()
                          if key.split(".")[0] not in head})
        config.speech_prompt_ids = source.speech_prompt_ids
        config.encoder_dropout, config.encoder_focal_gamma = source.encoder_dropout, source.encoder_focal_gamma
        model = cls(config)
        model.load_state_dict(state, strict=True)
        return model

    @can_return_tuple
    def forward(
        self,
        speech_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        speech_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        gate_holdout: torch.Tensor | None = None,
        **kwargs,
    ) -> MisterEOutput:
        r"""
        Args:
            speech_embeds (`torch.FloatTensor` of shape `(batch, utterances, speech_embed_dim)`, *optional*):
                One speech embedding per utterance. `None` means no utterance has speech.
            text_embeds (`torch.FloatTensor` of shape `(batch, utterances, text_embed_dim)`, *optional*):
                One text embedding per utterance. `None` means no utterance has text.
            attention_mask (`torch.LongTensor` of shape `(batch, utterances)`, *optional*):
                1 for real utterances, 0 for padding (after each conversation's utterances). Defaults to all real.
            labels (`torch.LongTensor` of shape `(batch, utterances)`, *optional*):
                Class ids, -100 for padding or unlabelled utterances.
            modality_mask (`torch.BoolTensor` of shape `(batch, utterances, 2)`, *optional*):
                Whether each utterance has speech (`[..., 0]`) and text (`[..., 1]`). Defaults to what was given.
            input_values, input_features, speech_attention_mask, input_ids, text_attention_mask (*optional*):
                Raw utterance rows from `MisterEProcessor`, embedded by the model's own encoders (when the config has
                `speech_config`/`text_config`) instead of passing `speech_embeds`/`text_embeds`.
            gate_holdout (`torch.BoolTensor` of shape `(batch,)`, *optional*):
                Training only (`config.gate_holdout_fraction`): conversations held out from the experts' losses. The
                mixture loss is taken on them alone, from detached expert logits, so the gate learns how far to trust
                each expert from predictions on conversations the experts never fit.
        """
        if kwargs:
            raise TypeError(f"MisterEForEmotionRecognition.forward got unexpected inputs {sorted(kwargs)}.")
        if any(x is not None for x in (input_values, input_features, input_ids)):
            raw = {"input_values": input_values, "input_features": input_features, "input_ids": input_ids,
                   "speech_attention_mask": speech_attention_mask, "text_attention_mask": text_attention_mask}
            for name, value in raw.items():
                if value is not None and not isinstance(value, torch.Tensor):
                    raise TypeError(f"`{name}` must be a torch tensor (the processor's `return_tensors=\"pt\"`), got "
                                    f"{type(value).__name__}.")
            if attention_mask is None:
                raise ValueError("Raw utterance inputs need the processor's `attention_mask` (utterances per conversation).")
            encoded = self.encode_utterances(
                attention_mask, modality_mask, input_values, input_features, speech_attention_mask, input_ids,
                text_attention_mask,
            )
            speech_embeds = encoded.speech_embeds if encoded.speech_embeds is not None else speech_embeds
            text_embeds = encoded.text_embeds if encoded.text_embeds is not None else text_embeds
        reference = speech_embeds if speech_embeds is not None else text_embeds
        if reference is None:
            raise ValueError("MiSTER-E needs `speech_embeds`, `text_embeds` or both.")
        _check_grid(self.config, speech_embeds=speech_embeds, text_embeds=text_embeds, attention_mask=attention_mask,
                    modality_mask=modality_mask, labels=labels)
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
        speech_embeds = self._prepared_inputs("speech", speech_embeds, has_speech, reference)
        text_embeds = self._prepared_inputs("text", text_embeds, has_text, reference)

        available = available_experts(has_speech, has_text, self.config.expert_mask)
        expert_logits, speech_representations, text_representations = self._run_experts(
            speech_embeds, text_embeds, has_speech, has_text, attention_mask
        )
        expert_logits, gate_weights, logits = self._mix(expert_logits, available)

        loss = None
        if labels is not None:
            loss = self._loss(logits, expert_logits, available, labels, attention_mask,
                              speech_representations, text_representations, has_speech, has_text, gate_holdout)
        return MisterEOutput(
            loss=loss,
            logits=logits,
            expert_logits=expert_logits,
            gate_weights=gate_weights,
            speech_representations=speech_representations,
            text_representations=text_representations,
        )

    def step(
        self,
        speech_embeds: torch.Tensor | None = None,
        text_embeds: torch.Tensor | None = None,
        modality_mask: torch.Tensor | None = None,
        state: dict | None = None,
    ) -> tuple[MisterEOutput, dict]:
        """Online inference for a causal model: one new utterance per conversation, from the carried `state`.

        Takes `(batch, dim)` embeddings and a `(batch, 2)` modality mask; returns the new utterance's outputs (with an
        utterance axis of 1) and the state to pass with the next utterance. Convolutions keep their last inputs, the
        GRUs their hidden state and every attention its projected keys and values, so a step costs the same work at
        any position except the attention dot products over earlier utterances. Equals `forward` on the whole prefix.
        """
        if not self.config.causal:
            raise ValueError("`step` needs a causal model (`config.causal=True`); use `forward` on whole conversations.")
        reference = speech_embeds if speech_embeds is not None else text_embeds
        if reference is None:
            raise ValueError("MiSTER-E needs `speech_embeds`, `text_embeds` or both.")
        given = {"speech_embeds": speech_embeds, "text_embeds": text_embeds, "modality_mask": modality_mask}
        for name, value in given.items():
            if isinstance(value, torch.Tensor) and value.dim() != 2:
                raise ValueError(f"`step` takes one utterance per conversation: `{name}` must have shape (batch, "
                                 f"{'2' if name == 'modality_mask' else 'width'}), got {tuple(value.shape)}.")
        # as a grid of one utterance each: the same checks as `forward`
        _check_grid(self.config, **{name: value[:, None] if isinstance(value, torch.Tensor) else value
                                    for name, value in given.items()})
        if state and state.get("batch", reference.shape[0]) != reference.shape[0]:
            raise ValueError(f"`state` carries {state['batch']} conversations, the new utterances "
                             f"{reference.shape[0]}: a stream keeps its batch; start a new state (`state=None`) for "
                             "another one.")
        if modality_mask is None:
            present = [speech_embeds is not None, text_embeds is not None]
            modality_mask = torch.tensor(present, device=reference.device).expand(reference.shape[0], 2)
        has_speech, has_text = modality_mask[:, :1].bool(), modality_mask[:, 1:].bool()
        speech_embeds = self._prepared_inputs("speech", speech_embeds, has_speech[:, 0], reference)
        text_embeds = self._prepared_inputs("text", text_embeds, has_text[:, 0], reference)
        state = {**(state or {}), "batch": reference.shape[0]}
        expert_logits, speech_representations, text_representations = self._run_experts(
            speech_embeds[:, None], text_embeds[:, None], has_speech, has_text, state=state
        )
        available = available_experts(has_speech, has_text, self.config.expert_mask)
        expert_logits, gate_weights, logits = self._mix(expert_logits, available)
        output = MisterEOutput(
            logits=logits,
            expert_logits=expert_logits,
            gate_weights=gate_weights,
            speech_representations=speech_representations,
            text_representations=text_representations,
        )
        return output, state

    def _run_experts(self, speech_embeds, text_embeds, has_speech, has_text, attention_mask=None, state=None):
        """Every enabled expert's logits, `(batch, utterances, len(EXPERTS), C)` (zeros for disabled ones), and the
        cross-modal expert's `A_hat`, `T_hat` vectors: on whole conversations, or, given a `state` dict (updated in
        place, one entry per expert), on one new utterance per conversation (`step`)."""
        inputs = {"speech": speech_embeds, "text": text_embeds}
        expert_logits = speech_embeds.new_zeros(*speech_embeds.shape[:2], len(EXPERTS), self.config.num_labels)
        speech_representations = text_representations = None
        for index, name in enumerate(EXPERTS):
            expert = getattr(self, f"{name}_expert")
            if expert is None:
                continue
            if name == "cross_modal":
                masks = (has_speech, has_text)
                if state is None:
                    logits, speech_representations, text_representations = expert(*inputs.values(), *masks)
                else:
                    logits, speech_representations, text_representations, state[name] = expert.step(
                        *inputs.values(), *masks, state.get(name))
            elif state is None:
                logits = expert(inputs[name], attention_mask)
            else:
                logits, state[name] = expert.step(inputs[name][:, 0], state.get(name))
                logits = logits[:, None]
            expert_logits[:, :, index] = logits
        return expert_logits, speech_representations, text_representations

    def _mix(self, expert_logits, available):
        """The experts' logits (zero where unavailable), their gate weights and the mixture's logits."""
        expert_logits = expert_logits * available[..., None]
        weights = weigh_experts(self.config.gate_mode, self.gate, expert_logits, available)
        return expert_logits, weights, mix_experts(self.config.mixture_space, weights, expert_logits)

    def _prepared_inputs(self, modality, embeds, present, reference):
        """Standardised (when the config says so), dropped out in training, and zero for padded and missing
        utterances (or zeros for a modality not given at all)."""
        width = getattr(self.config, f"{modality}_embed_dim")
        if embeds is None:
            return reference.new_zeros(*present.shape, self.config.expert_input_dim(modality), dtype=self.dtype)
        if embeds.shape[-1] != width:
            raise ValueError(f"Expected {modality} embeddings of width {width}, got shape {tuple(embeds.shape)}.")
        standardizer = getattr(self, f"{modality}_standardizer")
        if standardizer is not None:  # before the cast: in bf16/fp16, inputs far from zero lose their spread
            embeds = standardizer(embeds)
        embeds = embeds.to(self.dtype)  # float64 (numpy's default), integers or the standardizer's float32
        if modality == "text" and self.text_layer_mix is not None:
            embeds = self.text_layer_mix(embeds)
        # masked_fill, not a product: a placeholder NaN in a padded or missing slot must not reach the real rows
        return self.input_dropout(embeds).masked_fill(~present[..., None].bool(), 0.0)

    def _loss(self, logits, expert_logits, available, labels, attention_mask,
              speech_representations, text_representations, has_speech, has_text, gate_holdout=None):
        config = self.config
        labelled = (labels != -100) & attention_mask
        labels = labels.long().masked_fill(~labelled, 0)  # int32 ids too
        # Rows the experts learn from, and rows the mixture (so the gate) learns from: all of them in the paper's
        # joint training; disjoint conversations with a gate hold-out.
        expert_rows = mixture_rows = labelled
        expert_utterances = attention_mask
        if gate_holdout is not None:
            held_out = gate_holdout.bool()[:, None] & attention_mask
            expert_rows, mixture_rows = labelled & ~held_out, labelled & held_out
            expert_utterances = attention_mask & ~held_out
            logits = self._mix(expert_logits.detach(), available)[2]
        return conversation_loss(config, logits, expert_logits, available, labels, expert_rows, mixture_rows,
                                 expert_utterances, speech_representations, text_representations, has_speech, has_text)


__all__ = [
    "MisterEPreTrainedModel",
    "MisterEForUtteranceClassification",
    "MisterEForEmotionRecognition",
    "MisterEOutput",
    "MisterEUtteranceOutput",
]
