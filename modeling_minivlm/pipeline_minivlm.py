"""The `image-to-text` pipeline for MiniVLM (remote code).

transformers 5 redirects `pipeline("image-to-text")` to `image-text-to-text`, which refuses
a bare image. A model config that declares this class under
`custom_pipelines["image-to-text"]` gets the classic behaviour back:

    captioner = pipeline("image-to-text", model="org/minivlm", trust_remote_code=True)
    captioner("cat.jpg")  # [{"generated_text": "two cats lying on a pink couch"}]
"""

from transformers import GenerationConfig, Pipeline

from .configuration_minivlm import DEFAULT_DECODING
from .image_loading import load_image


class MiniVLMImageToTextPipeline(Pipeline):
    """Captions images: a PIL image, a local path or a URL, or a list of them.

    Call options: `prompt` (text the caption continues; default none, as in training),
    `max_new_tokens`, `generate_kwargs` (any `generate()` option: `num_beams`, `do_sample`, ...),
    `timeout` (for URLs). Returns `[{"generated_text": str}]` per image.

    A list of images is read whole before anything is generated: an image that cannot be read
    raises a ValueError naming its index and source, and no work on the others is lost midway.
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False
    _pipeline_calls_generate = True
    # For a model whose generation_config sets no length (saved before the builder wrote the defaults).
    _default_generation_config = GenerationConfig(max_new_tokens=DEFAULT_DECODING["max_new_tokens"])

    def _sanitize_parameters(self, max_new_tokens=None, generate_kwargs=None, prompt=None, timeout=None):
        preprocess_params, forward_params = {}, {}
        if prompt is not None:
            preprocess_params["prompt"] = prompt
        if timeout is not None:
            preprocess_params["timeout"] = timeout
        generate_kwargs = dict(generate_kwargs or {})
        if max_new_tokens is not None:
            if "max_new_tokens" in generate_kwargs:
                raise ValueError("max_new_tokens is given twice: as an argument and in generate_kwargs; keep one.")
            generate_kwargs["max_new_tokens"] = max_new_tokens
        if self.assistant_model is not None:
            generate_kwargs["assistant_model"] = self.assistant_model
        forward_params["generate_kwargs"] = generate_kwargs
        return preprocess_params, forward_params, {}

    def __call__(self, images, **kwargs):
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("no images given (an empty list): pass an image, a path or URL, or a list of them.")
            loaded = []
            for index, image in enumerate(images):
                try:
                    loaded.append(load_image(image, timeout=kwargs.get("timeout")))
                except ValueError as error:
                    raise ValueError(f"image {index} of {len(images)}: {error}") from error
            images = loaded
        return super().__call__(images, **kwargs)

    def preprocess(self, image, prompt=None, timeout=None):
        image = load_image(image, timeout=timeout)
        model_inputs = self.processor(images=image, text=prompt, return_tensors="pt")
        return model_inputs.to(self.dtype)

    def _forward(self, model_inputs, generate_kwargs=None):
        generate_kwargs = self._prepare_generate_kwargs(dict(generate_kwargs or {}))
        prompt_length = model_inputs["input_ids"].shape[1]
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"generated_ids": sequences[:, prompt_length:]}

    def postprocess(self, model_outputs):
        texts = self.processor.post_process_image_text_to_text(model_outputs["generated_ids"])
        return [{"generated_text": text} for text in texts]
