"""The frozen-vision feature cache: cached training and generation equal the pixel path."""

import datasets
import pytest
import torch
from conftest import make_config, make_model, make_processor

from minivlm.processing.collator import ConversationCollator
from minivlm.training.feature_cache import FeatureCaptionCollator, cache_vision_features, vision_features_fingerprint
from minivlm.processing.shapes import make_shapes_examples


def shapes_dataset(n: int = 6) -> datasets.Dataset:
    """The uniform view (image, captions, id) of a few 32-px shapes images."""
    examples = make_shapes_examples(n, image_size=32, seed=0)
    return datasets.Dataset.from_list([{"image": e["image"], "captions": e["captions"], "id": e["id"]} for e in examples])


def frozen_model_and_processor(tokenizer, **config_overrides):
    config = make_config(tokenizer, **config_overrides)
    model = make_model(config)
    model.vision_tower.requires_grad_(False)
    return model, make_processor(config, tokenizer)


class CountingEncoder:
    """Wraps `model.get_vision_features` to count the images it encodes."""

    def __init__(self, model):
        self.calls, self.images, self._inner = 0, 0, model.get_vision_features
        model.get_vision_features = self

    def __call__(self, pixel_values):
        self.calls += 1
        self.images += pixel_values.shape[0]
        return self._inner(pixel_values)


def test_cached_features_read_back_equal_fresh_encoding(tokenizer, tmp_path):
    model, processor = frozen_model_and_processor(tokenizer)
    dataset = shapes_dataset(5)
    model.train()  # as a Trainer leaves it: the cache encodes in eval mode, then restores this
    cached = cache_vision_features(model, processor, dataset, batch_size=2, cache_dir=tmp_path)
    assert model.vision_tower.training
    model.eval()

    assert set(cached.column_names) == {"captions", "id", "vision_features"}
    assert [f["filename"] for f in cached.cache_files] == [str(next(tmp_path.glob("vision-features-*.arrow")))]
    assert cached.features["vision_features"] == datasets.Array2D(shape=(17, 32), dtype="float32")
    assert cached[:]["id"] == dataset[:]["id"] and cached[:]["captions"] == dataset[:]["captions"]

    pixel_values = processor.image_processor(dataset[:]["image"], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        fresh = model.get_vision_features(pixel_values)
    reread = datasets.Dataset.from_file(cached.cache_files[0]["filename"]).with_format("torch")[:]["vision_features"]
    assert reread.dtype == torch.float32 and reread.shape == (5, 17, 32)
    torch.testing.assert_close(reread, fresh)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"vision_feature_select_strategy": "default", "pixel_shuffle_factor": 2}],
    ids=["full", "pixel-shuffle-2"],
)
def test_cached_training_loss_and_projector_grads_equal_pixel_training(tokenizer, tmp_path, overrides):
    model, processor = frozen_model_and_processor(tokenizer, **overrides)
    dataset = shapes_dataset(4)
    cached = cache_vision_features(model, processor, dataset, cache_dir=tmp_path)

    pixel_collator = ConversationCollator(processor, prompt="this image shows", seed=7, epoch=1)
    feature_collator = FeatureCaptionCollator(processor, prompt="this image shows", seed=7, epoch=1)
    pixel_batch = pixel_collator([dataset[i] for i in range(4)])
    feature_batch = feature_collator([cached[i] for i in range(4)])
    for key in ("input_ids", "attention_mask", "labels"):  # the same caption choice and layout
        torch.testing.assert_close(feature_batch[key], pixel_batch[key], rtol=0, atol=0)
    assert "pixel_values" not in feature_batch
    assert feature_batch["vision_features"].shape == (4, model.config.image_seq_length,
                                                      32 * model.config.pixel_shuffle_factor**2)

    model.train()
    results = []
    for batch in (pixel_batch, feature_batch):
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), grads))
    (pixel_loss, pixel_grads), (feature_loss, feature_grads) = results
    torch.testing.assert_close(feature_loss, pixel_loss)
    projector = [n for n in pixel_grads if n.startswith("model.multi_modal_projector.")]
    assert len(projector) == 6
    for name in pixel_grads:  # the projector's, and the LM's too
        torch.testing.assert_close(feature_grads[name], pixel_grads[name], msg=name)
    assert not any(n.startswith("model.vision_tower.") for n in pixel_grads)


def test_cache_reused_for_same_encoder_and_recomputed_after_vision_weights_change(tokenizer, tmp_path):
    model, processor = frozen_model_and_processor(tokenizer)
    dataset = shapes_dataset(4)
    counter = CountingEncoder(model)

    first = cache_vision_features(model, processor, dataset, batch_size=2, cache_dir=tmp_path)
    assert counter.images == 4
    # Training the projector and the LM does not touch the features: the file is reused.
    with torch.no_grad():
        model.multi_modal_projector.linear_1.weight.add_(1.0)
        model.language_model.get_input_embeddings().weight.add_(1.0)
    again = cache_vision_features(model, processor, dataset, batch_size=2, cache_dir=tmp_path)
    assert counter.images == 4
    assert again.cache_files == first.cache_files
    torch.testing.assert_close(again[:]["vision_features"], first[:]["vision_features"], rtol=0, atol=0)

    with torch.no_grad():
        next(model.vision_tower.parameters()).add_(0.5)
    changed = cache_vision_features(model, processor, dataset, batch_size=2, cache_dir=tmp_path)
    assert counter.images == 8
    assert changed.cache_files != first.cache_files
    assert len(list(tmp_path.glob("vision-features-*.arrow"))) == 2
    assert not torch.allclose(changed[:]["vision_features"], first[:]["vision_features"])

    # A config change of the feature selection, or another dataset, gets its own file too.
    other_layer, _ = frozen_model_and_processor(tokenizer, vision_feature_layer=-2)
    other_layer.load_state_dict(model.state_dict())
    assert vision_features_fingerprint(other_layer, processor, dataset) != vision_features_fingerprint(
        model, processor, dataset
    )
    assert vision_features_fingerprint(model, processor, dataset.select([0, 1])) != vision_features_fingerprint(
        model, processor, dataset
    )


def test_generation_from_cached_features_equals_generation_from_pixels(tokenizer, tmp_path):
    model, processor = frozen_model_and_processor(tokenizer)
    dataset = shapes_dataset(3)
    cached = cache_vision_features(model, processor, dataset, cache_dir=tmp_path)
    inputs = processor(images=dataset[:]["image"], text=["a photo of"] * 3)

    common = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    from_pixels = model.generate(**inputs, **common)
    from_cache = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
        vision_features=cached[:]["vision_features"], **common,
    )
    torch.testing.assert_close(from_cache.sequences, from_pixels.sequences, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack(from_cache.logits), torch.stack(from_pixels.logits))


def test_float16_storage_and_unsupported_dtype(tokenizer, tmp_path):
    model, processor = frozen_model_and_processor(tokenizer)
    dataset = shapes_dataset(2)
    full = cache_vision_features(model, processor, dataset, cache_dir=tmp_path)
    half = cache_vision_features(model, processor, dataset, cache_dir=tmp_path, dtype=torch.float16)
    assert half.cache_files != full.cache_files
    assert half.features["vision_features"].dtype == "float16"
    assert half[:]["vision_features"].dtype == torch.float16
    torch.testing.assert_close(half[:]["vision_features"].float(), full[:]["vision_features"], rtol=1e-3, atol=1e-3)
    batch = FeatureCaptionCollator(processor)([half[0], half[1]])
    assert torch.isfinite(model(**batch).loss)  # the model casts float16 features to its own dtype

    with pytest.raises(ValueError, match="bfloat16|cannot be stored"):
        cache_vision_features(model, processor, dataset, cache_dir=tmp_path, dtype=torch.bfloat16)


def test_feature_collator_explains_missing_features(processor):
    with pytest.raises(ValueError, match="cache_vision_features"):
        FeatureCaptionCollator(processor)([{"captions": ["a red circle"], "id": "0"}])
