"""The image prefix cache: answers with a reused image prefix equal plain `generate` (tokens and logits)."""

import pytest
import torch
from conftest import make_config, make_images, make_model, make_processor, make_tokenizer

from minivlm.image_cache_minivlm import ImagePrefixCache, encode_image_prefix, generate_with_prefix


QUESTIONS = ["what is in this image", "is the circle red", "the dog on the left of the cat", "two"]


@pytest.fixture
def parts():
    tokenizer = make_tokenizer()
    # Untied weights: a random tied model repeats its last input token whatever the image.
    config = make_config(tokenizer, text_config={"tie_word_embeddings": False})
    return make_model(config, seed=3), make_processor(config, tokenizer)


def generate(model, **kwargs):
    return model.generate(**kwargs, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)


def assert_same_generation(reference, cached):
    assert torch.equal(reference.sequences, cached.sequences)
    # Compare logits, not only tokens: a forward that silently ignored the cache can still pick
    # the same greedy tokens on a tiny random model.
    for ref_step, cached_step in zip(reference.logits, cached.logits, strict=True):
        torch.testing.assert_close(cached_step, ref_step, rtol=1e-4, atol=1e-5)


def test_greedy_answers_with_a_reused_prefix_equal_uncached_ones(parts):
    model, processor = parts
    image = make_images(1)[0]
    prefix = encode_image_prefix(model, **processor(images=image, text=f"this image shows {QUESTIONS[0]}"))
    assert prefix.length == model.config.image_seq_length  # the image goes first: the prefix is the image
    assert prefix.image_hidden_states.shape == (1, model.config.image_seq_length, model.config.text_config.hidden_size)
    encoder_calls = []
    model.vision_tower.register_forward_hook(lambda *args: encoder_calls.append(1))
    texts = set()
    for question in QUESTIONS:
        inputs = processor(images=image, text=question)
        reference = generate(model, **inputs)
        calls = len(encoder_calls)
        cached = generate_with_prefix(model, prefix, inputs["input_ids"], inputs["attention_mask"],
                                      max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
        assert len(encoder_calls) == calls  # no pixels went through the encoder
        assert_same_generation(reference, cached)
        texts.add(processor.post_process_image_text_to_text(cached.sequences[:, inputs["input_ids"].shape[1]:])[0])
    assert prefix.cache.get_seq_length() == prefix.length  # each use worked on a copy
    assert len(texts) > 1  # different questions, different answers: the suffix reached the model


def test_beam_search_and_sampling_with_a_reused_prefix_equal_uncached_ones(parts):
    model, processor = parts
    image = make_images(1)[0]
    inputs = processor(images=image, text="the cat")
    prefix = encode_image_prefix(model, **inputs)
    for options in ({"num_beams": 3}, {"num_beams": 2, "num_return_sequences": 2},
                    {"do_sample": True, "top_p": 0.9, "temperature": 0.8}):
        torch.manual_seed(0)
        reference = model.generate(**inputs, max_new_tokens=5, **options)
        torch.manual_seed(0)
        cached = generate_with_prefix(model, prefix, inputs["input_ids"], max_new_tokens=5, **options)
        assert torch.equal(reference, cached), options


def test_prefix_cache_encodes_each_image_once_and_a_new_image_again(parts):
    model, processor = parts
    first, second = make_images(2)
    chat = ImagePrefixCache(model)
    for image in (first, first, first, second, second):
        inputs = processor(images=image, text="what is this")
        expected = model.generate(**inputs, max_new_tokens=4)
        assert torch.equal(chat.generate(**inputs, max_new_tokens=4), expected)
    assert (chat.encodes, chat.reuses) == (2, 3)


def test_prompt_ending_with_the_image_runs_uncached_and_still_matches(parts):
    model, processor = parts
    inputs = processor(images=make_images(1)[0], text="")  # a caption: nothing after the image
    expected = model.generate(**inputs, max_new_tokens=4)
    encoder_calls = []
    model.vision_tower.register_forward_hook(lambda *args: encoder_calls.append(1))
    chat = ImagePrefixCache(model)
    assert torch.equal(chat.generate(**inputs, max_new_tokens=4), expected)
    assert len(encoder_calls) == 1 and (chat.encodes, chat.reuses) == (1, 0)  # not encoded twice, not "reused"
    prefix = encode_image_prefix(model, **inputs)
    assert torch.equal(generate_with_prefix(model, prefix, inputs["input_ids"], max_new_tokens=4), expected)


def test_wrong_uses_are_refused_with_the_fix(parts):
    model, processor = parts
    images = make_images(2)
    prefix = encode_image_prefix(model, **processor(images=images[0], text="a cat"))
    other = processor(images=images[1], text="a cat")
    with pytest.raises(ValueError, match="does not start with the encoded image's prefix"):
        generate_with_prefix(model, prefix, other["input_ids"], pixel_values=other["pixel_values"])
    different_text = processor(images=images[0], text="the dog <image> sits")
    with pytest.raises(ValueError, match="encode this prompt's image with encode_image_prefix first"):
        generate_with_prefix(model, prefix, different_text["input_ids"])
    batch = processor(images=images, text=["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(1, seq\) for one conversation"):
        encode_image_prefix(model, **batch)
    with pytest.raises(ValueError, match="no image tokens"):
        encode_image_prefix(model, processor(text="a cat")["input_ids"], other["pixel_values"])


def test_prefix_cache_benchmark_times_both_answers_and_checks_the_tokens(monkeypatch, parts, capsys):
    from minivlm.benchmark import prefix_cache

    model, _ = parts
    monkeypatch.setattr(prefix_cache, "build_model", lambda vision_layers, text_layers, device: model)
    results = prefix_cache.main(["--repeats", "2", "--new_tokens", "3", "--question_tokens", "4"])
    assert results["tokens_equal_uncached"]
    assert all(len(results["all_seconds"][k]) == 2 for k in ("uncached", "first", "second", "encode"))
    assert results["second_vs_first_speedup"] == results["first_s"] / results["second_s"] > 0
    assert results["image_tokens"] == model.config.image_seq_length
    assert "second answer, image prefix reused" in capsys.readouterr().out


def test_the_model_exposes_the_prefix_cache_and_ships_it_as_remote_code(parts, tmp_path):
    model, processor = parts
    image = make_images(1)[0]
    prefix = model.encode_image_prefix(**processor(images=image, text="the cat"))
    inputs = processor(images=image, text="is the circle red")
    reference = generate(model, **inputs)
    cached = model.generate_with_prefix(prefix, inputs["input_ids"], inputs["attention_mask"], max_new_tokens=6,
                                        output_logits=True, return_dict_in_generate=True)
    assert_same_generation(reference, cached)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "image_cache_minivlm.py").is_file()  # copied beside modeling_minivlm.py for trust_remote_code
