"""Training examples and the collator.

Fixes the notebook's training examples: the target is the caption followed by EOS (the model
learns to stop), the loss covers caption tokens only, the prompt is the one used at inference,
one reference per image per epoch is chosen from the seed (reproducible, also on resume), and
batches are padded to their own longest sequence.
"""

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from minivlm.processing_minivlm import MiniVLMProcessor, to_rgb


def choose_caption(captions: list[str], seed: int, epoch: int, example_id: str) -> str:
    """One reference for this image in this epoch: a pure function of (seed, epoch, id)."""
    return captions[random.Random(f"{seed}/{epoch}/{example_id}").randrange(len(captions))]


@dataclass
class CaptionCollator:
    """Turns examples `{"image", "captions", "id"}` into a training batch.

    Each sequence is `<image>`×N, the prompt, then the caption truncated to `max_caption_tokens`
    with EOS always last. Returns `input_ids`, `attention_mask`, `labels` `(batch, seq)`, right
    padded to the batch's longest sequence (labels -100 on image, prompt and padding),
    `pixel_values` `(batch, 3, H, W)`, and `logits_to_keep` (an int: the positions from the last
    context token on, the only ones whose logits the loss reads).

    Args:
        processor: the model's processor (image processor, tokenizer with `<image>`).
        prompt: text between the image and the caption; the same string must be used at inference.
        max_caption_tokens: caption length cap, EOS included.
        seed: picks the reference caption of each image, with the epoch set by
            `minivlm.training.callbacks.CaptionEpochCallback`.
    """

    processor: MiniVLMProcessor
    prompt: str = ""
    max_caption_tokens: int = 48
    seed: int = 42
    epoch: int = 0
    _context_ids: list[int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.max_caption_tokens < 2:
            raise ValueError(f"max_caption_tokens must be at least 2 (a token and EOS), got {self.max_caption_tokens}.")
        if self.processor.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token so the model can learn to stop.")

    def context_ids(self) -> list[int]:
        """Image tokens and prompt, tokenised exactly as the processor does it at inference."""
        if self._context_ids is None:
            processor = self.processor
            text = processor.image_token * processor.image_seq_length + self.prompt
            self._context_ids = processor.tokenizer(text)["input_ids"]
        return self._context_ids

    def caption_ids(self, caption: str) -> list[int]:
        tokenizer = self.processor.tokenizer
        text = f" {caption}" if self.prompt and not self.prompt.endswith(" ") else caption
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_caption_tokens - 1]
        return ids + [tokenizer.eos_token_id]

    def sequence_length(self, captions: list[str]) -> int:
        """The length of an example's training sequence, its captions averaged: the collator draws one
        of them per epoch. What length grouping (`--train_sampling_strategy group_by_length`) sorts by."""
        targets = [len(self.caption_ids(caption)) for caption in captions]
        return len(self.context_ids()) + round(sum(targets) / len(targets))

    def add_length_column(self, dataset, column: str = "length"):
        """`dataset` with `column` = `sequence_length` of each example, read from the captions alone
        (no image is decoded); the other columns are left as they are, memory-mapped."""
        if column in dataset.column_names:
            return dataset
        return dataset.add_column(column, [self.sequence_length(captions) for captions in dataset["captions"]])

    def text_batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask`, `labels` `(batch, seq)` for the examples' chosen captions."""
        context = self.context_ids()
        sequences, label_rows = [], []
        for example in examples:
            caption = choose_caption(example["captions"], self.seed, self.epoch, str(example["id"]))
            target = self.caption_ids(caption)
            sequences.append(context + target)
            label_rows.append([-100] * len(context) + target)

        length = max(len(s) for s in sequences)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), -100, dtype=torch.long)
        for row, (sequence, label) in enumerate(zip(sequences, label_rows)):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
            labels[row, : len(label)] = torch.tensor(label)
        # Every target sits after the shared context: logits (and loss) are needed from the last
        # context position on, so the LM head skips the image positions.
        logits_to_keep = length - len(context) + 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "logits_to_keep": logits_to_keep}

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [to_rgb(example["image"]) for example in examples]
        pixel_values = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return {**self.text_batch(examples), "pixel_values": pixel_values}
