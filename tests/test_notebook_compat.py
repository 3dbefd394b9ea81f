"""With the same weights, MiniVLM computes what the reference notebook computes, and the
notebook's checkpoint converts into a loadable Hub folder."""

import subprocess
import sys

import torch
import torch.nn as nn
from conftest import REPO_ROOT, make_images, make_processor
from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTImageProcessorPil, ViTModel

from minivlm import MiniVLMForConditionalGeneration
from minivlm.benchmark.notebook import NotebookMiniVLM, VisionProjector  # the notebook's classes, as it defines them
from minivlm import MiniVLMProcessor
from minivlm.processing.builder import build_from_parts
from minivlm.processing.tokenizer import build_word_level_tokenizer


def tiny_parts(seed=0):
    torch.manual_seed(seed)
    tokenizer = build_word_level_tokenizer(["a dog runs in the grass this image shows two cats on a couch"])
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8))
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    projector = VisionProjector(32, 32)
    for p in projector.parameters():  # away from the default init, so a mix-up of layers shows
        nn.init.normal_(p, std=0.3)
    return vit.eval(), lm.eval(), projector, tokenizer


def same_weights_minivlm(vit, lm, projector, tokenizer):
    """MiniVLM holding exactly the notebook model's weights (the vocabulary already has <image>)."""
    model, _ = build_from_parts(
        _vit_without_pooler(vit), _copy(lm), tokenizer, ViTImageProcessorPil(size={"height": 32, "width": 32})
    )
    state = {k.replace("projection.0.", "linear_1.").replace("projection.2.", "norm.").replace("projection.3.", "linear_2."): v
             for k, v in projector.state_dict().items()}
    model.multi_modal_projector.load_state_dict(state)
    return model.eval()


def _copy(module):
    clone = type(module)(module.config)
    clone.load_state_dict(module.state_dict())
    return clone.eval()


def _vit_without_pooler(vit):
    clone = ViTModel(vit.config, add_pooling_layer=False)
    missing, unexpected = clone.load_state_dict(vit.state_dict(), strict=False)
    assert not missing and all(k.startswith("pooler.") for k in unexpected)
    return clone.eval()


def test_logits_and_loss_equal_the_notebook():
    vit, lm, projector, tokenizer = tiny_parts()
    notebook = NotebookMiniVLM(vit, lm, projector, tokenizer).eval()
    model = same_weights_minivlm(vit, lm, projector, tokenizer)
    assert model.config.text_config.vocab_size == len(tokenizer)  # <image> was already there: same vocab
    pixel_values = make_processor(model.config, tokenizer)(images=make_images(2))["pixel_values"]
    text = tokenizer(["a dog runs in the grass", "two cats"], padding="max_length", max_length=8,
                     padding_side="right", return_tensors="pt")
    labels = text["input_ids"].masked_fill(text["attention_mask"] == 0, -100)
    expected = notebook(pixel_values, text["input_ids"], text["attention_mask"], labels=labels)

    n = model.config.image_seq_length
    image_ids = torch.full((2, n), model.config.image_token_index)
    out = model(
        input_ids=torch.cat([image_ids, text["input_ids"]], 1),
        pixel_values=pixel_values,
        attention_mask=torch.cat([torch.ones_like(image_ids), text["attention_mask"]], 1),
        labels=torch.cat([torch.full_like(image_ids, -100), labels], 1),
    )
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-6, rtol=1e-6)


def test_greedy_generate_equals_the_notebook_loop():
    vit, lm, projector, tokenizer = tiny_parts(seed=1)
    notebook = NotebookMiniVLM(vit, lm, projector, tokenizer).eval()
    model = same_weights_minivlm(vit, lm, projector, tokenizer)
    processor = make_processor(model.config, tokenizer)
    for image in make_images(3, seed=2):
        inputs = processor(images=image, text="this image shows")
        expected = notebook.generate(inputs["pixel_values"], "this image shows", max_new_tokens=12)
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        n = model.config.image_seq_length
        assert generated[0, n:].tolist() == expected[0].tolist()


def test_convert_notebook_checkpoint(tmp_path):
    vit, lm, projector, tokenizer = tiny_parts(seed=2)
    tokenizer = build_word_level_tokenizer(["a dog runs in the grass"], image_token="<eos>")  # no <image>
    lm = LlamaForCausalLM(lm.config.__class__(**{**lm.config.to_dict(), "vocab_size": len(tokenizer)}))
    vision_dir, lm_dir, save_dir = tmp_path / "vit", tmp_path / "lm", tmp_path / "mini-vlm-flickr8k"
    vit.save_pretrained(vision_dir)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(vision_dir)
    LlamaForCausalLM(lm.config).save_pretrained(lm_dir)  # the *untrained* LM: the checkpoint must win
    tokenizer.save_pretrained(lm_dir)
    # What the notebook writes (Part 10), with its trained weights.
    save_dir.mkdir()
    torch.save(
        {
            "projector_state_dict": projector.state_dict(),
            "language_model_state_dict": lm.state_dict(),
            "config": {"vision_model_name": str(vision_dir), "lm_model_name": str(lm_dir),
                       "vision_dim": 32, "language_dim": 32},
        },
        save_dir / "mini_vlm_full.pt",
    )
    tokenizer.save_pretrained(save_dir / "tokenizer")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(save_dir / "image_processor")

    out_dir = tmp_path / "converted"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_notebook_checkpoint.py"),
         "--checkpoint_dir", str(save_dir), "--output_dir", str(out_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out_dir / "model.safetensors").is_file() and not list(out_dir.glob("*.pt"))

    model = MiniVLMForConditionalGeneration.from_pretrained(out_dir)
    processor = MiniVLMProcessor.from_pretrained(out_dir)
    # The LM's weights now sit in the text base model (`model.language_model`) and `lm_head`.
    converted = {f"model.{k}": v for k, v in model.language_model.state_dict().items()}
    converted["lm_head.weight"] = model.lm_head.weight
    assert converted.keys() == lm.state_dict().keys()
    for name, weight in lm.state_dict().items():
        got = converted[name]
        torch.testing.assert_close(got[: weight.shape[0]] if got.shape != weight.shape else got, weight)
    torch.testing.assert_close(model.multi_modal_projector.linear_1.weight, projector.projection[0].weight)
    torch.testing.assert_close(model.multi_modal_projector.norm.weight, projector.projection[2].weight)
    torch.testing.assert_close(model.multi_modal_projector.linear_2.bias, projector.projection[3].bias)
    assert processor.image_token_id == model.config.image_token_index == len(tokenizer)

    # Same weights, so the converted model's logits over the notebook's vocabulary equal the notebook's.
    notebook = NotebookMiniVLM(vit.eval(), lm.eval(), projector, tokenizer).eval()
    inputs = processor(images=make_images(1), text="a dog runs")
    text = tokenizer("a dog runs", return_tensors="pt")
    expected = notebook(inputs["pixel_values"], text["input_ids"], text["attention_mask"]).logits
    got = model(**inputs).logits[..., : len(tokenizer)]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_convert_rejects_a_foreign_checkpoint(tmp_path):
    (tmp_path / "ckpt").mkdir()
    torch.save({"state_dict": {}}, tmp_path / "ckpt" / "mini_vlm_full.pt")
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_notebook_checkpoint.py"),
         "--checkpoint_dir", str(tmp_path / "ckpt"), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "is it the notebook's mini_vlm_full.pt?" in proc.stderr
