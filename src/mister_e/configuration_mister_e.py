"""MiSTER-E model configuration."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

EXPERTS = ("speech", "text", "cross_modal")
# The modalities each expert needs: it answers an utterance only where all of them are present.
EXPERT_MODALITIES = {"speech": ("speech",), "text": ("text",), "cross_modal": ("speech", "text")}
MODALITIES = ("speech", "text")
GATE_MODES = ("learned", "mean", *EXPERTS)
CONTEXT_MODULES = ("conv_gru", "conv", "gru")
# Context-module fields that may be set per modality (`{"speech": ..., "text": ...}`), with the paper's values.
PER_MODALITY = {"context_module": "conv_gru", "gru_layers": 3}
MIXTURE_SPACES = ("logits", "probabilities")
POOLING_MODES = ("mean", "attentive")
# Which vector of an utterance encoder is its embedding: the trained projection, or the backbone's states mean-pooled
# (the last layer's, or every layer's concatenated: frozen-backbone embeddings, `extract --embedding`).
EMBEDDINGS = ("projection", "backbone_mean", "backbone_layers")
IEMOCAP_LABELS = ("hap", "sad", "neu", "ang", "exc", "fru")
# openSMILE functionals sets (name -> width): the field's standard light-weight speech representations.
OPENSMILE_FEATURE_SETS = {"eGeMAPSv02": 88, "ComParE_2016": 6373}
# How a backbone argument names openSMILE functionals instead of a checkpoint: `opensmile:<feature set>`.
OPENSMILE_PREFIX = "opensmile:"
PIPELINE_TASK = "emotion-recognition-in-conversation"
# A saved model folder's `custom_pipelines` (config.json): the pipeline then loads through remote code alone.
CUSTOM_PIPELINES = {PIPELINE_TASK: {"impl": "pipeline_mister_e.MisterEConversationPipeline", "pt": ["AutoModel"],
                                    "tf": [], "type": "multimodal"}}

# Fields that `__post_init__` reads as containers, what each must be, and the types that are that: any other value
# failed there with Python's TypeError, which names no field.
_CONTAINERS = {
    "experts": ("an expert's name or a list of them", (str, list, tuple)),
    "conv_kernel_sizes": ("a list of whole numbers", (list, tuple)),
    "speech_prompt_ids": ("a list of whole numbers or null", (list, tuple, type(None))),
    "id2label": ("a mapping of class index to name, or null", (Mapping, type(None))),
    "label2id": ("a mapping of class name to index, or null", (Mapping, type(None))),
    "speech_config": ("a backbone config (a mapping), or null", (PreTrainedConfig, Mapping, type(None))),
    "text_config": ("a backbone config (a mapping), or null", (PreTrainedConfig, Mapping, type(None))),
}
# Fields of earlier versions that nothing read; saved configs that have them still load.
_RETIRED_FIELDS = ("initializer_range",)
# Keyword arguments that `PreTrainedConfig` itself consumes or writes; anything else that is not a field is a typo.
_BASE_KWARGS = {
    "model_type",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "name_or_path",
    "_name_or_path",  # `to_dict()` writes it: `from_dict(to_dict())` must round-trip
    # set on a config after construction by transformers (a quantized backbone) or by Trainer and users
    "quantization_config",
    "finetuning_task",
    "task_specific_params",
    "torch_dtype",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "num_labels",
    "auto_map",
    "custom_pipelines",
    "_commit_hash",
    "_attn_implementation_internal",
    "_experts_implementation_internal",
}


def contradicts_recorded_embedding(recorded: str, other: str | None) -> bool:
    """Whether `other` (an embedding given or found) contradicts the one a conversation model's config records.
    "projection" is also the default of models trained before the embedding was recorded, so it is not evidence."""
    return other is not None and recorded != "projection" and other != recorded


def modalities_of(experts) -> list[str]:
    """The modalities that `experts` read, in the order of `MODALITIES`."""
    return [modality for modality in MODALITIES if any(modality in EXPERT_MODALITIES[e] for e in experts)]


def modalities_read(experts) -> dict[str, list[str]]:
    """What each of `experts` reads, for the messages that refuse data no enabled expert can answer."""
    return {expert: list(EXPERT_MODALITIES[expert]) for expert in experts}


def with_experts(settings: Mapping, experts) -> dict:
    """Config `settings` with `experts`, less the per-modality entries (`context_module: {speech: ...}`) of a speech or
    text expert not among them: an ablation, or data without a modality, that switches an expert off takes its settings
    with it, where the config would refuse them as changing nothing."""
    experts = [experts] if isinstance(experts, str) else list(experts)
    settings = {**settings, "experts": experts}
    for name in PER_MODALITY:
        if isinstance(settings.get(name), Mapping):
            settings[name] = {modality: value for modality, value in settings[name].items()
                              if modality in experts or modality not in MODALITIES}  # a typo is refused as such
    return settings


def _unknown_fields(names) -> ValueError:
    """The one refusal of names that are no field, given to the constructor or set on a config before it is saved."""
    return ValueError(f"MisterEConfig got unknown field(s) {names}; see `MisterEConfig` for the valid fields.")


@functools.cache
def _base_attributes() -> frozenset[str]:
    """The attributes `PreTrainedConfig` itself sets, whatever the transformers version."""
    return frozenset(vars(PreTrainedConfig()))


def _task_registered() -> bool:
    """Whether `import mister_e` has registered the pipeline task (read from `sys.modules`: importing the pipelines
    module here would cost every config load a second)."""
    pipelines = sys.modules.get("transformers.pipelines")
    return pipelines is not None and PIPELINE_TASK in pipelines.PIPELINE_REGISTRY.supported_tasks


@strict
class MisterEOpenSmileConfig(PreTrainedConfig):
    r"""
    A speech "backbone" of hand-crafted openSMILE functionals: one fixed-width vector of acoustic statistics per
    utterance, computed by `MisterEFunctionalsFeatureExtractor` (the `opensmile` package, an optional extra). The
    encoder built on it standardises the vector with training-split statistics held in the model, then projects it.

    Args:
        feature_set (`str`, *optional*, defaults to `"ComParE_2016"`):
            `"ComParE_2016"` (6373 functionals) or `"eGeMAPSv02"` (88).
        feature_dropout (`float`, *optional*, defaults to 0.2):
            Dropout on the standardised functionals before the projection (many, correlated inputs; small corpora).
    """

    model_type = "opensmile"

    feature_set: str = "ComParE_2016"
    feature_dropout: float | int = 0.2

    def validate_architecture(self):
        _check_choices("feature_set", [self.feature_set], OPENSMILE_FEATURE_SETS)
        if not 0 <= self.feature_dropout < 1:
            raise ValueError(f"`feature_dropout` must be in [0, 1), got {self.feature_dropout}.")

    @property
    def hidden_size(self) -> int:
        """Width of one functionals vector."""
        return OPENSMILE_FEATURE_SETS[self.feature_set]

    @classmethod
    def from_backbone_name(cls, name: str) -> "MisterEOpenSmileConfig | None":
        """The config a backbone argument `opensmile:<feature set>` names, or `None` for any other name."""
        if not str(name).startswith(OPENSMILE_PREFIX):
            return None
        feature_set = str(name)[len(OPENSMILE_PREFIX):]
        if feature_set not in OPENSMILE_FEATURE_SETS:
            raise ValueError(
                f"Unknown openSMILE feature set {feature_set!r} in {name!r}; expected one of "
                f"{[OPENSMILE_PREFIX + key for key in OPENSMILE_FEATURE_SETS]}."
            )
        return cls(feature_set=feature_set)


# Registered here, where the config is defined, so that a checkpoint's `speech_config` loads through `AutoConfig`
# both from the installed package and from the remote-code copy of this file.
AutoConfig.register(MisterEOpenSmileConfig.model_type, MisterEOpenSmileConfig, exist_ok=True)


@strict
class MisterEConfig(PreTrainedConfig):
    r"""
    Configuration of MiSTER-E, a speech + text mixture of experts for emotion recognition in conversations.

    Defaults are the paper's and the authors' code values (see the project README): a conversation of `N` utterances
    comes in as one `speech_embed_dim` and one `text_embed_dim` vector per utterance; a speech expert and a text expert
    (convolutional-recurrent context modules) and a cross-modal co-attention expert each give logits per utterance; a
    gate mixes the three logit vectors per utterance.

    Args:
        speech_embed_dim (`int`, *optional*, defaults to 2048):
            Width of the per-utterance speech embeddings (the stage-1 speech encoder's projection size).
        text_embed_dim (`int`, *optional*, defaults to 2048):
            Width of the per-utterance text embeddings (the stage-1 text encoder's projection size).
        experts (`list[str]`, *optional*, defaults to `("speech", "text", "cross_modal")`):
            Which experts exist. Ablations switch experts off here.
        gate_mode (`str`, *optional*, defaults to `"learned"`):
            `"learned"` (the paper's gate), `"mean"` (plain mean of the available experts) or the name of one expert
            (its logits alone; the others still train through their own losses).
        gate_hidden_size (`int`, *optional*, defaults to 10):
            Hidden width of the gate MLP (`3C -> hidden -> 3`).
        gate_temperature (`float`, *optional*, defaults to 2.0):
            Softmax temperature of the learned gate.
        mixture_space (`str`, *optional*, defaults to `"logits"`):
            What the gate weighs: `"logits"` (the paper: the weighted sum of the experts' raw logits, where an
            expert's say depends on its logit scale as much as on its weight) or `"probabilities"` (a classic mixture
            of experts, `log(sum_i w_i softmax(l_i))`: the weights alone set each expert's say, and the mixture
            likelihood rewards the gate for trusting the expert that is right).
        causal (`bool`, *optional*, defaults to `False`):
            Online mode: causal convolutions, unidirectional GRUs and causal attention, so the prediction for utterance
            `t` never depends on utterances after `t`.
        context_module (`str` or `dict[str, str]`, *optional*, defaults to `"conv_gru"`):
            Context module of the speech and text experts: `"conv_gru"` (the paper's), `"conv"` or `"gru"`; or one per
            modality, `{"speech": "conv_gru", "text": "gru"}` (a modality not named gets `"conv_gru"`).
        context_dim (`int`, *optional*, defaults to 1024):
            Channels of each context convolution, output width of the GRU (2 x 512 bidirectional; 1024 when causal)
            and of the skip projection.
        conv_kernel_sizes (`list[int]`, *optional*, defaults to `(1, 3, 5)`):
            Kernel sizes of the parallel context convolutions (odd, so that "same" padding is centred).
        gru_layers (`int` or `dict[str, int]`, *optional*, defaults to 3):
            Stacked GRU layers of the context module; or one per modality, `{"speech": 2, "text": 1}` (a modality not
            named gets 3).
        cross_modal_dim (`int`, *optional*, defaults to 1024):
            Width both modalities are projected to inside the cross-modal expert.
        coattention_layers (`int`, *optional*, defaults to 4):
            Co-attention blocks (cross-attention both ways, then self-attention per modality).
        attention_dim (`int`, *optional*, defaults to 120):
            Width of the queries, keys and values of every attention (split over `attention_heads`).
        attention_heads (`int`, *optional*, defaults to 3):
            Attention heads.
        attention_dropout (`float`, *optional*, defaults to 0.1):
            Dropout on attention probabilities.
        residual_dropout (`float`, *optional*, defaults to 0.5):
            Dropout on each attention output before the residual sum.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the co-attention post-LayerNorms and of the fusion LayerNorm.
        fusion_hidden_size (`int`, *optional*, defaults to 1024):
            Hidden width of the cross-modal expert's classifier (`2 * cross_modal_dim -> hidden -> C`).
        focal_gamma (`float`, *optional*, defaults to 3.0):
            Focal-loss exponent of the conversation-level losses.
        mixture_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the focal loss on the gated mixture.
        expert_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the focal loss on each enabled expert's own logits.
        supcon_weight (`float`, *optional*, defaults to 2.0):
            Weight of the supervised contrastive loss between the cross-modal expert's speech and text vectors.
        supcon_temperature (`float`, *optional*, defaults to 1.0):
            Temperature of the supervised contrastive loss.
        kl_weight (`float`, *optional*, defaults to 0.1):
            Weight of the symmetric KL divergence that pulls the experts' distributions together.
        speech_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of the speech backbone of the stage-1 utterance encoder, when the model runs on raw audio.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Config of the text backbone of the stage-1 utterance encoder, when the model runs on raw text.
        speech_pooling (`str`, *optional*, defaults to `"mean"`):
            Pooling of the speech backbone's frames: `"mean"` or `"attentive"` (attentive statistics pooling).
        text_pooling (`str`, *optional*, defaults to `"attentive"`):
            Pooling of the text backbone's tokens.
        speech_embedding (`str`, *optional*, defaults to `"projection"`):
            Which vector of the speech encoder the conversation model reads when it embeds raw audio itself:
            `"projection"` (the trained encoder's embedding), or `"backbone_mean"` / `"backbone_layers"` (the
            backbone's states mean-pooled, the last layer's / every layer's concatenated), for a conversation model
            trained on `extract --embedding backbone_*` vectors; such an encoder has no head. Recorded by stage-2
            training from the extracted data's columns, and the default of `join_stages`.
        text_embedding (`str`, *optional*, defaults to `"projection"`):
            The same for the text encoder.
        speech_prompt_ids (`list[int]`, *optional*):
            Token ids of the instruction a speech LLM backbone (Qwen2-Audio) reads after the audio; set by
            `from_backbones` from the prompt text ("What is the emotion of the person?:" by default).
        encoder_dropout (`float`, *optional*, defaults to 0.5):
            Dropout of the utterance classifier heads.
        encoder_focal_gamma (`float`, *optional*, defaults to 2.0):
            Focal-loss exponent of stage-1 utterance classification.
        encoder_batch_size (`int`, *optional*, defaults to 32):
            Utterances per pass through a backbone when the model embeds raw audio/text itself (stage 1, end-to-end
            models, the pipeline): memory stays bounded for long conversations. `None`: all at once.
        standardize_inputs (`bool`, *optional*, defaults to `False`):
            Standardise each modality's embeddings with training-split statistics held in the model (buffers fitted
            by `train_conversation_model`, saved with the weights, used by `forward`, `step` and the pipeline alike).
            Off in the paper (LLM embeddings); on in the `small` recipe, for embeddings of tiny, uneven scales.
        text_layers (`int`, *optional*, defaults to 1):
            How many equal-width states `text_embeds` concatenates (`extract --embedding backbone_layers`: a
            backbone's embeddings and every layer, 7 for MiniLM). Above 1 the model mixes them with learned softmax
            weights, one per state (ELMo's scalar mix, in the gate's optimizer group), after standardising, so the
            experts read one state's width. 1: the embeddings as they are (the paper's).
        input_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on every expert's input embeddings (not in the paper).
        context_dropout (`float`, *optional*, defaults to 0.0):
            Dropout inside the context modules, on the convolutions' output and on the GRU's (not in the paper, whose
            context module has none).
        gate_holdout_fraction (`float`, *optional*, defaults to 0.0):
            Fraction of the training conversations held out from the experts' losses; the gate learns from those
            alone (mixture loss on detached expert logits). 0 is the paper's joint training, where the gate sees the
            experts' predictions on data they fit, and so trusts an expert that merely memorised its training set.

    Labels default to the six IEMOCAP classes (`hap, sad, neu, ang, exc, fru`); pass `id2label` for other sets.
    """

    model_type = "mister_e"
    sub_configs_defaults = {
        "speech_config": SubConfigSpec(config_class=AutoConfig, model_type="wavlm", optional=True),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert", optional=True),
    }

    speech_embed_dim: int = 2048
    text_embed_dim: int = 2048
    experts: list[str] | tuple[str, ...] = EXPERTS
    gate_mode: str = "learned"
    gate_hidden_size: int = 10
    gate_temperature: float | int = 2.0
    mixture_space: str = "logits"
    causal: bool = False
    context_module: str | dict[str, str] = "conv_gru"
    context_dim: int = 1024
    conv_kernel_sizes: list[int] | tuple[int, ...] = (1, 3, 5)
    gru_layers: int | dict[str, int] = 3
    cross_modal_dim: int = 1024
    coattention_layers: int = 4
    attention_dim: int = 120
    attention_heads: int = 3
    attention_dropout: float | int = 0.1
    residual_dropout: float | int = 0.5
    layer_norm_eps: float = 1e-6
    fusion_hidden_size: int = 1024
    focal_gamma: float | int = 3.0
    mixture_loss_weight: float | int = 1.0
    expert_loss_weight: float | int = 1.0
    supcon_weight: float | int = 2.0
    supcon_temperature: float | int = 1.0
    kl_weight: float | int = 0.1
    speech_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    speech_pooling: str = "mean"
    text_pooling: str = "attentive"
    speech_embedding: str = "projection"
    text_embedding: str = "projection"
    speech_prompt_ids: list[int] | None = None
    encoder_dropout: float | int = 0.5
    encoder_focal_gamma: float | int = 2.0
    encoder_batch_size: int | None = 32
    standardize_inputs: bool = False
    text_layers: int = 1
    input_dropout: float | int = 0.0
    context_dropout: float | int = 0.0
    gate_holdout_fraction: float | int = 0.0

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """As `PreTrainedConfig.from_dict`, but what earlier versions saved for an expert that is off is dropped with a
        warning rather than refused, so that such checkpoints keep loading as they answered: a backbone that no enabled
        expert reads (a text-only model joined with a two-encoder stage 1; its weights are then left unused), and a
        per-modality entry of a speech or text expert that is off (a text-only ablation of a recipe with one context
        module per modality)."""
        config_dict = dict(config_dict)
        experts = config_dict.get("experts", EXPERTS)
        if not isinstance(experts, (str, list, tuple)):  # refused, naming the field, by `__post_init__`
            return super().from_dict(config_dict, **kwargs)
        for modality in MODALITIES:
            if config_dict.get(f"{modality}_config") is not None and modality not in modalities_of(
                    [experts] if isinstance(experts, str) else experts):
                logger.warning(f"Dropping the saved `{modality}_config`: no expert reads {modality} (`experts="
                               f"{experts}`), so its encoder was never used.")
                config_dict[f"{modality}_config"] = None
        kept = with_experts(config_dict, experts)
        for name in PER_MODALITY:
            if isinstance(config_dict.get(name), Mapping):
                for modality in config_dict[name].keys() - kept[name].keys():
                    logger.warning(f"Dropping the saved `{name}` entry for {modality}: the {modality} expert is off "
                                   f"(`experts={kept['experts']}`), so it changed nothing.")
                config_dict[name] = kept[name]
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        for retired in _RETIRED_FIELDS:  # in configs saved by earlier versions, never read
            kwargs.pop(retired, None)
        if "custom_pipelines" in kwargs and _task_registered():
            # The installed package serves the task itself: its pipeline, not the folder's copy (which transformers
            # would only run with `trust_remote_code=True`).
            kwargs.pop("custom_pipelines")
        unknown = sorted(key for key in kwargs if key not in _BASE_KWARGS)
        if unknown:
            raise _unknown_fields(unknown)
        for name, (expected, kinds) in _CONTAINERS.items():
            if not isinstance(getattr(self, name), kinds):
                raise ValueError(f"`{name}` must be {expected}, got {getattr(self, name)!r}.")
        if isinstance(self.id2label, dict) and isinstance(self.label2id, dict) and \
                {label: int(index) for index, label in self.id2label.items()} != dict(self.label2id):
            raise ValueError(f"`id2label` {self.id2label} and `label2id` {self.label2id} disagree: give one of them.")
        if isinstance(self.id2label, dict) and kwargs.get("num_labels") not in (None, len(self.id2label)):
            # transformers would replace the names with LABEL_0.. without a word
            raise ValueError(f"`num_labels={kwargs['num_labels']}` contradicts `id2label`, which names "
                             f"{len(self.id2label)} classes: give one of them.")
        if self.id2label is None and isinstance(self.label2id, dict):  # the labels given one way round only
            self.id2label = {index: label for label, index in self.label2id.items()}
        if self.id2label is None and kwargs.get("num_labels") is None:
            self.id2label = dict(enumerate(IEMOCAP_LABELS))
        if self.id2label is not None and self.label2id is None:
            self.label2id = {label: int(i) for i, label in self.id2label.items()}
        self.experts = [self.experts] if isinstance(self.experts, str) else list(self.experts)  # "text": one expert
        self.conv_kernel_sizes = list(self.conv_kernel_sizes)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of `@strict`-powered validation: every error names the field at fault."""
        # An attribute set after construction (`config.gate_mdoe = ...`) would be saved, then refused when loaded.
        unknown = sorted(name for name in vars(self) if not name.startswith("_") and name not in _BASE_KWARGS
                         and name not in self.__dataclass_fields__ and name not in _base_attributes())
        if unknown:
            raise _unknown_fields(unknown)
        for name, value in vars(self).items():
            default = self.__dataclass_fields__.get(name)
            if name in PER_MODALITY:  # checked below, per modality
                continue
            if default is not None and isinstance(default.default, bool) and not isinstance(value, bool):
                raise TypeError(f"`{name}` must be true or false, got {value!r}.")
            if default is not None and isinstance(default.default, (int, float)) and not isinstance(default.default, bool):
                if value is None and "None" in str(default.type):  # an optional number, left unset
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"`{name}` must be a number, got {value!r}.")
                if "float" not in str(default.type) and not isinstance(value, int):  # a width, a count: torch
                    raise TypeError(f"`{name}` must be a whole number, got {value!r}.")  # fails later, naming none
                if not math.isfinite(value):  # NaN passes every `<`/`>` check below and trains nothing
                    raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
        for name in ("conv_kernel_sizes", "speech_prompt_ids"):
            values = getattr(self, name)
            if values is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise TypeError(f"`{name}` must be a list of whole numbers, got {values!r}.")
        _check_choices("experts", self.experts, EXPERTS)
        # Fields every transformers config has that this model cannot honour: refused rather than silently ignored.
        if self.problem_type not in (None, "single_label_classification"):
            raise ValueError(f"`problem_type={self.problem_type!r}`: MiSTER-E classifies each utterance into one "
                             "class (`single_label_classification`).")
        for name in ("output_attentions", "output_hidden_states"):
            if getattr(self, name, False):
                raise ValueError(f"`{name}=True`: MiSTER-E returns no attention maps or hidden states; its outputs "
                                 "are the logits, each expert's logits, the gate's weights and the co-attention "
                                 "representations.")
        if not self.experts or len(set(self.experts)) != len(self.experts):
            raise ValueError(f"`experts` must name at least one expert, each once, got {self.experts}.")
        for modality in MODALITIES:  # a backbone no expert reads would be built, loaded and run for nothing
            if getattr(self, f"{modality}_config") is not None and modality not in modalities_of(self.experts):
                raise ValueError(f"`{modality}_config` is set but no expert reads {modality} (`experts="
                                 f"{self.experts}`): drop the {modality} encoder, or enable an expert that reads it.")
        _check_choices("gate_mode", [self.gate_mode], GATE_MODES)
        if self.gate_mode in EXPERTS and self.gate_mode not in self.experts:
            raise ValueError(f"`gate_mode={self.gate_mode!r}` names an expert that is not in `experts={self.experts}`.")
        _check_choices("mixture_space", [self.mixture_space], MIXTURE_SPACES)
        for name in PER_MODALITY:  # one value, or one per named modality
            if isinstance(getattr(self, name), dict):
                _check_choices(name, list(getattr(self, name)), MODALITIES)
                for modality, value in getattr(self, name).items():  # only the speech and text experts read them
                    if modality not in self.experts:
                        raise ValueError(f"`{name}` sets {modality} ({value!r}), but the {modality} expert is off "
                                         f"(`experts={self.experts}`): that entry would change nothing.")
        contexts = [self.context_settings(modality) for modality in MODALITIES]
        _check_choices("context_module", [context["context_module"] for context in contexts], CONTEXT_MODULES)
        if any(isinstance(layers, bool) or not isinstance(layers, int) or layers < 1
               for layers in (context["gru_layers"] for context in contexts)):
            raise ValueError(f"`gru_layers` must be a positive integer (or one per modality), got {self.gru_layers!r}.")
        _check_choices("speech_pooling", [self.speech_pooling], POOLING_MODES)
        _check_choices("text_pooling", [self.text_pooling], POOLING_MODES)
        _check_choices("speech_embedding", [self.speech_embedding], EMBEDDINGS)
        _check_choices("text_embedding", [self.text_embedding], EMBEDDINGS)
        for name in ("speech_embed_dim", "text_embed_dim", "text_layers", "context_dim", "cross_modal_dim",
                     "coattention_layers", "attention_dim", "attention_heads", "fusion_hidden_size", "gate_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.text_embed_dim % self.text_layers:
            raise ValueError(f"`text_layers={self.text_layers}` must divide `text_embed_dim={self.text_embed_dim}` "
                             "(the states it concatenates have one width).")
        if self.encoder_batch_size is not None and self.encoder_batch_size < 1:
            raise ValueError(f"`encoder_batch_size` must be a positive integer or None, got {self.encoder_batch_size}.")
        recurrent = any(context["context_module"] != "conv" for context in contexts)
        if not self.causal and recurrent and self.context_dim % 2:
            raise ValueError(f"`context_dim` must be even for a bidirectional GRU (2 directions), got {self.context_dim}.")
        if not self.conv_kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.conv_kernel_sizes):
            raise ValueError(f"`conv_kernel_sizes` must be positive odd integers, got {self.conv_kernel_sizes}.")
        if self.attention_dim % self.attention_heads:
            raise ValueError(
                f"`attention_dim` ({self.attention_dim}) must be divisible by `attention_heads` ({self.attention_heads})."
            )
        for name in ("attention_dropout", "residual_dropout", "encoder_dropout", "input_dropout", "context_dropout",
                     "gate_holdout_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}.")
        for name in ("gate_temperature", "supcon_temperature", "layer_norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        for name in ("focal_gamma", "encoder_focal_gamma", "mixture_loss_weight", "expert_loss_weight",
                     "supcon_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)}.")
        if self.num_labels is None or self.num_labels < 2:
            raise ValueError(f"`id2label` must name at least 2 classes, got {self.id2label}.")
        if sorted(int(index) for index in self.id2label) != list(range(self.num_labels)):
            raise ValueError(f"`id2label` must number its classes 0 to {self.num_labels - 1}, got {self.id2label}.")
        if len(set(self.id2label.values())) != self.num_labels:
            raise ValueError(f"`id2label` names a class twice: {self.id2label}.")

    def expert_input_dim(self, modality: str) -> int:
        """Width of `modality`'s input to the experts: its embeddings', or one state's when `text_layers` mixes them."""
        width = getattr(self, f"{modality}_embed_dim")
        return width // self.text_layers if modality == "text" else width

    def context_settings(self, modality: str) -> dict:
        """`context_module` and `gru_layers` of `modality`'s expert: the field's value, or its entry for `modality`
        when it names one per modality (the paper's value when it does not name `modality`)."""
        settings = {}
        for name, paper in PER_MODALITY.items():
            value = getattr(self, name)
            settings[name] = value.get(modality, paper) if isinstance(value, dict) else value
        return settings

    @property
    def expert_mask(self) -> list[bool]:
        """Which of (speech, text, cross_modal) are enabled, in the fixed order of `expert_logits`/`gate_weights`."""
        return [expert in self.experts for expert in EXPERTS]


def _check_choices(field: str, values, choices) -> None:
    for value in values:
        if value not in choices:
            raise ValueError(f"`{field}` got {value!r}; expected one of {list(choices)}.")


__all__ = ["MisterEConfig", "MisterEOpenSmileConfig"]
