"""MiniVLMProcessor: images and text in, model inputs out; generated ids in, captions out.

Ships to the Hub verbatim as remote code: it imports transformers, PIL and numpy only.
"""

import numpy as np
from PIL import Image, ImageOps
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_utils import load_image


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
    "{%- if part['type'] == 'image' -%}<image>{%- set ns.after_text = false -%}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- set ns.after_text = part['text'] | length > 0 -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if message['role'] == 'system' -%}{{- '\\n' -}}{%- set ns.after_text = false -%}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def to_rgb(image: Image.Image) -> Image.Image:
    """Returns an upright RGB copy of a PIL image of any mode.

    Applies the EXIF orientation; transparent pixels are composited onto white; 16-bit and
    float greyscale (`I;16`, `I`, `F`) are scaled to 8 bits from their own range.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((array - low) * scale).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


class MiniVLMProcessor(ProcessorMixin):
    """Wraps an image processor (ViT's) and a tokenizer into one MiniVLM processor.

    `processor(images=..., text=...)` returns `input_ids`, `attention_mask` and `pixel_values`:
    each text holds one `<image>` (none: the image goes first), which is expanded to
    `image_seq_length` image tokens. Batches are padded on the tokenizer's side (left for
    generation). `batch_decode` / `post_process_image_text_to_text` turn generated ids into text.

    Args:
        image_processor: resizes and normalises images to the encoder's input.
        tokenizer: the LM's tokenizer, with `<image>` as a special token.
        image_seq_length: image tokens per image (the model config's `image_seq_length`).
        image_token: the placeholder string (default `"<image>"`).
        chat_template: Jinja template for `apply_chat_template` (default: image, then text).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_length: int = 197,
        image_token: str = "<image>",
        chat_template: str | None = None,
        **kwargs,
    ):
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(
                f"the tokenizer has no {image_token!r} token; add it as a special token "
                "(MiniVLMProcessor.from_pretrained_parts does) and resize the model's embeddings."
            )

    @classmethod
    def from_pretrained_parts(
        cls,
        vision_model: str = "google/vit-large-patch16-224",
        language_model: str = "HuggingFaceTB/SmolLM-360M",
        image_seq_length: int | None = None,
        image_token: str = "<image>",
        **kwargs,
    ) -> "MiniVLMProcessor":
        """Builds the processor from a vision model's image processor and a causal LM's tokenizer.

        Adds `image_token` as a special token, uses EOS for padding when the tokenizer has no
        pad token, and pads on the left (for batched generation). `image_seq_length` defaults
        to the vision model's patches plus CLS (the notebook's 197 for ViT-L/16-224); pass the
        model config's value when it uses another feature strategy or pixel shuffle.
        `kwargs` go to both `from_pretrained` calls (`revision`, `cache_dir`, ...).
        """
        image_processor = AutoImageProcessor.from_pretrained(vision_model, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(language_model, **kwargs)
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        if image_seq_length is None:
            vision_config = AutoConfig.from_pretrained(vision_model, **kwargs)
            image_seq_length = (vision_config.image_size // vision_config.patch_size) ** 2 + 1
        return cls(image_processor, tokenizer, image_seq_length=image_seq_length, image_token=image_token)

    def _prepare_images(self, images) -> list[Image.Image]:
        if isinstance(images, (list, tuple)):
            images = [item for group in images for item in (group if isinstance(group, (list, tuple)) else [group])]
        else:
            images = [images]
        prepared = []
        for index, image in enumerate(images):
            if isinstance(image, str) or hasattr(image, "__fspath__"):
                try:
                    image = load_image(str(image))
                except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                    raise ValueError(
                        f"could not read image {index} ({image}): {error}; check that the file exists and is a "
                        "complete image (PNG, JPEG, ...)."
                    ) from error
            if not isinstance(image, Image.Image):
                raise ValueError(
                    f"image {index} is a {type(image).__name__}, not an image; pass PIL images, local paths or "
                    "URLs (for tensors or arrays, convert with PIL.Image.fromarray first)."
                )
            prepared.append(to_rgb(image))
        return prepared

    def _expand_image_tokens(self, texts: list[str], num_images: int) -> list[str]:
        if len(texts) != num_images:
            raise ValueError(
                f"got {num_images} image(s) for {len(texts)} text(s); MiniVLM takes one image per text."
            )
        expanded = []
        for text in texts:
            count = text.count(self.image_token)
            if count > 1:
                raise ValueError(
                    f"a text holds {count} {self.image_token!r} placeholders; MiniVLM takes one image per text."
                )
            if count == 0:
                text = self.image_token + text
            expanded.append(text.replace(self.image_token, self.image_token * self.image_seq_length))
        return expanded

    def __call__(
        self,
        images=None,
        text: str | list[str] | None = None,
        padding: bool | str | None = None,
        truncation: bool | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prepares model inputs.

        Args:
            images: a PIL image, path or URL, or a list of them (one per text).
            text: a string or list of strings; `None` captions from the image alone.
            padding: padding strategy; defaults to padding a batch of several texts.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` `(batch, seq)` and, with images,
            `pixel_values` `(batch, 3, H, W)`.
        """
        if images is None and text is None:
            raise ValueError("pass images, text or both.")
        if isinstance(text, str):
            text = [text]
        data = {}
        # apply_chat_template(return_assistant_tokens_mask=True) asks for token offsets and for where the
        # `<image>` placeholders were expanded, to map its character spans onto the tokens.
        return_offsets = kwargs.pop("return_offsets_mapping", False)
        return_replacements = kwargs.pop("return_text_replacement_offsets", False)
        replacements = []
        if images is not None:
            images = self._prepare_images(images)
            if text is None:
                text = [""] * len(images)
            for original in text:
                at = original.find(self.image_token)
                span = (at, at + len(self.image_token)) if at >= 0 else (0, 0)
                replacements.append([{"span": span, "new_span": (span[0], span[0] + len(self.image_token) * self.image_seq_length)}])
            text = self._expand_image_tokens(list(text), len(images))
            image_kwargs = {k: v for k, v in kwargs.items() if k in ("size", "do_resize", "do_normalize")}
            data.update(self.image_processor(images, return_tensors=return_tensors, **image_kwargs))
        elif any(self.image_token in t for t in text):
            raise ValueError(f"the text holds {self.image_token!r} but no images were given.")
        if padding is None:
            padding = len(text) > 1
        text_inputs = self.tokenizer(
            text, padding=padding, truncation=truncation, max_length=max_length, return_tensors=return_tensors,
            return_offsets_mapping=return_offsets,
        )
        if return_replacements:
            data["text_replacement_offsets"] = replacements
        if truncation and images is not None:
            counts = [list(ids).count(self.image_token_id) for ids in text_inputs["input_ids"]]
            if any(count != self.image_seq_length for count in counts):
                raise ValueError(
                    f"truncation to max_length={max_length} cut into the {self.image_seq_length} image tokens; "
                    "raise max_length."
                )
        data.update(text_inputs)
        return BatchFeature(data=data, tensor_type=return_tensors)

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decodes generated ids `(batch, seq)` into stripped strings, image tokens removed."""
        texts = self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return [text.replace(self.image_token, "").strip() for text in texts]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["MiniVLMProcessor", "to_rgb"]
