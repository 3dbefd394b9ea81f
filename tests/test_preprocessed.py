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


def _frozen(model):
    model.vision_tower.requires_grad_(False)
    return model


def test_encoded_rows_give_the_loss_and_gradients_of_the_pixel_rows(processor, model):
    # Independent path: the model's own forward on the collated pixels (encoder run in the step).
    rows = caption_rows(4)
    prepared = PreprocessedDataset(rows, processor, batch_size=3)
    collator = ConversationCollator(processor, seed=1)
    pixel_batch = collator(prepared.__getitems__([0, 1, 2, 3]))
    _frozen(model).train()
    prepared.encode_images(model, batch_size=3)  # chunks cut through the split
    assert prepared.key == "vision_features" and prepared.column_names[-1] == "vision_features"
    feature_batch = collator(prepared.__getitems__([0, 1, 2, 3]))
    assert "pixel_values" not in feature_batch and feature_batch["vision_features"].shape[:2] == (
        4, model.config.image_seq_length)
    assert torch.equal(feature_batch["input_ids"], pixel_batch["input_ids"])
    assert model.training  # encoding left the model's mode as it was
    losses, grads = [], []
    for batch in (pixel_batch, feature_batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_encoding_refuses_an_encoder_that_trains_or_was_encoded(processor, model):
    prepared = PreprocessedDataset(caption_rows(2), processor)
    with pytest.raises(ValueError, match="frozen vision encoder"):
        prepared.encode_images(model)  # every parameter trains
    prepared.encode_images(_frozen(model))
    with pytest.raises(ValueError, match="encoded already"):
        prepared.encode_images(model)


def test_training_encodes_images_once_only_for_a_fixed_encoder(tmp_path):
    import json

    from test_training import TINY_VISION, tiny_argv

    from minivlm.training.run import parse_args, train

    shapes = tmp_path / "shapes"
    common = ["--shapes_dir", str(shapes), "--shapes_num_train", "8", "--shapes_num_eval", "2", "--shapes_image_size", "32",
              "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "no", "--seed", "3"]
    trained = {}  # a trained encoder to freeze, without and with dropout
    for name, vision in {"base": TINY_VISION, "base_dropout": {**TINY_VISION, "hidden_dropout_prob": 0.1}}.items():
        train(*parse_args(tiny_argv(tmp_path / name, "shapes", *common, "--tiny_vision_config", json.dumps(vision))))
        trained[name] = ["--model_name_or_path", str(tmp_path / name)]
    runs = {}
    for name, extra in {"encoded": ["--freeze", "vision", *trained["base"]],
                        "pixels": ["--freeze", "vision", "--preprocess_images", "false", *trained["base"]],
                        "training_encoder": ["--freeze", "none", *trained["base"]],
                        "dropout": ["--freeze", "vision", *trained["base_dropout"]]}.items():
        runs[name] = train(*parse_args(tiny_argv(tmp_path / name, "shapes", *common, *extra)))
    assert runs["encoded"].train_dataset.key == "vision_features"
    assert runs["training_encoder"].train_dataset.key == "pixel_values"
    assert runs["dropout"].train_dataset.key == "pixel_values"  # dropout: features differ per step
    # The same two steps as the run that encodes the pixels in every step.
    encoded, pixels = runs["encoded"].model.state_dict(), runs["pixels"].model.state_dict()
    assert encoded.keys() == pixels.keys()
    for name in encoded:
        torch.testing.assert_close(encoded[name], pixels[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not all(torch.equal(encoded[n], runs["training_encoder"].model.state_dict()[n]) for n in encoded)
