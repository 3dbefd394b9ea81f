"""MiniVLMProcessor: images and text in, model inputs out; generated ids in, captions out.

Ships to the Hub verbatim as remote code: it imports transformers, PIL, numpy and its siblings only.
"""

import re

import numpy as np
from PIL import Image, ImageOps
from transformers import BatchFeature, ProcessorMixin
from transformers.processing_utils import ProcessingKwargs, Unpack
from transformers.utils import logging

from .image_loading import load_image, short


logger = logging.get_logger(__name__)

# The placeholder an image takes in a text: the processor's default `image_token`, the token the builder
# adds to the tokenizer, the marker LLaVA-format data and the chat template write. One home for it.
IMAGE_TOKEN = "<image>"

# Role-based, and built so that captioning is the one-turn case of chat. User (and system) turns
# render their parts where the messages put them: `<image>` for an image, the text as it is.
# An assistant turn is its text followed by EOS, between `{% generation %}` markers (what
# `return_assistant_tokens_mask` and the training loss cover); it is joined to a preceding user
# text by one space (inside the markers: byte-level BPEs then see " word" tokens, as in training).
# The generation prompt is empty on purpose: an answer starts right after the user's turn, the
# way a caption starts right after the image, so `[user: image]` renders to `<image>` exactly as
# `processor(images=...)` does, and `[user: image + "a photo of"]` to `<image>a photo of`. EOS,
# closing each assistant turn, is what separates the turns of a multi-turn chat.
DEFAULT_CHAT_TEMPLATE = (
    "{%- set ns = namespace(after_text=false) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}"
    "{%- for part in parts if part['type'] == 'text' -%}"
    "{%- if loop.first and ns.after_text and not part['text'].startswith((' ', '\\n')) %} {% endif -%}"
    "{{- part['text'] -}}"
    "{%- endfor -%}"
    "{{- eos_token -}}"
    "{%- endgeneration -%}"
    "{%- set ns.after_text = false -%}"
    "{%- else -%}"
    "{%- for part in parts -%}"
    "{%- if part['type'] == 'image' -%}" + IMAGE_TOKEN + "{%- set ns.after_text = false -%}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- set ns.after_text = part['text'] | length > 0 -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'system' -%}{{- '\\n' -}}{%- set ns.after_text = false -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def to_rgb(image: Image.Image) -> Image.Image:
    """Returns an upright RGB copy of a PIL image of any mode.

    Applies the EXIF orientation; transparent pixels are composited onto white. 16-bit and
    float greyscale are mapped from their mode's nominal range, never from the image's own
    minimum and maximum (a uniform white image stays white, a faint one stays faint): `I;16*`
    and `I` from [0, 65535] (16-bit samples, what PNG and TIFF hold; `I` values outside are
    clipped), `F` from [0, 1] (as float numpy arrays; values outside are clipped).
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" else 65535.0
        array = np.nan_to_num(array, nan=0.0, posinf=top, neginf=0.0)
        image = Image.fromarray((np.clip(array, 0.0, top) * (255.0 / top)).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class MiniVLMProcessorKwargs(ProcessingKwargs, total=False):
    """Keyword arguments of [`MiniVLMProcessor.__call__`], by modality (as transformers' processors take them)."""

    _defaults = {
        "text_kwargs": {"padding": "longest"},
        "common_kwargs": {"return_tensors": "pt"},
    }


# Private-use characters around a special-token string that came from a message's text (a caption,
# a question, an answer): it is encoded as plain text, never as the token. The template's own
# `<image>` and EOS carry no marks, so they stay tokens. The same characters transformers'
# `sanitize_control_tokens` uses; a message's own copies of them are dropped, so they cannot be forged.
LITERAL_START, LITERAL_END = "\U000f0000", "\U000f0001"
_HIDDEN_IMAGE = "\U000f0002"  # stands in for a marked `<image>` while placeholders are counted and expanded


def _is_image(item) -> bool:
    return isinstance(item, (Image.Image, np.ndarray, str)) or hasattr(item, "__fspath__") or _is_tensor(item)


def _is_tensor(item) -> bool:
    return type(item).__module__.startswith("torch") and hasattr(item, "permute")


class MiniVLMProcessor(ProcessorMixin):
    """Wraps an image processor and a tokenizer into one MiniVLM processor, as `LlavaProcessor` does.

    `processor(images=..., text=...)` returns `input_ids`, `attention_mask` and `pixel_values`.
    Each `<image>` in a text is expanded to `image_seq_length` image tokens; a text may hold
    several, anywhere. `pixel_values` `(num_images, 3, H, W)` holds every image of the batch in
    placeholder order. Batches are padded on the tokenizer's side (left for generation).
    `batch_decode` / `post_process_image_text_to_text` turn generated ids into text.

    Message text is never a special token: `apply_chat_template` marks every special-token string
    (`<eos>`, `<pad>`, `<bos>`, `<image>`, ...) inside the messages' text, and the processor encodes
    a marked one as plain text, so a caption or question holding `<eos>` cannot end a turn and one
    holding `<image>` is not an image. The `<image>` an image part renders to, and the EOS that
    closes an assistant turn, are written by the template and stay tokens. A `text=` passed to the
    processor directly is a prompt: its `<image>` placeholders (and any special-token string) are tokens.

    Args:
        image_processor: resizes and normalises images to the encoder's input.
        tokenizer: the LM's tokenizer, with `<image>` as a special token.
        image_seq_length: image tokens per image: the model config's `image_seq_length`
            (`minivlm.processing.builder` sets it from the config; saved in `processor_config.json`).
        image_token: the placeholder string (default `IMAGE_TOKEN`, `"<image>"`).
        chat_template: Jinja template for `apply_chat_template` (default: image, then text).
    """

    valid_processor_kwargs = MiniVLMProcessorKwargs

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_length: int | None = None,
        image_token: str = IMAGE_TOKEN,
        chat_template: str | None = None,
        **kwargs,
    ):
        if image_seq_length is None:
            raise ValueError(
                "image_seq_length is required: pass the model config's value "
                "(MiniVLMProcessor(..., image_seq_length=model.config.image_seq_length)); "
                "minivlm.processing.builder sets it for you."
            )
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self._warned_unknown: set[frozenset] = set()
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {image_token!r} token; add it as a special token "
                "(minivlm.processing.builder.prepare_tokenizer does) and resize the model's embeddings."
            )

    # -- special-token strings in message text --------------------------------------------------
    def _special_tokens(self) -> list[str]:
        """The tokenizer's special tokens (`<image>` included), longest first, so a longer one wins."""
        tokens = set(self.tokenizer.all_special_tokens)
        tokens |= {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special}
        return sorted((token for token in tokens if token), key=len, reverse=True)

    def mark_special_tokens(self, text: str) -> str:
        """`text` with each special-token string in it marked as plain text (see the class docstring).

        For text that comes from a message (a caption, a question): the processor then encodes
        `<eos>` there as the characters `<`, `eos`, `>`, never as the token. Marks the text
        already held are dropped first.
        """
        text = text.replace(LITERAL_START, "").replace(LITERAL_END, "").replace(_HIDDEN_IMAGE, "")
        tokens = self._special_tokens()
        if not tokens or not any(token in text for token in tokens):
            return text
        pattern = re.compile("|".join(re.escape(token) for token in tokens))
        return pattern.sub(lambda match: LITERAL_START + match.group(0) + LITERAL_END, text)

    def mark_messages(self, messages):
        """A copy of chat messages (or a batch of them) whose text is marked with `mark_special_tokens`.

        Marks each message's string `content` and the `text` of its text parts; roles, image parts
        and other fields are left as they are.
        """
        if isinstance(messages, (list, tuple)) and messages and isinstance(messages[0], (list, tuple)):
            return [self.mark_messages(conversation) for conversation in messages]
        marked = []
        for message in messages:
            if not isinstance(message, dict):
                marked.append(message)
                continue
            message = dict(message)
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = self.mark_special_tokens(content)
            elif isinstance(content, (list, tuple)):
                message["content"] = [
                    {**part, "text": self.mark_special_tokens(part["text"])}
                    if isinstance(part, dict) and isinstance(part.get("text"), str) else part
                    for part in content
                ]
            marked.append(message)
        return marked

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """`ProcessorMixin.apply_chat_template`, with the messages' text marked first (`mark_messages`).

        Special-token strings that a caption or question holds are encoded as plain text by this
        processor (`tokenize=True`, or the returned prompt passed to `processor(text=...)`); the
        template's own `<image>` and EOS stay tokens.
        """
        return super().apply_chat_template(self.mark_messages(conversation), chat_template, **kwargs)

    def _special_wrapping(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text with `add_special_tokens=True` (BOS, ...)."""
        plain = self.tokenizer.encode("a", add_special_tokens=False)
        wrapped = self.tokenizer.encode("a", add_special_tokens=True)
        for start in range(len(wrapped) - len(plain) + 1):
            if wrapped[start : start + len(plain)] == plain:
                return wrapped[:start], wrapped[start + len(plain) :]
        return [], []

    def encode_text(self, text: str, add_special_tokens: bool = True, expand_images: bool = True) -> list[int]:
        """The token ids of one rendered text, special-token strings in marked spans encoded as plain text.

        Unmarked special-token strings (what the template writes) are tokens; with `expand_images`
        each unmarked `<image>` becomes `image_seq_length` image tokens (as `processor(text=...)`
        expands it). The text between two tokens is encoded in one piece, marked strings joined
        in as plain text, so a caption with `<eos>` in it is tokenised as the same words typed
        without a tokenizer that knows `<eos>`.
        """
        tokens = self._special_tokens()
        marked = re.escape(LITERAL_START) + "(.*?)" + re.escape(LITERAL_END)
        pattern = re.compile(marked + "|(" + "|".join(re.escape(token) for token in tokens) + ")" if tokens else marked,
                             re.DOTALL)
        ids: list[int] = []
        pending = ""
        position = 0

        def flush(chunk: str) -> None:
            chunk = chunk.replace(LITERAL_START, "").replace(LITERAL_END, "")  # a lone mark: dropped
            if chunk:
                ids.extend(self.tokenizer.encode(chunk, add_special_tokens=False, split_special_tokens=True))

        for match in pattern.finditer(text):
            pending += text[position : match.start()]
            position = match.end()
            if match.group(1) is not None:  # a marked string from a message: plain text
                pending += match.group(1)
                continue
            flush(pending)
            pending = ""
            token = match.group(2)
            if expand_images and token == self.image_token:
                ids.extend([self.image_token_id] * self.image_seq_length)
            else:
                ids.append(self.tokenizer.convert_tokens_to_ids(token))
        flush(pending + text[position:])
        if add_special_tokens:
            before, after = self._special_wrapping()
            ids = before + ids + after
        return ids

    def _encode_marked(self, texts: list[str], text_kwargs: dict, return_tensors):
        """The tokenizer's output for texts holding marked spans (`encode_text`), padded as the tokenizer pads."""
        unsupported = sorted(
            key for key in ("return_offsets_mapping", "return_overflowing_tokens", "return_special_tokens_mask",
                            "return_token_type_ids", "return_length", "is_split_into_words", "stride")
            if text_kwargs.get(key)
        )
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)} cannot be combined with message text that holds special-token strings "
                "(marked to be encoded as plain text); leave those options out or remove the strings."
            )
        add_special_tokens = text_kwargs.get("add_special_tokens", True)
        input_ids = [self.encode_text(text, add_special_tokens, expand_images=False) for text in texts]
        max_length = text_kwargs.get("max_length")
        if text_kwargs.get("truncation") and max_length is not None:
            left = self.tokenizer.truncation_side == "left"
            input_ids = [ids[-max_length:] if left else ids[:max_length] for ids in input_ids]
        padding = text_kwargs.get("padding", False)
        return self.tokenizer.pad(
            {"input_ids": input_ids}, padding=padding, max_length=max_length if padding == "max_length" else None,
            pad_to_multiple_of=text_kwargs.get("pad_to_multiple_of"), padding_side=text_kwargs.get("padding_side"),
            return_attention_mask=text_kwargs.get("return_attention_mask", True), return_tensors=return_tensors,
        )

    def load_image(self, image, index: int = 0) -> Image.Image:
        """One image as an upright RGB PIL image.

        Takes a PIL image, a local path, URL or data URI (read by `image_loading.load_image`: timeout, size and pixel limits), a numpy
        array `(H, W, C)` or `(H, W)` (uint8, or float in [0, 1]) or a torch tensor `(C, H, W)`.
        """
        if isinstance(image, (str, Image.Image)) or hasattr(image, "__fspath__"):
            try:  # size limits, URL safety, bounded messages: see image_loading.py
                image = load_image(image)
            except ValueError as error:
                raise ValueError(f"could not read image {index} ({short(image)}): {error}") from error
        elif _is_tensor(image):
            if image.ndim != 3:
                raise ValueError(f"image {index} is a tensor of shape {tuple(image.shape)}; pass (channels, H, W).")
            image = image.detach().cpu().permute(1, 2, 0).numpy()
        if isinstance(image, np.ndarray):
            if image.ndim == 3 and image.shape[-1] == 1:
                image = image[..., 0]
            if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
                raise ValueError(
                    f"image {index} is an array of shape {image.shape}; pass (H, W, 3) RGB, (H, W, 4) RGBA or (H, W)."
                )
            if image.dtype != np.uint8:
                image = (np.clip(image.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise ValueError(
                f"image {index} is a {type(image).__name__}, not an image; pass PIL images, local paths, URLs, "
                "numpy arrays (H, W, C) or torch tensors (C, H, W)."
            )
        return to_rgb(image)

    def _images_per_text(self, images, texts: list[str]) -> list[list]:
        """Assigns the images to the texts: one list of images per text, in placeholder order."""
        counts = [text.count(self.image_token) for text in texts]
        if _is_image(images):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("images=[] holds no image; pass at least one image, or images=None for text only.")
        if all(isinstance(group, (list, tuple)) for group in images):  # nested: one list per text
            if len(images) != len(texts):
                raise ValueError(
                    f"got {len(images)} image lists for {len(texts)} text(s); pass one list of images per text."
                )
            groups = [list(group) for group in images]
        elif any(isinstance(group, (list, tuple)) for group in images):
            raise ValueError("mix of images and lists of images; pass one flat list, or one list per text.")
        elif sum(counts) == len(images):
            groups, start = [], 0
            for count in counts:
                groups.append(images[start : start + count])
                start += count
        elif len(images) == len(texts) and all(count <= 1 for count in counts):
            groups = [[image] for image in images]  # one image per text, first where it has no placeholder
        else:
            raise ValueError(
                f"got {len(images)} image(s) for {sum(counts)} {self.image_token!r} placeholder(s) in {len(texts)} "
                f"text(s); put one {self.image_token!r} in the texts per image (a text without one takes a single "
                "image, first), or pass one list of images per text."
            )
        for i, (group, count) in enumerate(zip(groups, counts)):
            if count != len(group) and not (count == 0 and len(group) == 1):
                raise ValueError(
                    f"text {i} holds {count} {self.image_token!r} placeholder(s) for {len(group)} image(s); "
                    f"put one {self.image_token!r} per image where it belongs in the text."
                )
        return groups

    def unknown_words(self, text: str) -> list[str]:
        """The pieces of `text` the tokenizer reads as its unknown token, in order, each once.

        A word-level tokenizer (the tiny models') knows only the words it was built from: any other
        word becomes `<unk>` and the model cannot tell it from any other unknown word. Byte-level
        tokenizers have no unknown token: for them this is always empty.
        """
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None or not text:
            return []
        text = text.replace(self.image_token, " ")
        try:
            encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # a slow tokenizer has no offsets: tokens are all we have
            tokens = self.tokenizer.tokenize(text)
            return ["<unknown>"] if self.tokenizer.unk_token in tokens else []
        words = [text[start:end] for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"])
                 if token == unk]
        return list(dict.fromkeys(word for word in words if word.strip()))

    def _warn_unknown_words(self, texts: list[str], input_ids) -> None:
        """Warns once per set of words when texts hold words the tokenizer reads as its unknown token."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None:
            return
        words = []
        for text, ids in zip(texts, input_ids):
            if unk in ids:
                words += self.unknown_words(text)
        key = frozenset(words)
        if not words or key in self._warned_unknown:
            return
        self._warned_unknown.add(key)
        words = list(dict.fromkeys(words))
        logger.warning(
            "%d word(s) of the text are not in the tokenizer's vocabulary and are read as %s, which the model cannot "
            "tell apart: %s. Rephrase with words it knows: processor.tokenizer.get_vocab() lists them.",
            len(words), self.tokenizer.unk_token, ", ".join(repr(word) for word in words),
        )

    @property
    def image_tokens(self) -> str:
        """The text one image becomes: `image_token` × `image_seq_length` (what each `<image>` expands to)."""
        return self.image_token * self.image_seq_length

    def _expand_image_tokens(self, texts: list[str], groups: list[list]) -> tuple[list[str], list[list[dict]]]:
        """Puts an image first where a text has none, expands each `<image>`; returns the texts and their offsets."""
        replacement = self.image_tokens
        expanded, offsets = [], []
        for text, group in zip(texts, groups):
            prepended = bool(group) and self.image_token not in text
            pieces = text.split(self.image_token)
            new, spans, position, new_position = "", [], 0, 0
            if prepended:
                spans.append({"type": "image", "span": (0, 0), "new_span": (0, len(replacement)),
                              "text": "", "replacement": replacement})
                new, new_position = replacement, len(replacement)
            for index, piece in enumerate(pieces):
                new += piece
                position, new_position = position + len(piece), new_position + len(piece)
                if index < len(pieces) - 1:
                    spans.append({"type": "image", "span": (position, position + len(self.image_token)),
                                  "new_span": (new_position, new_position + len(replacement)),
                                  "text": self.image_token, "replacement": replacement})
                    new += replacement
                    position += len(self.image_token)
                    new_position += len(replacement)
            expanded.append(new)
            offsets.append(spans)
        return expanded, offsets

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        **kwargs: Unpack[MiniVLMProcessorKwargs],
    ) -> BatchFeature:
        """Prepares model inputs.

        Args:
            images: an image (PIL, path, URL, numpy `(H, W, C)`, torch `(C, H, W)`), a flat list of
                images for the whole batch (in placeholder order), or one list of images per text.
                A text without `<image>` given exactly one image gets it first.
            text: a string or list of strings with one `<image>` per image; `None` captions the
                images alone (one text per image).
            kwargs: tokenizer options (`padding`, `truncation`, `max_length`, `return_offsets_mapping`,
                ...) and image-processor options, flat or as `text_kwargs` / `images_kwargs`.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` `(batch, seq)` and, with images,
            `pixel_values` `(num_images, 3, H, W)`.
        """
        if images is None and text is None:
            raise ValueError("pass images, text or both.")
        output_kwargs = self._merge_kwargs(
            MiniVLMProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs = output_kwargs["text_kwargs"]
        want_offsets = bool(
            text_kwargs.pop("return_text_replacement_offsets", None) or output_kwargs.get("return_text_replacement_offsets")
        )
        for unused in ("return_mm_token_type_ids", "sanitize_control_tokens"):
            text_kwargs.pop(unused, None)
        return_tensors = text_kwargs.pop("return_tensors", None)
        output_kwargs["images_kwargs"].pop("return_tensors", None)

        if isinstance(text, str):
            text = [text]
        if text is not None:
            # A marked `<image>` is message text, not a placeholder: hidden (same length) while images are
            # counted and expanded, so the offsets below stay right.
            marked_image = LITERAL_START + self.image_token + LITERAL_END
            hidden_image = LITERAL_START + _HIDDEN_IMAGE * len(self.image_token) + LITERAL_END
            text = [t.replace(marked_image, hidden_image) for t in text]
        data = {}
        if images is not None:
            if text is None:
                num_images = 1 if _is_image(images) else len(images)
                text = [""] * max(num_images, 1)
            groups = self._images_per_text(images, list(text))
            flat = [self.load_image(image, i) for i, image in enumerate(item for group in groups for item in group)]
            text, offsets = self._expand_image_tokens(list(text), groups)
            data.update(self.image_processor(flat, return_tensors=return_tensors, **output_kwargs["images_kwargs"]))
        else:
            if any(self.image_token in t for t in text):
                raise ValueError(f"the text holds {self.image_token!r} but no images were given; pass images=....")
            offsets = [[] for _ in text]
            groups = [[] for _ in text]
        text = [t.replace(_HIDDEN_IMAGE * len(self.image_token), self.image_token) for t in text]
        if any(LITERAL_START in t or LITERAL_END in t for t in text):
            text_inputs = self._encode_marked(text, text_kwargs, return_tensors)
        else:
            text_inputs = self.tokenizer(text, return_tensors=return_tensors, **text_kwargs)
        self._warn_unknown_words(list(text), text_inputs["input_ids"])
        if images is not None and text_kwargs.get("truncation"):
            for i, (ids, group) in enumerate(zip(text_inputs["input_ids"], groups)):
                if list(ids).count(self.image_token_id) != len(group) * self.image_seq_length:
                    raise ValueError(
                        f"truncation to max_length={text_kwargs.get('max_length')} cut into the image tokens of "
                        f"text {i}; raise max_length."
                    )
        data.update(text_inputs)
        if want_offsets:
            data["text_replacement_offsets"] = offsets
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decodes generated ids `(batch, seq)` into stripped strings, image tokens removed."""
        texts = self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return [text.replace(self.image_token, "").strip() for text in texts]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["LITERAL_END", "LITERAL_START", "MiniVLMProcessor", "MiniVLMProcessorKwargs", "to_rgb"]
