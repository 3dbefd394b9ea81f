"""MiniVLM configuration.

Ships to the Hub verbatim as remote code: imports torch/transformers only.
"""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


# Shapes of google/vit-large-patch16-224 and HuggingFaceTB/SmolLM-360M, the parts the
# reference notebook uses; the text vocabulary has one extra slot for `<image>`.
VIT_LARGE_PATCH16_224 = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "layer_norm_eps": 1e-12,
    "qkv_bias": True,
}
SMOLLM_360M = {
    "vocab_size": 49153,
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}

IMAGE_TO_TEXT_PIPELINE = {
    "image-to-text": {
        "impl": "pipeline_minivlm.MiniVLMImageToTextPipeline",
        "pt": ["AutoModelForImageTextToText"],
        "tf": [],
        "type": "multimodal",
    }
}

# Tokens an encoder puts before its patch tokens (CLS, distillation, registers), by model type.
# SigLIP has none: all of its `last_hidden_state` are patch tokens.
PREFIX_TOKENS = {"vit": 1, "deit": 2, "clip_vision_model": 1, "siglip_vision_model": 0, "dinov2": 1}

AUTO_MAP = {
    "AutoConfig": "configuration_minivlm.MiniVLMConfig",
    "AutoModel": "modeling_minivlm.MiniVLMForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_minivlm.MiniVLMForConditionalGeneration",
}


class MiniVLMConfig(PreTrainedConfig):
    r"""Configuration of a [`MiniVLMForConditionalGeneration`]: vision encoder → MLP projector → causal LM.

    The defaults reproduce the reference notebook: a ViT-L/16 at 224 px whose
    `last_hidden_state` (after the final LayerNorm, CLS kept: 197 tokens) is projected
    into a SmolLM-360M (Llama) by Linear → GELU → LayerNorm → Linear.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision encoder (a ViT by default). Any `AutoModel` vision config with
            `image_size`, `patch_size` and `hidden_size` whose model returns `last_hidden_state`
            works: ViT, CLIP (`clip_vision_model`), SigLIP (`siglip_vision_model`), ...
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the causal language model (a Llama by default; any `AutoModelForCausalLM`
            config: Qwen2, GPT-2, ...).
        image_token_index (`int`, *optional*, defaults to 49152):
            Token id of `<image>`; `input_ids` carry it `image_seq_length` times where the image goes.
        image_seq_length (`int`, *optional*):
            Number of image tokens per image. Follows from the vision config, the feature
            strategy and `pixel_shuffle_factor`; computed when left unset, checked when given.
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the projector's two linear layers.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"full"`):
            `"full"` keeps the encoder's prefix tokens (the CLS token: the notebook), `"default"`
            drops them (LLaVA). Encoders without prefix tokens (SigLIP) give the same features either way.
        num_additional_image_tokens (`int`, *optional*):
            Tokens the encoder puts before its patch tokens (1 for the CLS token of ViT and CLIP, 0
            for SigLIP). Derived from the vision config's `model_type` when left unset; needed for
            other encoders.
        vision_feature_layer (`int`, *optional*, defaults to -1):
            Encoder layer whose output is projected. -1 is the encoder's `last_hidden_state`
            (after its final LayerNorm); any other index selects `hidden_states[index]`.
        pixel_shuffle_factor (`int`, *optional*, defaults to 1):
            Token compression: merges each `f×f` block of patch features into one token
            (`f²` times fewer image tokens, `f²` times wider projector input). Needs patch tokens
            only: `vision_feature_select_strategy="default"`, or an encoder without CLS token.
        custom_pipelines (`dict`, *optional*):
            Declares the remote-code `image-to-text` pipeline so that
            `pipeline("image-to-text", model=..., trust_remote_code=True)` accepts a bare image.
        instruction_tuned (`bool`, *optional*, defaults to `False`):
            Whether the model was trained on questions and answers (conversations) as well as
            captions. Set by training; apps read it to offer a chat or captions only.

    Example:

    ```python
    >>> from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration
    >>> config = MiniVLMConfig()
    >>> config.image_seq_length
    197
    >>> model = MiniVLMForConditionalGeneration(config)  # random weights, notebook shapes
    ```
    """

    model_type = "minivlm"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit", init_kwargs=VIT_LARGE_PATCH16_224),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=SMOLLM_360M),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_index: int = 49152
    image_seq_length: int | None = None
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: Literal["default", "full"] = "full"
    vision_feature_layer: int = -1
    num_additional_image_tokens: int | None = None
    pixel_shuffle_factor: int = 1
    tie_word_embeddings: bool = True
    custom_pipelines: dict | None = None
    instruction_tuned: bool = False
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Tying lives in the text config of the LM; mirror it so the composite model ties too.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        if self.custom_pipelines is None:
            self.custom_pipelines = {k: dict(v) for k, v in IMAGE_TO_TEXT_PIPELINE.items()}
        if self.auto_map is None:
            self.auto_map = dict(AUTO_MAP)

        if self.num_additional_image_tokens is None:
            model_type = self.vision_config.model_type
            if model_type not in PREFIX_TOKENS:
                raise ValueError(
                    f"cannot tell how many tokens a {model_type!r} encoder puts before its patch tokens; "
                    "pass num_additional_image_tokens (1 for a CLS token, 0 for none)."
                )
            self.num_additional_image_tokens = PREFIX_TOKENS[model_type]
        if self.vision_config.model_type == "siglip_vision_model":
            # SigLIP's attention-pooling head is never read: built, it would hold parameters without gradient.
            self.vision_config.vision_use_head = False
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} is unknown; "
                "use 'full' (keep the CLS token, as the notebook does) or 'default' (drop it, as LLaVA does)."
            )
        expected = self.expected_image_seq_length()
        if self.image_seq_length is None:
            self.image_seq_length = expected
        elif self.image_seq_length != expected:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} does not match the vision config: "
                f"{expected} image tokens follow from image_size, patch_size, the feature strategy and "
                "pixel_shuffle_factor. Leave image_seq_length unset to derive it."
            )
        vocab_size = getattr(self.text_config, "vocab_size", None)
        if vocab_size is not None and not 0 <= self.image_token_index < vocab_size:
            raise ValueError(
                f"image_token_index={self.image_token_index} is outside the text vocabulary "
                f"(vocab_size={vocab_size}); add `<image>` to the tokenizer and resize the embeddings "
                "(minivlm.processing.builder's build functions do both)."
            )
        check_config_size(self)

    def expected_image_seq_length(self) -> int:
        """Number of image tokens the vision config produces for one image."""
        image_size, patch_size = self.vision_config.image_size, self.vision_config.patch_size
        image_size = image_size if isinstance(image_size, int) else image_size[0]
        patch_size = patch_size if isinstance(patch_size, int) else patch_size[0]
        if image_size % patch_size:
            raise ValueError(
                f"vision_config.image_size={image_size} is not divisible by patch_size={patch_size}; "
                "pick an image size that is a multiple of the patch size."
            )
        grid = image_size // patch_size
        factor = self.pixel_shuffle_factor
        if factor < 1:
            raise ValueError(f"pixel_shuffle_factor must be >= 1, got {factor}.")
        if factor > 1:
            if grid % factor:
                raise ValueError(
                    f"pixel_shuffle_factor={factor} does not divide the {grid}x{grid} patch grid; "
                    f"use a factor that divides {grid}."
                )
            if self.num_kept_prefix_tokens():
                raise ValueError(
                    "pixel_shuffle_factor > 1 needs vision_feature_select_strategy='default': "
                    "the CLS token has no place in the shuffled patch grid."
                )
        num_tokens = (grid // factor) ** 2
        return num_tokens + self.num_kept_prefix_tokens()

    def num_kept_prefix_tokens(self) -> int:
        """Prefix tokens (CLS...) the feature strategy keeps: all with 'full', none with 'default'."""
        return self.num_additional_image_tokens if self.vision_feature_select_strategy == "full" else 0


# Decoding defaults, one home: the builder writes them into every model's `generation_config` (saved as
# generation_config.json); everything that generates (evaluation, the commands, the app, the task
# helpers, the pipelines) reads them from there through `decoding_defaults`, and a value the user
# gives wins. Greedy, 32 new tokens, for captions and answers alike: both end at their EOS well before.
DEFAULT_DECODING = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False}


def decoding_defaults(generation_config=None) -> dict:
    """`max_new_tokens`, `num_beams` and `do_sample` as `generation_config` (a model's) sets them, each
    one it leaves unset (a model saved before the builder wrote them) taken from `DEFAULT_DECODING`."""
    values = dict(DEFAULT_DECODING)
    for name in values:
        value = getattr(generation_config, name, None)
        if value is not None:
            values[name] = value
    return values


MAX_PARAMETERS = 10**12  # ~4 TB of float32 weights: no machine holds a model past this
MAX_LAYERS = 1024


def check_config_size(config: MiniVLMConfig) -> None:
    """Refuses a config whose model could not be built in memory (absurd layer counts or widths),
    from an estimate of its parameters, before any weight is allocated. Raises ValueError."""
    total = 0
    for name in ("vision_config", "text_config"):
        sub = getattr(config, name)
        layers = int(getattr(sub, "num_hidden_layers", 0) or 0)
        hidden = int(getattr(sub, "hidden_size", 0) or 0)
        inner = int(getattr(sub, "intermediate_size", 0) or 4 * hidden)
        if layers > MAX_LAYERS:
            raise ValueError(f"{name}.num_hidden_layers={layers:,} is over {MAX_LAYERS:,}: such a model cannot be "
                             "built; check the config (a typo in num_hidden_layers?).")
        vocab = int(getattr(sub, "vocab_size", 0) or 0)
        total += layers * (4 * hidden * hidden + 3 * hidden * inner) + 2 * vocab * hidden
    if total > MAX_PARAMETERS:
        raise ValueError(f"this config describes about {total:.2e} parameters ({total * 4 / 1e12:,.0f} TB in "
                         f"float32), over the {MAX_PARAMETERS:.0e} limit; check hidden_size, intermediate_size, "
                         "num_hidden_layers and vocab_size.")


__all__ = ["DEFAULT_DECODING", "MiniVLMConfig", "decoding_defaults"]
