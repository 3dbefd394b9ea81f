"""MiniVLMProcessor: image-token expansion, padding, decoding, image modes and bad input."""

import io

import numpy as np
import pytest
import torch
from conftest import make_images
from PIL import Image

from minivlm import MiniVLMProcessor
from minivlm.processing_minivlm import to_rgb


def test_text_without_placeholder_puts_the_image_first(processor, tokenizer):
    inputs = processor(images=make_images(1), text="a red circle")
    ids = inputs["input_ids"][0].tolist()
    assert ids[:17] == [processor.image_token_id] * 17
    assert ids[17:] == tokenizer("a red circle")["input_ids"]
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)


def test_placeholder_is_expanded_where_it_stands(processor, tokenizer):
    ids = processor(images=make_images(1), text="the <image> red")["input_ids"][0].tolist()
    the, red = tokenizer("the")["input_ids"][0], tokenizer("red")["input_ids"][0]
    assert ids == [the] + [processor.image_token_id] * 17 + [red]


def test_no_text_captions_from_the_image_alone(processor):
    inputs = processor(images=make_images(2))
    assert inputs["input_ids"].tolist() == [[processor.image_token_id] * 17] * 2
    assert inputs["attention_mask"].all()


def test_batch_is_left_padded_for_generation(processor, tokenizer):
    inputs = processor(images=make_images(2), text=["a", "a red circle"])
    assert inputs["attention_mask"][0].tolist() == [0, 0] + [1] * 18
    assert inputs["input_ids"][0, :2].tolist() == [tokenizer.pad_token_id] * 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": ["a", "b"], "n": 1}, r"got 1 image\(s\) for 0 '<image>' placeholder\(s\) in 2 text\(s\)"),
        ({"text": "<image> a <image>", "n": 1}, r"got 1 image\(s\) for 2 '<image>' placeholder\(s\)"),
        ({"text": ["<image> a", "b <image> c"], "n": 3}, r"got 3 image\(s\) for 2 '<image>' placeholder\(s\)"),
        ({"text": "a <image>", "n": 0}, "no images were given"),
    ],
)
def test_image_text_mismatch_is_a_clear_error(processor, kwargs, message):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=message):
        processor(images=make_images(n) if n else None, **kwargs)


@pytest.mark.parametrize("bad", [42, b"not an image", {"image": None}])
def test_non_image_input_is_a_clear_error(processor, bad):
    with pytest.raises(ValueError, match="not an image"):
        processor(images=[bad])


def test_corrupt_image_file_is_a_clear_error(processor, tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"could not read image 0 \(.*broken\.png\): .*complete image"):
        processor(images=str(path))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "HSV"])
def test_every_pil_mode_becomes_rgb(processor, mode):
    base = make_images(1, size=20)[0]
    if mode == "I;16":
        image = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 200))
        assert image.mode == "I;16"
    elif mode == "PA":
        image = base.convert("RGBA").convert("PA")
    else:
        image = base.convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == base.size
    inputs = processor(images=image, text="a")
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    assert torch.isfinite(inputs["pixel_values"]).all()


def test_sixteen_bit_and_float_images_keep_their_contrast():
    ramp = np.linspace(0, 1, 64, dtype=np.float64).reshape(8, 8)
    for image in (Image.fromarray((ramp * 65535).round().astype(np.uint16)), Image.fromarray(ramp.astype(np.float32))):
        grey = np.asarray(to_rgb(image))[..., 0]
        assert grey.min() == 0 and grey.max() == 255  # the full nominal range maps onto the full 8 bits
        assert np.array_equal(grey, (ramp * 255).round().astype(np.uint8).clip(0, 255))


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_uniform_sixteen_bit_and_float_images_keep_their_brightness(mode, level):
    # A uniform image has no range of its own: it keeps its level on the mode's nominal scale
    # (16-bit: 0..65535, float: 0..1), so white stays white and mid-grey stays mid-grey.
    if mode == "F":
        image = Image.fromarray(np.full((6, 10), level, dtype=np.float32))
    else:
        image = Image.fromarray(np.full((6, 10), round(level * 65535), dtype=np.uint16))
        image = image if mode == "I;16" else image.convert("I")
    assert image.mode == mode
    expected = {0.0: 0, 0.5: 128, 1.0: 255}[level]  # 32767.5 / 257 and 0.5 * 255 both round to 128
    assert set(np.asarray(to_rgb(image)).ravel().tolist()) == {expected}


def test_near_uniform_sixteen_bit_images_are_not_stretched():
    # 65000 and 65001: bright and all but identical, not a black-to-white stretch of one step.
    image = Image.fromarray(np.array([[65000, 65001], [65001, 65000]], dtype=np.uint16))
    grey = np.asarray(to_rgb(image))[..., 0]
    assert set(grey.ravel().tolist()) == {253}  # 65000 / 257 = 252.9 and 65001 / 257 = 252.9
    dark = Image.fromarray(np.array([[0.010, 0.011]], dtype=np.float32))
    assert set(np.asarray(to_rgb(dark)).ravel().tolist()) == {3}  # 2.55 and 2.81 round to 3, not 0 and 255
    odd = Image.fromarray(np.array([[-5.0, 7.0, float("nan")]], dtype=np.float32))
    assert np.asarray(to_rgb(odd))[0, :, 0].tolist() == [0, 255, 0]  # clipped to [0, 1]; NaN is black


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 5, 10))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    upright = to_rgb(loaded)
    assert upright.size == (10, 30)
    top = np.asarray(upright)[:4, 5]
    assert top[:, 2].mean() > 200 and top[:, 0].mean() < 60  # the blue strip is now at the top


def test_paths_load_through_transformers(processor, tmp_path):
    path = tmp_path / "image.png"
    make_images(1)[0].save(path)
    from_path = processor(images=str(path), text="a")["pixel_values"]
    from_pil = processor(images=Image.open(path), text="a")["pixel_values"]
    torch.testing.assert_close(from_path, from_pil)


def test_chat_template_matches_plain_call(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a red"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<image>a red"
    training = processor.apply_chat_template(
        messages + [{"role": "assistant", "content": [{"type": "text", "text": " circle"}]}], tokenize=False
    )
    assert training == "<image>a red circle<eos>"
    image = make_images(1)[0]
    messages[0]["content"][0]["image"] = image
    templated = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    plain = processor(images=image, text="a red")
    assert templated["input_ids"].tolist() == plain["input_ids"].tolist()
    torch.testing.assert_close(templated["pixel_values"], plain["pixel_values"])


def test_decoding_drops_image_and_special_tokens(processor, tokenizer):
    ids = processor(images=make_images(1), text="a red circle")["input_ids"]
    ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id, tokenizer.pad_token_id]])], 1)
    assert processor.post_process_image_text_to_text(ids) == ["a red circle"]
    assert processor.batch_decode(ids, skip_special_tokens=True) == ["a red circle"]


def test_processor_save_and_load_round_trip(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    loaded = MiniVLMProcessor.from_pretrained(tmp_path)
    assert loaded.image_seq_length == processor.image_seq_length
    assert loaded.image_token_id == processor.image_token_id
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.chat_template == processor.chat_template
    images = make_images(2)
    for key, value in processor(images=images, text=["a", "the red"]).items():
        torch.testing.assert_close(loaded(images=images, text=["a", "the red"])[key], value)


def test_tokenizer_without_image_token_is_rejected(processor):
    from minivlm.processing.tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(["a b"], image_token="<img>")
    with pytest.raises(ValueError, match="no '<image>' token"):
        MiniVLMProcessor(processor.image_processor, tokenizer, image_seq_length=17)


def test_numpy_and_torch_images_equal_pil(processor):
    image = make_images(1)[0]
    array = np.array(image)  # (H, W, 3) uint8
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # (3, H, W)
    expected = processor(images=image, text="a")["pixel_values"]
    for other in (array, tensor, tensor.float() / 255):
        torch.testing.assert_close(processor(images=other, text="a")["pixel_values"], expected)


def test_empty_image_list_is_a_clear_error(processor):
    with pytest.raises(ValueError, match=r"images=\[\] holds no image"):
        processor(images=[], text="a")


def test_image_seq_length_is_saved_and_required(tmp_path, processor):
    import json

    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["image_seq_length"] == 17
    with pytest.raises(ValueError, match="image_seq_length is required"):
        MiniVLMProcessor(processor.image_processor, processor.tokenizer)


def test_several_images_per_text_nested_or_flat(processor):
    images = make_images(3)
    nested = processor(images=[images[:2], images[2:]], text=["<image> a <image>", "the <image>"])
    assert nested["pixel_values"].shape[0] == 3
    counts = (nested["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert counts == [34, 17]
    with pytest.raises(ValueError, match=r"text 0 holds 2 '<image>' placeholder\(s\) for 1 image\(s\)"):
        processor(images=[images[:1], images[1:]], text=["<image> a <image>", "the <image>"])


def test_chat_template_assistant_mask_with_generation_markers(processor, tokenizer):
    template = (
        "{% for message in messages %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<image>{% else %}"
        "{% if message['role'] == 'assistant' %}{% generation %}{{ part['text'] }}{% endgeneration %}"
        "{% else %}{{ part['text'] }} {% endif %}{% endif %}{% endfor %}{% endfor %}"
    )
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": make_images(1)[0]}, {"type": "text", "text": "a red"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue circle"}]},
    ]
    out = processor.apply_chat_template(
        conversation, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0]
    mask = mask.tolist() if hasattr(mask, "tolist") else list(mask)
    assert ids[:17] == [processor.image_token_id] * 17 and out["pixel_values"].shape == (1, 3, 32, 32)
    assert [i for i, m in zip(ids, mask) if m] == tokenizer("blue circle")["input_ids"]


# -- words the tokenizer does not know -------------------------------------------------------------------
def unknown_word_warnings(processor, *calls) -> list[str]:
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    lines = []
    for call in calls:  # the logger of the processor's own module (the project's, or a saved folder's copy)
        with CaptureLogger(logging.get_logger(type(processor).__module__)) as captured:
            call()
        lines += [line for line in captured.out.splitlines() if "not in the tokenizer's vocabulary" in line]
    return lines


def test_unknown_words_are_named_once_per_set(processor):
    image = make_images(1)[0]
    ask = lambda text: (lambda: processor(images=image, text=text))  # noqa: E731
    # The conftest vocabulary has "circle" and "the" but not "What", "color" nor "is".
    lines = unknown_word_warnings(processor, ask("What color is the circle?"), ask("What color is the circle?"),
                                  ask("a red circle"), ask("is the zebra red"))
    assert len(lines) == 2  # the repeated question warns once; known words never warn
    assert "3 word(s)" in lines[0] and "'What', 'color', 'is'" in lines[0] and "<unk>" in lines[0]
    assert "'is', 'zebra'" in lines[1]  # another set of words: warned again, naming all of them
    assert processor.unknown_words("<image>a photo of a zebra") == ["zebra"]
    assert processor.unknown_words("a red circle") == []


def test_unknown_words_in_a_chat_and_a_pipeline_prompt_warn(processor, saved_model_dir):
    from transformers import pipeline

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "where is the kangaroo"}]}]
    image = make_images(1)[0]
    lines = unknown_word_warnings(
        processor, lambda: processor.apply_chat_template(messages, images=[image], tokenize=True, return_dict=True))
    assert len(lines) == 1 and "'where', 'is', 'kangaroo'" in lines[0]
    captioner = pipeline("image-to-text", model=str(saved_model_dir), trust_remote_code=True)
    lines = unknown_word_warnings(captioner.processor, lambda: captioner(image, prompt="a snapshot of", max_new_tokens=2))
    assert len(lines) == 1 and "'snapshot'" in lines[0]


def test_byte_level_tokenizers_have_no_unknown_words(processor):
    processor.tokenizer.unk_token = None  # as SmolLM's BPE: every byte is a token
    assert processor.unknown_words("What color is the circle?") == []
    assert unknown_word_warnings(processor, lambda: processor(images=make_images(1), text="What color")) == []
