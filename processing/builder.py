"""The one place that assembles a MiniVLM and its processor.

Everything that has to agree between the model and the processor is set here, once: the
tokenizer's `<image>` token (and the embedding rows for it), padding (EOS when the tokenizer has
no pad token; on the left, for batched generation), the generation config's EOS / pad / BOS and
decoding defaults (`minivlm.configuration_minivlm.DEFAULT_DECODING`),
and the processor's `image_seq_length` (read from the model config).

Three ways in:

- `build_from_pretrained_parts(vision_model, language_model, **config_kwargs)`: a pretrained
  vision encoder and a pretrained causal LM (Hub ids or folders), a fresh projector.
- `build_from_parts(vision_tower, language_model, tokenizer, image_processor, **config_kwargs)`:
  the same from instantiated parts.
- `build_from_configs(vision_config, text_config, tokenizer, **config_kwargs)`: a random model
  from configs (tiny models of the shapes demo and the tests).

Each returns `(model, processor)`. The shipped files (`minivlm/*_minivlm.py`) cannot import this
module: remote code imports only its siblings.
"""

import re

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    ViTImageProcessorPil,
)

from minivlm.configuration_minivlm import DEFAULT_DECODING, MiniVLMConfig
from minivlm.modeling_minivlm import MiniVLMForConditionalGeneration, MiniVLMMultiModalProjector
from minivlm.processing_minivlm import IMAGE_TOKEN, MiniVLMProcessor


# A Hub repo id, `org/name` (models and datasets alike): what the commands take besides a folder.
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
DEFAULT_VISION_MODEL = "google/vit-large-patch16-224"
DEFAULT_LANGUAGE_MODEL = "HuggingFaceTB/SmolLM-360M"


def prepare_tokenizer(tokenizer, image_token: str = IMAGE_TOKEN):
    """Adds `image_token` as a special token, pads with EOS when there is no pad token, pads on the left.

    Changes `tokenizer` in place and returns it.
    """
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def configure_generation(model: MiniVLMForConditionalGeneration, tokenizer=None) -> MiniVLMForConditionalGeneration:
    """Sets the generation config's EOS, pad (EOS when there is none) and BOS from `tokenizer`, or,
    without one (random models of the benchmark), from the text config's token ids; and the decoding
    defaults (`DEFAULT_DECODING`: greedy, 32 new tokens) that evaluation, the commands and the app read."""
    source = tokenizer if tokenizer is not None else model.config.text_config
    eos, pad, bos = (getattr(source, f"{name}_token_id", None) for name in ("eos", "pad", "bos"))
    generation_config = model.generation_config
    generation_config.eos_token_id = eos
    generation_config.pad_token_id = pad if pad is not None else eos
    generation_config.bos_token_id = bos
    for name, value in DEFAULT_DECODING.items():  # the decoding defaults every caller reads (decoding_defaults)
        setattr(generation_config, name, value)
    return model


def build_processor(config: MiniVLMConfig, tokenizer, image_processor=None, image_token: str = IMAGE_TOKEN) -> MiniVLMProcessor:
    """A processor for a model of `config`: its `image_seq_length`, `tokenizer` (prepared), and
    `image_processor` (default: a PIL ViT image processor at the encoder's image size)."""
    if image_processor is None:
        size = config.vision_config.image_size
        size = size if isinstance(size, int) else size[0]
        image_processor = ViTImageProcessorPil(size={"height": size, "width": size})
    return MiniVLMProcessor(
        image_processor, prepare_tokenizer(tokenizer, image_token),
        image_seq_length=config.image_seq_length, image_token=image_token,
    )


def build_model_from_config(
    config: MiniVLMConfig, tokenizer, attn_implementation: str | dict | None = None
) -> MiniVLMForConditionalGeneration:
    """A randomly initialised MiniVLM of `config` (in eval mode), its generation config set from `tokenizer`."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation is not None else {}
    model = MiniVLMForConditionalGeneration._from_config(config, **kwargs)
    return configure_generation(model, prepare_tokenizer(tokenizer)).eval()


def build_from_configs(
    vision_config: dict,
    text_config: dict,
    tokenizer,
    image_processor=None,
    image_token: str = IMAGE_TOKEN,
    attn_implementation: str | dict | None = None,
    **config_kwargs,
) -> tuple[MiniVLMForConditionalGeneration, MiniVLMProcessor]:
    """A random MiniVLM from a vision and a text config (dicts with `model_type`), and its processor.

    The text config's vocabulary and special-token ids are taken from `tokenizer` (after `<image>`
    is added) unless given; `config_kwargs` go to [`MiniVLMConfig`].
    """
    tokenizer = prepare_tokenizer(tokenizer, image_token)
    text_config = dict(text_config)
    text_config.setdefault("vocab_size", len(tokenizer))
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        text_config.setdefault(name, getattr(tokenizer, name))
    config_kwargs.setdefault("image_token_index", tokenizer.convert_tokens_to_ids(image_token))
    config = MiniVLMConfig(vision_config=dict(vision_config), text_config=text_config, **config_kwargs)
    model = build_model_from_config(config, tokenizer, attn_implementation)
    return model, build_processor(config, tokenizer, image_processor, image_token)


def build_from_parts(
    vision_tower: PreTrainedModel,
    language_model: PreTrainedModel,
    tokenizer,
    image_processor=None,
    image_token: str = IMAGE_TOKEN,
    **config_kwargs,
) -> tuple[MiniVLMForConditionalGeneration, MiniVLMProcessor]:
    """Assembles a MiniVLM around an instantiated vision encoder and causal LM (`...ForCausalLM`).

    Both keep their weights; the projector is new. `image_token` is added to `tokenizer` (in place)
    and the LM's embeddings grow to fit it: new rows start at the mean of the existing ones, so the
    result is deterministic and the new token's logit stays at the scale of the others.
    `config_kwargs` go to [`MiniVLMConfig`] (feature strategy, pixel shuffle, ...).
    """
    if image_processor is None:
        raise ValueError(
            "build_from_parts needs the vision model's image processor: pass "
            "image_processor=AutoImageProcessor.from_pretrained(<vision model>)."
        )
    tokenizer = prepare_tokenizer(tokenizer, image_token)
    old_size = language_model.get_input_embeddings().num_embeddings
    if len(tokenizer) > old_size:
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weight = language_model.get_input_embeddings().weight
            weight[old_size:] = weight[:old_size].mean(0)
    config = MiniVLMConfig(
        vision_config=vision_tower.config.to_dict(),
        text_config=language_model.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(image_token),
        **config_kwargs,
    )
    # Built on the meta device: the given parts replace the random ones without allocating
    # the full model twice; only the projector is new.
    with torch.device("meta"):
        model = MiniVLMForConditionalGeneration(config)
    model.model.vision_tower = vision_tower
    model.model.language_model = language_model.base_model
    model.lm_head = language_model.get_output_embeddings()
    model.model.multi_modal_projector = MiniVLMMultiModalProjector(config).to(dtype=language_model.dtype)
    model.config.vision_config = vision_tower.config
    model.config.text_config = language_model.config
    configure_generation(model, tokenizer)
    return model.eval(), build_processor(config, tokenizer, image_processor, image_token)  # eval: as from_pretrained


def load_vision_tower(vision_model: str, **kwargs) -> PreTrainedModel:
    """A pretrained vision encoder: ViT without its unused pooler; the vision half of CLIP / SigLIP checkpoints."""
    config = AutoConfig.from_pretrained(vision_model, **{k: v for k, v in kwargs.items() if k not in ("dtype", "attn_implementation")})
    if config.model_type == "vit":
        return AutoModel.from_pretrained(vision_model, add_pooling_layer=False, **kwargs)
    if hasattr(config, "vision_config"):  # a CLIP / SigLIP checkpoint holds a text tower too
        config = config.vision_config
    if config.model_type == "siglip_vision_model":
        config.vision_use_head = False  # the attention-pooling head is never read
    return AutoModel.from_pretrained(vision_model, config=config, **kwargs)


def build_from_pretrained_parts(
    vision_model: str = DEFAULT_VISION_MODEL,
    language_model: str = DEFAULT_LANGUAGE_MODEL,
    image_token: str = IMAGE_TOKEN,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    load_kwargs: dict | None = None,
    **config_kwargs,
) -> tuple[MiniVLMForConditionalGeneration, MiniVLMProcessor]:
    """A MiniVLM and its processor from a pretrained vision encoder and a pretrained causal LM.

    Like `VisionEncoderDecoderModel.from_encoder_decoder_pretrained`: both parts keep their
    pretrained weights, the projector is fresh. `vision_model` / `language_model` are Hub ids or
    folders; `load_kwargs` go to every `from_pretrained` (`revision`, `cache_dir`, ...);
    `config_kwargs` to [`MiniVLMConfig`] (e.g. `vision_feature_select_strategy="default"`).
    """
    load_kwargs = dict(load_kwargs or {})
    model_kwargs = dict(load_kwargs)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    vision_tower = load_vision_tower(vision_model, **model_kwargs)
    lm = AutoModelForCausalLM.from_pretrained(language_model, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(language_model, **load_kwargs)
    image_processor = AutoImageProcessor.from_pretrained(vision_model, **load_kwargs)
    return build_from_parts(vision_tower, lm, tokenizer, image_processor, image_token=image_token, **config_kwargs)


__all__ = [
    "HUB_ID",
    "build_from_configs",
    "build_from_parts",
    "build_from_pretrained_parts",
    "build_model_from_config",
    "build_processor",
    "configure_generation",
    "prepare_tokenizer",
]
