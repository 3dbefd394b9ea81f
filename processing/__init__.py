"""Everything between raw data and model inputs: the processor, dataset adapters, the
synthetic shapes set, the training collator and caption metrics."""

from transformers import AutoProcessor

from modeling_minivlm import MiniVLMConfig

from .processing_minivlm import MiniVLMProcessor


AutoProcessor.register(MiniVLMConfig, MiniVLMProcessor, exist_ok=True)
MiniVLMProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["MiniVLMProcessor"]
