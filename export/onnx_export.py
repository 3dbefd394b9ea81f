"""Writes a saved MiniVLM as three ONNX graphs, the split onnxruntime and transformers.js use for VLMs.

    OUTPUT_DIR/
      config.json, generation_config.json, processor files    (as save_pretrained writes them)
      onnx/vision_encoder.onnx    pixel_values (images, 3, H, W) -> image_features (images, image_seq_length, hidden)
      onnx/embed_tokens.onnx      input_ids (batch, seq) -> inputs_embeds (batch, seq, hidden)
      onnx/decoder_model_merged.onnx
          inputs_embeds (batch, seq, hidden), attention_mask (batch, past + seq), position_ids (batch, seq),
          past_key_values.{i}.key / .value (batch, kv_heads, past, head_dim)   (past = 0 on the first step)
          -> logits (batch, seq, vocab), present.{i}.key / .value (batch, kv_heads, past + seq, head_dim)
      minivlm_export.json         what was written, from which model (marks the folder as this command's)

The caller puts the image features in place of the `<image>` embeddings (`image_token_index` in
config.json), as `MiniVLMModel.forward` does: `minivlm.export.runner.OnnxMiniVLM` shows how.
"""

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache


logger = logging.getLogger(__name__)

ONNX_FOLDER = "onnx"
VISION_ENCODER = "vision_encoder.onnx"
EMBED_TOKENS = "embed_tokens.onnx"
DECODER = "decoder_model_merged.onnx"
MARKER = "minivlm_export.json"
# One protobuf file holds at most 2 GB: larger graphs keep their weights in a `.data` file beside them.
PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2


class VisionEncoder(nn.Module):
    """pixel_values `(images, 3, H, W)` → projected image features `(images, image_seq_length, hidden)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values, return_dict=True).pooler_output


class EmbedTokens(nn.Module):
    """input_ids `(batch, seq)` → the text model's input embeddings `(batch, seq, hidden)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed_tokens = model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class Decoder(nn.Module):
    """The text model and LM head over embeddings, with its KV cache as plain tensors in and out.

    A `DynamicCache` cannot cross an ONNX boundary: the cache goes in as `2 × layers` tensors (key,
    value per layer; length 0 on the first step) and comes out as the same tensors grown by `seq`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        past_key_values: list[torch.Tensor],
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past_key_values[i], past_key_values[i + 1]) for i in range(0, len(past_key_values), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.text_config)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, use_cache=True,
        )
        present = [tensor for layer in outputs.cache.layers for tensor in (layer.keys, layer.values)]
        return (self.lm_head(outputs.last_hidden_state), *present)


def cache_names(num_layers: int, prefix: str) -> list[str]:
    """`past_key_values.0.key`, `past_key_values.0.value`, ... (or `present.*`): the names optimum uses."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def check_output_dir(output_dir: Path) -> None:
    """Refuses a folder that holds files this command did not write: nothing of the user's is overwritten."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir} is a file; give a folder to write the ONNX export into.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / MARKER).is_file():
        raise ValueError(
            f"{output_dir} is not empty and was not written by minivlm-export (no {MARKER}): refusing to write "
            "into it. Give a new or empty folder."
        )


def check_model_dir(model_dir: Path) -> None:
    """A saved MiniVLM folder, checked before anything is loaded."""
    config = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ValueError(
            f"{model_dir} is not a folder: give the folder of a saved MiniVLM (save_pretrained or minivlm-train "
            "output). For a Hub model, download it first: hf download ORG/NAME --local-dir DIR."
        )
    if not config.is_file():
        raise ValueError(
            f"{model_dir} holds no config.json: give the folder of a saved MiniVLM (save_pretrained or "
            "minivlm-train output). For a Hub model, download it first: hf download ORG/NAME --local-dir DIR."
        )
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "minivlm":
        raise ValueError(f"{model_dir} holds a {model_type!r} model, not a MiniVLM (model_type 'minivlm').")


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    with torch.no_grad():
        torch.onnx.export(
            module, args, str(path), dynamo=True, input_names=input_names, output_names=output_names,
            dynamic_shapes=dynamic_shapes, external_data=size > PROTOBUF_LIMIT, verbose=False,
        )


def export_onnx(model_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """Exports the saved MiniVLM at `model_dir` to `output_dir` (layout in this module's docstring).

    Returns the paths written. Raises ValueError, before loading anything, when `model_dir` is not a
    saved MiniVLM or `output_dir` holds files this function did not write.
    """
    from transformers import AutoProcessor

    from minivlm import MiniVLMForConditionalGeneration

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    check_model_dir(model_dir)
    check_output_dir(output_dir)

    model = MiniVLMForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    # sdpa traces to the same graph ONNX runs; eager would trace the attention weights out too.
    model.set_attn_implementation("sdpa")
    config, text = model.config, model.config.text_config
    onnx_dir = output_dir / ONNX_FOLDER
    onnx_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).write_text(json.dumps({"source": str(model_dir), "files": []}))

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence_length")
    images = torch.export.Dim("num_images")
    size = config.vision_config.image_size
    size = size if isinstance(size, int) else size[0]
    # Two of each example dimension: torch.export specialises dimensions of size 0 or 1.
    pixel_values = torch.zeros(2, config.vision_config.num_channels, size, size)
    _export(VisionEncoder(model), (pixel_values,), onnx_dir / VISION_ENCODER,
            ["pixel_values"], ["image_features"], ({0: images},))
    input_ids = torch.ones(2, 3, dtype=torch.long)
    _export(EmbedTokens(model), (input_ids,), onnx_dir / EMBED_TOKENS,
            ["input_ids"], ["inputs_embeds"], ({0: batch, 1: seq},))

    num_layers = text.num_hidden_layers
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    past, total = torch.export.Dim("past_sequence_length"), torch.export.Dim("total_sequence_length")
    past_key_values = [torch.zeros(2, kv_heads, 2, head_dim) for _ in range(2 * num_layers)]
    example = (
        torch.zeros(2, 3, text.hidden_size), torch.ones(2, 5, dtype=torch.long),
        torch.arange(2, 5).expand(2, 3).contiguous(), past_key_values,
    )
    _export(
        Decoder(model), example, onnx_dir / DECODER,
        ["inputs_embeds", "attention_mask", "position_ids", *cache_names(num_layers, "past_key_values")],
        ["logits", *cache_names(num_layers, "present")],
        ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, [{0: batch, 2: past}] * (2 * num_layers)),
    )

    config.save_pretrained(output_dir)
    model.generation_config.save_pretrained(output_dir)
    try:
        AutoProcessor.from_pretrained(model_dir).save_pretrained(output_dir)
    except (OSError, ValueError) as error:  # a weights-only folder: the graphs still run
        logger.warning("No processor saved beside the ONNX files (%s); copy it from the model's folder.", error)
    written = sorted(p for p in output_dir.rglob("*") if p.is_file() and p.name != MARKER)
    (output_dir / MARKER).write_text(json.dumps(
        {"source": str(model_dir), "torch": torch.__version__,
         "files": [str(p.relative_to(output_dir)) for p in written]}, indent=2,
    ))
    return written
