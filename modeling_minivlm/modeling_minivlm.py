"""MiniVLM: a vision encoder, an MLP projector and a causal language model, built as LLaVA is.

Ships to the Hub verbatim as remote code: imports torch, transformers and its siblings
(relatively) only.

    pixel_values (I, 3, H, W) ─ vision_tower ─ (I, N, Dv) ─ multi_modal_projector ─ (I, N, Dt) ┐
    input_ids (B, T) with I×N `<image>` tokens ─ embed_tokens ─ (B, T, Dt) ─ merge at `<image>` ┴─ language_model ─ lm_head

`MiniVLMModel` holds the three parts (`vision_tower`, `multi_modal_projector`, `language_model`:
the text *base* model); `MiniVLMForConditionalGeneration` is `model` + `lm_head`, as
`LlavaForConditionalGeneration` is. `I` counts every image of the batch, in order: a text may
hold any number of images.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from .adapters_minivlm import MiniVLMAdapterMixin
from .configuration_minivlm import MiniVLMConfig
from .image_cache_minivlm import ImagePrefix, encode_image_prefix, generate_with_prefix
from .tasks_minivlm import MiniVLMTasksMixin

# Imported so that `save_pretrained` ships the pipeline file beside this one (transformers
# copies a module's relative imports): config.custom_pipelines points at it.
from .pipeline_minivlm import MiniVLMImageToTextPipeline  # noqa: F401


# Checkpoints written before the LLaVA layout kept the three parts at the top and the LM with its
# head (`language_model.model.*`, `language_model.lm_head.*`); transformers renames them on load
# (and writes this layout back on save, as it does for LLaVA).
register_checkpoint_conversion_mapping(
    MiniVLMConfig.model_type,
    [
        WeightRenaming(source_patterns=r"^language_model.lm_head", target_patterns="lm_head"),
        WeightRenaming(source_patterns=r"^language_model.model", target_patterns="model.language_model"),
        WeightRenaming(source_patterns=r"^vision_tower", target_patterns="model.vision_tower"),
        WeightRenaming(source_patterns=r"^multi_modal_projector", target_patterns="model.multi_modal_projector"),
    ],
    overwrite=True,
)


@dataclass
class MiniVLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""[`BaseModelOutputWithPast`] of the text model plus the image side.

    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, text_hidden_size)`, *optional*):
        The projector's output for the images of this forward pass (`None` without images).
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        The vision tower's outputs (`hidden_states` / `attentions` when asked), with the projected
        features in `pooler_output`.
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


@dataclass
class MiniVLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""[`CausalLMOutputWithPast`] plus the image side.

    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, text_hidden_size)`, *optional*):
        The projector's output for the images of this forward pass (`None` on cached decoding steps).
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        The vision tower's outputs, with the projected features in `pooler_output`.
    """

    image_hidden_states: torch.FloatTensor | None = None
    image_outputs: BaseModelOutputWithPooling | None = None


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
        """(num_images, num_patches, vision_dim) → (num_images, num_patches, text_dim)."""
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


def _is_tracing() -> bool:
    # True under torch.compile and torch.export (both trace with dynamo).
    return torch.compiler.is_compiling()


class MiniVLMPreTrainedModel(PreTrainedModel):
    """Flags shared by [`MiniVLMModel`] and [`MiniVLMForConditionalGeneration`].

    `_no_split_modules` and tied weights are not listed here: transformers collects them from
    the vision and text sub-models, whatever their architecture.
    """

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
    _can_compile_fullgraph = True
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


def _return_dict(config, return_dict: bool | None) -> bool:
    return return_dict if return_dict is not None else getattr(config, "return_dict", True)


def _with_config_output_flags(config, kwargs: dict) -> dict:
    """`kwargs` with `output_hidden_states` / `output_attentions` set: as passed, else the composite
    config's flags. Each sub-model would otherwise read its own sub-config, and an explicit `None`
    passed down overrides even that: `MiniVLMModel.from_pretrained(..., output_hidden_states=True)`
    (a flag on this config) must reach the vision tower and the text model."""
    kwargs = dict(kwargs)
    for flag in ("output_hidden_states", "output_attentions"):
        if kwargs.get(flag) is None:
            kwargs[flag] = bool(getattr(config, flag, False))
    return kwargs


class MiniVLMModel(MiniVLMPreTrainedModel):
    """The vision tower, the projector and the text base model (no LM head), as `LlavaModel`.

    Modules: `vision_tower` (`AutoModel` of `config.vision_config`; ViT without its unused pooler),
    `multi_modal_projector` ([`MiniVLMMultiModalProjector`]) and `language_model` (`AutoModel` of
    `config.text_config`, e.g. `LlamaModel`).
    """

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        vision_kwargs = {"add_pooling_layer": False} if config.vision_config.model_type == "vit" else {}
        # The ViT pooler is never used: built, it would hold trainable parameters without gradient.
        self.vision_tower = AutoModel.from_config(config.vision_config, **vision_kwargs)
        self.multi_modal_projector = MiniVLMMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def _encode_images(self, pixel_values: torch.Tensor, **kwargs) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        vision_config = self.config.vision_config
        size = vision_config.image_size if isinstance(vision_config.image_size, int) else vision_config.image_size[0]
        expected = (vision_config.num_channels, size, size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (num_images, {expected[0]}, {expected[1]}, {expected[2]}), got "
                f"{tuple(pixel_values.shape)}; prepare images with the model's processor "
                "(MiniVLMProcessor / its image processor), which resizes them to the encoder's size."
            )
        pixel_values = pixel_values.to(dtype=self.vision_tower.dtype)
        layer = self.config.vision_feature_layer
        output_hidden_states = kwargs.pop("output_hidden_states", None) or layer != -1
        outputs = self.vision_tower(pixel_values, output_hidden_states=output_hidden_states, return_dict=True, **kwargs)
        # -1 is the encoder's final output, after its last LayerNorm (the notebook's features);
        # other layers come from hidden_states, which are taken before that norm.
        features = outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, self.config.num_additional_image_tokens :]
        if self.config.pixel_shuffle_factor > 1:
            features = pixel_shuffle(features, self.config.pixel_shuffle_factor)
        return outputs, features

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Runs the encoder and selects the features the projector reads.

        Args:
            pixel_values: `(num_images, channels, image_size, image_size)` from the image processor.

        Returns:
            `(num_images, image_seq_length, vision_hidden_size * pixel_shuffle_factor**2)`. With a frozen
            encoder these can be computed once per image and passed to `forward` as `vision_features`.
        """
        return self._encode_images(pixel_values)[1]

    def get_image_features(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """Encodes and projects images.

        Args:
            pixel_values: `(num_images, 3, H, W)`.
            return_dict: a `BaseModelOutputWithPooling` (default) or a tuple.
            kwargs: go to the vision tower (`output_hidden_states`, `output_attentions`).

        Returns:
            The vision tower's `BaseModelOutputWithPooling` (`last_hidden_state`, `hidden_states`,
            `attentions`) with `pooler_output` set to the projected features
            `(num_images, image_seq_length, text_hidden_size)`.
        """
        kwargs = _with_config_output_flags(self.config, kwargs)
        outputs, features = self._encode_images(pixel_values, **kwargs)
        outputs = BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=self.multi_modal_projector(features),
            hidden_states=outputs.hidden_states if kwargs["output_hidden_states"] else None,
            attentions=getattr(outputs, "attentions", None),
        )
        return outputs if _return_dict(self.config, return_dict) else outputs.to_tuple()

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Boolean mask `(batch, seq)` of the `<image>` positions, checked against the features.

        The batch must hold `image_seq_length` image tokens for each of its images: their total
        equals `num_images * image_seq_length`, whichever texts the images belong to.
        """
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_index, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == self.config.image_token_index
        num_images, num_tokens = image_features.shape[:2]
        found = mask.sum()
        if torch.compiler.is_exporting():
            # No data-dependent Python branch under torch.export: a runtime assert on a symbolic int.
            # (`torch._check_tensor_all` would emit `aten._is_all_true`, which has no ONNX function:
            # torch.onnx.export could not convert the graph.)
            torch._check(found.item() == num_images * num_tokens)
        elif _is_tracing():
            # Under torch.compile `.item()` would break the graph: a tensor-valued runtime assert.
            torch._check_tensor_all(found == num_images * num_tokens)
        elif int(found) != num_images * num_tokens:
            raise ValueError(
                f"expected {num_tokens} image tokens for each of {num_images} image(s), {num_images * num_tokens} in "
                f"all, found {int(found)} in input_ids; did the processor expand <image>? Build inputs with "
                "MiniVLMProcessor, with as many <image> placeholders as images."
            )
        return mask

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        vision_features: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MiniVLMModelOutputWithPast | tuple:
        r"""Embeds the text, puts the projected images at the `<image>` tokens, runs the text model.

        Args: as [`MiniVLMForConditionalGeneration.forward`], without `labels` / `logits_to_keep`.

        Returns:
            [`MiniVLMModelOutputWithPast`]: the text model's `last_hidden_state` `(batch, seq, hidden)`,
            `cache`, `hidden_states`, `attentions`, plus `image_hidden_states` and `image_outputs`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if pixel_values is not None and vision_features is not None:
            raise ValueError("Pass pixel_values or vision_features, not both.")
        flags = _with_config_output_flags(
            self.config, {"output_hidden_states": output_hidden_states, "output_attentions": output_attentions}
        )
        output_hidden_states, output_attentions = flags["output_hidden_states"], flags["output_attentions"]
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = image_features = None
        if vision_features is not None:
            vision_features = vision_features.to(self.multi_modal_projector.linear_1.weight.dtype)
            image_features = self.multi_modal_projector(vision_features)
        elif pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                return_dict=True,
            )
            image_features = image_outputs.pooler_output
        # Without images, `<image>` ids embed as plain tokens: the text-only forward of assisted
        # decoding and prompt lookup (LLaVA's behaviour).
        if image_features is not None:
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1), image_features)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        output = MiniVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=getattr(outputs, "cache", None),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            image_outputs=image_outputs,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()


def _embedding_name(language_model: nn.Module) -> str:
    """Name of the input-embedding module inside a text base model (`embed_tokens`, GPT-2's `wte`, ...)."""
    embeddings = language_model.get_input_embeddings()
    return next(name for name, module in language_model.named_modules() if module is embeddings)


class MiniVLMForConditionalGeneration(MiniVLMTasksMixin, MiniVLMAdapterMixin, MiniVLMPreTrainedModel, GenerationMixin):
    """MiniVLM for captioning and image-conditioned generation: [`MiniVLMModel`] + `lm_head`.

    `caption`, `query` and `detect` (`tasks_minivlm.py`) wrap the processor and `generate` for one image.

    `lm_head` is tied to the text model's input embeddings when the text config ties them.
    `vision_tower`, `multi_modal_projector` and `language_model` are reachable here too, as on
    `LlavaForConditionalGeneration`. Pretrained parts come in through `minivlm.processing.builder`.
    """

    # The Llama layout; __init__ names the embeddings of the actual text model (GPT-2: `wte`).
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # The text models shard their embeddings under tensor parallelism: the tied head must follow (LLaVA's plan).
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: MiniVLMConfig):
        super().__init__(config)
        self.model = MiniVLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self._tied_weights_keys = {
            "lm_head.weight": f"model.language_model.{_embedding_name(self.model.language_model)}.weight"
        }
        self.post_init()

    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """See [`MiniVLMModel.get_vision_features`]."""
        return self.model.get_vision_features(pixel_values)

    def get_image_features(
        self, pixel_values: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPooling | tuple:
        """See [`MiniVLMModel.get_image_features`]: projected features in `pooler_output`."""
        return self.model.get_image_features(pixel_values, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
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
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MiniVLMCausalLMOutputWithPast | tuple:
        r"""Runs the VLM.

        Args:
            input_ids: `(batch, seq)` token ids, with `image_seq_length` `<image>` tokens per image.
            pixel_values: `(num_images, 3, H, W)`: every image of the batch, in the order of their
                `<image>` placeholders (texts first to last, left to right within a text).
            attention_mask: `(batch, seq)`, 1 for real tokens, 0 for padding.
            cache: the KV cache (`transformers.Cache`); `generate()` passes it under this name
                (`past_key_values` is accepted with a deprecation warning).
            inputs_embeds: `(batch, seq, hidden)` instead of `input_ids`.
            labels: `(batch, seq)`; -100 positions are ignored, and `<image>` positions always are.
            logits_to_keep: keep only the last N positions' logits (0: all). With `labels`, the loss
                then covers the last N positions too: a training batch whose captions all sit in its
                last N positions (image and prompt first) skips the vocabulary projection of every
                image position.
            vision_features: `(num_images, image_seq_length, vision_dim)` from `get_vision_features`,
                in place of `pixel_values` (a frozen encoder's features cached once per image).
            return_dict: a [`MiniVLMCausalLMOutputWithPast`] (default) or a tuple.

        Returns:
            [`MiniVLMCausalLMOutputWithPast`] with `loss` (when labels are given), `logits`
            `(batch, seq, vocab)`, `cache`, `hidden_states`, `attentions`, `image_hidden_states`
            and `image_outputs`.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            vision_features=vision_features,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden_states = hidden_states[:, -logits_to_keep:] if logits_to_keep > 0 else hidden_states
        else:
            hidden_states = hidden_states[:, logits_to_keep]
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_index, -100)
            if isinstance(logits_to_keep, int) and logits_to_keep > 0:
                labels = labels[:, -logits_to_keep:]
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        output = MiniVLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
            image_outputs=outputs.image_outputs,
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

    def prepare_inputs_for_generation(
        self, input_ids, *args, inputs_embeds=None, vision_features=None, is_first_iteration=False, **kwargs
    ):
        # Like pixel_values (which GenerationMixin drops by itself), cached vision features feed
        # the first step only: later steps read the images from the KV cache. `inputs_embeds` is
        # named here because `generate()` accepts it only from a signature that declares it.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, *args, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if vision_features is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            model_inputs["vision_features"] = vision_features
        return model_inputs

    # -- one image, several questions ----------------------------------------------------------
    @torch.no_grad()
    def encode_image_prefix(
        self, input_ids: torch.LongTensor, pixel_values: torch.FloatTensor, attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> ImagePrefix:
        """Encodes a prompt's image once and prefills the prompt up to its last image token.

        `input_ids` `(1, seq)` and `pixel_values` `(1, 3, H, W)` come from one processor call
        (`model.encode_image_prefix(**processor(images=image, text=prompt))`). The returned
        [`ImagePrefix`] holds the KV cache of those positions and the projected image features;
        pass it to [`generate_with_prefix`] for every question about this image.
        """
        return encode_image_prefix(self, input_ids, pixel_values, attention_mask, **kwargs)

    def generate_with_prefix(
        self, prefix: ImagePrefix, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
        pixel_values: torch.FloatTensor | None = None, **generate_kwargs,
    ) -> torch.LongTensor:
        """`generate()` for a prompt `(1, seq)` that starts with `prefix`: the encoder and the prefill
        over the image do not run again. Tokens equal those of `generate(**processor(...))`.

        Pass the processor's output whole (`model.generate_with_prefix(prefix, **processor(images=image,
        text=prompt))`): the prompt's `pixel_values` are checked to be the prefix's image, and a prefix
        of another model or another image is refused."""
        return generate_with_prefix(self, prefix, input_ids, attention_mask, pixel_values, **generate_kwargs)


__all__ = [
    "MiniVLMForConditionalGeneration",
    "MiniVLMModel",
    "MiniVLMPreTrainedModel",
    "MiniVLMMultiModalProjector",
]
