"""Latency of a second question about the same image, with the image's prefix reused, against the first.

    python -m minivlm.benchmark.prefix_cache                       # the notebook's shapes, CPU
    python -m minivlm.benchmark.prefix_cache --vision_layers 3 --text_layers 4 --output_json out.json

A random-weights MiniVLM at the notebook's widths (ViT-L/16-224: 1024 wide, 197 image tokens;
SmolLM-360M: 960 wide, 49153-token vocabulary), all 24 + 32 layers by default (fewer with
`--vision_layers` / `--text_layers`). One image, questions of `--question_tokens` tokens, answers
of exactly `--new_tokens` tokens (EOS suppressed), greedy, batch 1. Timed, best of `--repeats`:

- `uncached`: `model.generate(**inputs)`, what every question costs without the cache (the
  encoder and the prefill over the image's positions run each time);
- `first`: the first question through `ImagePrefixCache` (encode the image and prefill its
  prefix once, then generate from the question on);
- `second`: a further question about the same image, reusing that prefix;
- `encode`: the prefix alone (`encode_image_prefix`).

The second answer's tokens are checked against the uncached ones. `main(argv)` is the command
line (what a `--prefix_cache` flag of `scripts/benchmark.py` would call); `bench_prefix_cache`
returns the numbers.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration
from minivlm.image_cache_minivlm import ImagePrefixCache, encode_image_prefix


@dataclass
class PrefixCacheArguments:
    vision_layers: int = field(default=24, metadata={"help": "ViT layers (ViT-L/16 has 24)."})
    text_layers: int = field(default=32, metadata={"help": "LM layers (SmolLM-360M has 32)."})
    question_tokens: int = field(default=12, metadata={"help": "Tokens of each question, after the image."})
    new_tokens: int = field(default=16, metadata={"help": "Tokens of each answer (EOS suppressed)."})
    repeats: int = field(default=3, metadata={"help": "Timed runs of each measurement; the best is kept."})
    threads: int | None = field(default=None, metadata={"help": "torch threads (default: torch's)."})
    device: str = field(default="cpu")
    seed: int = field(default=0)
    output_json: str | None = field(default=None, metadata={"help": "Also write the results here."})


def build_model(vision_layers: int, text_layers: int, device: str) -> MiniVLMForConditionalGeneration:
    """A random MiniVLM at the notebook's widths with the given depths (MiniVLMConfig's defaults are those shapes)."""
    defaults = MiniVLMConfig()
    vision = {**defaults.vision_config.to_dict(), "num_hidden_layers": vision_layers}
    text = {**defaults.text_config.to_dict(), "num_hidden_layers": text_layers}
    config = MiniVLMConfig(vision_config=vision, text_config=text, image_token_index=defaults.image_token_index)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = MiniVLMForConditionalGeneration(config)
    return model.eval()


def _timed(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_prefix_cache(args: PrefixCacheArguments | None = None) -> dict[str, Any]:
    """Runs the measurements; returns seconds per answer, the speed-up and the set-up."""
    args = args or PrefixCacheArguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.vision_layers, args.text_layers, args.device)
    config = model.config
    vocab = config.text_config.vocab_size
    image_ids = torch.full((1, config.image_seq_length), config.image_token_index)
    questions = [torch.randint(4, vocab - 1, (1, args.question_tokens)) for _ in range(2)]
    prompts = [torch.cat([image_ids, q], dim=1).to(args.device) for q in questions]
    size = config.vision_config.image_size
    pixel_values = torch.randn(1, 3, size, size, device=args.device)
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    times: dict[str, list[float]] = {"uncached": [], "first": [], "second": [], "encode": []}
    with torch.inference_mode():
        # Warm-up: the first call of each path allocates and picks kernels.
        model.generate(input_ids=prompts[0], pixel_values=pixel_values, max_new_tokens=2)
        # Round-robin, so that a busy neighbour slows every measurement alike; the best of each is kept.
        for _ in range(args.repeats):
            seconds, reference = _timed(lambda: model.generate(input_ids=prompts[1], pixel_values=pixel_values,
                                                               **options))
            times["uncached"].append(seconds)
            chat = ImagePrefixCache(model)
            seconds, _ = _timed(lambda: chat.generate(input_ids=prompts[0], pixel_values=pixel_values, **options))
            times["first"].append(seconds)
            seconds, ids = _timed(lambda: chat.generate(input_ids=prompts[1], pixel_values=pixel_values, **options))
            times["second"].append(seconds)
            if (chat.encodes, chat.reuses) != (1, 1):
                raise RuntimeError(f"the second answer did not reuse the prefix: {chat.encodes} encodes")
            seconds, _ = _timed(lambda: encode_image_prefix(model, prompts[0], pixel_values))
            times["encode"].append(seconds)
    uncached, first, second, encode = (min(times[k]) for k in ("uncached", "first", "second", "encode"))

    parameters = sum(p.numel() for p in model.parameters())
    results = {
        "uncached_s": uncached,
        "first_s": first,
        "second_s": second,
        "encode_prefix_s": encode,
        "second_vs_first_speedup": first / second,
        "second_vs_uncached_speedup": uncached / second,
        "tokens_equal_uncached": bool(torch.equal(ids, reference)),
        "all_seconds": times,
        "image_tokens": config.image_seq_length,
        "question_tokens": args.question_tokens,
        "new_tokens": args.new_tokens,
        "parameters": parameters,
        "device": args.device if args.device != "cpu" else _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "arguments": asdict(args),
    }
    del model
    return results


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def format_results(results: dict[str, Any]) -> str:
    """The results as a short table."""
    args = results["arguments"]
    lines = [
        f"MiniVLM {results['parameters'] / 1e6:.0f} M parameters (ViT {args['vision_layers']} layers, "
        f"LM {args['text_layers']} layers), {results['image_tokens']} image tokens, "
        f"{results['question_tokens']}-token questions, {results['new_tokens']}-token answers, greedy, batch 1",
        f"on {results['device']}, {results['torch_threads']} threads; best of {args['repeats']} (round-robin)",
        f"  uncached answer (encoder + prefill every time) {results['uncached_s']:8.3f} s",
        f"  first answer through the prefix cache           {results['first_s']:8.3f} s",
        f"  second answer, image prefix reused              {results['second_s']:8.3f} s",
        f"  the image prefix alone (encoder + prefill)      {results['encode_prefix_s']:8.3f} s",
        f"  second vs first: {results['second_vs_first_speedup']:.2f}x faster; "
        f"tokens equal to uncached: {results['tokens_equal_uncached']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: measures, prints the table, writes `--output_json` if given; returns the results."""
    (args,) = HfArgumentParser(PrefixCacheArguments).parse_args_into_dataclasses(args=argv)
    results = bench_prefix_cache(args)
    print(format_results(results))
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
