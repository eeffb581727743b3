"""The base class of the MiSTER-E models (loading checks, initialisation, utterance encoding) and the stage-1 model,
`MisterEForUtteranceClassification`; `modeling_mister_e.py` builds the conversation model on the same base."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_mister_e import MisterEConfig, MisterEOpenSmileConfig
from .encoders_mister_e import (
    MisterEFeatureStandardizer, MisterELayerMix, backbone_family, build_encoders, encode_in_chunks,
)
from .losses_mister_e import focal_loss


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
    # The input statistics stay float32 under `from_pretrained(dtype=torch.bfloat16 / float16)`: features far from
    # zero (openSMILE's reach 1e11) lose their spread to bf16 rounding and overflow fp16.
    _keep_in_fp32_modules_strict = ["standardizer"]

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
        if kwargs.get("state_dict") is not None:  # a state_dict given is the caller's choice
            return (model, info) if wants_info else model
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise OSError(f"The weights in {path} lack {len(missing)} of the model's tensors ({', '.join(missing[:3])}"
                          f"{', ...' if len(missing) > 3 else ''}): they would be random. The file is incomplete or "
                          "belongs to another configuration; save or download the model again.")
        # Tensors of a module the config no longer builds (an edited `standardize_inputs`, `experts` or `gate_mode`):
        # dropped, the model would predict otherwise than it was trained to. A backbone's own spare buffers are not.
        unused = sorted(key for key in info["unexpected_keys"] if not key.startswith(("speech_encoder.", "text_encoder.")))
        if unused:
            raise OSError(f"The weights in {path} hold {len(unused)} tensors this configuration has no place for "
                          f"({', '.join(unused[:3])}{', ...' if len(unused) > 3 else ''}): loading would drop them. "
                          "Was config.json edited, or a field given to `from_pretrained` (e.g. `standardize_inputs`, "
                          "`experts`, `gate_mode`)? Load it as it was saved.")
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
        elif isinstance(module, MisterELayerMix):
            init.zeros_(module.weights)

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
        guessed = modality_mask is None
        if guessed:
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
            positions = getattr(self.config.text_config, "max_position_embeddings", None) if name == "text" else None
            if positions is not None and inputs.shape[-1] > positions:
                raise ValueError(f"`input_ids` hold {inputs.shape[-1]} tokens an utterance, beyond the text encoder's "
                                 f"{positions} positions: tokenise with `max_text_length` <= {positions}.")
            if int(present.sum()) != len(inputs):
                raise ValueError(
                    f"{len(inputs)} {name} rows for {int(present.sum())} utterances marked as having {name}"
                    + (" (no `modality_mask` was given, so every utterance of `attention_mask` was taken to have both "
                       "modalities: pass the processor's whole output, `model(**processor(conversations))`)."
                       if guessed else ".")
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

    @can_return_tuple
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


__all__ = ["MisterEPreTrainedModel", "MisterEForUtteranceClassification", "MisterEUtteranceOutput"]
