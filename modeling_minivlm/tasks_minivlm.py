"""Task helpers on the model, as Moondream2 and Florence-2 users expect: caption, query, detect.

    model = AutoModel.from_pretrained("org/minivlm", trust_remote_code=True)
    model.caption(image)                          # "a red circle on the left"
    model.query(image, "where is the red circle?")  # "left"
    for piece in model.query(image, "what objects are in the image?", stream=True):
        print(piece, end="")
    model.detect(image, "red circle")             # {"objects": [{"label": "red circle", "box": (..), ...}], ...}

Each helper equals the pipelines: `caption` is `pipeline("image-to-text")`, `query` is
`pipeline("image-text-to-text")` on one user turn `[image, question]`, and `detect` reads the
boxes out of the answer to `"locate the <object>"` (the instruction MiniVLM's grounding data
uses). Greedy decoding and the model's `generation_config.max_new_tokens` (32 unless it says
otherwise) unless told otherwise (`max_new_tokens`, any `generate()` option).

The processor: pass `processor=` once (it is kept for later calls), or the helpers load it the
way transformers does, `AutoProcessor.from_pretrained(config._name_or_path, trust_remote_code=True)`,
from the folder or Hub repo the model came from.

One image, several calls: the image is encoded once and reused while the calls show the same
image (compared by its processed pixels). Questions and boxes reuse the image's KV prefix
(`image_cache_minivlm.ImagePrefixCache`: neither the encoder nor the prefill over the image runs
again); a caption from the image alone has no text after the image to feed past such a prefix, so
it reuses the encoder's features instead (`vision_features`).

Ships to the Hub verbatim as remote code: imports torch, transformers and its siblings only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
from transformers import AutoProcessor, TextIteratorStreamer

from .configuration_minivlm import decoding_defaults
from .grounding_minivlm import grid_to_pixels, parse_boxes, valid_box
from .image_cache_minivlm import ImagePrefixCache


DETECT_PROMPT = "locate the {}"


class _TaskState:
    """What the helpers keep between calls: the processor and the current image's encodings."""

    def __init__(self, model):
        self.processor = None
        self.prefix_cache = ImagePrefixCache(model)
        self.pixel_values: torch.Tensor | None = None  # the image whose encoder features are kept
        self.vision_features: torch.Tensor | None = None
        self.feature_encodes = 0


class MiniVLMTasksMixin:
    """`caption`, `query` (streamed with `stream=True`) and `detect` on a MiniVLM generating model."""

    def _task_state(self) -> _TaskState:
        state = self.__dict__.get("_minivlm_task_state")
        if state is None:
            state = _TaskState(self)
            self.__dict__["_minivlm_task_state"] = state  # a plain attribute, not a submodule
        return state

    def task_processor(self, processor=None):
        """The processor the helpers use: `processor` (then kept), the one kept, or the model's own, loaded.

        Raises ValueError when none is given and the model does not know where it came from.
        """
        state = self._task_state()
        if processor is not None:
            state.processor = processor
        if state.processor is None:
            source = getattr(self.config, "_name_or_path", "") or getattr(self, "name_or_path", "")
            if not source:
                raise ValueError(
                    "this model was not loaded from a folder or Hub repo, so its processor cannot be found; pass "
                    "processor=... (e.g. AutoProcessor.from_pretrained(<model>, trust_remote_code=True)) once."
                )
            state.processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
        return state.processor

    # -- generation, with the image encoded once --------------------------------------------------
    def _task_inputs(self, image, text: str, processor):
        if isinstance(image, (list, tuple)):
            raise ValueError(
                f"got {len(image)} images; the helpers take one image at a time. Caption many with "
                "pipeline('image-to-text')(images, batch_size=...) or model.generate(**processor(images=[...]))."
            )
        inputs = processor(images=image, text=text, return_tensors="pt")
        return inputs["input_ids"], inputs["pixel_values"]

    def _image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        state = self._task_state()
        same = (
            state.pixel_values is not None
            and state.pixel_values.shape == pixel_values.shape
            and torch.equal(state.pixel_values, pixel_values)
            # features of this model as it is now (not from before a .to(device) or a dtype change)
            and state.vision_features.device == self.device
            and state.vision_features.dtype == self.vision_tower.dtype
        )
        if not same:
            state.vision_features = self.get_vision_features(pixel_values.to(self.device))
            state.pixel_values = pixel_values.clone()
            state.feature_encodes += 1
        return state.vision_features

    def _task_generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, **generate_kwargs) -> torch.Tensor:
        state = self._task_state()
        generate_kwargs.setdefault("max_new_tokens", decoding_defaults(self.generation_config)["max_new_tokens"])
        generate_kwargs.setdefault("do_sample", False)
        image_ends_prompt = int(input_ids[0, -1]) == self.config.image_token_index
        with torch.inference_mode():
            if image_ends_prompt:  # nothing after the image: no KV prefix can serve it, the encoder's features can
                return self.generate(
                    input_ids=input_ids.to(self.device), attention_mask=torch.ones_like(input_ids, device=self.device),
                    vision_features=self._image_features(pixel_values), **generate_kwargs,
                )
            return state.prefix_cache.generate(input_ids=input_ids, pixel_values=pixel_values, **generate_kwargs)

    def _task_text(self, input_ids, pixel_values, processor, stream: bool, generate_kwargs: dict):
        if not stream:
            ids = self._task_generate(input_ids, pixel_values, **generate_kwargs)
            return processor.post_process_image_text_to_text(ids[:, input_ids.shape[1]:])[0]
        return self._task_stream(input_ids, pixel_values, processor, generate_kwargs)

    def _task_stream(self, input_ids, pixel_values, processor, generate_kwargs: dict) -> Iterator[str]:
        if generate_kwargs.get("num_beams", 1) > 1:
            raise ValueError("stream=True follows one sequence; beam search cannot stream: drop num_beams or stream.")
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        errors = []

        def run():
            try:
                self._task_generate(input_ids, pixel_values, streamer=streamer, **generate_kwargs)
            except BaseException as error:  # re-raised in the caller's thread
                errors.append(error)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        started = False
        for piece in streamer:
            if not started:  # the text starts at its first non-space character, as post-processing strips it
                piece = piece.lstrip()
                started = bool(piece)
            if piece:
                yield piece.replace(processor.image_token, "")  # the helpers take MiniVLM processors (`load_image`)
        thread.join()
        if errors:
            raise errors[0]

    # -- the helpers --------------------------------------------------------------------------------
    def caption(self, image, prompt: str | None = None, *, processor=None, stream: bool = False,
                **generate_kwargs) -> str | Iterator[str]:
        """A caption of `image` (PIL image, path, URL, array): what `pipeline("image-to-text")` returns.

        Args:
            image: one image.
            prompt: text the caption continues (default none: the image alone, as captioners are trained).
            processor: the model's processor (see the module's docstring); kept for later calls.
            stream: yield the caption's text pieces as they are generated instead of returning it.
            generate_kwargs: any `generate()` option (`max_new_tokens`, `num_beams`, `do_sample`, ...).
        """
        processor = self.task_processor(processor)
        input_ids, pixel_values = self._task_inputs(image, prompt, processor)
        return self._task_text(input_ids, pixel_values, processor, stream, generate_kwargs)

    def query(self, image, question: str, *, processor=None, stream: bool = False,
              **generate_kwargs) -> str | Iterator[str]:
        """The answer to `question` about `image`: what `pipeline("image-text-to-text")` returns for the
        user turn `[image, question]` (`return_full_text=False`). With `stream=True`, a generator of the
        answer's text pieces (joined, they are the answer)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question must be a non-empty string, got {question!r}; ask something about the image.")
        processor = self.task_processor(processor)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        input_ids, pixel_values = self._task_inputs(image, prompt, processor)
        return self._task_text(input_ids, pixel_values, processor, stream, generate_kwargs)

    def detect(self, image, object: str, *, processor=None, prompt: str = DETECT_PROMPT, **generate_kwargs) -> dict:
        """Boxes of `object` ("red circle") in `image`, read from the answer to `prompt.format(object)`.

        Returns `{"objects": [...], "text": answer, "dropped": n}`: each object is
        `{"label": object, "box": (x1, y1, x2, y2) on the 0–1000 grid, "box_pixels": (x1, y1, x2, y2)
        in pixels of the image as given}`. Corners in the wrong order are swapped; boxes off the
        grid or without area are dropped and counted in `dropped`, never returned as they are.
        """
        if not isinstance(object, str) or not object.strip():
            raise ValueError(f"object must name what to find (e.g. 'red circle'), got {object!r}.")
        if prompt.count("{}") != 1:
            raise ValueError(f"prompt must hold one '{{}}' where the object goes (e.g. {DETECT_PROMPT!r}), got {prompt!r}.")
        processor = self.task_processor(processor)
        loaded = processor.load_image(image)  # its size for pixel coordinates; loaded once
        answer = self.query(loaded, prompt.format(object.strip()), processor=processor, **generate_kwargs)
        objects, dropped = [], 0
        for raw in parse_boxes(answer):
            box = valid_box(raw)
            if box is None:
                dropped += 1
                continue
            objects.append({"label": object.strip(), "box": box, "box_pixels": grid_to_pixels(box, loaded.size)})
        return {"objects": objects, "text": answer, "dropped": dropped}


__all__ = ["DETECT_PROMPT", "MiniVLMTasksMixin"]
