"""MiniVLMConfig and MiniVLMForConditionalGeneration behave like a native transformers model."""

import json

import pytest
import torch
from conftest import make_config, make_images, make_model, make_processor, make_tokenizer
from safetensors import safe_open
from transformers import DynamicCache

from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration


def image_inputs(processor, texts, seed=0):
    return processor(images=make_images(len(texts), seed=seed), text=texts, return_tensors="pt")


# -- config -----------------------------------------------------------------------------
def test_default_config_has_the_notebook_shapes():
    config = MiniVLMConfig()
    assert config.image_seq_length == 197  # 14 x 14 patches + CLS
    assert (config.vision_config.model_type, config.vision_config.hidden_size) == ("vit", 1024)
    assert config.vision_config.num_hidden_layers == 24
    assert (config.text_config.model_type, config.text_config.hidden_size) == ("llama", 960)
    assert config.text_config.num_hidden_layers == 32
    assert config.vision_feature_select_strategy == "full" and config.vision_feature_layer == -1
    assert config.tie_word_embeddings is True


def test_config_json_round_trip(tmp_path, config):
    config.save_pretrained(tmp_path)
    loaded = MiniVLMConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "minivlm"
    assert saved["custom_pipelines"]["image-to-text"]["impl"] == "pipeline_minivlm.MiniVLMImageToTextPipeline"
    assert saved["auto_map"]["AutoModelForImageTextToText"] == "modeling_minivlm.MiniVLMForConditionalGeneration"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
        ({"vision_config": {"image_size": 36}}, "not divisible by patch_size"),
        ({"image_seq_length": 5}, "image_seq_length=5"),
        ({"image_token_index": 10_000}, "outside the text vocabulary"),
        ({"pixel_shuffle_factor": 2}, "vision_feature_select_strategy='default'"),
        ({"pixel_shuffle_factor": 3, "vision_feature_select_strategy": "default"}, "does not divide"),
    ],
)
def test_inconsistent_config_raises_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_image_seq_length_follows_strategy_and_pixel_shuffle():
    assert make_config().image_seq_length == 17
    assert make_config(vision_feature_select_strategy="default").image_seq_length == 16
    assert make_config(vision_feature_select_strategy="default", pixel_shuffle_factor=2).image_seq_length == 4


# -- forward ----------------------------------------------------------------------------
def test_forward_outputs(model, processor, config):
    inputs = image_inputs(processor, ["a red circle", "two dogs in the grass"])
    out = model(**inputs, labels=inputs["input_ids"])
    batch, seq = inputs["input_ids"].shape
    assert out.logits.shape == (batch, seq, config.text_config.vocab_size)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.image_hidden_states.shape == (batch, config.image_seq_length, config.text_config.hidden_size)
    assert isinstance(out.cache, DynamicCache) and out.cache.get_seq_length() == seq


def test_loss_ignores_image_padding_and_masked_positions(model, processor):
    inputs = image_inputs(processor, ["a red circle on the left", "the dog"])
    ids = inputs["input_ids"]
    masked = ids.masked_fill((ids == model.config.image_token_index) | (inputs["attention_mask"] == 0), -100)
    loss_masked = model(**inputs, labels=masked).loss
    # Image positions are ignored by the model itself, whatever the labels hold there.
    loss_image_ids = model(**inputs, labels=ids.masked_fill(inputs["attention_mask"] == 0, -100)).loss
    torch.testing.assert_close(loss_masked, loss_image_ids)
    # A manual shifted cross-entropy over the caption tokens only gives the same number.
    logits = model(**inputs).logits
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), masked[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(loss_masked, manual)


def test_inputs_embeds_without_input_ids_matches(model, processor):
    inputs = image_inputs(processor, ["a red circle"])
    expected = model(**inputs).logits
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    out = model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(out.logits, expected)


def test_left_padding_is_masked(model, processor):
    alone = image_inputs(processor, ["the"])
    padded = image_inputs(processor, ["the", "a red circle on the left of the square"])
    assert padded["attention_mask"][0, 0] == 0  # left-padded
    last_alone = model(**alone).logits[0, -1]
    last_padded = model(**padded).logits[0, -1]
    torch.testing.assert_close(last_padded, last_alone, atol=1e-5, rtol=1e-4)


def test_get_image_features_strategies_and_layers(images):
    pixel_values = make_processor()(images=images)["pixel_values"]
    full = make_model(make_config())
    assert full.get_image_features(pixel_values).pooler_output.shape == (3, 17, 32)
    default = make_model(make_config(vision_feature_select_strategy="default"))
    assert default.get_image_features(pixel_values).pooler_output.shape == (3, 16, 32)
    shuffled = make_model(make_config(vision_feature_select_strategy="default", pixel_shuffle_factor=2))
    assert shuffled.multi_modal_projector.linear_1.in_features == 4 * 32
    assert shuffled.get_image_features(pixel_values).pooler_output.shape == (3, 4, 32)
    # -1 is last_hidden_state (after the final LayerNorm), another layer is taken before it.
    vision_out = full.vision_tower(pixel_values, output_hidden_states=True)
    torch.testing.assert_close(
        full.get_image_features(pixel_values).pooler_output, full.multi_modal_projector(vision_out.last_hidden_state)
    )
    layer_model = make_model(make_config(vision_feature_layer=-2))
    vision_out = layer_model.vision_tower(pixel_values, output_hidden_states=True)
    torch.testing.assert_close(
        layer_model.get_image_features(pixel_values).pooler_output,
        layer_model.multi_modal_projector(vision_out.hidden_states[-2]),
    )


def test_image_features_land_at_image_token_positions(model, processor):
    inputs = image_inputs(processor, ["a red circle"])
    captured = {}
    handle = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    out = model(**inputs)
    handle.remove()
    positions = inputs["input_ids"][0] == model.config.image_token_index
    torch.testing.assert_close(captured["embeds"][0, positions], out.image_hidden_states[0])
    text_embeds = model.get_input_embeddings()(inputs["input_ids"][0, ~positions])
    torch.testing.assert_close(captured["embeds"][0, ~positions], text_embeds)


def test_mismatched_image_tokens_raise(model, processor):
    inputs = image_inputs(processor, ["a red circle"])
    too_few = inputs["input_ids"][:, 1:]
    with pytest.raises(ValueError, match=r"expected 17 image tokens for each of 1 image\(s\), 17 in all, found 16"):
        model(input_ids=too_few, pixel_values=inputs["pixel_values"])
    two_images = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(ValueError, match="did the processor expand <image>"):
        model(input_ids=inputs["input_ids"], pixel_values=two_images)


def test_image_tokens_without_pixel_values_embed_as_text(model, processor):
    # The text-only forward of assisted decoding and prompt lookup: `<image>` is then an ordinary token.
    inputs = image_inputs(processor, ["a red circle"])
    out = model(input_ids=inputs["input_ids"])
    assert out.image_hidden_states is None and out.logits.shape[:2] == inputs["input_ids"].shape


def test_wrong_pixel_shape_raises(model, processor):
    inputs = image_inputs(processor, ["a red circle"])
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(num_images, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 64, 64))


def test_text_only_forward_works(model, tokenizer):
    ids = tokenizer(["a red circle"], return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[:2] == ids.shape


# -- KV cache and generation --------------------------------------------------------------
def test_cached_logits_match_uncached(model, processor):
    inputs = image_inputs(processor, ["a red circle on the", "two dogs in the"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    full = model(**inputs).logits
    prefix = model(input_ids=ids[:, :-3], pixel_values=inputs["pixel_values"], attention_mask=mask[:, :-3], use_cache=True)
    cache = prefix.cache
    step_logits = []
    for t in range(ids.shape[1] - 3, ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache, use_cache=True)
        cache = out.cache
        step_logits.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(step_logits, 1), full[:, -3:], atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == ids.shape[1]


def greedy_without_cache(model, inputs, steps):
    """Reference decoding: re-run the whole sequence for every token, no cache."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(steps):
        logits = model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=mask).logits
        next_token = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_token], 1)
        mask = torch.cat([mask, torch.ones_like(next_token)], 1)
    return ids


def test_greedy_generate_matches_uncached_loop(model, processor):
    inputs = image_inputs(processor, ["a red"])
    model.generation_config.eos_token_id = None
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    torch.testing.assert_close(generated, greedy_without_cache(model, inputs, 8))


def test_pixel_values_used_on_first_step_only(model, processor, monkeypatch):
    inputs = image_inputs(processor, ["a red"])
    calls = []
    original = model.model.get_image_features
    monkeypatch.setattr(model.model, "get_image_features", lambda pv, **kw: calls.append(pv.shape) or original(pv, **kw))
    model.generation_config.eos_token_id = None
    model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert calls == [inputs["pixel_values"].shape]


def test_batched_generation_matches_single(model, processor):
    texts = ["the", "a red circle on the left", "two"]
    model.generation_config.eos_token_id = None
    batch = image_inputs(processor, texts)
    generated = model.generate(**batch, max_new_tokens=6, do_sample=False)[:, -6:]
    for i, text in enumerate(texts):
        single = processor(images=make_images(3)[i], text=text)
        alone = model.generate(**single, max_new_tokens=6, do_sample=False)[:, -6:]
        torch.testing.assert_close(generated[i : i + 1], alone)


def test_generation_stops_at_eos(model, processor):
    inputs = image_inputs(processor, ["a red"])
    model.generation_config.eos_token_id = None
    free = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    stop_token = int(free[2])
    first = free.tolist().index(stop_token)
    model.generation_config.eos_token_id = stop_token
    stopped = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert stopped.tolist() == free[: first + 1].tolist()


def test_sampling_and_beam_search(model, processor):
    inputs = image_inputs(processor, ["a", "the red"])
    model.generation_config.eos_token_id = None
    torch.manual_seed(3)
    first = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=0, temperature=1.5)
    torch.manual_seed(3)
    second = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=0, temperature=1.5)
    torch.testing.assert_close(first, second)
    beams = model.generate(**inputs, max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape == (4, inputs["input_ids"].shape[1] + 5)
    one_beam = model.generate(**inputs, max_new_tokens=5, num_beams=1, do_sample=False)
    greedy = greedy_without_cache(model, inputs, 5)
    torch.testing.assert_close(one_beam, greedy)


# -- embeddings, save/load, training features ---------------------------------------------------
def test_tied_embeddings_survive_save_and_load(tmp_path, model):
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "language_model.model.embed_tokens.weight" in keys
    assert "language_model.lm_head.weight" not in keys  # stored once
    loaded = MiniVLMForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.get_output_embeddings().weight, model.get_output_embeddings().weight)


def test_random_init_model_loads_back_with_every_parameter_equal(tmp_path, model):
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))
    loaded = MiniVLMForConditionalGeneration.from_pretrained(tmp_path)
    expected = dict(model.named_parameters())
    got = dict(loaded.named_parameters())
    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert different == []
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(dict(loaded.named_buffers())[name], buffer)


def test_resize_token_embeddings_keeps_model_consistent(model, processor):
    old = model.config.text_config.vocab_size
    model.resize_token_embeddings(old + 5)
    assert model.config.text_config.vocab_size == old + 5
    assert model.get_output_embeddings().weight.shape[0] == old + 5
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model(**image_inputs(processor, ["a"])).logits.shape[-1] == old + 5


def test_gradient_checkpointing_matches_and_leaves_no_unused_parameter(config, processor):
    inputs = image_inputs(processor, ["a red circle", "the dog"])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    plain = make_model(config).train()
    loss_plain = plain(**inputs, labels=labels).loss
    checkpointed = make_model(config).train()
    checkpointed.activation_checkpointing_enable()
    assert checkpointed.is_activation_checkpointing
    loss_ckpt = checkpointed(**inputs, labels=labels).loss
    torch.testing.assert_close(loss_ckpt, loss_plain)
    loss_ckpt.backward()
    no_grad = [n for n, p in checkpointed.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_both_sub_models(saved_model_dir, implementation):
    model = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir, attn_implementation=implementation)
    assert model.config.vision_config._attn_implementation == implementation
    assert model.config.text_config._attn_implementation == implementation
    assert model.language_model.config._attn_implementation == implementation
    assert model.vision_tower.config._attn_implementation == implementation


def test_eager_and_sdpa_agree(saved_model_dir, processor):
    inputs = image_inputs(processor, ["a red circle", "the"])
    eager = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir, attn_implementation="eager").eval()
    sdpa = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir, attn_implementation="sdpa").eval()
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(sdpa(**inputs).logits[mask], eager(**inputs).logits[mask], atol=1e-4, rtol=1e-4)


def test_dtype_reaches_both_sub_models(saved_model_dir, processor):
    model = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(**image_inputs(processor, ["a red circle"]))
    assert out.logits.dtype == torch.bfloat16


# -- building from pretrained parts ---------------------------------------------------------------
def test_build_from_pretrained_parts(tmp_path, processor):
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel

    from minivlm import build_from_pretrained_parts
    from minivlm.processing.tokenizer import build_word_level_tokenizer

    torch.manual_seed(0)
    vision_dir, lm_dir = tmp_path / "vit", tmp_path / "lm"
    vit = ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8),
        add_pooling_layer=False,
    )
    vit.save_pretrained(vision_dir)
    processor.image_processor.save_pretrained(vision_dir)
    lm_tokenizer = build_word_level_tokenizer(["a red circle on the left"], image_token="<eos>")  # no <image> yet
    lm_config = LlamaConfig(
        vocab_size=len(lm_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        eos_token_id=lm_tokenizer.eos_token_id, pad_token_id=lm_tokenizer.pad_token_id,
    )
    lm = LlamaForCausalLM(lm_config)
    lm.save_pretrained(lm_dir)
    lm_tokenizer.save_pretrained(lm_dir)

    model, vlm_processor = build_from_pretrained_parts(str(vision_dir), str(lm_dir))
    assert vlm_processor.image_seq_length == model.config.image_seq_length == 17
    assert model.config.image_token_index == vlm_processor.image_token_id == len(lm_tokenizer)
    assert model.config.text_config.vocab_size == len(lm_tokenizer) + 1
    assert vlm_processor.tokenizer.padding_side == "left"
    for name, weight in vit.state_dict().items():
        torch.testing.assert_close(model.vision_tower.state_dict()[name], weight)
    converted = {f"model.{k}": v for k, v in model.language_model.state_dict().items()}
    converted["lm_head.weight"] = model.lm_head.weight
    assert converted.keys() == lm.state_dict().keys()
    for name, weight in lm.state_dict().items():
        if "embed_tokens" in name or "lm_head" in name:
            torch.testing.assert_close(converted[name][: len(lm_tokenizer)], weight)
        else:
            torch.testing.assert_close(converted[name], weight)
    assert not any(p.is_meta for p in model.parameters())
    assert model.generation_config.eos_token_id == lm_tokenizer.eos_token_id

    inputs = vlm_processor(images=make_images(1), text="a red")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert out.shape[0] == 1 and prompt_length < out.shape[1] <= prompt_length + 3  # may stop early at EOS
    model.save_pretrained(tmp_path / "vlm")
    reloaded = MiniVLMForConditionalGeneration.from_pretrained(tmp_path / "vlm")
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_tokenizer_fixture_has_image_token():
    tokenizer = make_tokenizer()
    assert tokenizer.convert_tokens_to_ids("<image>") == len(tokenizer) - 1


def test_cached_vision_features_replace_pixel_values(model, processor):
    inputs = image_inputs(processor, ["a red circle", "the"])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    features = model.get_vision_features(inputs["pixel_values"])
    assert features.shape == (2, 17, 32)
    from_pixels = model(**inputs, labels=labels)
    from_features = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], vision_features=features, labels=labels
    )
    torch.testing.assert_close(from_features.loss, from_pixels.loss)
    model.generation_config.eos_token_id = None
    generated = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], vision_features=features,
        max_new_tokens=5, do_sample=False,
    )
    torch.testing.assert_close(generated, model.generate(**inputs, max_new_tokens=5, do_sample=False))
    with pytest.raises(ValueError, match="not both"):
        model(**inputs, vision_features=features)


# -- transformers' VLM contracts ---------------------------------------------------------------------
def test_llava_structure_and_auto_classes(model, saved_model_dir):
    from transformers import AutoModel, AutoModelForImageTextToText

    from minivlm import MiniVLMModel

    assert isinstance(model.base_model, MiniVLMModel) and model.base_model is model.model
    assert model.vision_tower is model.model.vision_tower and model.language_model is model.model.language_model
    assert type(model.language_model).__name__ == "LlamaModel"  # the text base model, no head
    assert model._no_split_modules == {"ViTEmbeddings", "ViTLayer", "LlamaDecoderLayer"}  # from the sub-models
    assert model.all_tied_weights_keys == {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        assert type(auto_class.from_pretrained(saved_model_dir)) is MiniVLMForConditionalGeneration


def test_checkpoint_in_the_old_layout_loads(tmp_path, model, processor):
    from safetensors.torch import load_file, save_file

    # Files keep the layout from before MiniVLMModel (parts at the top, the LM with its head), as
    # LLaVA's do: every checkpoint written earlier, and the notebook conversions, load unchanged.
    model.save_pretrained(tmp_path / "saved")
    state = load_file(tmp_path / "saved" / "model.safetensors")
    prefixes = ("vision_tower.", "multi_modal_projector.", "language_model.model.")
    assert state and all(key.startswith(prefixes) for key in state), sorted(state)[:5]
    assert "language_model.model.embed_tokens.weight" in state
    # A state dict written by hand in that layout (as the previous code did) loads into the new classes.
    (tmp_path / "old").mkdir()
    save_file({k: v.clone() for k, v in state.items()}, tmp_path / "old" / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(tmp_path / "old")
    loaded = MiniVLMForConditionalGeneration.from_pretrained(tmp_path / "old")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)
    inputs = image_inputs(processor, ["a red"])
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_return_dict_false_gives_tuples(model, processor):
    inputs = image_inputs(processor, ["a red circle"])
    labels = inputs["input_ids"].clone()
    as_dict = model(**inputs, labels=labels)
    as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    base = model.model(**inputs, return_dict=False)
    assert isinstance(base, tuple) and base[0].shape == (*inputs["input_ids"].shape, 32)
    assert isinstance(model.get_image_features(inputs["pixel_values"], return_dict=False), tuple)


def test_get_image_features_and_image_outputs(model, processor):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    inputs = image_inputs(processor, ["a red circle"])
    model.set_attn_implementation("eager")  # sdpa returns no attention weights
    features = model.get_image_features(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
    assert isinstance(features, BaseModelOutputWithPooling)
    assert features.pooler_output.shape == (1, 17, 32)
    assert len(features.hidden_states) == 3 and len(features.attentions) == 2  # embeddings + 2 layers
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.image_outputs.pooler_output, features.pooler_output)
    torch.testing.assert_close(out.image_hidden_states, features.pooler_output)
    assert len(out.image_outputs.hidden_states) == 3 and len(out.image_outputs.attentions) == 2
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2  # the text model's
    assert model(**inputs).image_outputs.hidden_states is None


def test_past_key_values_is_accepted_with_a_deprecation_warning(model, processor, caplog):
    inputs = image_inputs(processor, ["a red circle on the"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    prefix = model(input_ids=ids[:, :-1], pixel_values=inputs["pixel_values"], attention_mask=mask[:, :-1], use_cache=True)
    with pytest.warns(FutureWarning, match="past_key_values"):
        step = model(input_ids=ids[:, -1:], attention_mask=mask, past_key_values=prefix.cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], model(**inputs).logits[:, -1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [{"prompt_lookup_num_tokens": 2}, {"assistant": True}])
def test_assisted_and_prompt_lookup_decoding_match_greedy(model, processor, kwargs):
    inputs = image_inputs(processor, ["a red circle on the"])
    model.generation_config.eos_token_id = None
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    if kwargs.pop("assistant", False):
        kwargs["assistant_model"] = make_model(model.config, seed=3)  # another MiniVLM, text-only forward
        kwargs["assistant_model"].generation_config.eos_token_id = None
    got = model.generate(**inputs, max_new_tokens=6, do_sample=False, **kwargs)
    torch.testing.assert_close(got, expected)


def test_device_map_auto_on_cpu(saved_model_dir, processor):
    from accelerate import infer_auto_device_map

    model = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir, device_map="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert model(**image_inputs(processor, ["a red"])).logits.isfinite().all()
    # Split over two devices, no layer the sub-models declare unsplittable is cut in two.
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    device_map = infer_auto_device_map(
        model, max_memory={0: size // 2, "cpu": size * 2}, no_split_module_classes=list(model._no_split_modules)
    )
    assert set(device_map.values()) == {0, "cpu"}
    assert not any(".self_attn." in name or ".mlp." in name for name in device_map)


def test_attention_implementation_per_sub_model(saved_model_dir):
    model = MiniVLMForConditionalGeneration.from_pretrained(
        saved_model_dir, attn_implementation={"text_config": "eager", "vision_config": "sdpa"}
    )
    assert model.language_model.config._attn_implementation == "eager"
    assert model.vision_tower.config._attn_implementation == "sdpa"


def test_batch_mixing_one_and_two_images_generates_as_each_alone(model, processor):
    images = make_images(3)
    texts = ["<image> a red", "the <image> and <image> two"]
    model.generation_config.eos_token_id = None
    batch = processor(images=[[images[0]], images[1:]], text=texts)
    assert batch["pixel_values"].shape[0] == 3
    flat = processor(images=images, text=texts)  # one flat list, in placeholder order
    for key in batch:
        torch.testing.assert_close(flat[key], batch[key])
    together = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, -5:]
    first = model.generate(**processor(images=images[:1], text=texts[:1]), max_new_tokens=5, do_sample=False)
    second = model.generate(**processor(images=[images[1:]], text=texts[1:]), max_new_tokens=5, do_sample=False)
    assert together[0].tolist() == first[0, -5:].tolist()
    assert together[1].tolist() == second[0, -5:].tolist()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    assert torch.isfinite(model(**batch, labels=labels).loss)  # trains on several images per text too
    with pytest.raises(ValueError, match=r"expected 17 image tokens for each of 2 image\(s\), 34 in all, found 51"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"][:2])


def test_torch_export_of_the_forward_with_images(model, processor):
    inputs = dict(image_inputs(processor, ["a red circle", "the"]), use_cache=False)
    exported = torch.export.export(model, args=(), kwargs=inputs)
    got = exported.module()(**inputs)
    torch.testing.assert_close(got.logits if hasattr(got, "logits") else got[0], model(**inputs).logits)


def test_compiled_decoding_step_has_no_graph_break(model, processor):
    inputs = image_inputs(processor, ["a red circle"])
    prefix = model(**inputs, use_cache=True)
    step = {"input_ids": prefix.logits[:, -1:].argmax(-1), "cache": prefix.cache, "use_cache": True,
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], 1)}
    explanation = torch._dynamo.explain(model)(**step)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_the_default_strategy_drops_the_cls_token_by_value(images):
    # Shape alone cannot tell which of the 17 tokens was dropped: compare with the ViT's own patch
    # tokens (positions 1..16, after the CLS at 0), projected by hand from the projector's weights.
    pixel_values = make_processor()(images=images)["pixel_values"]
    model = make_model(make_config(vision_feature_select_strategy="default"))
    with torch.no_grad():
        hidden = model.vision_tower(pixel_values).last_hidden_state  # (3, 17, 32): CLS first
        cls = model.vision_tower.embeddings.cls_token
        projector = model.multi_modal_projector

        def by_hand(x):
            x = torch.nn.functional.linear(x, projector.linear_1.weight, projector.linear_1.bias)
            x = projector.norm(torch.nn.functional.gelu(x))
            return torch.nn.functional.linear(x, projector.linear_2.weight, projector.linear_2.bias)

        features = model.get_image_features(pixel_values).pooler_output
    assert hidden.shape[1] == 17 and features.shape[1] == 16
    torch.testing.assert_close(features, by_hand(hidden[:, 1:]))
    assert not torch.allclose(features, by_hand(hidden[:, :-1]))  # not the last token dropped
    assert cls.shape == (1, 1, 32)  # the ViT puts its CLS first: position 0 is the one to drop


def test_config_output_flags_reach_both_sub_models(saved_model_dir, processor):
    # The flags set on the composite config (as from_pretrained's keyword arguments set them) are read:
    # each sub-model would otherwise look at its own sub-config only.
    model = MiniVLMForConditionalGeneration.from_pretrained(
        saved_model_dir, output_hidden_states=True, output_attentions=True, attn_implementation="eager"
    )
    outputs = model(**image_inputs(processor, ["a red circle"]))
    text_layers, vision_layers = model.config.text_config.num_hidden_layers, model.config.vision_config.num_hidden_layers
    assert len(outputs.hidden_states) == text_layers + 1 and len(outputs.attentions) == text_layers
    assert len(outputs.image_outputs.hidden_states) == vision_layers + 1
    assert len(outputs.image_outputs.attentions) == vision_layers
    base = model.model(**image_inputs(processor, ["a red circle"]))
    torch.testing.assert_close(base.hidden_states[-1], base.last_hidden_state)
    assert model.model(**image_inputs(processor, ["a red"]), output_hidden_states=False).hidden_states is None
