"""transformers' own model, generation and config tests, run over MiniVLM as transformers runs them over LLaVA.

The mixins live in `tests/transformers_common/` (see its README). Every test they hold that applies
to a decoder-only VLM on CPU runs; the few skipped below say why in their skip message.
"""

import tempfile
import unittest

import pytest
import torch
from transformers.testing_utils import torch_device

from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration, MiniVLMModel
from transformers_common.generation.test_utils import GenerationTesterMixin
from transformers_common.test_configuration_common import ConfigTester
from transformers_common.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor


class MiniVLMModelTester:
    """A tiny MiniVLM (16-px ViT with 8-px patches: 4 patches + CLS = 5 image tokens per image, a
    two-layer Llama) and a batch of 3 texts, each starting with one image's tokens."""

    def __init__(self, parent, batch_size: int = 3, text_length: int = 7, vision_feature_select_strategy="full"):
        self.parent = parent
        self.batch_size = batch_size
        self.vocab_size = 99
        self.image_token_index = 3  # low, as LLaVA's tester: resizing the vocabulary down keeps it
        self.pad_token_id = 1
        self.text_config = {
            "model_type": "llama", "vocab_size": self.vocab_size, "hidden_size": 32, "intermediate_size": 37,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
            "max_position_embeddings": 512, "initializer_range": 0.02, "pad_token_id": self.pad_token_id,
            "bos_token_id": 0, "eos_token_id": 2, "tie_word_embeddings": True,
        }
        self.vision_config = {
            "model_type": "vit", "image_size": 16, "patch_size": 8, "num_channels": 3, "hidden_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37, "initializer_range": 0.02,
        }
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.num_image_tokens = (16 // 8) ** 2 + (1 if vision_feature_select_strategy == "full" else 0)
        self.seq_length = text_length + self.num_image_tokens
        self.encoder_seq_length = self.seq_length
        # What the common tests read off the tester: the text model's sizes.
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.is_training = True

    def get_config(self) -> MiniVLMConfig:
        return MiniVLMConfig(
            vision_config=self.vision_config, text_config=self.text_config,
            image_token_index=self.image_token_index,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        pixel_values = floats_tensor([self.batch_size, 3, 16, 16])
        # Text ids avoid the image token (3) and pad/bos/eos (0-2); each text starts with its image.
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 4) + 4
        input_ids[:, : self.num_image_tokens] = self.image_token_index
        attention_mask = torch.ones_like(input_ids)
        return config, {"input_ids": input_ids, "pixel_values": pixel_values, "attention_mask": attention_mask}


class MiniVLMModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    """transformers' `ModelTesterMixin` and `GenerationTesterMixin`, and `ConfigTester`, over both classes."""

    all_model_classes = (MiniVLMModel, MiniVLMForConditionalGeneration)
    _is_composite = True

    def setUp(self):
        self.model_tester = MiniVLMModelTester(self)
        self.config_tester = ConfigTester(
            self, config_class=MiniVLMConfig, has_text_modality=False,
            common_properties=["image_token_index", "vision_feature_layer", "image_seq_length"],
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds labels for the classes of its own task tables; a remote-code class is in
        # none of them, so the causal-LM labels (the text's own ids) are added here.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is MiniVLMForConditionalGeneration:
            inputs_dict["labels"] = inputs_dict["input_ids"].clone()
        return inputs_dict

    # -- where a common test's assumption does not hold for a remote-code model ------------------
    def _generating_class_only(self, test):
        """Runs `test` over `MiniVLMForConditionalGeneration` only."""
        classes = self.all_model_classes
        self.all_model_classes = (MiniVLMForConditionalGeneration,)
        try:
            test()
        finally:
            self.all_model_classes = classes

    # transformers leaves base models out of its training tests by looking them up in its own
    # AutoModel table; a remote-code base model is not in it, so the mixin would ask MiniVLMModel
    # (no head, no labels) for a loss. The generating class trains; the base model has nothing to train.
    def test_training(self):
        self._generating_class_only(super().test_training)

    def test_training_gradient_checkpointing(self):
        self._generating_class_only(super().test_training_gradient_checkpointing)

    def test_training_gradient_checkpointing_use_reentrant_false(self):
        self._generating_class_only(super().test_training_gradient_checkpointing_use_reentrant_false)

    def test_training_gradient_checkpointing_use_reentrant_true(self):
        self._generating_class_only(super().test_training_gradient_checkpointing_use_reentrant_true)

    def test_reverse_loading_mapping(self):
        """The generating class writes the checkpoint layout of earlier MiniVLM files (`language_model.model.*`),
        which every pattern of the conversion mapping must produce: the mixin checks it. The base model's files
        (`language_model.*`) are in no earlier layout, so those patterns have nothing to match there; that both
        kinds of file load into both classes is checked in `test_base_and_full_model_files_load_into_each_other`."""
        self._generating_class_only(super().test_reverse_loading_mapping)

    def test_base_and_full_model_files_load_into_each_other(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        full = MiniVLMForConditionalGeneration(config)
        with tempfile.TemporaryDirectory() as tmp:
            full.save_pretrained(f"{tmp}/full")
            base = MiniVLMModel.from_pretrained(f"{tmp}/full")
            base.save_pretrained(f"{tmp}/base")
            full_again = MiniVLMForConditionalGeneration.from_pretrained(f"{tmp}/base")
        expected = full.model.state_dict()
        for name, tensor in base.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
        for name, tensor in full_again.model.state_dict().items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)
        assert full_again.lm_head.weight is full_again.get_input_embeddings().weight
