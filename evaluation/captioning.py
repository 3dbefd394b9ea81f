"""Caption evaluation: batched generation and COCO metrics against all references.

- `generate_captions`: one caption per image of a uniform-view dataset (``image``, ``captions``,
  ``id``), batched (`minivlm.evaluation.generation.generate_texts`), in dataset order, the prompt cut off;
  decoded with the model's `generation_config` defaults unless told otherwise.
- `evaluate_captions`: predictions plus BLEU-1..4 / METEOR / ROUGE-L / CIDEr against every
  reference of each image (and `shapes_accuracy` on the synthetic shapes set), with the decoding
  settings recorded beside the scores, since beam search or sampling changes them.
- `load_evaluation_dataset`: `minivlm.processing.loading.load_split` under its older name: a split in the
  uniform view, cleaned, with the shapes ``objects`` attached, for `shapes_accuracy`.

The Trainer callback that runs them during training is `minivlm.training.callbacks.ValidationScoresCallback`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from PIL import Image

from minivlm.configuration_minivlm import DEFAULT_DECODING  # noqa: F401  (re-exported: its old home)
from minivlm.evaluation.generation import generate_texts, generation_kwargs
from minivlm.processing.loading import load_split as load_evaluation_dataset
from minivlm.evaluation.metrics import compute_caption_metrics
from minivlm.processing.shapes import shapes_accuracy


__all__ = ["DEFAULT_DECODING", "SCORE_KEYS", "evaluate_captions", "generate_captions", "load_evaluation_dataset"]

logger = logging.getLogger(__name__)

# The metrics `compute_caption_metrics` returns as numbers (METEOR may be None).
SCORE_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def _images(dataset: datasets.Dataset | Sequence[Any], start: int, stop: int) -> list[Image.Image]:
    """Images ``start:stop`` of a dataset with an ``image`` column, or of a list of images / example dicts."""
    if isinstance(dataset, datasets.Dataset):
        # Select the column first: only the images of this slice are decoded, no other column is read.
        return dataset.select_columns(["image"])[start:stop]["image"]
    return [item["image"] if isinstance(item, dict) else item for item in dataset[start:stop]]


def generate_captions(
    model: torch.nn.Module,
    processor,
    dataset: datasets.Dataset | Sequence[Any],
    *,
    batch_size: int = 32,
    prompt: str = "",
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    do_sample: bool | None = None,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Captions every image of ``dataset``, in order.

    Args:
        model: a MiniVLM (anything with ``generate``); put in eval mode, its training mode restored after.
        processor: its `MiniVLMProcessor` (images → ``pixel_values``, prompt → ids, ids → text).
        dataset: a uniform-view `datasets.Dataset` (an ``image`` column), or a list of PIL images
            or of example dicts with an ``image``.
        batch_size: images per ``generate`` call; the prompt is the same for all, so no row is padded.
        prompt: text the caption continues (the one used in training).
        max_new_tokens, num_beams, do_sample, generate_kwargs: passed to ``model.generate``; None: the
            model's ``generation_config`` (`minivlm.configuration_minivlm.decoding_defaults`).
        progress: show a tqdm bar over batches.

    Returns:
        One stripped caption per image (the prompt is not part of it).
    """
    return generate_texts(
        model, processor, lambda start, stop: _images(dataset, start, stop), [prompt] * len(dataset),
        batch_size=batch_size, progress=progress, desc="Captioning",
        max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, **generate_kwargs,
    )


def evaluate_captions(
    model: torch.nn.Module,
    processor,
    dataset: datasets.Dataset,
    *,
    decoding: dict[str, Any] | None = None,
    batch_size: int = 32,
    prompt: str = "",
    meteor: bool | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Captions a uniform-view dataset and scores the captions against all references of each image.

    Args:
        model, processor: as for `generate_captions`.
        dataset: ``image``, ``captions`` (list of str), ``id``; with an ``objects`` column (the
            shapes set, see `minivlm.processing.loading.load_split`) `shapes_accuracy` is added.
        decoding: ``generate`` settings (``max_new_tokens``, ``num_beams``, ``do_sample``, any other
            ``generate`` keyword); missing ones take the model's (`generation_kwargs`).
        batch_size, prompt: as for `generate_captions`.
        meteor: None computes METEOR when Java is present, False skips it (it starts a JVM, ~8 s).

    Returns:
        ``(predictions, metrics)``: predictions ``[{"id", "caption", "references"}]`` in dataset
        order; metrics as `compute_caption_metrics` returns them (``bleu_1``..``cider``,
        ``unavailable``), plus ``shapes_accuracy`` when available and ``decoding``: the settings
        used, the prompt included.
    """
    decoding = generation_kwargs(model, **(decoding or {}))
    if decoding.setdefault("prompt", prompt) != prompt:
        raise ValueError(f"the prompt is given twice: prompt={prompt!r} and decoding['prompt']={decoding['prompt']!r}")
    generate_kwargs = {k: v for k, v in decoding.items() if k != "prompt"}
    captions = generate_captions(
        model, processor, dataset, batch_size=batch_size, prompt=prompt, progress=progress, **generate_kwargs
    )
    references = dataset["captions"]
    predictions = [
        {"id": str(example_id), "caption": caption, "references": list(refs)}
        for example_id, caption, refs in zip(dataset["id"], captions, references)
    ]
    metrics = compute_caption_metrics(captions, references, meteor=meteor)
    if "objects" in dataset.column_names:
        metrics["shapes_accuracy"] = shapes_accuracy(captions, dataset["objects"])
    metrics["decoding"] = decoding
    return predictions, metrics
