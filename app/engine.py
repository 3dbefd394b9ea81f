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
  It keeps what the model needs (the processed `pixel_values`) and a copy for the page at most
  `DISPLAY_MAX_SIDE` pixels a side, never the upload itself.
- `ChatModel.stream(conversation, question)`: the answer (or, with no question, the caption)
  text as it grows, token by token (transformers' `TextIteratorStreamer` and a generation thread).

Limits hold here, for every caller, not only in the page's widgets: decoding settings within
`LIMITS` (a raw request can send anything), questions of at most `MAX_QUESTION_CHARS`, at most
`max_sessions` live conversations (the least recently used beyond that, and any idle for
`session_ttl_s`, are released: a later request about one says to upload the image again), and a
generation stops at its next token when its reader goes away (the stream is closed, or a
streamed update is left unread for `reader_timeout_s`).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoModel, AutoProcessor, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from minivlm.processing.builder import HUB_ID
from minivlm.processing.conversations import chat_messages
from minivlm.image_cache_minivlm import ImagePrefixCache
from minivlm.configuration_minivlm import DEFAULT_DECODING, decoding_defaults
from minivlm.processing_minivlm import IMAGE_TOKEN, to_rgb

from .boxes import Box, reply_boxes


logger = logging.getLogger("minivlm.app")

DEFAULT_MODEL = "outputs/demo/model"  # where `make demo` (scripts/demo.py) saves the model it trains
# The page's upload limits, stricter than the loader's (`minivlm.image_loading.MAX_DOWNLOAD_BYTES` and
# `MAX_IMAGE_PIXELS`): uploads come from anyone, and the model sees every image at its own small resolution.
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000
STRATEGIES = ("greedy", "beam search", "sampling")
# The decoding settings' bounds, (low, high) inclusive: the page's sliders show them, the engine enforces them.
LIMITS = {"max_new_tokens": (1, 256), "num_beams": (1, 8), "temperature": (0.1, 2.0), "top_p": (0.05, 1.0)}
MAX_QUESTION_CHARS = 1000
DISPLAY_MAX_SIDE = 1024  # the copy of an upload a conversation keeps for the page (boxes are drawn on it)
MAX_SESSIONS = 32
SESSION_TTL_S = 30 * 60.0
READER_TIMEOUT_S = 20.0


class ImageError(ValueError):
    """An upload the app cannot use; the message says what is wrong and what to do."""


def load_image_file(path: str | os.PathLike, max_bytes: int = MAX_UPLOAD_BYTES,
                    max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
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
    max_new_tokens: int = DEFAULT_DECODING["max_new_tokens"]  # the engine passes the model's (generation_config)
    num_beams: int = 3
    temperature: float = 0.7
    top_p: float = 0.9

    def generate_kwargs(self) -> dict:
        """The `generate()` arguments; `ValueError` naming the setting when one is outside `LIMITS`.

        Every value is checked, whatever sent it (the page's sliders bound what a person drags, not
        what a request carries), before any work.
        """
        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            raise ValueError(f"unknown decoding strategy {short_repr(self.strategy)}; choose one of "
                             f"{', '.join(STRATEGIES)}.")
        kwargs = {"max_new_tokens": bounded("max_new_tokens", self.max_new_tokens, integer=True),
                  "num_beams": 1, "do_sample": False}
        if self.strategy == "beam search":
            kwargs["num_beams"] = bounded("num_beams", self.num_beams, integer=True)
        elif self.strategy == "sampling":
            kwargs.update(do_sample=True, temperature=bounded("temperature", self.temperature),
                          top_p=bounded("top_p", self.top_p))
        return kwargs


def short_repr(value, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters, for error messages about raw request values."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def bounded(name: str, value, integer: bool = False) -> int | float:
    """`value` as a number within `LIMITS[name]`, or `ValueError` saying the bounds."""
    low, high = LIMITS[name]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high or (
            integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{name} must be {kind} from {low} to {high}, got {short_repr(value)}.")
    return int(number) if integer else number


@dataclass(eq=False)
class Conversation:
    """One image and the questions asked about it (oldest first), with its encoded prefix.

    `image` is the copy shown on the page (at most `DISPLAY_MAX_SIDE` pixels a side); the model
    sees `pixel_values`, processed once from the full upload, which is not kept. `release()`
    frees both and the prefix (an expired session); the conversation then refuses new requests.
    """

    image: Image.Image | None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    caption: str = ""
    prefix_cache: ImagePrefixCache | None = None
    pixel_values: torch.Tensor | None = None
    last_used: float = field(default_factory=time.monotonic)
    released: str = ""  # why it was released ("" while alive)

    def release(self, reason: str = "it was closed") -> None:
        """Frees the image, its pixels and its encoded prefix; later requests are refused with `reason`."""
        self.released = reason
        self.image = None
        self.pixel_values = None
        if self.prefix_cache is not None:
            self.prefix_cache.reset()
        self.prefix_cache = None


class _StopWhen(StoppingCriteria):
    """Stops generation at the next token once `event` is set, or once a streamed update has waited
    unread for longer than `reader["timeout"]` seconds (the stream was abandoned)."""

    def __init__(self, event: threading.Event, reader: dict):
        self.event = event
        self.reader = reader

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        waiting = self.reader.get("waiting_since")
        if waiting is not None and time.monotonic() - waiting > self.reader["timeout"]:
            self.event.set()
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


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
        max_new_tokens: the page's default answer length (None: the model's `generation_config`).
        name: shown on the page.
    """

    def __init__(self, model, processor, *, chat: bool | None = None, caption_prompt: str = "",
                 max_turns: int = 3, max_new_tokens: int | None = None, name: str = "MiniVLM",
                 max_sessions: int = MAX_SESSIONS, session_ttl_s: float = SESSION_TTL_S,
                 reader_timeout_s: float = READER_TIMEOUT_S):
        if max_new_tokens is None:  # the model's default, within the page's bounds (a given value out of them is refused)
            low, high = LIMITS["max_new_tokens"]
            max_new_tokens = min(max(decoding_defaults(getattr(model, "generation_config", None))["max_new_tokens"], low), high)
        max_new_tokens = bounded("max_new_tokens", max_new_tokens, integer=True)
        if max_turns < 1 or max_sessions < 1 or not session_ttl_s > 0 or not reader_timeout_s > 0:
            raise ValueError("max_turns and max_sessions must be at least 1, session_ttl_s and reader_timeout_s "
                             "positive.")
        self.max_sessions = max_sessions
        self.session_ttl_s = session_ttl_s
        self.reader_timeout_s = reader_timeout_s
        self._sessions: weakref.WeakSet[Conversation] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()
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
        special = set(tokenizer.all_special_tokens) | {getattr(self.processor, "image_token", IMAGE_TOKEN)}
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
        return chat_messages(kept, question)

    def prompt(self, conversation: Conversation, question: str | None = None) -> str:
        """The prompt text (`<image>` not yet expanded) for a caption or the next answer."""
        return self.processor.apply_chat_template(
            self._messages(conversation, question), add_generation_prompt=True, tokenize=False
        )

    def new_conversation(self, image: Image.Image) -> Conversation:
        """A conversation about `image`: its pixels processed for the model, a display copy, no prefix yet.

        The full-resolution `image` is not kept (drop your reference too). Registers the conversation
        and releases idle or surplus ones (see `expire_sessions`).
        """
        pixel_values = self.processor(images=image)["pixel_values"]
        display = image.copy() if max(image.size) <= DISPLAY_MAX_SIDE else _downscaled(image, DISPLAY_MAX_SIDE)
        conversation = Conversation(image=display, prefix_cache=ImagePrefixCache(self.model), pixel_values=pixel_values)
        with self._sessions_lock:
            self._sessions.add(conversation)
        self.expire_sessions(keep=conversation)
        return conversation

    @property
    def live_sessions(self) -> int:
        """Conversations held and not released."""
        with self._sessions_lock:
            return sum(not conversation.released for conversation in self._sessions)

    def expire_sessions(self, keep: Conversation | None = None) -> int:
        """Releases conversations idle for over `session_ttl_s`, then the least recently used beyond
        `max_sessions` (never `keep`); returns how many it released."""
        now = time.monotonic()
        released = 0
        with self._sessions_lock:
            live = sorted((c for c in self._sessions if not c.released), key=lambda c: c.last_used)
        for conversation in live:
            if conversation is not keep and now - conversation.last_used > self.session_ttl_s:
                conversation.release(f"it was idle for over {self.session_ttl_s / 60:g} minutes")
                released += 1
        live = [c for c in live if not c.released]
        for conversation in [c for c in live if c is not keep][: max(0, len(live) - self.max_sessions)]:
            conversation.release(f"the server keeps at most {self.max_sessions} conversations")
            released += 1
        return released

    # -- generation ---------------------------------------------------------------------
    def stream(self, conversation: Conversation, question: str | None = None,
               decoding: Decoding | None = None) -> Iterator[str | Reply]:
        """Yields the growing caption (question None) or answer text, then a final `Reply`.

        The reply is recorded in the conversation (`caption`, or a new turn). Beam search cannot
        stream (transformers' streamers follow one sequence): it yields the final text only.

        Closing the returned generator (a client that disconnects), or leaving a streamed update
        unread for `reader_timeout_s`, stops the generation at its next token; nothing is recorded.
        Raises `ValueError` before any work for settings outside `LIMITS`, a question that is not
        text, empty or over `MAX_QUESTION_CHARS`, or a released conversation.
        """
        if question is not None:
            if not self.chat:
                raise ValueError(
                    "this model only captions (its chat template has no answer prompt); load an "
                    "instruction-tuned MiniVLM to ask questions."
                )
            if not isinstance(question, str):
                raise ValueError(f"the question must be text, got {type(question).__name__}.")
            if len(question) > MAX_QUESTION_CHARS:
                raise ValueError(f"the question is {len(question):,} characters, over the {MAX_QUESTION_CHARS:,} "
                                 "limit; ask a shorter question.")
            question = " ".join(question.split())
            if not question:
                raise ValueError("the question is empty; type a question about the image.")
        decoding = decoding or Decoding(max_new_tokens=self.max_new_tokens)
        if not isinstance(decoding, Decoding):
            raise ValueError(f"decoding must be a Decoding, got {type(decoding).__name__}.")
        kwargs = decoding.generate_kwargs()
        if conversation.released:
            raise ValueError(f"this conversation has ended ({conversation.released}); upload the image again.")
        conversation.last_used = time.monotonic()
        self.expire_sessions(keep=conversation)
        text = self.prompt(conversation, question)
        # The display copy stands in for the image to build the prompt's tokens; the model gets the
        # pixels processed from the full upload.
        input_ids = self.processor(images=conversation.image, text=text)["input_ids"]
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
        stop = threading.Event()
        reader = {"waiting_since": None, "timeout": self.reader_timeout_s}
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhen(stop, reader)])
        pixel_values = conversation.pixel_values

        def run() -> None:
            try:
                with torch.inference_mode():
                    outputs["ids"] = cache.generate(
                        input_ids=input_ids.to(self.model.device),
                        pixel_values=pixel_values.to(self.model.device),
                        streamer=streamer,
                        **kwargs,
                    )
            except BaseException as error:  # surfaced in the caller's thread below
                outputs["error"] = error
                if streamer is not None:
                    streamer.end()

        thread = threading.Thread(target=run, daemon=True, name="minivlm-generate")
        thread.start()
        try:
            if streamer is not None:
                partial = ""
                for piece in streamer:
                    partial += piece
                    if partial.strip():
                        reader["waiting_since"] = time.monotonic()
                        yield partial.strip()
                        reader["waiting_since"] = None
            thread.join()
        finally:
            if thread.is_alive():  # the reader went away mid-stream (GeneratorExit): stop at the next token
                stop.set()
                thread.join(timeout=30)
        if stop.is_set():
            raise RuntimeError(f"the generation was stopped: a streamed update waited over {self.reader_timeout_s:g} s "
                               "unread.")
        if "error" in outputs:
            raise outputs["error"]
        new_ids = outputs["ids"][:, input_ids.shape[1]:]
        reply_text = self.processor.post_process_image_text_to_text(new_ids)[0]
        reply = Reply(
            text=reply_text,
            boxes=reply_boxes(reply_text),
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


def _downscaled(image: Image.Image, max_side: int) -> Image.Image:
    """A copy of `image` whose longer side is `max_side` pixels (aspect kept)."""
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


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
    "DEFAULT_MODEL", "DISPLAY_MAX_SIDE", "LIMITS", "MAX_QUESTION_CHARS", "MAX_SESSIONS", "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "SESSION_TTL_S", "STRATEGIES", "bounded", "ChatModel", "Conversation", "Decoding", "ImageError", "Reply",
    "load_image_file", "template_has_generation_prompt",
]
