"""MiniVLM: a vision encoder, an MLP projector and a causal language model.

Ships to the Hub verbatim as remote code: imports torch, transformers and its siblings
(relatively) only.

    pixel_values (B, 3, H, W) ─ vision_tower ─ (B, N, Dv) ─ multi_modal_projector ─ (B, N, Dt) ┐
    input_ids (B, T) with N `<image>` tokens ─ embed_tokens ─ (B, T, Dt) ── merge at `<image>` ─┴─ language_model ─ logits
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_minivlm import MiniVLMConfig

# Imported so that `save_pretrained` ships the pipeline file beside this one (transformers
# copies a module's relative imports): config.custom_pipelines points at it.
from .pipeline_minivlm import MiniVLMImageToTextPipeline  # noqa: F401


@dataclass
class MiniVLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""[`CausalLMOutputWithPast`] plus the projected image features.

    image_hidden_states (`torch.FloatTensor` of shape `(batch_size, image_seq_length, text_hidden_size)`, *optional*):
        The projector's output for the images of this forward pass (`None` on cached decoding steps).
    """

    image_hidden_states: torch.FloatTensor | None = None


class MiniVLMMultiModalProjector(nn.Module):
    """Linear → activation → LayerNorm → Linear, mapping vision features into the LM's embedding space.

    The LayerNorm keeps projected features at the scale of the LM's token embeddings,
    which is what the reference notebook trains (and what its checkpoints hold).
    """

    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        in_features = config.vision_config.hidden_size * config.pixel_shuffle_factor**2
        hidden = config.text_config.hidden_size
        self.linear_1 = nn.Linear(in_features, hidden)
        self.act = ACT2FN[config.projector_hidden_act]
        self.norm = nn.LayerNorm(hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """(batch, num_patches, vision_dim) → (batch, num_patches, text_dim)."""
        return self.linear_2(self.norm(self.act(self.linear_1(image_features))))


def pixel_shuffle(features: torch.Tensor, factor: int) -> torch.Tensor:
    """Merges each `factor × factor` block of a square patch grid into one token.

    (batch, h*w, dim) → (batch, (h/f)*(w/f), dim*f*f). Neighbouring patches end up in the
    channels of one token, so the LM sees `f²` times fewer image tokens.
    """
    batch, num_patches, dim = features.shape
    side = int(num_patches**0.5)
    grid = features.reshape(batch, side // factor, factor, side // factor, factor, dim)
    grid = grid.permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, (side // factor) ** 2, factor * factor * dim)


class MiniVLMPreTrainedModel(PreTrainedModel):
    config: MiniVLMConfig
    config_class = MiniVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["ViTEmbeddings", "ViTLayer", "LlamaDecoderLayer"]
    _skip_keys_device_placement = ["cache"]

    def _init_weights(self, module: nn.Module) -> None:
        # Sub-models initialise themselves; the projector keeps PyTorch's default
        # initialisation (the notebook's), re-applied here when weights are materialised.
        if isinstance(module, MiniVLMMultiModalProjector):
            for layer in (module.linear_1, module.linear_2):
                layer.reset_parameters()
            module.norm.reset_parameters()
        else:
            super()._init_weights(module)


class MiniVLMForConditionalGeneration(MiniVLMPreTrainedModel, GenerationMixin):
    """MiniVLM for captioning and image-conditioned generation.

    Modules: `vision_tower` (e.g. `ViTModel` without pooler), `multi_modal_projector`
    ([`MiniVLMMultiModalProjector`]) and `language_model` (an `AutoModelForCausalLM`, e.g.
    `LlamaForCausalLM`, with its own tied LM head). All three are built from the config;
    pretrained weights come in through `from_pretrained` or [`from_pretrained_parts`].
    """

    _tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        vision_kwargs = {"add_pooling_layer": False} if config.vision_config.model_type == "vit" else {}
        # The ViT pooler is never used: built, it would hold trainable parameters without gradient.
        self.vision_tower = AutoModel.from_config(config.vision_config, **vision_kwargs)
        self.multi_modal_projector = MiniVLMMultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @classmethod
    def from_pretrained_parts(
        cls,
        vision_model: str = "google/vit-large-patch16-224",
        language_model: str = "HuggingFaceTB/SmolLM-360M",
        image_token: str = "<image>",
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        config_kwargs: dict | None = None,
        **kwargs,
    ) -> "MiniVLMForConditionalGeneration":
        """Builds a MiniVLM from a pretrained vision encoder and a pretrained causal LM.

        Like `VisionEncoderDecoderModel.from_encoder_decoder_pretrained`: both parts keep their
        pretrained weights, the projector is freshly initialised. `image_token` is added to the
        LM's tokenizer (as `MiniVLMProcessor.from_pretrained_parts` does) and the embeddings are
        resized to fit it. `config_kwargs` go to [`MiniVLMConfig`] (e.g. the feature strategy);
        `kwargs` to both `from_pretrained` calls (`revision`, `cache_dir`, ...).
        """
        from transformers import AutoConfig, AutoTokenizer

        load_kwargs = dict(kwargs)
        if dtype is not None:
            load_kwargs["dtype"] = dtype
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        is_vit = AutoConfig.from_pretrained(vision_model, **kwargs).model_type == "vit"
        vision_kwargs = {"add_pooling_layer": False} if is_vit else {}
        vision_tower = AutoModel.from_pretrained(vision_model, **vision_kwargs, **load_kwargs)
        lm = AutoModelForCausalLM.from_pretrained(language_model, **load_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(language_model, **kwargs)
        return cls.from_parts(vision_tower, lm, tokenizer, image_token=image_token, config_kwargs=config_kwargs)

    @classmethod
    def from_parts(
        cls,
        vision_tower: PreTrainedModel,
        language_model: PreTrainedModel,
        tokenizer,
        image_token: str = "<image>",
        config_kwargs: dict | None = None,
    ) -> "MiniVLMForConditionalGeneration":
        """Assembles a MiniVLM around an instantiated vision encoder and causal LM.

        Adds `image_token` to `tokenizer` (in place) and grows the LM's embeddings to fit it;
        new rows start at the mean of the existing embeddings, so the result is deterministic
        and the new token's logit stays at the scale of the others.
        """
        tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        image_token_index = tokenizer.convert_tokens_to_ids(image_token)
        embeddings = language_model.get_input_embeddings()
        old_size = embeddings.num_embeddings
        if len(tokenizer) > old_size:
            language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():
                weight = language_model.get_input_embeddings().weight
                weight[old_size:] = weight[:old_size].mean(0)

        config = MiniVLMConfig(
            vision_config=vision_tower.config.to_dict(),
            text_config=language_model.config.to_dict(),
            image_token_index=image_token_index,
            **(config_kwargs or {}),
        )
        # Built on the meta device: the given parts replace the random ones without
        # allocating the full model twice; only the projector is new.
        with torch.device("meta"):
            model = cls(config)
        model.vision_tower = vision_tower
        model.language_model = language_model
        model.multi_modal_projector = MiniVLMMultiModalProjector(config).to(dtype=language_model.dtype)
        model.config.vision_config = vision_tower.config
        model.config.text_config = language_model.config
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        return model.eval()  # as from_pretrained returns it

    # -- embeddings -------------------------------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # -- vision -----------------------------------------------------------------------
    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Runs the encoder and selects the features the projector reads.

        Args:
            pixel_values: `(batch, channels, image_size, image_size)` from the image processor.

        Returns:
            `(batch, image_seq_length, vision_hidden_size * pixel_shuffle_factor**2)`. With a frozen
            encoder these can be computed once per image and passed to `forward` as `vision_features`.
        """
        vision_config = self.config.vision_config
        size = vision_config.image_size
        expected = (vision_config.num_channels, size, size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(pixel_values.shape)}; prepare images with the model's processor "
                "(MiniVLMProcessor / its image processor), which resizes them to the encoder's size."
            )
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        layer = self.config.vision_feature_layer
        outputs = self.vision_tower(pixel_values, output_hidden_states=layer != -1, return_dict=True)
        # -1 is the encoder's final output, after its last LayerNorm (the notebook's features);
        # other layers come from hidden_states, which are taken before that norm.
        features = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        if self.config.pixel_shuffle_factor > 1:
            features = pixel_shuffle(features, self.config.pixel_shuffle_factor)
        return features

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encodes and projects images: `(batch, 3, H, W)` → `(batch, image_seq_length, text_hidden_size)`."""
        return self.multi_modal_projector(self.get_vision_features(pixel_values))

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask `(batch, seq)` of the `<image>` positions, checked against the features.

        Every sequence must hold exactly `image_seq_length` image tokens for its one image.
        """
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_index, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == self.config.image_token_index
        per_row = mask.sum(-1)
        num_images, num_tokens = image_features.shape[:2]
        if mask.shape[0] != num_images or bool((per_row != num_tokens).any()):
            raise ValueError(
                f"expected {num_tokens} image tokens in each of {num_images} sequence(s) for {num_images} image(s), "
                f"found {per_row.tolist()} in {mask.shape[0]} sequence(s); did the processor expand <image>? "
                "Build inputs with MiniVLMProcessor, one image per text."
            )
        return mask

    # -- forward ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MiniVLMCausalLMOutputWithPast:
        r"""Runs the VLM.

        Args:
            input_ids: `(batch, seq)` token ids, with `image_seq_length` `<image>` tokens per image.
            pixel_values: `(batch, 3, H, W)`, one image per sequence; needed whenever `input_ids`
                hold `<image>` tokens that are not in the cache yet.
            attention_mask: `(batch, seq)`, 1 for real tokens, 0 for padding.
            cache: the KV cache (`transformers.Cache`); `generate()` passes it under this name.
            inputs_embeds: `(batch, seq, hidden)` instead of `input_ids`.
            labels: `(batch, seq)`; -100 positions are ignored, and `<image>` positions always are.
            logits_to_keep: keep only the last N positions' logits (0: all). With `labels`, the loss
                then covers the last N positions too: a training batch whose captions all sit in its
                last N positions (image and prompt first) skips the vocabulary projection of every
                image position.
            vision_features: `(batch, image_seq_length, vision_dim)` from `get_vision_features`, in place
                of `pixel_values` (a frozen encoder's features cached once per image).

        Returns:
            [`MiniVLMCausalLMOutputWithPast`] with `loss` (when labels are given), `logits`
            `(batch, seq, vocab)`, `cache`, and `image_hidden_states`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if pixel_values is not None and vision_features is not None:
            raise ValueError("Pass pixel_values or vision_features, not both.")
        image_features = None
        if vision_features is not None:
            vision_features = vision_features.to(self.multi_modal_projector.linear_1.weight.dtype)
            image_features = self.multi_modal_projector(vision_features)
        elif pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
        if image_features is not None:
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features)
        elif input_ids is not None and (cache is None or cache.get_seq_length() == 0):
            if bool((input_ids == self.config.image_token_index).any()):
                raise ValueError(
                    "input_ids contain <image> tokens but no pixel_values (or vision_features) were given; pass the images "
                    "(processor(images=..., text=...) returns both)."
                )

        if labels is not None and input_ids is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_index, -100)
        if labels is not None and isinstance(logits_to_keep, int) and logits_to_keep > 0:
            labels = labels[:, -logits_to_keep:]

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return MiniVLMCausalLMOutputWithPast(
            loss=outputs.loss,
            logits=outputs.logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


    # -- generation -------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, *args, vision_features=None, is_first_iteration=False, **kwargs):
        # Like pixel_values (which GenerationMixin drops by itself), cached vision features feed
        # the first step only: later steps read the images from the KV cache.
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if vision_features is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            model_inputs["vision_features"] = vision_features
        return model_inputs

__all__ = ["MiniVLMForConditionalGeneration", "MiniVLMPreTrainedModel", "MiniVLMMultiModalProjector"]
