"""Convert the tutorial notebook's checkpoint into a Hub-ready MiniVLM folder.

The notebook saves `mini-vlm-flickr8k/` with `mini_vlm_full.pt` (projector and language-model
state dicts plus the part names), `tokenizer/` and `image_processor/`. This script rebuilds
the model from the named pretrained parts, loads the trained weights, and writes a folder
that loads with `AutoModel.from_pretrained(..., trust_remote_code=True)`:

    python scripts/convert_notebook_checkpoint.py --checkpoint_dir mini-vlm-flickr8k --output_dir minivlm-flickr8k

The checkpoint is read with `torch.load(weights_only=True)`: tensors and plain containers only,
no pickled code. The output holds safetensors weights only.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from minivlm import MiniVLMForConditionalGeneration, MiniVLMProcessor
from minivlm.processing.builder import build_from_parts, load_vision_tower


# The notebook's projector is nn.Sequential(Linear, GELU, LayerNorm, Linear).
PROJECTOR_KEYS = {"projection.0.": "linear_1.", "projection.2.": "norm.", "projection.3.": "linear_2."}


@dataclass
class ConvertArguments:
    checkpoint_dir: str = field(metadata={"help": "The notebook's save folder (holds mini_vlm_full.pt)."})
    output_dir: str = field(metadata={"help": "Where to write the converted model and processor."})
    vision_model: str | None = field(
        default=None, metadata={"help": "Vision encoder id or path; defaults to the name stored in the checkpoint."}
    )
    language_model: str | None = field(
        default=None, metadata={"help": "Causal LM id or path; defaults to the name stored in the checkpoint."}
    )


def convert(args: ConvertArguments) -> tuple[MiniVLMForConditionalGeneration, MiniVLMProcessor]:
    checkpoint_dir = Path(args.checkpoint_dir)
    checkpoint_path = checkpoint_dir / "mini_vlm_full.pt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{checkpoint_path} not found; point --checkpoint_dir at the notebook's save folder.")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    missing = {"projector_state_dict", "language_model_state_dict", "config"} - checkpoint.keys()
    if missing:
        raise ValueError(f"{checkpoint_path} lacks {sorted(missing)}; is it the notebook's mini_vlm_full.pt?")
    names = checkpoint["config"]
    vision_model = args.vision_model or names["vision_model_name"]
    language_model = args.language_model or names["lm_model_name"]

    vision_tower = load_vision_tower(vision_model)
    lm = AutoModelForCausalLM.from_pretrained(language_model)
    lm.load_state_dict(checkpoint["language_model_state_dict"])  # strict: every trained weight lands
    tokenizer_source = checkpoint_dir / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source if tokenizer_source.is_dir() else language_model)
    processor_source = checkpoint_dir / "image_processor"
    image_processor = AutoImageProcessor.from_pretrained(
        processor_source if processor_source.is_dir() else vision_model
    )

    model, processor = build_from_parts(vision_tower, lm, tokenizer, image_processor)
    projector_state = {}
    for key, value in checkpoint["projector_state_dict"].items():
        prefix = next((p for p in PROJECTOR_KEYS if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unexpected projector weight {key!r}; expected keys under {sorted(PROJECTOR_KEYS)}")
        projector_state[PROJECTOR_KEYS[prefix] + key[len(prefix) :]] = value
    model.multi_modal_projector.load_state_dict(projector_state)

    model.save_pretrained(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return model, processor


def main(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)
    model, _ = convert(args)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output_dir}: {parameters:,} parameters, {model.config.image_seq_length} image tokens")


if __name__ == "__main__":
    main()
