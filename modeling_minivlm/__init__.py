"""MiniVLM model package: config, model and the `image-to-text` pipeline.

The three module files ship to the Hub as remote code; this file only registers the
classes with the Auto classes, for local use and so that `save_pretrained` writes
`auto_map` and copies the code.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .configuration_minivlm import MiniVLMConfig
from .modeling_minivlm import (
    MiniVLMForConditionalGeneration,
    MiniVLMMultiModalProjector,
    MiniVLMPreTrainedModel,
)
from .pipeline_minivlm import MiniVLMImageToTextPipeline


AutoConfig.register(MiniVLMConfig.model_type, MiniVLMConfig, exist_ok=True)
AutoModel.register(MiniVLMConfig, MiniVLMForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MiniVLMConfig, MiniVLMForConditionalGeneration, exist_ok=True)
# One Auto class per class is recorded (the last call wins); the config's default
# `auto_map` names AutoModelForImageTextToText too.
MiniVLMConfig.register_for_auto_class("AutoConfig")
MiniVLMForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "MiniVLMConfig",
    "MiniVLMForConditionalGeneration",
    "MiniVLMImageToTextPipeline",
    "MiniVLMMultiModalProjector",
    "MiniVLMPreTrainedModel",
]
