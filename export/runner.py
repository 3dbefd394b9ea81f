"""Greedy generation with the ONNX files `minivlm-export` writes, in onnxruntime (no torch needed).

    from transformers import AutoProcessor
    from minivlm.export.runner import OnnxMiniVLM
    runner = OnnxMiniVLM("minivlm-onnx")
    processor = AutoProcessor.from_pretrained("minivlm-onnx", trust_remote_code=True)
    inputs = processor(images=image, text=processor.image_token, return_tensors="np")
    tokens = runner.generate(**inputs, max_new_tokens=32)   # the tokens of model.generate(..., do_sample=False)

It is also the reference for other runtimes (transformers.js, onnxruntime in C#/C++): embed the ids,
put the image features at the `<image>` positions, run the decoder on the whole prompt with an
empty cache, then one token at a time with the cache it returns.
"""

import json
from pathlib import Path

import numpy as np

from .onnx_export import DECODER, EMBED_TOKENS, ONNX_FOLDER, VISION_ENCODER


class OnnxMiniVLM:
    """The three graphs of an export folder in onnxruntime sessions, with MiniVLM's greedy decoding."""

    def __init__(self, export_dir: str | Path, providers: list[str] | None = None):
        import onnxruntime

        export_dir = Path(export_dir)
        config = json.loads((export_dir / "config.json").read_text())
        generation = export_dir / "generation_config.json"
        generation = json.loads(generation.read_text()) if generation.is_file() else {}
        self.image_token_index = config["image_token_index"]
        eos = generation.get("eos_token_id", config["text_config"].get("eos_token_id"))
        self.eos_token_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = generation.get("pad_token_id", config["text_config"].get("pad_token_id"))
        self.pad_token_id = pad if pad is not None else min(self.eos_token_ids, default=0)

        providers = providers or ["CPUExecutionProvider"]
        folder = export_dir / ONNX_FOLDER
        self.vision = onnxruntime.InferenceSession(str(folder / VISION_ENCODER), providers=providers)
        self.embed = onnxruntime.InferenceSession(str(folder / EMBED_TOKENS), providers=providers)
        self.decoder = onnxruntime.InferenceSession(str(folder / DECODER), providers=providers)
        self.cache_inputs = [i for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]

    def embed_inputs(self, input_ids: np.ndarray, pixel_values: np.ndarray | None) -> np.ndarray:
        """Token embeddings `(batch, seq, hidden)` with the image features at the `<image>` positions."""
        embeds = self.embed.run(None, {"input_ids": input_ids.astype(np.int64)})[0]
        mask = input_ids == self.image_token_index
        if pixel_values is None:
            return embeds
        features = self.vision.run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]
        if int(mask.sum()) != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"expected {features.shape[1]} image tokens for each of {features.shape[0]} image(s), found "
                f"{int(mask.sum())} in input_ids; build inputs with the exported folder's processor."
            )
        embeds[mask] = features.reshape(-1, features.shape[-1])
        return embeds

    def generate(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, pixel_values: np.ndarray | None = None,
        max_new_tokens: int = 32, output_logits: bool = False, **_unused,
    ) -> np.ndarray | tuple[np.ndarray, list[np.ndarray]]:
        """Greedy decoding of left-padded prompts `(batch, seq)`: returns `(batch, seq + new)` token ids,
        rows that finished early padded with `pad_token_id`, as `generate(do_sample=False)` does; with
        `output_logits`, also each step's next-token logits `(batch, vocab)` (generate's `logits`)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        input_ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        embeds = self.embed_inputs(input_ids, None if pixel_values is None else np.asarray(pixel_values))
        batch = input_ids.shape[0]
        cache = {
            i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), dtype=np.float32) for i in self.cache_inputs
        }
        # Positions count real tokens only: a left-padded row starts at 0 at its first token.
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        tokens, finished, step_logits = input_ids, np.zeros(batch, dtype=bool), []
        for _ in range(max_new_tokens):
            outputs = self.decoder.run(
                None, {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **cache}
            )
            step_logits.append(outputs[0][:, -1])
            next_tokens = outputs[0][:, -1].argmax(-1)
            next_tokens = np.where(finished, self.pad_token_id, next_tokens)
            tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
            finished |= np.isin(next_tokens, list(self.eos_token_ids))
            if finished.all():
                break
            cache = {i.name: present for i, present in zip(self.cache_inputs, outputs[1:])}
            embeds = self.embed.run(None, {"input_ids": next_tokens[:, None].astype(np.int64)})[0]
            positions = positions[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        return (tokens, step_logits) if output_logits else tokens
