"""MiniVLM: a vision encoder, an MLP projector and a causal LM, as a Hub-native transformers model.

This folder is the installed `minivlm` package. Its module files ship to the Hub verbatim as
remote code (`configuration_minivlm.py`, `modeling_minivlm.py`, `processing_minivlm.py`,
`pipeline_minivlm.py` and the siblings they import: `image_loading.py`, `image_cache_minivlm.py`,
`tasks_minivlm.py` (caption/query/detect), `grounding_minivlm.py` (boxes as text),
`adapters_minivlm.py` (LoRA adapters checked against their base); torch, transformers and relative
imports only; `minivlm.training.guards.shipped_code_files` lists them as `save_pretrained` finds
them). This file is not shipped:
it registers the classes with the Auto classes, for local use and so that `save_pretrained`
writes `auto_map` and copies the code.

The rest of the project lives in sub-packages mapped from their own folders (see pyproject.toml):
`minivlm.data` (processing/), `minivlm.training` (training/), `minivlm.evaluation` (evaluation/),
`minivlm.benchmark` (benchmark/) and `minivlm.scripts` (scripts/, the console commands).
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_minivlm import MiniVLMConfig
from .modeling_minivlm import (
    MiniVLMForConditionalGeneration,
    MiniVLMModel,
    MiniVLMMultiModalProjector,
    MiniVLMPreTrainedModel,
)
from .pipeline_minivlm import MiniVLMImageToTextPipeline
from .processing_minivlm import MiniVLMProcessor


AutoConfig.register(MiniVLMConfig.model_type, MiniVLMConfig, exist_ok=True)
# AutoModel gives the class that generates (the Hub usage `AutoModel.from_pretrained(...).generate`).
AutoModel.register(MiniVLMConfig, MiniVLMForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MiniVLMConfig, MiniVLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MiniVLMConfig, MiniVLMProcessor, exist_ok=True)
# One Auto class per class is recorded (the last call wins); the config's default
# `auto_map` names AutoModelForImageTextToText too.
MiniVLMConfig.register_for_auto_class("AutoConfig")
MiniVLMForConditionalGeneration.register_for_auto_class("AutoModel")
MiniVLMProcessor.register_for_auto_class("AutoProcessor")


def __getattr__(name: str):
    # The builder lives in minivlm.data (it is not shipped); imported on first use, so that
    # `import minivlm` stays light and free of import cycles.
    if name in ("build_from_pretrained_parts", "build_from_parts", "build_from_configs"):
        from .data import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'minivlm' has no attribute {name!r}")


__all__ = [
    "build_from_configs",
    "build_from_parts",
    "build_from_pretrained_parts",
    "MiniVLMConfig",
    "MiniVLMForConditionalGeneration",
    "MiniVLMImageToTextPipeline",
    "MiniVLMModel",
    "MiniVLMMultiModalProjector",
    "MiniVLMPreTrainedModel",
    "MiniVLMProcessor",
]
