"""Frozen-vision feature cache: encode every image once, train the projector and LM from disk.

With the vision encoder frozen (the notebook's recipe, `--freeze vision`), its output for an
image never changes, yet a pixel-based training loop recomputes it in every epoch: for
ViT-L/16 that is ~120 GFLOP per image, a quarter of what SmolLM-360M's training step spends
on the same example. `cache_vision_features` runs the encoder once over a dataset and stores
`model.get_vision_features` (encoder + feature selection + pixel shuffle, i.e. what the
projector reads) in an Arrow file; `FeatureCaptionCollator` then builds batches that carry
`vision_features` instead of `pixel_values`, which `MiniVLMForConditionalGeneration.forward`
(and `generate`) accept in their place.

    model.vision_tower.requires_grad_(False)
    features = cache_vision_features(model, processor, train_dataset, cache_dir="outputs/features")
    collator = FeatureCaptionCollator(processor, prompt="", seed=42)
    trainer = Trainer(model=model, train_dataset=features, data_collator=collator,
                      args=TrainingArguments(..., remove_unused_columns=False))

The Arrow file is memory-mapped, not loaded into RAM (Flickr8k's 6000 training images at
197 × 1024 float32 features are 4.8 GB; float16 halves that). Its name is a hash of the vision
weights, the vision and feature-selection config, the image processor's settings, the storage
dtype and the dataset's fingerprint: the same model over the same data reuses it, a changed
encoder (or processor, or dataset) writes a new one and never reads stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch

from minivlm.processing.collator import ConversationCollator
from minivlm.processing_minivlm import MiniVLMProcessor, to_rgb


if TYPE_CHECKING:
    from minivlm import MiniVLMForConditionalGeneration


__all__ = ["cache_vision_features", "vision_features_fingerprint", "FeatureCaptionCollator"]

logger = logging.getLogger(__name__)

# Arrow has no bfloat16: these are the storage dtypes an `Array2D` column can hold.
_ARROW_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64"}


def _hash_tensor(hasher: Any, name: str, tensor: torch.Tensor) -> None:
    """Feeds a tensor's name, dtype, shape and raw bytes into `hasher` (any dtype, bf16 included)."""
    tensor = tensor.detach().to("cpu").contiguous()
    hasher.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    # Viewing as bytes works for every dtype, also those numpy cannot represent (bfloat16).
    hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())


def vision_features_fingerprint(
    model: MiniVLMForConditionalGeneration,
    processor: MiniVLMProcessor, dataset: datasets.Dataset | None = None, dtype: torch.dtype = torch.float32
) -> str:
    """A 32-hex-digit hash of everything the cached features depend on.

    Covers the vision encoder's weights and buffers, its config, the feature selection
    (`vision_feature_select_strategy`, `vision_feature_layer`, `pixel_shuffle_factor`,
    `image_seq_length`), the image processor's settings, the storage `dtype` and, when given,
    the dataset's fingerprint. The projector and the LM are not part of it: they do not change
    the features, so training them keeps the cache valid.
    """
    hasher = hashlib.blake2b(digest_size=16)
    config = model.config
    described = {
        "vision_config": config.vision_config.to_dict(),
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "vision_feature_layer": config.vision_feature_layer,
        "pixel_shuffle_factor": config.pixel_shuffle_factor,
        "image_seq_length": config.image_seq_length,
        "image_processor": processor.image_processor.to_dict(),
        "dtype": str(dtype),
        "dataset": getattr(dataset, "_fingerprint", None),
    }
    # default=str: configs may hold non-JSON values (enums, dtypes); their str() is stable.
    hasher.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in model.vision_tower.state_dict().items():
        _hash_tensor(hasher, name, tensor)
    return hasher.hexdigest()


def _default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "minivlm_vision_features"


def cache_vision_features(
    model: MiniVLMForConditionalGeneration,
    processor: MiniVLMProcessor,
    dataset: datasets.Dataset,
    *,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> datasets.Dataset:
    """Encodes every image of `dataset` once with the (frozen) vision encoder, into an Arrow file.

    Args:
        model: a `MiniVLMForConditionalGeneration`; its encoder runs in eval and inference mode on
            the model's device and dtype (its train/eval state is restored afterwards).
        processor: the model's processor; its image processor prepares the images exactly as
            `ConversationCollator` does, so cached and pixel training see the same features.
        dataset: the uniform view (`image`, `captions`, `id`; other columns are kept).
        batch_size: images encoded per forward pass (and rows per Arrow write, which bounds RAM).
        cache_dir: folder of the Arrow files; default `$HF_DATASETS_CACHE/minivlm_vision_features`.
        dtype: storage dtype, `torch.float32` (default, exact), `float16` (half the disk) or `float64`.

    Returns:
        A memory-mapped `datasets.Dataset` with `captions`, `id` and `vision_features`, an
        `Array2D` of shape `(image_seq_length, vision_hidden_size * pixel_shuffle_factor**2)`,
        formatted as torch tensors of the storage `dtype`. Train on it with [`FeatureCaptionCollator`].

    The file is named after [`vision_features_fingerprint`]: calling again with the same encoder,
    processor and dataset reuses it without running the encoder; any change writes a new one.
    """
    if dtype not in _ARROW_DTYPES:
        raise ValueError(
            f"dtype={dtype} cannot be stored in Arrow; use torch.float32 (exact), torch.float16 (half the disk) "
            "or torch.float64. The model casts the features to its own dtype (bfloat16 too) when it reads them."
        )
    if "image" not in dataset.column_names:
        raise ValueError(
            f"the dataset has no 'image' column (columns: {dataset.column_names}); pass the uniform view "
            "(image, captions, id) from minivlm.processing.adapters.load_caption_dataset / clean_caption_dataset."
        )
    if any(p.requires_grad for p in model.vision_tower.parameters()):
        logger.warning(
            "The vision encoder has trainable parameters: features cached now will not follow it if it trains. "
            "Freeze it (model.vision_tower.requires_grad_(False), --freeze vision) or train from pixel_values."
        )

    config = model.config
    shape = (config.image_seq_length, config.vision_config.hidden_size * config.pixel_shuffle_factor**2)
    fingerprint = vision_features_fingerprint(model, processor, dataset, dtype)
    cache_file = Path(cache_dir or _default_cache_dir()) / f"vision-features-{fingerprint}.arrow"
    features = dataset.features.copy()
    del features["image"]
    features["vision_features"] = datasets.Array2D(shape=shape, dtype=_ARROW_DTYPES[dtype])

    device = next(model.vision_tower.parameters()).device

    def encode(images: list) -> dict[str, np.ndarray]:
        pixel_values = processor.image_processor([to_rgb(image) for image in images], return_tensors="pt")[
            "pixel_values"
        ]
        with torch.inference_mode():
            vision_features = model.get_vision_features(pixel_values.to(device))
        return {"vision_features": vision_features.to(dtype=dtype, device="cpu").numpy()}

    was_training = model.vision_tower.training
    model.vision_tower.eval()
    try:
        cached = dataset.map(
            encode,
            batched=True,
            batch_size=batch_size,
            input_columns=["image"],
            remove_columns=["image"],
            features=features,
            cache_file_name=str(cache_file),
            load_from_cache_file=True,  # the file name is the fingerprint: an existing file is valid
            new_fingerprint=fingerprint,
            # Rows are written every batch, so at most one batch of features sits in RAM.
            writer_batch_size=batch_size,
            desc="Caching vision features",
        )
    finally:
        model.vision_tower.train(was_training)
    # dtype=: the torch formatter would otherwise upcast float16 rows to float32.
    return cached.with_format("torch", columns=["vision_features"], output_all_columns=True, dtype=dtype)


def _as_tensor(value: Any) -> torch.Tensor:
    """A row's features as a tensor, whatever the dataset's format (torch, numpy or python lists)."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


@dataclass
class FeatureCaptionCollator(ConversationCollator):
    """[`ConversationCollator`] for a feature-cached dataset: `vision_features` instead of `pixel_values`.

    Takes examples `{"vision_features", "captions", "id"}` (rows of [`cache_vision_features`]'s
    dataset) and returns `input_ids`, `attention_mask`, `labels` `(batch, seq)` built by the same
    caption choice, tokenisation and padding rules as `ConversationCollator` (same `prompt`, `seed`,
    `epoch`, `max_caption_tokens`, so the two give identical text for the same examples), and
    `vision_features` `(batch, image_seq_length, dim)` in their stored dtype. Works with
    [`CaptionEpochCallback`] like its parent.
    """

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        missing = [i for i, example in enumerate(examples) if "vision_features" not in example]
        if missing:
            raise ValueError(
                f"examples {missing[:5]} have no 'vision_features'; build the dataset with "
                "minivlm.training.feature_cache.cache_vision_features, or use ConversationCollator for images."
            )
        vision_features = torch.stack([_as_tensor(example["vision_features"]) for example in examples])
        return {**self.text_batch(examples), "vision_features": vision_features}
