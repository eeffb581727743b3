"""MiSTER-E: a speech + text mixture of experts for emotion recognition in conversations, as a Hugging Face model."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor

from .configuration_mister_e import MisterEConfig, MisterEOpenSmileConfig
from .feature_extraction_mister_e import MisterEFunctionalsFeatureExtractor
from .modeling_mister_e import (
    MisterEForEmotionRecognition,
    MisterEForUtteranceClassification,
    MisterEOutput,
    MisterEPreTrainedModel,
    MisterEUtteranceOutput,
)
from .pipeline_mister_e import MisterEConversationPipeline, register_pipeline
from .processing_mister_e import MisterEProcessor

__version__ = "0.1.0"

AutoConfig.register("mister_e", MisterEConfig)
AutoModel.register(MisterEConfig, MisterEForEmotionRecognition)
# `save_pretrained` then writes `auto_map` and copies the code files, so the folder loads with trust_remote_code.
MisterEConfig.register_for_auto_class()
MisterEForEmotionRecognition.register_for_auto_class("AutoModel")
AutoProcessor.register(MisterEConfig, MisterEProcessor)
AutoFeatureExtractor.register(MisterEOpenSmileConfig, MisterEFunctionalsFeatureExtractor)
MisterEFunctionalsFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
MisterEProcessor.register_for_auto_class("AutoProcessor")
register_pipeline()

__all__ = [
    "MisterEConfig",
    "MisterEConversationPipeline",
    "MisterEForEmotionRecognition",
    "MisterEForUtteranceClassification",
    "MisterEFunctionalsFeatureExtractor",
    "MisterEOpenSmileConfig",
    "MisterEOutput",
    "MisterEPreTrainedModel",
    "MisterEProcessor",
    "MisterEUtteranceOutput",
]
