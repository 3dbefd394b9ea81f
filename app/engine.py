"""What the app does, without the web page: load a MiniVLM, check an upload, caption and chat, streamed.

Gradio-free, so it is tested directly; `minivlm.app.ui` puts a page over it.

- `ChatModel.load(model)`: any MiniVLM folder or Hub id, through `AutoModel` / `AutoProcessor`
  with `trust_remote_code=True`, as a user loads it. Whether it can chat follows from its chat
  template: one that writes a generation prompt (a role marker for the answer) can; a template
  without one (a captioner: the caption continues straight after the image) only captions.
- `load_image_file(path)`: a clear `ImageError` for a file that is not an image, is cut short or
  too large, before any model work.
- `Conversation`: one image, its encoded prefix (`minivlm.image_cache_minivlm.ImagePrefixCache`,
  so the image is encoded once however many questions follow) and a short question/answer history.
- `ChatModel.stream(conversation, question)`: the answer (or, with no question, the caption)
  text as it grows, token by token (transformers' `TextIteratorStreamer` and a generation thread).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoModel, AutoProcessor, TextIteratorStreamer

from minivlm.image_cache_minivlm import ImagePrefixCache
from minivlm.processing_minivlm import to_rgb

from .boxes import Box, parse_boxes


logger = logging.getLogger("minivlm.app")

DEFAULT_MODEL = "outputs/demo/model"  # where `make demo` (scripts/demo.py) saves the model it trains
MAX_IMAGE_BYTES = 10 * 2**20
MAX_IMAGE_PIXELS = 40_000_000
STRATEGIES = ("greedy", "beam search", "sampling")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


class ImageError(ValueError):
    """An upload the app cannot use; the message says what is wrong and what to do."""


def load_image_file(path: str | os.PathLike, max_bytes: int = MAX_IMAGE_BYTES,
                    max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Opens an uploaded file as an upright RGB image, or raises `ImageError` saying why not.

    Checks, cheapest first: the file's size (`max_bytes`), that PIL recognises it as an image,
    its pixel count (`max_pixels`, before decoding), and that it decodes completely (a
    truncated download or upload fails here rather than in the model).
    """
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageError(f"could not read the upload {name}: {error}; upload the image again.") from error
    if size > max_bytes:
        raise ImageError(
            f"{name} is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit; upload a smaller image "
            "(resize it or save it as JPEG)."
        )
    if size == 0:
        raise ImageError(f"{name} is empty (0 bytes); upload a PNG, JPEG or WebP image.")
    try:
        with Image.open(path) as image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageError(
                    f"{name} is {image.width}×{image.height} pixels, over the {max_pixels / 1e6:.0f}-megapixel "
                    "limit; upload a smaller image (the model sees it at its own small resolution anyway)."
                )
            image.load()
            return to_rgb(image)  # upright RGB, as the processor prepares every image
    except UnidentifiedImageError as error:
        raise ImageError(f"{name} is not an image PIL can read; upload a PNG, JPEG, WebP or GIF image.") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name} has too many pixels to decode safely; upload a smaller image.") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ImageError(
            f"{name} is damaged or cut short ({error}); upload the complete file again or re-save it."
        ) from error


@dataclass
class Decoding:
    """Decoding settings of the page's accordion, turned into `generate()` arguments.

    `strategy` is one of "greedy", "beam search" or "sampling"; `num_beams` applies to beam
    search, `temperature` and `top_p` to sampling.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 32
    num_beams: int = 3
    temperature: float = 0.7
    top_p: float = 0.9

    def generate_kwargs(self) -> dict:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown decoding strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
        kwargs = {"max_new_tokens": int(self.max_new_tokens), "num_beams": 1, "do_sample": False}
        if self.strategy == "beam search":
            kwargs["num_beams"] = int(self.num_beams)
        elif self.strategy == "sampling":
            kwargs.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p))
        return kwargs


@dataclass
class Conversation:
    """One image and the questions asked about it (oldest first), with its encoded prefix."""

    image: Image.Image
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    caption: str = ""
    prefix_cache: ImagePrefixCache | None = None
    pixel_values: torch.Tensor | None = None


@dataclass
class Reply:
    """The final text of a caption or answer, its boxes and what it cost."""

    text: str
    boxes: list[Box]
    seconds: float
    new_tokens: int
    image_encoded: bool  # False when the image's prefix was reused


class ChatModel:
    """A loaded MiniVLM and its processor, ready to caption and answer about one image at a time.

    Args:
        model: a `MiniVLMForConditionalGeneration` in eval mode.
        processor: its `MiniVLMProcessor`.
        chat: whether questions are offered (None: decided from the chat template).
        caption_prompt: text after the image that asks for a caption ("" : the image alone, as
            captioners are trained).
        max_turns: questions and answers kept in the prompt (older ones are dropped).
        max_new_tokens: the page's default answer length.
        name: shown on the page.
    """

    def __init__(self, model, processor, *, chat: bool | None = None, caption_prompt: str = "",
                 max_turns: int = 3, max_new_tokens: int = 32, name: str = "MiniVLM"):
        self.model = model.eval()
        self.processor = processor
        if chat is None:  # a MiniVLM trained on questions says so in its config; other models by their template
            chat = bool(getattr(model.config, "instruction_tuned", False)) or template_has_generation_prompt(processor)
        self.chat = chat
        self.caption_prompt = caption_prompt
        self.max_turns = max_turns
        self.max_new_tokens = max_new_tokens
        self.name = name
        self.max_positions = getattr(model.config.text_config, "max_position_embeddings", None)
        self.image_size = getattr(model.config.vision_config, "image_size", 224)

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, *, device: str | None = None, **kwargs) -> "ChatModel":
        """Loads a MiniVLM folder or Hub id with the Auto classes (`trust_remote_code=True`).

        Raises `FileNotFoundError` saying how to get the default model when `model` is a
        path that does not exist.
        """
        if not Path(model).expanduser().exists() and not HUB_ID.fullmatch(model):
            hint = "run `make demo` first (it trains one there)" if model == DEFAULT_MODEL else "check the path"
            raise FileNotFoundError(
                f"no model at {model}; {hint}, or pass --model with a MiniVLM folder or Hub id (e.g. org/minivlm)."
            )
        loaded = AutoModel.from_pretrained(model, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=True)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(loaded.to(device), processor, name=kwargs.pop("name", _short_name(model)), **kwargs)

    # -- what the model understands -------------------------------------------------------
    def known_words(self, limit: int = 500) -> list[str] | None:
        """The words a word-level vocabulary knows (special tokens left out), sorted; None for a vocabulary
        that reads any text (byte-level, no unknown token) or one too large to list (over `limit`)."""
        tokenizer = self.processor.tokenizer
        if getattr(tokenizer, "unk_token_id", None) is None:
            return None
        special = set(tokenizer.all_special_tokens) | {getattr(self.processor, "image_token", "<image>")}
        words = sorted(word for word in tokenizer.get_vocab() if word not in special)
        return words if len(words) <= limit else None

    def unknown_words(self, text: str) -> list[str]:
        """The words of `text` the model reads as its unknown token (see `MiniVLMProcessor.unknown_words`)."""
        finder = getattr(self.processor, "unknown_words", None)  # a processor saved before it existed has none
        return finder(text) if finder is not None else []

    # -- prompts ------------------------------------------------------------------------
    def _messages(self, conversation: Conversation, question: str | None) -> list[dict]:
        """The chat messages of a caption request (question None) or of the next answer."""
        if question is None:
            content = [{"type": "image"}]
            if self.caption_prompt:
                content.append({"type": "text", "text": self.caption_prompt})
            return [{"role": "user", "content": content}]
        kept = conversation.turns[-(self.max_turns - 1):] if self.max_turns > 1 else []
        messages = []
        for index, (asked, answered) in enumerate([*kept, (question, None)]):
            # The image goes first in the first kept question, so every prompt starts the same way
            # up to the image and its encoded prefix is reused.
            content = ([{"type": "image"}] if index == 0 else []) + [{"type": "text", "text": asked}]
            messages.append({"role": "user", "content": content})
            if answered is not None:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
        return messages

    def prompt(self, conversation: Conversation, question: str | None = None) -> str:
        """The prompt text (`<image>` not yet expanded) for a caption or the next answer."""
        return self.processor.apply_chat_template(
            self._messages(conversation, question), add_generation_prompt=True, tokenize=False
        )

    def new_conversation(self, image: Image.Image) -> Conversation:
        """A conversation about `image`: nothing encoded yet (the first caption or question does it)."""
        return Conversation(image=image, prefix_cache=ImagePrefixCache(self.model))

    # -- generation ---------------------------------------------------------------------
    def stream(self, conversation: Conversation, question: str | None = None,
               decoding: Decoding | None = None) -> Iterator[str | Reply]:
        """Yields the growing caption (question None) or answer text, then a final `Reply`.

        The reply is recorded in the conversation (`caption`, or a new turn). Beam search cannot
        stream (transformers' streamers follow one sequence): it yields the final text only.
        """
        if question is not None:
            if not self.chat:
                raise ValueError(
                    "this model only captions (its chat template has no answer prompt); load an "
                    "instruction-tuned MiniVLM to ask questions."
                )
            question = " ".join(question.split())
            if not question:
                raise ValueError("the question is empty; type a question about the image.")
        decoding = decoding or Decoding(max_new_tokens=self.max_new_tokens)
        kwargs = decoding.generate_kwargs()
        text = self.prompt(conversation, question)
        inputs = self.processor(images=conversation.image, text=text)
        input_ids = inputs["input_ids"]
        if conversation.pixel_values is None:
            conversation.pixel_values = inputs["pixel_values"]
        if self.max_positions is not None and input_ids.shape[1] + kwargs["max_new_tokens"] > self.max_positions:
            if question is not None and conversation.turns:
                conversation.turns = conversation.turns[1:]  # forget the oldest question and try again
                yield from self.stream(conversation, question, decoding)
                return
            kwargs["max_new_tokens"] = self.max_positions - input_ids.shape[1]
            if kwargs["max_new_tokens"] < 1:
                raise ValueError(
                    f"the prompt takes {input_ids.shape[1]} of the model's {self.max_positions} positions; "
                    "ask a shorter question."
                )
        cache = conversation.prefix_cache or ImagePrefixCache(self.model)
        conversation.prefix_cache = cache
        encodes_before = cache.encodes
        start = time.perf_counter()
        outputs: dict = {}
        streamer = None
        if kwargs["num_beams"] == 1:
            streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                            timeout=600)

        def run() -> None:
            try:
                with torch.inference_mode():
                    outputs["ids"] = cache.generate(
                        input_ids=input_ids.to(self.model.device),
                        pixel_values=conversation.pixel_values.to(self.model.device),
                        streamer=streamer,
                        **kwargs,
                    )
            except BaseException as error:  # surfaced in the caller's thread below
                outputs["error"] = error
                if streamer is not None:
                    streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        if streamer is not None:
            partial = ""
            for piece in streamer:
                partial += piece
                if partial.strip():
                    yield partial.strip()
        thread.join()
        if "error" in outputs:
            raise outputs["error"]
        new_ids = outputs["ids"][:, input_ids.shape[1]:]
        reply_text = self.processor.post_process_image_text_to_text(new_ids)[0]
        reply = Reply(
            text=reply_text,
            boxes=parse_boxes(reply_text),
            seconds=time.perf_counter() - start,
            new_tokens=int(new_ids.shape[1]),
            image_encoded=cache.encodes > encodes_before,
        )
        if question is None:
            conversation.caption = reply_text
        else:
            conversation.turns.append((question, reply_text))
        logger.info("%s in %.2fs (%d tokens, image %s)", "caption" if question is None else "answer",
                    reply.seconds, reply.new_tokens, "encoded" if reply.image_encoded else "reused")
        yield reply


def _short_name(model: str) -> str:
    """A Hub id as it is; a folder as its last two parts (`outputs/demo/model` → `demo/model`)."""
    if not Path(model).expanduser().exists():
        return model
    return "/".join(Path(model).expanduser().resolve().parts[-2:])


def template_has_generation_prompt(processor) -> bool:
    """Whether the processor's chat template writes a generation prompt (an answer's role marker).

    A captioner's template (MiniVLM's first one) has no roles: the text continues straight after
    the image, so asking with and without `add_generation_prompt` renders the same prompt. An
    instruction-tuned template announces the answer: the two differ, and the model can chat.
    """
    if not getattr(processor, "chat_template", None):
        return False
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]}]
    with_prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    without = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    return with_prompt != without


__all__ = [
    "DEFAULT_MODEL", "STRATEGIES", "ChatModel", "Conversation", "Decoding", "ImageError", "Reply",
    "load_image_file", "template_has_generation_prompt",
]
