"""Any backbone: SigLIP (no CLS token) + Qwen2 and CLIP + GPT-2, built from configs and from saved parts."""

import pytest
import torch
from conftest import make_images, make_tokenizer
from transformers import AutoModel, AutoModelForCausalLM, ViTImageProcessorPil

from minivlm import MiniVLMForConditionalGeneration, build_from_configs, build_from_pretrained_parts


VISION = {
    "siglip": dict(model_type="siglip_vision_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, image_size=32, patch_size=8),
    "clip": dict(model_type="clip_vision_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, image_size=32, patch_size=8, projection_dim=32),
}
TEXT = {
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=128, tie_word_embeddings=True),
}
PAIRS = [("siglip", "qwen2", 16), ("clip", "gpt2", 17)]  # SigLIP has no CLS token: 16 patches only
NO_SPLIT = {"siglip": "SiglipEncoderLayer", "clip": "CLIPEncoderLayer", "qwen2": "Qwen2DecoderLayer", "gpt2": "GPT2Block"}


@pytest.mark.parametrize("vision, text, image_tokens", PAIRS)
def test_backbone_pair_runs_generates_and_reloads(tmp_path, vision, text, image_tokens):
    torch.manual_seed(0)
    model, processor = build_from_configs(VISION[vision], TEXT[text], make_tokenizer())
    assert model.config.image_seq_length == processor.image_seq_length == image_tokens
    assert not any(n.startswith("model.vision_tower.head.") for n, _ in model.named_parameters())  # SigLIP pooling head
    inputs = processor(images=make_images(2), text=["a red", "the <image> blue circle"])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    out = model(**inputs, labels=labels)
    assert out.logits.shape == (*inputs["input_ids"].shape, len(processor.tokenizer))
    assert torch.isfinite(out.loss)
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, whatever the embedding's name
    assert {NO_SPLIT[vision], NO_SPLIT[text]} <= model._no_split_modules  # declared by the sub-models

    model.generation_config.eos_token_id = None
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)

    model.save_pretrained(tmp_path)
    reloaded = MiniVLMForConditionalGeneration.from_pretrained(tmp_path)
    assert type(reloaded.vision_tower) is type(model.vision_tower)
    assert type(reloaded.language_model) is type(model.language_model)
    torch.testing.assert_close(reloaded(**inputs).logits, out.logits, atol=0, rtol=0)


@pytest.mark.parametrize("vision, text, image_tokens", PAIRS)
def test_build_from_pretrained_parts_with_other_backbones(tmp_path, vision, text, image_tokens):
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    vision_model = AutoModel.from_config(_config(VISION[vision]))
    lm = AutoModelForCausalLM.from_config(_config({**TEXT[text], "vocab_size": len(tokenizer)}))
    vision_model.save_pretrained(tmp_path / "vision")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vision")
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")

    model, processor = build_from_pretrained_parts(str(tmp_path / "vision"), str(tmp_path / "lm"))
    assert model.config.image_seq_length == processor.image_seq_length == image_tokens
    for name, weight in lm.base_model.state_dict().items():
        torch.testing.assert_close(model.language_model.state_dict()[name], weight)
    inputs = processor(images=make_images(1), text="a red")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == image_tokens
    assert model(**inputs).logits.shape[:2] == inputs["input_ids"].shape


def _config(values: dict):
    from transformers import AutoConfig

    values = dict(values)
    return AutoConfig.for_model(values.pop("model_type"), **values)
