"""The one batched generation loop of evaluation: captions and answers both go through `generate_texts`.

Prompts (already rendered: the caption prompt, or a chat rendered by the chat template) and their
images go to the processor in batches, padded on the left, so that every row's prompt fills the
first `input_ids.shape[1]` columns and its continuation starts after them; `model.generate` runs
with the decoding defaults of the model's `generation_config` (`decoding_defaults`) under any value
the caller gives; the continuations are decoded with `post_process_image_text_to_text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers.utils.logging import tqdm

from minivlm.configuration_minivlm import decoding_defaults

__all__ = ["generate_texts", "generation_kwargs"]


def generation_kwargs(model: torch.nn.Module, **given: Any) -> dict[str, Any]:
    """The `generate()` arguments of an evaluation: `decoding_defaults(model.generation_config)`, then every
    value of `given` that is not None (what the user asked for wins)."""
    return {**decoding_defaults(getattr(model, "generation_config", None)),
            **{name: value for name, value in given.items() if value is not None}}


def generate_texts(
    model: torch.nn.Module,
    processor,
    images: Sequence[Any] | Callable[[int, int], list[Any]],
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "Generating",
    **generate_kwargs: Any,
) -> list[str]:
    """The generated text of every `(images[i], prompts[i])`, in order, stripped, the prompt cut off.

    Args:
        model: a MiniVLM (anything with `generate` and `generation_config`); put in eval mode, its
            training mode restored after.
        processor: its `MiniVLMProcessor`.
        images: per prompt, its image (or the list of the images its prompt shows); or a function
            `(start, stop) -> images[start:stop]`, so that only one batch's images are decoded at a time.
        prompts: text with the image placeholders, one per row.
        batch_size: rows per `generate` call.
        progress: a tqdm bar over batches, labelled `desc`.
        generate_kwargs: `generate()` options; unset ones (`None` or absent) come from
            `generation_kwargs(model)`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    images_of = images if callable(images) else (lambda start, stop: list(images[start:stop]))
    kwargs = generation_kwargs(model, **generate_kwargs)
    tokenizer = processor.tokenizer
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not progress):
                stop = start + batch_size
                inputs = processor(images=images_of(start, stop), text=list(prompts[start:stop]), padding=True,
                                   return_tensors="pt").to(model.device)
                generated = model.generate(**inputs, **kwargs)
                texts += processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1]:])
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return texts
