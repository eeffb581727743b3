"""PyTorch MiSTER-E: a mixture of speech, text and cross-modal experts over the utterances of a conversation."""

from __future__ import annotations

import copy
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_mister_e import (
    CUSTOM_PIPELINES,
    EMBEDDINGS,
    EXPERT_MODALITIES,
    EXPERTS,
    MisterEConfig,
    MisterEOpenSmileConfig,
    contradicts_recorded_embedding,
)
from .encoders_mister_e import (
    HEAD_MODULES,
    MisterEFeatureStandardizer,
    backbone_family,
    build_encoders,
    encode_in_chunks,
)
from .experts_mister_e import (
    MisterEContextModule,
    MisterECrossModalExpert,
    MisterEGate,
    available_experts,
    mix_experts,
    weigh_experts,
)
from .losses_mister_e import conversation_loss, focal_loss


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


_GRID_SHAPES = {"speech_embeds": "(batch, utterances, width)", "text_embeds": "(batch, utterances, width)",
                "modality_mask": "(batch, utterances, 2)"}  # any other input: "(batch, utterances)"


def _check_grid(num_labels: int, **inputs) -> None:
    """Name the input at fault before torch fails deep inside an expert with a message that names none: every input
    is a tensor on the same `(batch, utterances)` grid, and labels are class ids or -100."""
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
    if labels is not None and ((labels != -100) & ((labels < 0) | (labels >= num_labels))).any():
        raise ValueError(f"`labels` must be class ids 0..{num_labels - 1} (or -100 for none), got "
                         f"{sorted(set(labels[labels != -100].tolist()) - set(range(num_labels)))[:5]}.")


def _width_or_none(encoder, embedding: str) -> int | None:
    """`encoder.embedding_width(embedding)`, or `None` where the encoder has no such embedding."""
    try:
        return encoder.embedding_width(embedding)
    except ValueError:
        return None


@dataclass
class MisterEUtteranceOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` is given):
        Focal loss (`encoder_focal_gamma`) of each utterance classifier, summed over the encoders present.
    speech_logits, text_logits (`torch.FloatTensor` of shape `(batch, utterances, num_labels)`, *optional*):
        Each encoder's own utterance-level logits (zeros where the utterance lacks that modality).
    speech_embeds, text_embeds (`torch.FloatTensor` of shape `(batch, utterances, embed_dim)`, *optional*):
        The utterance embeddings (taken before the classifier's ReLU) that the conversation model consumes.
    """

    loss: torch.FloatTensor | None = None
    speech_logits: torch.FloatTensor | None = None
    text_logits: torch.FloatTensor | None = None
    speech_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


class MisterEPreTrainedModel(PreTrainedModel):
    config_class = MisterEConfig
    base_model_prefix = "mister_e"
    main_input_name = "attention_mask"
    # `forward(**kwargs)`-free: the loss is a per-utterance mean, so Trainer must scale it for accumulation itself.
    accepts_loss_kwargs = False
    # `gradient_checkpointing_enable` walks every submodule, so it reaches the backbones' own checkpointed layers.
    supports_gradient_checkpointing = True
    _no_split_modules = ["MisterEContextModule", "MisterECoAttentionLayer"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing what would otherwise load with random weights or fail deep
        inside transformers: a folder without config.json, a folder of the other MiSTER-E model (a stage-1 encoder
        loaded as a conversation model), weights lacking some of the model's tensors, and a damaged weights file
        (safetensors' own error says neither which file nor what to do)."""
        path = pretrained_model_name_or_path
        folder = isinstance(path, (str, os.PathLike)) and os.path.isdir(path)
        if kwargs.get("config") is None and folder and not os.path.isfile(Path(path, "config.json")):
            raise OSError(f"No config.json in {path}: not a saved model folder, or an incomplete copy of one.")
        wants_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(path, *args, output_loading_info=True, **kwargs)
        except Exception as error:  # safetensors is not imported here (remote-code files import torch/transformers)
            if "ignore_mismatched_sizes" in str(error):  # its report of which tensors went to the log, not the error
                raise OSError(f"The weights in {path} do not fit its config.json: some tensor shapes differ (was the "
                              "config edited, e.g. its labels or widths, or the weights copied from another model?).") \
                    from error
            if not type(error).__module__.startswith("safetensors"):
                raise
            raise OSError(f"The weights in {path} cannot be read ({error}): the file is truncated or not a "
                          "safetensors file; save or download the model again.") from error
        saved_as = [name for name in model.config.architectures or [] if name.startswith("MisterEFor")]
        if saved_as and cls.__name__ not in saved_as:
            hint = (" To predict with it, join it to a conversation model: `MisterEForEmotionRecognition.from_stages`"
                    " (or `mister-e predict --model STAGE2 --encoder DIR`)."
                    if saved_as[0] == "MisterEForUtteranceClassification" else "")
            raise ValueError(f"{path} holds a {saved_as[0]}, not a {cls.__name__}: load it with "
                             f"{saved_as[0]}.from_pretrained.{hint}")
        if info["missing_keys"] and kwargs.get("state_dict") is None:  # a state_dict given is the caller's choice
            missing = sorted(info["missing_keys"])
            raise OSError(f"The weights in {path} lack {len(missing)} of the model's tensors ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): they would be random. The file is incomplete or "
                          "belongs to another configuration; save or download the model again.")
        return (model, info) if wants_info else model

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
        elif isinstance(module, MisterEFeatureStandardizer):
            init.zeros_(module.mean)
            init.ones_(module.std)

    def encode_utterances(
        self,
        attention_mask: torch.Tensor,
        modality_mask: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        speech_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
    ) -> MisterEUtteranceOutput:
        """Embed the utterance rows of a processor batch and place them on the `(batch, utterances)` grid.

        Rows come in the row-major order of `modality_mask[..., 0]` (speech) and `modality_mask[..., 1]` (text).
        """
        attention_mask = attention_mask.bool()
        if modality_mask is None:
            modality_mask = torch.stack([attention_mask] * 2, dim=-1)
        output = MisterEUtteranceOutput()
        speech_inputs = input_values if input_values is not None else input_features
        for name, encoder, inputs, mask, column in (
            ("speech", self.speech_encoder, speech_inputs, speech_attention_mask, 0),
            ("text", self.text_encoder, input_ids, text_attention_mask, 1),
        ):
            if inputs is None:
                continue
            if encoder is None:
                raise ValueError(f"Got {name} inputs but the config has no `{name}_config` for a {name} encoder.")
            present = modality_mask[..., column].bool() & attention_mask
            if int(present.sum()) != len(inputs):
                raise ValueError(
                    f"{len(inputs)} {name} rows for {int(present.sum())} utterances marked as having {name}."
                )
            embeds, logits = encode_in_chunks(encoder, inputs, mask, self.config.encoder_batch_size)
            output[f"{name}_embeds"] = embeds.new_zeros(*present.shape, embeds.shape[-1]).index_put((present,), embeds)
            if logits is not None:  # a frozen-backbone embedding has no utterance classifier
                output[f"{name}_logits"] = logits.new_zeros(*present.shape, logits.shape[-1]).index_put((present,),
                                                                                                      logits)
        return output


class MisterEForUtteranceClassification(MisterEPreTrainedModel):
    """Stage 1: the speech and/or text utterance encoders, each trained alone as an utterance emotion classifier.

    Takes the same batches as the conversation model (a processor's output; context is ignored), so one collator
    serves both stages. The embeddings it returns are what `mister-e extract` stores for stage 2.
    """

    def __init__(self, config: MisterEConfig, speech_backbone: nn.Module | None = None,
                 text_backbone: nn.Module | None = None):
        super().__init__(config)
        for modality in ("speech", "text"):
            if getattr(config, f"{modality}_embedding") != "projection":
                raise ValueError(f"`{modality}_embedding` is for conversation models; an utterance classifier "
                                 "needs its head (`projection`).")
        self.speech_encoder, self.text_encoder = build_encoders(config, speech_backbone, text_backbone)
        if self.speech_encoder is None and self.text_encoder is None:
            raise ValueError("MisterEForUtteranceClassification needs `speech_config`, `text_config` or both.")
        self.post_init()

    @classmethod
    def from_backbones(cls, speech=None, text=None, speech_prompt="What is the emotion of the person?:", dtype=None,
                       backbone_kwargs=None, **config_kwargs):
        """Build around pretrained backbones (local dirs or Hub ids); the heads start from scratch.

        `speech="opensmile:ComParE_2016"` (or `"opensmile:eGeMAPSv02"`) builds a speech encoder on openSMILE
        functionals instead of a network: its standardisation statistics are fitted by stage-1 training.

        `__init__` builds from a config alone (random backbones), as transformers needs for loading; this is the
        entry point for a new model. Whisper checkpoints contribute their encoder only. The backbones load first and
        are handed to `__init__`, so no random copy of a multi-billion-parameter backbone is ever allocated.

        Args:
            dtype (`torch.dtype` or `str`, *optional*):
                dtype of the backbones (float32 when `None`). The heads are built in float32 whatever it is, so a
                bfloat16 backbone with LoRA trains float32 heads and adapters.
            backbone_kwargs (`dict`, *optional*):
                Further `from_pretrained` arguments of the backbones, e.g. `quantization_config` and `device_map`.
        """
        from transformers import AutoConfig, AutoTokenizer

        try:  # the package's resolution: a missing folder named as such, the packaged MiniLM when offline
            from mister_e.backbones import resolve_backbone
        except ImportError:  # remote code, without the package
            resolve_backbone = str
        paths = {name: resolve_backbone(path) for name, path in (("speech", speech), ("text", text)) if path}
        configs = {}
        if speech and (functionals := MisterEOpenSmileConfig.from_backbone_name(speech)) is not None:
            configs["speech_config"] = functionals  # computed features: nothing to load
            del paths["speech"]
        configs.update({f"{name}_config": AutoConfig.from_pretrained(path) for name, path in paths.items()})
        if speech and backbone_family(configs["speech_config"]).prompted and speech_prompt:
            config_kwargs.setdefault("speech_prompt_ids",
                                     AutoTokenizer.from_pretrained(paths["speech"])(speech_prompt)["input_ids"])
        loading = {"dtype": dtype, **(backbone_kwargs or {})}
        backbones = {f"{name}_backbone": backbone_family(configs[f"{name}_config"]).load(path, **loading)
                     for name, path in paths.items()}
        return cls(MisterEConfig(**configs, **config_kwargs), **backbones)

    def forward(
        self,
        attention_mask: torch.Tensor,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        speech_attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
    ) -> MisterEUtteranceOutput:
        output = self.encode_utterances(
            attention_mask, modality_mask, input_values, input_features, speech_attention_mask, input_ids,
            text_attention_mask,
        )
        if labels is not None:
            labelled = (labels != -100) & attention_mask.bool()
            if modality_mask is None:
                modality_mask = torch.stack([attention_mask.bool()] * 2, dim=-1)
            targets = labels.masked_fill(~labelled, 0)
            output.loss = sum(
                focal_loss(logits, targets, labelled & modality_mask[..., column].bool(), self.config.encoder_focal_gamma)
                for logits, column in ((output.speech_logits, 0), (output.text_logits, 1))
                if logits is not None
            )
        return output


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
                          else MisterEContextModule(config, getattr(config, f"{modalities[0]}_embed_dim"), modalities[0]))
            setattr(self, f"{expert}_expert", module)
        self.gate = MisterEGate(config) if config.gate_mode == "learned" else None
        # Training-split statistics of each modality's embeddings (`train_conversation_model` fits them), so that
        # `forward`, `step` and the pipeline all see the inputs the experts were trained on.
        self.speech_standardizer = self.text_standardizer = None
        if config.standardize_inputs:
            self.speech_standardizer = MisterEFeatureStandardizer(config.speech_embed_dim)
            self.text_standardizer = MisterEFeatureStandardizer(config.text_embed_dim)
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.speech_encoder, self.text_encoder = build_encoders(config)  # for raw inputs (`from_stages`)
        self.post_init()

    # The pipeline's module and the sibling modules it imports that the model's own code does not.
    PIPELINE_CODE = ("pipeline_mister_e.py", "segmentation_mister_e.py", "processing_mister_e.py")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; a folder that gets the code files (`auto_map`) gets the conversation
        pipeline's too (`pipeline_mister_e.py`, `custom_pipelines` in config.json), so that `pipeline(model=folder,
        trust_remote_code=True)` works without the package installed."""
        pipeline_code = [Path(__file__).with_name(name) for name in self.PIPELINE_CODE]
        carries_code = getattr(self, "_auto_class", None) is not None and all(path.is_file() for path in pipeline_code)
        if carries_code:
            self.config.custom_pipelines = copy.deepcopy(CUSTOM_PIPELINES)
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
            if encoder is None:
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
                1 for real utterances, 0 for padding. Defaults to all real.
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
        _check_grid(speech_embeds=speech_embeds, text_embeds=text_embeds, attention_mask=attention_mask,
                    modality_mask=modality_mask, labels=labels, num_labels=self.config.num_labels)
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
        _check_grid(self.config.num_labels, **{name: value[:, None] if isinstance(value, torch.Tensor) else value
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
            return reference.new_zeros(*present.shape, width)
        if embeds.shape[-1] != width:
            raise ValueError(f"Expected {modality} embeddings of width {width}, got shape {tuple(embeds.shape)}.")
        embeds = embeds.to(self.dtype)  # float64 (numpy's default) or integers: the weights' dtype
        standardizer = getattr(self, f"{modality}_standardizer")
        if standardizer is not None:
            embeds = standardizer(embeds).to(embeds.dtype)
        # masked_fill, not a product: a placeholder NaN in a padded or missing slot must not reach the real rows
        return self.input_dropout(embeds).masked_fill(~present[..., None].bool(), 0.0)

    def _loss(self, logits, expert_logits, available, labels, attention_mask,
              speech_representations, text_representations, has_speech, has_text, gate_holdout=None):
        config = self.config
        labelled = (labels != -100) & attention_mask
        labels = labels.masked_fill(~labelled, 0)
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
