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
        cached = generate_with_prefix(model, prefix, **inputs, max_new_tokens=6, output_logits=True,
                                      return_dict_in_generate=True)
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
        cached = generate_with_prefix(model, prefix, **inputs, max_new_tokens=5, **options)
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
    assert torch.equal(generate_with_prefix(model, prefix, **inputs, max_new_tokens=4), expected)


def test_wrong_uses_are_refused_with_the_fix(parts):
    model, processor = parts
    images = make_images(2)
    prefix = encode_image_prefix(model, **processor(images=images[0], text="a cat"))
    other = processor(images=images[1], text="a cat")
    with pytest.raises(ValueError, match="not the image the prefix encoded"):
        generate_with_prefix(model, prefix, **other)
    different_text = processor(images=images[0], text="the dog <image> sits")
    with pytest.raises(ValueError, match="does not start with the encoded image's prefix"):
        generate_with_prefix(model, prefix, **different_text)
    batch = processor(images=images, text=["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(1, seq\) for one conversation"):
        encode_image_prefix(model, **batch)
    with pytest.raises(ValueError, match="no image tokens"):
        encode_image_prefix(model, processor(text="a cat")["input_ids"], other["pixel_values"])


def test_the_documented_call_with_another_images_prompt_is_refused(parts):
    # Image tokens are the same ids for every image: ids alone cannot tell the prefix's image from
    # another, so the documented call passes the pixels and another image is refused, not answered.
    model, processor = parts
    first, second = make_images(2)
    prefix = model.encode_image_prefix(**processor(images=first, text="the cat"))
    about_second = processor(images=second, text="is the circle red")
    assert torch.equal(about_second["input_ids"][:, : prefix.length], prefix.input_ids)  # same ids, other image
    with pytest.raises(ValueError, match="not the image the prefix encoded"):
        model.generate_with_prefix(prefix, **about_second, max_new_tokens=3)
    with pytest.raises(ValueError, match="pass the prompt's pixel_values"):
        generate_with_prefix(model, prefix, about_second["input_ids"], max_new_tokens=3)
    # The same image through a new processor call (equal pixels, another tensor) is served.
    about_first = processor(images=first.copy(), text="is the circle red")
    assert torch.equal(model.generate_with_prefix(prefix, **about_first, max_new_tokens=3),
                       model.generate(**about_first, max_new_tokens=3))


def test_a_prefix_from_another_model_is_refused_and_the_chat_cache_re_encodes(parts):
    model, processor = parts
    other_model = make_model(model.config, seed=4)
    image = make_images(1)[0]
    inputs = processor(images=image, text="is the circle red")
    prefix = other_model.encode_image_prefix(**inputs)
    with pytest.raises(ValueError, match="encoded by another model"):
        model.generate_with_prefix(prefix, **inputs, max_new_tokens=3)
    chat = ImagePrefixCache(other_model)
    chat.generate(**inputs, max_new_tokens=3)
    chat.model = model  # the same image, now another model: encoded again, not reused
    assert torch.equal(chat.generate(**inputs, max_new_tokens=3), model.generate(**inputs, max_new_tokens=3))
    assert (chat.encodes, chat.reuses) == (2, 0)


def test_a_second_image_after_the_prefix_is_refused(parts):
    model, processor = parts
    first, second = make_images(2)
    prefix = model.encode_image_prefix(**processor(images=first, text="the cat"))
    two_images = processor(images=[first, second], text="<image> the cat <image> the dog")
    assert torch.equal(two_images["input_ids"][:, : prefix.length], prefix.input_ids)
    with pytest.raises(ValueError, match="another image after the cached one"):
        model.generate_with_prefix(prefix, **two_images, max_new_tokens=3)  # both images' pixels: a count mismatch
    with pytest.raises(ValueError, match="another image after the cached one"):
        model.generate_with_prefix(prefix, two_images["input_ids"], pixel_values=two_images["pixel_values"][:1],
                                   max_new_tokens=3)
    # Both images encoded together form one prefix that serves a later question.
    both = model.encode_image_prefix(**two_images)
    follow_up = processor(images=[first, second], text="<image> the cat <image> the dog is red")
    assert torch.equal(model.generate_with_prefix(both, **follow_up, max_new_tokens=3),
                       model.generate(**follow_up, max_new_tokens=3))


def test_beams_and_samples_with_other_return_counts_through_the_prefix_equal_uncached(parts):
    from transformers import GenerationConfig

    model, processor = parts
    image = make_images(1)[0]
    inputs = processor(images=image, text="the cat")
    prefix = encode_image_prefix(model, **inputs)
    chat = ImagePrefixCache(model)
    for options in ({"num_beams": 4, "num_return_sequences": 2}, {"num_beams": 3, "num_return_sequences": 1},
                    {"do_sample": True, "num_return_sequences": 3}, {"do_sample": True, "num_beams": 2,
                                                                     "num_return_sequences": 2},
                    {"generation_config": GenerationConfig(num_beams=3, num_return_sequences=3, max_new_tokens=4,
                                                           eos_token_id=1, pad_token_id=0)}):
        expected_rows = options.get("num_return_sequences") or options["generation_config"].num_return_sequences
        torch.manual_seed(0)
        reference = model.generate(**inputs, max_new_tokens=4, **options)
        assert reference.shape[0] == expected_rows
        for run in (lambda: generate_with_prefix(model, prefix, **inputs, max_new_tokens=4, **options),
                    lambda: chat.generate(**inputs, max_new_tokens=4, **options)):
            torch.manual_seed(0)
            assert torch.equal(run(), reference), options


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
    cached = model.generate_with_prefix(prefix, **inputs, max_new_tokens=6, output_logits=True,
                                        return_dict_in_generate=True)
    assert_same_generation(reference, cached)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "image_cache_minivlm.py").is_file()  # copied beside modeling_minivlm.py for trust_remote_code
