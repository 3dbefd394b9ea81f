"""Training examples and the one collator: every example is a conversation.

A conversation is the chat format TRL uses: `messages` (a list of `{"role": "user" | "assistant" |
"system", "content": str | [{"type": "image"} | {"type": "text", "text": ...}]}`) and `images` (the
images, in the order their `{"type": "image"}` parts appear). It is rendered with the processor's
chat template; the loss covers the assistant turns only (every one of them, each with its EOS).

A caption example (the uniform caption view `image`, `captions`, `id`) becomes a one-turn
conversation when the batch is built: the user turn is the image (and the `prompt`, if any), the
assistant turn one reference caption, drawn per epoch from the seed (reproducible, also on resume).
The template renders that conversation to exactly the tokens the processor builds for captioning
at inference, so captions are trained on the prompt they are generated from. Batches are padded
to their own longest sequence.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from transformers.utils.chat_template_utils import render_jinja_template

from minivlm.grounding_minivlm import parse_boxes
from minivlm.processing_minivlm import MiniVLMProcessor, to_rgb


__all__ = ["choose_caption", "caption_conversation", "caption_and_questions", "ConversationCollator",
           "PreprocessedDataset", "preprocessed_size"]


def choose_caption(captions: list[str], seed: int, epoch: int, example_id: str) -> str:
    """One reference for this image in this epoch: a pure function of (seed, epoch, id)."""
    return captions[random.Random(f"{seed}/{epoch}/{example_id}").randrange(len(captions))]


def caption_conversation(caption: str | None, prompt: str = "") -> list[dict[str, Any]]:
    """The one-turn conversation of a caption example: user = the image (+ `prompt`), assistant = `caption`.

    With `caption=None` only the user turn: what captioning at inference renders (with the
    generation prompt) and continues.
    """
    user = [{"type": "image"}] + ([{"type": "text", "text": prompt}] if prompt else [])
    messages = [{"role": "user", "content": user}]
    if caption is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": caption}]})
    return messages


def is_conversation(example: dict[str, Any]) -> bool:
    """True for a row with `messages` (a conversation, or captions and questions), False for a caption row."""
    return bool(example.get("messages"))


def _turns(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The messages as turns: each user message with the assistant messages that follow it."""
    turns: list[list[dict[str, Any]]] = []
    for message in messages:
        if message["role"] != "assistant" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def caption_and_questions(
    captions: list[str], messages: list[dict[str, Any]], seed: int, epoch: int, example_id: str, prompt: str = ""
) -> list[dict[str, Any]]:
    """One image's caption and its question turns as one multi-turn conversation, in an order drawn per epoch.

    The conversation view of a row with both `captions` and `messages`; the collator trains such a
    row packed instead (`ConversationCollator.encode_packed`), every turn on its own.

    The caption turn (user: `prompt`, assistant: this epoch's reference, `choose_caption`) joins the
    question turns of `messages` (whose single image part is in the first user turn); the turns are
    shuffled with a pure function of (seed, epoch, id) and the image goes at the start of whichever
    turn comes first. So each turn type is sometimes asked right after the image, as at inference
    (a caption first is exactly a caption example), and the image is encoded once for all of them.
    """
    caption = choose_caption(captions, seed, epoch, example_id)
    turns = [[{"role": "user", "content": [{"type": "text", "text": prompt}] if prompt else []},
              {"role": "assistant", "content": [{"type": "text", "text": caption}]}]]
    for turn in _turns(messages):
        user, *rest = turn
        parts = [part for part in _content_parts(user) if part.get("type") != "image"]
        turns.append([{"role": user["role"], "content": parts}, *rest])
    random.Random(f"{seed}/{epoch}/{example_id}/order").shuffle(turns)
    first = turns[0][0]
    turns[0][0] = {"role": first["role"], "content": [{"type": "image"}, *first["content"]]}
    return [message for turn in turns for message in turn]


def _content_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _is_grounding(replies: list[dict[str, Any]]) -> bool:
    """Whether a turn's reply is a box (or several) and nothing else: `[x1, y1, x2, y2]` on the grid."""
    text = " ".join(part.get("text") or "" for reply in replies for part in _content_parts(reply)).strip()
    return text.startswith("[") and text.endswith("]") and bool(parse_boxes(text))


def count_image_parts(messages: list[dict[str, Any]]) -> int:
    """How many `{"type": "image"}` parts the messages hold."""
    return sum(part.get("type") == "image" for message in messages for part in _content_parts(message))


_ENCODE_CACHE_SIZE = 100_000  # encoded conversations a collator remembers


@dataclass
class ConversationCollator:
    """Turns conversation and caption examples (mixed freely) into a training batch.

    Examples are conversations `{"messages", "images", ...}`, captions `{"image", "captions", "id"}`
    (see the module docstring), or both at once: an image's captions and its question turns
    (`{"captions", "messages", "images", "id"}`), packed as single-turn examples sharing the image
    (see `encode_packed`). Each sequence is the rendered conversation, every `<image>` expanded
    to `image_seq_length` image tokens; each assistant turn is cut to `max_caption_tokens` tokens
    with its EOS always last. Returns `input_ids`, `attention_mask`, `labels` `(batch, seq)`, right
    padded to the batch's longest sequence (labels -100 everywhere but on assistant tokens),
    `pixel_values` `(num_images, 3, H, W)` (the images of every row, in order; `vision_features` instead
    for the rows of a `PreprocessedDataset` whose images were encoded once), and
    `logits_to_keep` (an int: the positions from the one before the batch's first target on, the
    only ones whose logits the loss reads).

    Args:
        processor: the model's processor (image processor, tokenizer with `<image>`, chat template).
        prompt: for caption examples, the user text after the image; the same must be used at inference.
        max_caption_tokens: length cap of each assistant turn (a caption, an answer), EOS included.
        seed: picks the reference caption of each image, with the epoch set by
            `minivlm.training.callbacks.CaptionEpochCallback`.
        multi_turn_fraction: of the rows with an image's caption and questions, the share trained each
            epoch as one chat (`as_multi_turn`) instead of packed single turns.
        grounding_repeats: extra copies of each grounding turn (a reply that is a box) in a packed row;
            each copy is a segment of its own, so the box weighs `1 + grounding_repeats` times in the loss.
    """

    processor: MiniVLMProcessor
    prompt: str = ""
    max_caption_tokens: int = 48
    seed: int = 42
    epoch: int = 0
    multi_turn_fraction: float = 0.0
    grounding_repeats: int = 0
    _context_ids: list[int] | None = field(default=None, init=False, repr=False)
    _encoded: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if not 0.0 <= self.multi_turn_fraction <= 1.0:  # NaN too
            raise ValueError(f"multi_turn_fraction is a share of the rows, between 0 and 1; got {self.multi_turn_fraction}.")
        if isinstance(self.grounding_repeats, bool) or not isinstance(self.grounding_repeats, int) or self.grounding_repeats < 0:
            raise ValueError(f"grounding_repeats is a whole number of extra copies, 0 or more; got {self.grounding_repeats!r}.")
        if self.max_caption_tokens < 2:
            raise ValueError(f"max_caption_tokens must be at least 2 (a token and EOS), got {self.max_caption_tokens}.")
        if self.processor.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token so the model can learn to stop.")
        if not self.processor.chat_template or "generation" not in self.processor.chat_template:
            raise ValueError(
                "the processor's chat template has no {% generation %} markers, so the assistant turns (the loss) "
                "cannot be found; use minivlm's DEFAULT_CHAT_TEMPLATE (processor.chat_template = DEFAULT_CHAT_TEMPLATE)."
            )

    # ------------------------------------------------------------------ conversations

    def messages(self, example: dict[str, Any]) -> list[dict[str, Any]]:
        """The example as a conversation; a caption example gets this epoch's reference."""
        if is_conversation(example) and example.get("captions"):
            return caption_and_questions(example["captions"], example["messages"], self.seed, self.epoch,
                                         str(example["id"]), self.prompt)
        if is_conversation(example):
            return example["messages"]
        caption = choose_caption(example["captions"], self.seed, self.epoch, str(example["id"]))
        return caption_conversation(caption, self.prompt)

    @staticmethod
    def images(example: dict[str, Any]) -> list[Any]:
        """The example's images, in the order of its image parts (a `(n, 3, H, W)` tensor for a row of a
        `PreprocessedDataset`)."""
        for key in ("pixel_values", "vision_features"):
            if key in example:
                return example[key]
        if is_conversation(example):
            return list(example.get("images") or [])
        return [example["image"]] if "image" in example else list(example["images"])[:1]

    def encode(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
        """`(input_ids, labels)` of one conversation: image tokens expanded, labels -100 outside assistant turns.

        The rendered text is tokenised piece by piece (the spans outside and inside the template's
        `{% generation %}` markers), the first piece as the processor tokenises a prompt, so the
        context is the exact token sequence the model sees at inference. The result depends on the
        texts alone (an image part renders as `<image>` whatever it holds), so it is remembered per
        text: captions and questions repeat every epoch, and rendering is most of a batch's cost.
        """
        if not any(message.get("role") == "assistant" for message in messages):
            raise ValueError("a training conversation needs at least one assistant turn (the loss has nothing to cover).")
        key = json.dumps([self.max_caption_tokens, messages], sort_keys=True, default=lambda value: None)
        if key not in self._encoded:
            if len(self._encoded) >= _ENCODE_CACHE_SIZE:
                self._encoded.clear()
            self._encoded[key] = self._encode(messages)
        ids, labels = self._encoded[key]
        return list(ids), list(labels)

    def _encode(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
        processor, tokenizer = self.processor, self.processor.tokenizer
        # Message text is marked so that a caption holding "<eos>" is trained as those characters,
        # never as the token (the template's own <image> and EOS stay tokens): see MiniVLMProcessor.
        rendered, generation = render_jinja_template(
            [processor.mark_messages(messages)], chat_template=processor.chat_template,
            return_assistant_tokens_mask=True, **tokenizer.special_tokens_map,
        )
        text, spans = rendered[0], generation[0]
        ids: list[int] = []
        labels: list[int] = []
        position = 0
        for start, end in [*spans, (len(text), len(text))]:
            if start > position or not ids:
                # Images sit in user turns only: each `<image>` becomes the processor's image tokens.
                context = processor.encode_text(text[position:start], add_special_tokens=not ids)
                ids += context
                labels += [-100] * len(context)
            if end > start:
                target = processor.encode_text(text[start:end], add_special_tokens=False)
                if len(target) > self.max_caption_tokens:
                    target = target[: self.max_caption_tokens - 1] + [tokenizer.eos_token_id]
                ids += target
                labels += target
            position = end
        return ids, labels

    # ------------------------------------------------------------------ captions (kept API)

    def context_ids(self) -> list[int]:
        """Image tokens and prompt of a caption example, tokenised exactly as the processor does it at inference."""
        if self._context_ids is None:
            ids, labels = self.encode(caption_conversation("x", self.prompt))
            self._context_ids = ids[: labels.index(next(label for label in labels if label != -100))]
        return self._context_ids

    def caption_ids(self, caption: str) -> list[int]:
        """The target of a caption example: its tokens (cut to `max_caption_tokens`) and EOS."""
        ids, labels = self.encode(caption_conversation(caption, self.prompt))
        return [label for label in labels if label != -100]

    def sequence_length(self, captions: list[str]) -> int:
        """The length of a caption example's training sequence, its captions averaged: the collator draws one
        of them per epoch. What length grouping (`--train_sampling_strategy group_by_length`) sorts by."""
        targets = [len(self.caption_ids(caption)) for caption in captions]
        return len(self.context_ids()) + round(sum(targets) / len(targets))

    def example_length(self, example: dict[str, Any]) -> int:
        """The training-sequence length of a caption or conversation example (no image is decoded)."""
        if is_conversation(example) and example.get("captions"):
            return len(self.encode_packed(example)[0])
        if is_conversation(example):
            return len(self.encode(self.messages(example))[0])
        return self.sequence_length(example["captions"])

    def add_length_column(self, dataset, column: str = "length"):
        """`dataset` with `column` = the training-sequence length of each example, read from the text alone
        (no image is decoded); the other columns are left as they are, memory-mapped."""
        if column in dataset.column_names:
            return dataset
        text_columns = [c for c in ("messages", "captions", "id") if c in dataset.column_names]
        rows = dataset.select_columns(text_columns)
        return dataset.add_column(column, [self.example_length(row) for row in rows])

    # ------------------------------------------------------------------ batches

    def encode_packed(self, example: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int]]:
        """An image's caption and questions as single-turn examples packed into one sequence.

        Each turn is encoded as its own one-turn conversation (image, then its text and answer); the
        image tokens are kept once, and each turn's tokens follow with the positions they have in
        their own example. Returns `(input_ids, labels, position_ids, segments)`: segment 0 is the
        shared image prefix, segment k the k-th turn; `text_batch` lets a turn see only the prefix
        and itself, so its logits are exactly those of the single-turn example (the image is
        encoded once for all of them, and no answer can be read off another).
        """
        caption = choose_caption(example["captions"], self.seed, self.epoch, str(example["id"]))
        conversations = [caption_conversation(caption, self.prompt)]
        grounding = []
        for user, *rest in _turns(example["messages"]):
            parts = [part for part in _content_parts(user) if part.get("type") != "image"]
            conversations.append([{"role": user["role"], "content": [{"type": "image"}, *parts]}, *rest])
            if self.grounding_repeats and _is_grounding(rest):
                grounding.append(conversations[-1])
        # Each copy is a segment of its own (it sees the image and itself): the same logits again, so its
        # answer weighs (1 + grounding_repeats) times in the loss.
        conversations += grounding * self.grounding_repeats
        ids, labels = self.encode(conversations[0])
        image_id = self.processor.image_token_id
        prefix = max(i for i, token in enumerate(ids) if token == image_id) + 1
        positions, segments = list(range(len(ids))), [0] * prefix + [1] * (len(ids) - prefix)
        for segment, conversation in enumerate(conversations[1:], start=2):
            turn_ids, turn_labels = self.encode(conversation)
            ids += turn_ids[prefix:]
            labels += turn_labels[prefix:]
            positions += list(range(prefix, len(turn_ids)))
            segments += [segment] * (len(turn_ids) - prefix)
        return ids, labels, positions, segments

    def as_multi_turn(self, example: dict[str, Any]) -> bool:
        """Whether this epoch trains an image's caption and questions as one multi-turn conversation (each turn
        after the ones before, as in a chat) rather than packed single turns: a draw of `multi_turn_fraction`
        from (seed, epoch, id)."""
        if self.multi_turn_fraction <= 0:
            return False
        return random.Random(f"{self.seed}/{self.epoch}/{example.get('id')}/view").random() < self.multi_turn_fraction

    def text_batch(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """`input_ids`, `attention_mask`, `labels` `(batch, seq)` and `logits_to_keep` for the examples.

        A batch with packed rows (captions and questions of one image, see `encode_packed`) gets a
        4D boolean `attention_mask` `(batch, 1, seq, seq)` (True where a position may look; sdpa's fast
        path takes booleans, a float mask costs it half as much again) and `position_ids` `(batch, seq)`.
        """
        rows = []
        packed = False
        for example in examples:
            if is_conversation(example) and example.get("captions") and not self.as_multi_turn(example):
                rows.append(self.encode_packed(example))
                packed = True
            else:
                ids, label = self.encode(self.messages(example))
                rows.append((ids, label, list(range(len(ids))), [1] * len(ids)))
        length = max(len(row[0]) for row in rows)
        pad = self.processor.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        segments = torch.full((len(rows), length), -1, dtype=torch.long)
        first_target = length
        for row, (ids, label, positions, segment) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(label)] = torch.tensor(label)
            position_ids[row, : len(ids)] = torch.tensor(positions)
            segments[row, : len(ids)] = torch.tensor(segment)
            first_target = min(first_target, next(i for i, value in enumerate(label) if value != -100))
        # The loss reads the logits from the position before the batch's first target on, so the LM
        # head skips the image (and other context) positions before it.
        logits_to_keep = length - first_target + 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                 "logits_to_keep": logits_to_keep}
        if packed:
            query, key = segments[:, :, None], segments[:, None, :]
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            visible = causal & (key != -1) & ((key == 0) | (key == query))
            visible |= torch.eye(length, dtype=torch.bool) & (query == -1)  # padding sees itself: no NaN
            batch["attention_mask"] = visible[:, None]
            batch["position_ids"] = position_ids
        return batch

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images, pixels = [], []
        for index, example in enumerate(examples):
            example_images = self.images(example)
            expected = count_image_parts(self.messages(example)) if is_conversation(example) else 1
            if len(example_images) != expected:
                raise ValueError(
                    f"example {example.get('id', index)!r} has {len(example_images)} image(s) for {expected} image "
                    "part(s) in its messages; clean the data with minivlm.processing.conversations.clean_conversations."
                )
            if torch.is_tensor(example_images):  # preprocessed once (`PreprocessedDataset`)
                pixels.append(example_images)
            else:
                images += [to_rgb(image) for image in example_images]
        if images and pixels:
            raise ValueError("a batch mixes preprocessed rows (pixel_values) with raw images; use one or the other.")
        batch = self.text_batch(examples)
        if pixels:
            batch["vision_features" if "vision_features" in examples[0] else "pixel_values"] = torch.cat(pixels)
        elif images:
            batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt")["pixel_values"]
        return batch


def preprocessed_size(dataset, processor) -> int:
    """Bytes that `PreprocessedDataset` would hold for `dataset`: one float32 `(3, H, W)` per image, at the
    image processor's output size (read from its config, nothing decoded)."""
    size = processor.image_processor.size
    height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    if "images" in dataset.column_names and "image" not in dataset.column_names:
        count = sum(len(images or []) for images in dataset.select_columns(["images"]).cast_column(
            "images", datasets.List(datasets.Image(decode=False)))["images"])
    else:
        count = len(dataset)
    return count * 3 * height * width * 4


class PreprocessedDataset(torch.utils.data.Dataset):
    """A training split whose images are decoded and preprocessed once, held as one float32 tensor.

    The collator's per-step work then shrinks to indexing and padding: decoding, converting and
    normalising the same images again every epoch was about a fifth of the demo's training step (py-spy).
    Row `i` is the split's row without its image columns, plus `pixel_values` `(n_images, 3, H, W)`
    (a view into the shared tensor), which `ConversationCollator` takes as it is. What a step computes
    is unchanged: the pixels are exactly those the image processor gives per batch.

    Args:
        dataset: a caption split (`image`, `captions`, `id`) or a conversation / training view (`images`, ...).
        processor: the model's processor (its image processor and `to_rgb` are used).
        batch_size: images decoded and processed at a time while building.
    """

    def __init__(self, dataset, processor, batch_size: int = 256):
        image_column = "image" if "image" in dataset.column_names else "images"
        text_columns = [c for c in dataset.column_names if c not in ("image", "images")]
        self.rows = dataset.select_columns(text_columns).to_list() if text_columns else [{} for _ in range(len(dataset))]
        chunks, offsets = [], [0]
        for start in range(0, len(dataset), batch_size):
            column = dataset[start:start + batch_size][image_column]
            per_row = [[image] for image in column] if image_column == "image" else [list(images or []) for images in column]
            flat = [to_rgb(image) for images in per_row for image in images]
            if flat:
                chunks.append(processor.image_processor(flat, return_tensors="pt")["pixel_values"])
            for images in per_row:
                offsets.append(offsets[-1] + len(images))
        self.pixel_values = torch.cat(chunks) if chunks else torch.empty(0)
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.rows)

    key = "pixel_values"  # "vision_features" once `encode_images` ran

    def encode_images(self, model: Any, batch_size: int = 256) -> None:
        """Replaces the pixels with what the model's vision encoder makes of them (`get_vision_features`:
        encoder, feature selection, pixel shuffle, i.e. what the projector reads); rows then carry
        `vision_features`, which the model takes in place of `pixel_values`, and a step runs the projector
        and the LM only. Only for an encoder that does not change while training (frozen, no dropout):
        its output for an image is then the same in every step, so computing it once changes nothing
        that is learned."""
        if self.key != "pixel_values":
            raise ValueError("the images are encoded already.")
        encoder = model.vision_tower
        if any(p.requires_grad for p in encoder.parameters()):
            raise ValueError("encode_images needs a frozen vision encoder (--freeze vision): a training encoder "
                             "changes its features every step.")
        device, dtype = next(encoder.parameters()).device, next(encoder.parameters()).dtype
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                features = [model.get_vision_features(self.pixel_values[start:start + batch_size].to(device, dtype)).cpu()
                            for start in range(0, len(self.pixel_values), batch_size)]
        finally:
            model.train(was_training)
        self.pixel_values = torch.cat(features) if features else torch.empty(0)
        self.key = "vision_features"

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.rows[index])
        row[self.key] = self.pixel_values[self.offsets[index]:self.offsets[index + 1]]
        return row

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return [self[index] for index in indices]

    @property
    def column_names(self) -> list[str]:
        return [*(self.rows[0] if self.rows else {}), self.key]


def __getattr__(name: str):
    # `CaptionCollator`, the collator's name before it took conversations, is `ConversationCollator`
    # itself (one class: monkeypatches and isinstance checks agree); deprecated for one release.
    if name == "CaptionCollator":
        warnings.warn("CaptionCollator was renamed ConversationCollator (it takes caption and conversation "
                      "examples alike); the old name will be removed in the next release. Import "
                      "minivlm.processing.collator.ConversationCollator instead.", FutureWarning, stacklevel=2)
        return ConversationCollator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

