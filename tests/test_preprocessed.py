"""Training images preprocessed once (`PreprocessedDataset`): the batches are those of the raw images."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from minivlm.processing.collator import ConversationCollator, PreprocessedDataset, preprocessed_size

from conftest import make_images


def caption_rows(n=5):
    images = make_images(n)  # assorted, non-square sizes
    return datasets.Dataset.from_dict({
        "image": images, "captions": [["a red circle", "a circle"]] * n, "id": [f"c{i}" for i in range(n)],
    })


def test_preprocessed_caption_batches_equal_raw_image_batches(processor):
    raw = caption_rows()
    prepared = PreprocessedDataset(raw, processor, batch_size=2)  # chunks cut through the split
    collator = ConversationCollator(processor, seed=1)
    expected = collator([raw[i] for i in range(len(raw))])
    got = collator(prepared.__getitems__(list(range(len(raw)))))
    assert got.keys() == expected.keys()
    for key in expected:
        if torch.is_tensor(expected[key]):
            assert torch.equal(got[key], expected[key]), key
        else:
            assert got[key] == expected[key], key


def test_preprocessed_conversation_rows_keep_each_rows_images_in_order(processor):
    images = make_images(4)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "same"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "no"}]}]
    single = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "colour"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    rows = [{"messages": chat, "images": images[:2], "id": "a"}, {"messages": single, "images": images[2:3], "id": "b"},
            {"messages": chat, "images": [images[3], images[0]], "id": "c"}]
    prepared = PreprocessedDataset(datasets.Dataset.from_list(rows), processor, batch_size=2)
    assert [len(prepared[i]["pixel_values"]) for i in range(3)] == [2, 1, 2]
    collator = ConversationCollator(processor)
    expected = collator(rows)
    got = collator([prepared[i] for i in range(3)])
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    assert torch.equal(got["input_ids"], expected["input_ids"])
    # Row "c" holds image 3 then image 0: the same pixels as rows "a" (second half) and "a" (first) give.
    assert torch.equal(prepared[2]["pixel_values"][1], prepared[0]["pixel_values"][0])


def test_a_batch_mixing_preprocessed_and_raw_rows_is_refused(processor):
    raw = caption_rows(2)
    prepared = PreprocessedDataset(raw, processor)
    with pytest.raises(ValueError, match="mixes preprocessed rows"):
        ConversationCollator(processor)([prepared[0], raw[1]])


def test_preprocessed_size_counts_every_image_at_the_processors_output_size(processor):
    side = processor.image_processor.size["height"]
    assert preprocessed_size(caption_rows(3), processor) == 3 * 3 * side * side * 4
    rows = [{"messages": [], "images": make_images(2), "id": "a"}, {"messages": [], "images": make_images(1), "id": "b"}]
    assert preprocessed_size(datasets.Dataset.from_list(rows), processor) == 3 * 3 * side * side * 4


def test_training_preprocesses_small_splits_by_default_and_never_with_length_grouping(processor):
    from types import SimpleNamespace

    from minivlm.training.run import PREPROCESS_AUTO_BYTES, _preprocesses_images

    data = SimpleNamespace(preprocess_images=None)
    training = SimpleNamespace(train_sampling_strategy="random")
    model_args = SimpleNamespace(cache_vision_features=False)
    raw = caption_rows(2)
    assert _preprocesses_images(data, training, model_args, raw, processor)
    assert not _preprocesses_images(SimpleNamespace(preprocess_images=False), training, model_args, raw, processor)
    assert not _preprocesses_images(data, training, SimpleNamespace(cache_vision_features=True), raw, processor)
    grouped = SimpleNamespace(train_sampling_strategy="group_by_length")
    assert not _preprocesses_images(data, grouped, model_args, raw, processor)
    with pytest.raises(ValueError, match="does not combine"):
        _preprocesses_images(SimpleNamespace(preprocess_images=True), grouped, model_args, raw, processor)
    side = processor.image_processor.size["height"]
    over = PREPROCESS_AUTO_BYTES // (3 * side * side * 4) + 1  # one image more than the limit holds
    big = datasets.Dataset.from_dict({"image": [None] * over, "captions": [["x"]] * over, "id": ["i"] * over})
    assert not _preprocesses_images(data, training, model_args, big, processor)
    assert _preprocesses_images(data, training, model_args, big.select(range(over - 1)), processor)


def test_preprocessing_by_default_holds_at_exactly_the_byte_limit(processor, monkeypatch):
    from types import SimpleNamespace

    from minivlm.training import run

    side = processor.image_processor.size["height"]
    monkeypatch.setattr(run, "PREPROCESS_AUTO_BYTES", 3 * (3 * side * side * 4))  # exactly three images
    args = (SimpleNamespace(preprocess_images=None), SimpleNamespace(train_sampling_strategy="random"),
            SimpleNamespace(cache_vision_features=False))
    assert run._preprocesses_images(*args, caption_rows(3), processor)  # at the limit: preprocessed
    assert not run._preprocesses_images(*args, caption_rows(4), processor)  # one image more: not
