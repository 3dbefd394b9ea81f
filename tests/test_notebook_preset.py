"""A dry run of the `notebook` preset on parts shaped like the Hub repos it names, at tiny sizes.

google/vit-large-patch16-224 is a `ViTForImageClassification` checkpoint (pooler and classifier
weights present) with an old-style `preprocessor_config.json` (`feature_extractor_type:
ViTFeatureExtractor`, mean/std 0.5, `size` a bare int); HuggingFaceTB/SmolLM-360M is a
`LlamaForCausalLM` whose byte-level BPE tokenizer puts its special tokens first and has no pad
token (bos = eos = unk = id 0). The test builds both in temp folders, trains a few steps with
`--preset notebook --vision_model DIR --language_model DIR` (with and without the feature cache
and pixel shuffle), then captions through `pipeline("image-to-text")` and evaluates.
"""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    ViTConfig,
    ViTForImageClassification,
    pipeline,
)

from minivlm.processing.shapes import generate_shapes_dataset
from minivlm.evaluation.captioning import evaluate_captions
from minivlm.processing.loading import load_split
from minivlm.training.run import parse_args, train


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # SmolLM's first ids: 0, 1, 2


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=16, num_validation=4, num_test=4,
                                   image_size=32, seed=0)


@pytest.fixture(scope="module")
def vit_classifier_dir(tmp_path_factory):
    """A ViT-L/16-224-shaped repo at 32 px: classifier and pooler weights, an old-style preprocessor config."""
    folder = tmp_path_factory.mktemp("vit-classifier")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=5)
    ViTForImageClassification(config).save_pretrained(folder)
    # The Hub checkpoint also holds the pooler that ViTForImageClassification leaves out.
    weights = load_file(folder / "model.safetensors")
    assert any(k.startswith("classifier.") for k in weights) and not any("pooler" in k for k in weights)
    weights["vit.pooler.dense.weight"] = torch.randn(32, 32) * 0.02
    weights["vit.pooler.dense.bias"] = torch.zeros(32)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 32,
    }))
    return folder


@pytest.fixture(scope="module")
def smollm_like_dir(tmp_path_factory, shapes_dir):
    """A SmolLM-shaped repo: LlamaForCausalLM and a byte-level BPE, special tokens first, no pad token."""
    folder = tmp_path_factory.mktemp("smollm-like")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    captions = [line for line in (shapes_dir / "train" / "metadata.jsonl").read_text().splitlines()]
    backend.train_from_iterator(captions, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=SPECIAL_TOKENS[0],
                                        eos_token=SPECIAL_TOKENS[0], unk_token=SPECIAL_TOKENS[0])
    assert tokenizer.pad_token is None and tokenizer.bos_token_id == tokenizer.eos_token_id == 0
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "tokenizer_class": "GPT2Tokenizer"}))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
    )).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("extra", [
    pytest.param([], id="pixels"),
    pytest.param(["--cache_vision_features", "true"], id="feature-cache"),
    pytest.param(["--pixel_shuffle_factor", "2", "--vision_feature_select_strategy", "default"], id="pixel-shuffle"),
    pytest.param(["--cache_vision_features", "true", "--pixel_shuffle_factor", "2",
                  "--vision_feature_select_strategy", "default"], id="feature-cache-pixel-shuffle"),
])
def test_notebook_preset_trains_captions_and_evaluates_on_hub_shaped_parts(
    tmp_path, shapes_dir, vit_classifier_dir, smollm_like_dir, extra
):
    out = tmp_path / "run"
    model_args, data_args, training_args = parse_args([
        "--preset", "notebook", "--vision_model", str(vit_classifier_dir), "--language_model", str(smollm_like_dir),
        "--dataset", str(shapes_dir), "--max_train_samples", "8", "--max_steps", "2",
        "--per_device_eval_batch_size", "4", "--save_strategy", "no", "--output_dir", str(out),
        "--disable_tqdm", "true", "--dataloader_num_workers", "0", *extra,
    ])
    assert (model_args.freeze, training_args.learning_rate) == ("vision", 2e-4)  # the preset's recipe
    trainer = train(model_args, data_args, training_args)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e] or [trainer.state.log_history[-1]["train_loss"]]
    assert trainer.state.global_step == 2 and all(torch.isfinite(torch.tensor(losses)))

    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 0  # no pad token: EOS pads
    assert model.generation_config.eos_token_id == 0 and model.generation_config.pad_token_id == 0
    shuffle = 2 if "--pixel_shuffle_factor" in extra else 1
    expected_tokens = 17 if shuffle == 1 else 4  # 4×4 patches + CLS, or CLS dropped and 2×2 blocks merged
    assert processor.image_seq_length == model.config.image_seq_length == expected_tokens
    # The pooler and classifier of the checkpoint are not part of the model; the frozen encoder is the
    # checkpoint's own (loaded under its "vit." prefix, not freshly initialised).
    assert not [name for name in model.state_dict() if "pooler" in name or "classifier" in name]
    reference = ViTForImageClassification.from_pretrained(vit_classifier_dir).vit.state_dict()
    encoder = model.vision_tower.state_dict()
    assert encoder.keys() == {k for k in reference if not k.startswith("pooler.")}
    assert all(torch.equal(encoder[k], reference[k]) for k in encoder)
    image_processor = processor.image_processor
    assert (image_processor.size["height"], image_processor.size["width"]) == (32, 32)
    assert list(image_processor.image_mean) == list(image_processor.image_std) == [0.5, 0.5, 0.5]

    test = load_split(str(shapes_dir), "test")
    predictions, metrics = evaluate_captions(model, processor, test, decoding={"max_new_tokens": 6}, meteor=False,
                                             progress=False)
    captioner = pipeline("image-to-text", model=str(out), trust_remote_code=True)
    piped = [r[0]["generated_text"] for r in captioner(list(test["image"]), max_new_tokens=6, batch_size=2)]
    assert piped == [p["caption"] for p in predictions]
    assert 0.0 <= metrics["shapes_accuracy"] <= 1.0 and metrics["cider"] >= 0.0
