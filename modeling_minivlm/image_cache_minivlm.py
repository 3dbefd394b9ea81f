"""Encode an image once per conversation: its projected features and KV prefix, reused by every turn.

A chat about one image asks the model several questions whose prompts all start the same way:
the text before the image, then `image_seq_length` image tokens. Encoding the image (the vision
tower and the projector) and prefilling those positions into the language model's KV cache is
most of a short answer's cost, and it gives the same result every turn. This module does it once
and hands `generate()` a copy of the cache each time (transformers' prompt-cache reuse): the
forward pass then only sees the uncached suffix of the prompt, which holds no image tokens, so no
`pixel_values` are passed and the encoder does not run.

    prefix = encode_image_prefix(model, **processor(images=image, text=first_prompt))
    ids = generate_with_prefix(model, prefix, **processor(images=image, text=second_prompt))

or, keeping the prefix of the current image between calls:

    chat = ImagePrefixCache(model)
    ids = chat.generate(**processor(images=image, text=prompt), max_new_tokens=32)  # encodes
    ids = chat.generate(**processor(images=image, text=prompt_2), max_new_tokens=32)  # reuses

Greedy, beam-search and sampled answers equal those of a plain `model.generate(**inputs)`.
One image and one sequence at a time (a conversation). Imports torch and transformers only.

A prefix knows what it holds: the model that encoded it and the image (`pixel_values`). Image
tokens are the same ids for every image, so a prompt's ids cannot tell which image it was built
for: `generate_with_prefix` takes the prompt's `pixel_values` too and refuses another image,
another model, or a prompt with a further image after the cached one (whose pixels the cache
does not hold). `ImagePrefixCache` re-encodes instead.
"""

import copy
import weakref
from dataclasses import dataclass, field

import torch
from transformers import Cache


@dataclass
class ImagePrefix:
    """A prompt's tokens up to and including its last image token, run through the model once.

    Attributes:
        input_ids: `(1, prefix_length)` the prefix's token ids; later prompts must start with them.
        cache: the language model's KV cache over those positions (never modified: copied per use).
        pixel_values: `(1, 3, H, W)` the encoded image, to recognise it and for prompts that end
            with the image (nothing left to feed past the cache: those run uncached).
        image_hidden_states: `(1, image_seq_length, text_hidden_size)` the projected image features.
        model_ref: a weak reference to the model that encoded it (`model` returns it); `generate_with_prefix`
            refuses any other model.
    """

    input_ids: torch.LongTensor
    cache: Cache
    pixel_values: torch.Tensor
    image_hidden_states: torch.Tensor | None = None
    model_ref: "weakref.ReferenceType | None" = field(default=None, repr=False)

    @property
    def model(self):
        """The model that encoded this prefix (None if unknown or gone)."""
        return self.model_ref() if self.model_ref is not None else None

    @property
    def length(self) -> int:
        """Number of prompt positions held in the cache."""
        return self.input_ids.shape[1]

    def matches(self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None = None) -> bool:
        """Whether a prompt `(1, seq)` starts with this prefix (and, if given, shows the same image)."""
        if input_ids.shape[0] != 1 or input_ids.shape[1] < self.length:
            return False
        if not torch.equal(input_ids[:, : self.length].to(self.input_ids.device), self.input_ids):
            return False
        if pixel_values is None:
            return True
        return pixel_values.shape == self.pixel_values.shape and torch.equal(
            pixel_values.to(self.pixel_values.device, self.pixel_values.dtype), self.pixel_values
        )


def _check_single(input_ids: torch.LongTensor) -> None:
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(
            f"expected input_ids of shape (1, seq) for one conversation, got {tuple(input_ids.shape)}; "
            "the image prefix cache serves one image and one prompt at a time (batch several images "
            "with model.generate(**processor(images=[...], text=[...])) instead)."
        )


def _image_prefix_length(model, input_ids: torch.LongTensor) -> int:
    positions = (input_ids[0] == model.config.image_token_index).nonzero()
    if len(positions) == 0:
        raise ValueError(
            "the prompt holds no image tokens; build it with the processor: processor(images=image, text=prompt)."
        )
    return int(positions.max()) + 1


@torch.no_grad()
def encode_image_prefix(
    model,
    input_ids: torch.LongTensor,
    pixel_values: torch.FloatTensor,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> ImagePrefix:
    """Encodes the image and prefills the prompt up to its last image token.

    Args:
        model: a `MiniVLMForConditionalGeneration` (anything whose forward takes `input_ids`,
            `pixel_values` and returns `cache` and `image_hidden_states`).
        input_ids: `(1, seq)` a prompt from the processor, with its image tokens.
        pixel_values: `(1, 3, H, W)` the image, from the same processor call.
        attention_mask: `(1, seq)`; must be all ones over the prefix (no padding: one prompt).
        kwargs: other processor outputs, ignored (so `**processor(...)` can be passed).

    Returns:
        An [`ImagePrefix`] for [`generate_with_prefix`].
    """
    _check_single(input_ids)
    length = _image_prefix_length(model, input_ids)
    if attention_mask is not None and not bool(attention_mask[:, :length].all()):
        raise ValueError("the prompt is padded; pass one unpadded prompt (processor(images=image, text=prompt)).")
    prefix_ids = input_ids[:, :length]
    outputs = model(
        input_ids=prefix_ids.to(model.device),
        pixel_values=pixel_values.to(model.device),
        attention_mask=torch.ones_like(prefix_ids, device=model.device),
        use_cache=True,
        logits_to_keep=1,
    )
    return ImagePrefix(
        input_ids=prefix_ids.to(model.device),
        cache=outputs.cache if getattr(outputs, "cache", None) is not None else outputs.past_key_values,
        pixel_values=pixel_values.to(model.device),
        image_hidden_states=getattr(outputs, "image_hidden_states", None),
        model_ref=weakref.ref(model),
    )


def _expansion(model, generate_kwargs: dict) -> int:
    """Rows generate() makes of one prompt (beams, returned sequences): the cache must match them."""
    config = generate_kwargs.get("generation_config") or model.generation_config
    num_beams = generate_kwargs.get("num_beams", getattr(config, "num_beams", 1)) or 1
    num_return = generate_kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", 1)) or 1
    return max(num_beams, num_return)


def check_prefix(model, prefix: ImagePrefix, input_ids: torch.LongTensor, pixel_values: torch.Tensor | None) -> None:
    """Raises `ValueError`, saying what to do, unless `prefix` can serve this prompt of this image with `model`.

    The prompt must be one sequence `(1, seq)` that starts with the prefix's tokens, hold no image
    token after it, and come with the `pixel_values` of the image it was built for, equal to the
    prefix's; the prefix must have been encoded by `model`.
    """
    _check_single(input_ids)
    if prefix.model is not model:
        raise ValueError(
            "this prefix was encoded by another model (its KV cache and image features belong to that model's "
            "weights); encode the image again with this model: model.encode_image_prefix(**processor(...))."
        )
    if pixel_values is None:
        raise ValueError(
            "pass the prompt's pixel_values (generate_with_prefix(model, prefix, **processor(images=image, "
            "text=prompt))): image tokens are the same ids for every image, so only the pixels tell whether the "
            "cached image is the one this prompt is about."
        )
    if not prefix.matches(input_ids):
        raise ValueError(
            "the prompt does not start with the encoded image's prefix (another text before the image, or another "
            "image count); encode this prompt's image with encode_image_prefix first."
        )
    image_token = model.config.image_token_index
    if bool((input_ids[0, prefix.length :].to(prefix.input_ids.device) == image_token).any()):
        raise ValueError(
            "the prompt holds another image after the cached one, whose pixels the prefix does not hold; encode "
            "the prompt up to its last image with encode_image_prefix, or call model.generate with every image."
        )
    if not prefix.matches(input_ids, pixel_values):
        raise ValueError(
            "the prompt's pixel_values are not the image the prefix encoded (another image); encode this prompt's "
            "image with encode_image_prefix first, or use ImagePrefixCache, which does it when the image changes."
        )


def generate_with_prefix(
    model,
    prefix: ImagePrefix,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    **generate_kwargs,
) -> torch.LongTensor:
    """`model.generate` for a prompt that starts with `prefix`, without re-encoding the image.

    Args:
        model: the model that made `prefix` (another one is refused).
        prefix: from [`encode_image_prefix`] on the same image.
        input_ids: `(1, seq)` the full prompt (prefix included), e.g. the whole conversation so far.
        attention_mask: `(1, seq)`, all ones (default).
        pixel_values: the prompt's image from the same processor call (required): checked equal to
            the prefix's image, then not run again (the image is in the cache).
        generate_kwargs: any `generate()` option (`max_new_tokens`, `num_beams`, `do_sample`,
            `num_return_sequences`, `streamer`, ...).

    Returns:
        What `model.generate` returns: `(rows, seq + new)` ids, the prompt first (or a
        `GenerateOutput` with `return_dict_in_generate=True`).

    Raises:
        ValueError: see [`check_prefix`] (another image, another model, missing pixels, a
            different text before the image, a further image after it).
    """
    check_prefix(model, prefix, input_ids, pixel_values)
    for name in ("cache", "past_key_values", "vision_features"):
        if name in generate_kwargs:
            raise ValueError(f"{name} is set by generate_with_prefix; do not pass it.")
    generate_kwargs.pop("image_sizes", None)
    input_ids = input_ids.to(model.device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(model.device)
    if input_ids.shape[1] == prefix.length:
        # Nothing past the image to feed after the cache: generate() needs at least one uncached
        # position, and the last one is an image token, so run the ordinary way.
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, pixel_values=prefix.pixel_values,
                              **generate_kwargs)
    cache = copy.deepcopy(prefix.cache)
    rows = _expansion(model, generate_kwargs)
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **generate_kwargs)


class ImagePrefixCache:
    """Keeps the [`ImagePrefix`] of the current image and reuses it while prompts start with it.

    `generate(**processor(images=image, text=prompt), **generate_kwargs)` encodes the image on the
    first call and whenever the image (its `pixel_values`) or the text before it changes; every
    other call reuses the prefix. A prompt that ends with the image (a caption from the image
    alone) has nothing to feed past a cache and runs the ordinary way. `encodes` and `reuses`
    count how often the image was encoded and reused, for logs and tests.

    Args:
        model: a `MiniVLMForConditionalGeneration`.
    """

    def __init__(self, model):
        self.model = model
        self.prefix: ImagePrefix | None = None
        self.encodes = 0
        self.reuses = 0

    def reset(self) -> None:
        """Forgets the current image (a new conversation)."""
        self.prefix = None

    def generate(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """`model.generate(input_ids=..., pixel_values=..., ...)` with the image encoded once.

        Shapes as for [`encode_image_prefix`]; returns what [`generate_with_prefix`] returns.
        """
        _check_single(input_ids)
        if _image_prefix_length(self.model, input_ids) == input_ids.shape[1]:
            # Nothing after the image (a captioner's prompt): no cache can serve it, so encoding a
            # prefix would only double the work. The ordinary way encodes the image, as counted.
            self.encodes += 1
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            return self.model.generate(input_ids=input_ids.to(self.model.device),
                                       attention_mask=mask.to(self.model.device),
                                       pixel_values=pixel_values.to(self.model.device), **generate_kwargs)
        if (self.prefix is None or self.prefix.model is not self.model
                or not self.prefix.matches(input_ids, pixel_values)):
            self.prefix = encode_image_prefix(self.model, input_ids, pixel_values, attention_mask)
            self.encodes += 1
        else:
            self.reuses += 1
        return generate_with_prefix(self.model, self.prefix, input_ids, attention_mask, pixel_values,
                                    **generate_kwargs)


__all__ = ["ImagePrefix", "ImagePrefixCache", "check_prefix", "encode_image_prefix", "generate_with_prefix"]
