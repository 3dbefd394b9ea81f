"""The reference notebook's model, written as the notebook writes it: the benchmark's baseline and
the tests' reference for "same weights, same numbers".

ViT (frozen, run on every step) → `VisionProjector` → causal LM, joined by `torch.cat` of the
projected image features and the text embeddings; generation re-runs the whole sequence for every
new token (no KV cache).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM, ViTModel

from minivlm import MiniVLMConfig


__all__ = ["NotebookMiniVLM", "VisionProjector"]


class VisionProjector(nn.Module):
    """The notebook's projector: Linear → GELU → LayerNorm → Linear, `(batch, seq, vision_dim)` →
    `(batch, seq, language_dim)`; its `projection.{0,2,3}` weights map onto MiniVLM's
    `linear_1`, `norm`, `linear_2`."""

    def __init__(self, vision_dim: int, language_dim: int):
        super().__init__()
        self.projection = nn.Sequential(
            nn.Linear(vision_dim, language_dim), nn.GELU(), nn.LayerNorm(language_dim), nn.Linear(language_dim, language_dim)
        )

    def forward(self, vision_features: torch.Tensor) -> torch.Tensor:
        return self.projection(vision_features)


class NotebookMiniVLM(nn.Module):
    """The notebook's `MiniVLM`: `forward(pixel_values (B,3,H,W), input_ids (B,T), attention_mask (B,T),
    labels (B,T))` prepends the projected image features to the text embeddings and returns the LM's
    output (loss over the text positions only).

    Args:
        vision_encoder: a `ViTModel` (its `last_hidden_state` is used); frozen here, as the notebook does.
        language_model: a causal LM.
        projector: a `VisionProjector`.
        tokenizer: the LM's tokenizer, for `generate` (the notebook's signature); may be None otherwise.
    """

    def __init__(self, vision_encoder: nn.Module, language_model: nn.Module, projector: VisionProjector, tokenizer=None):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.language_model = language_model
        self.projector = projector
        self.tokenizer = tokenizer
        self.vision_encoder.requires_grad_(False)

    @classmethod
    def from_config(cls, config: MiniVLMConfig) -> "NotebookMiniVLM":
        """Random parts of a MiniVLM config's shapes: the ViT with its pooler, as `from_pretrained`
        loads the notebook's `ViTModel`, in eval mode as its training loop leaves it."""
        vision_encoder = ViTModel(config.vision_config).eval()
        projector = VisionProjector(config.vision_config.hidden_size, config.text_config.hidden_size)
        return cls(vision_encoder, AutoModelForCausalLM.from_config(config.text_config), projector)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(batch, 3, H, W)` → projected features `(batch, num_patches + 1, language_dim)`."""
        with torch.no_grad():
            image_features = self.vision_encoder(pixel_values=pixel_values).last_hidden_state
        return self.projector(image_features)

    def forward(self, pixel_values, input_ids, attention_mask, labels=None):
        image_embeds = self.encode_image(pixel_values)
        batch, num_image_tokens = image_embeds.shape[:2]
        text_embeds = self.language_model.get_input_embeddings()(input_ids)
        combined_embeds = torch.cat([image_embeds, text_embeds], dim=1)
        image_attention = torch.ones((batch, num_image_tokens), dtype=attention_mask.dtype, device=attention_mask.device)
        combined_attention = torch.cat([image_attention, attention_mask], dim=1)
        combined_labels = None
        if labels is not None:
            image_labels = torch.full((batch, num_image_tokens), -100, dtype=labels.dtype, device=labels.device)
            combined_labels = torch.cat([image_labels, labels], dim=1)
        return self.language_model(
            inputs_embeds=combined_embeds, attention_mask=combined_attention, labels=combined_labels, return_dict=True
        )

    @torch.no_grad()
    def generate_loop(
        self, pixel_values: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
    ) -> torch.Tensor:
        """The notebook's greedy loop from `prompt_ids (1, P)`: `(1, P + new)` ids. Stops after
        `eos_token_id` when given; without it, runs exactly `max_new_tokens` steps (the benchmark)."""
        image_embeds = self.encode_image(pixel_values)
        generated_ids = prompt_ids.clone()
        for _ in range(max_new_tokens):
            current_embeds = self.language_model.get_input_embeddings()(generated_ids)
            full_embeds = torch.cat([image_embeds, current_embeds], dim=1)
            next_token = self.language_model(inputs_embeds=full_embeds).logits[:, -1, :].argmax(dim=-1, keepdim=True)
            generated_ids = torch.cat([generated_ids, next_token], dim=1)
            if eos_token_id is not None and next_token.item() == eos_token_id:
                break
        return generated_ids

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, prompt: str, max_new_tokens: int = 50) -> torch.Tensor:
        """The notebook's `generate`, greedy: the tokenised `prompt`, then new tokens up to EOS; `(1, P + new)` ids."""
        prompt_ids = self.tokenizer.encode(prompt, return_tensors="pt").to(pixel_values.device)
        return self.generate_loop(pixel_values, prompt_ids, max_new_tokens, eos_token_id=self.tokenizer.eos_token_id)
