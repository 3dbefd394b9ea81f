"""The runs the benchmark times: its model presets and arguments, the synthetic inputs, the
training-step runs (a)-(e), the caption-padding counts and the generation runs.

`run_benchmark(args)` runs them all and returns the results that `minivlm.benchmark.report`
prints and writes.
"""

from __future__ import annotations

import contextlib
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import set_seed

from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration
from minivlm.configuration_minivlm import SMOLLM_360M, VIT_LARGE_PATCH16_224
from minivlm.processing.builder import configure_generation

from .measure import PeakMemory, count_parameters, cpu_has_native_bf16, cpu_name, release_memory, timed
from .notebook import NotebookMiniVLM


# Model shapes the benchmark measures, by name (`--preset`), as data: sub-config overrides on top of
# MiniVLMConfig's defaults (the real shapes). Not the training presets (`minivlm.training.presets.PRESETS`).
MODEL_SHAPES: dict[str, dict[str, dict]] = {
    # ViT-L/16-224 (24 layers, 1024 wide) + SmolLM-360M (32 layers, 960 wide, vocab 49153).
    "notebook": {"vision_config": {}, "text_config": {}},
    # The notebook's widths and heads with a few of its layers: ViT 3 of 24 and LM 4 of 32 (the same
    # 3:4), 224-px images, an 8k vocabulary. Per token and layer it costs what the notebook's model
    # costs, so the ratios carry over: the frozen ViT's forward is 0.28 of the FLOPs of an LM
    # training step here, 0.29 with the notebook's shapes.
    "small": {"vision_config": {"num_hidden_layers": 3}, "text_config": {"num_hidden_layers": 4, "vocab_size": 8192}},
}

# The training runs, in order: a label, whether features are precomputed, MiniVLMConfig overrides.
TRAINING_RUNS: dict[str, dict[str, Any]] = {
    "notebook": {"label": "(a) notebook: fp32, cat, ViT every step", "cached": False, "config": {}},
    "minivlm": {"label": "(b) MiniVLM step", "cached": False, "config": {}},
    "minivlm_feature_cache": {"label": "(c) MiniVLM + feature cache", "cached": True, "config": {},
                              "uncached": "minivlm"},
    "minivlm_pixel_shuffle2": {
        "label": "(d) (b) + pixel shuffle 2",
        "cached": False,
        "config": {"vision_feature_select_strategy": "default", "pixel_shuffle_factor": 2},
    },
    "minivlm_feature_cache_pixel_shuffle2": {
        "label": "(e) (d) + feature cache",
        "cached": True,
        "uncached": "minivlm_pixel_shuffle2",
        "config": {"vision_feature_select_strategy": "default", "pixel_shuffle_factor": 2},
    },
}
CAPTION_TOKENS = (8, 20)  # synthetic caption lengths, before EOS
NOTEBOOK_MAX_LENGTH = 64  # the notebook pads every caption to 64 tokens
PROMPT_TOKENS = 3  # the notebook's generation prompt, "This image shows"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class BenchmarkArguments:
    preset: str = field(default="small", metadata={"help": "Model shapes.", "choices": list(MODEL_SHAPES)})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available), 'cuda' or 'cpu'."})
    steps: int = field(default=3, metadata={"help": "Timed training steps per run (throughput: the median step)."})
    warmup: int = field(default=1, metadata={"help": "Untimed training steps (and generate calls) before timing."})
    seed: int = field(default=0)
    train_batch_size: int = field(default=4, metadata={"help": "Batch of the MiniVLM runs (b)-(d)."})
    notebook_batch_size: int = field(default=4, metadata={"help": "Batch of the notebook run (a); the notebook's is 4."})
    gen_batch_size: int = field(default=8, metadata={"help": "Batch of the batched KV-cache generation."})
    gen_steps: int = field(
        default=2, metadata={"help": "Timed generate calls at each batch size (the notebook loop: one caption)."}
    )
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per caption (exactly)."})
    pixel_shuffle: bool = field(
        default=True, metadata={"help": "Also run (d) and (e) (pixel shuffle 2) and generate with pixel shuffle 2."}
    )
    train_precision: str = field(
        default="auto",
        metadata={"help": "Precision of the MiniVLM training runs (b)-(e): 'auto' (bf16 autocast on CUDA, fp32 on "
                          "CPU), 'fp32' or 'bf16' (autocast; what `--bf16 true` gives the Trainer, on CPU too).",
                  "choices": ["auto", "fp32", "bf16"]},
    )
    gen_precisions: str = field(
        default="auto",
        metadata={"help": "Precisions of the MiniVLM generate runs, a comma list of fp32 and bf16. 'auto': bf16 on "
                          "CUDA; fp32 on CPU, and bf16 too where the CPU has native bf16 (AVX512-BF16 or AMX)."},
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads (default: torch's choice); 1 is steadier on a busy machine."}
    )
    peak_tflops: float = field(default=989.0, metadata={"help": "Dense bf16 peak for MFU (H200 SXM: 989)."})
    demo_steps: bool = field(
        default=False,
        metadata={"help": "Instead of the runs above: time the demo's two training stages through the Trainer, "
                          "images decoded every batch against preprocessed once (samples/s, share of the matmul "
                          "roofline); see minivlm.benchmark.demo_steps. Uses --steps, --warmup, --seed."},
    )
    demo_workers: int | None = field(
        default=None, metadata={"help": "With --demo_steps: processes of the data-parallel row (default: as the demo)."}
    )
    output_json: str | None = field(
        default=None, metadata={"help": "Where to write the results (default: outputs/benchmark-<preset>-<device>.json)."}
    )




def build_config(preset: str, **overrides: Any) -> MiniVLMConfig:
    """The preset's MiniVLMConfig; `<image>` is the last token of the vocabulary, EOS/pad token 0."""
    shapes = MODEL_SHAPES[preset]
    # A sub-config dict replaces MiniVLMConfig's defaults wholesale: start from the real shapes.
    vision_config = {"model_type": "vit", **VIT_LARGE_PATCH16_224, **shapes["vision_config"]}
    text_config = {"model_type": "llama", **SMOLLM_360M, **shapes["text_config"]}
    config = MiniVLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=text_config["vocab_size"] - 1,
        **overrides,
    )
    config._attn_implementation = "sdpa"
    return config


def build_minivlm(config: MiniVLMConfig, device: torch.device) -> MiniVLMForConditionalGeneration:
    """A random MiniVLM on `device`, encoder frozen as `--freeze vision` leaves it."""
    with torch.device(device):
        model = MiniVLMForConditionalGeneration(config)
    model.vision_tower.requires_grad_(False)
    return configure_generation(model)


def random_captions(rng: random.Random, batch: int, config: MiniVLMConfig) -> list[list[int]]:
    """`batch` captions of random ordinary tokens (not 0–3, not `<image>`), 8–20 tokens long."""
    vocab = config.text_config.vocab_size
    return [[rng.randrange(4, vocab - 1) for _ in range(rng.randint(*CAPTION_TOKENS))] for _ in range(batch)]


def notebook_batch(captions: list[list[int]], pixel_values: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """The notebook's batch: captions padded to 64 tokens (no EOS), labels -100 on padding."""
    ids = torch.full((len(captions), NOTEBOOK_MAX_LENGTH), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, caption in enumerate(captions):
        ids[row, : len(caption)] = torch.tensor(caption)
        mask[row, : len(caption)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"pixel_values": pixel_values, "input_ids": ids, "attention_mask": mask, "labels": labels}


def minivlm_batch(captions: list[list[int]], config: MiniVLMConfig, eos_id: int) -> dict[str, torch.Tensor]:
    """ConversationCollator's layout: `<image>`×N, caption, EOS; right padded to the longest; labels on the
    caption; `logits_to_keep` from the last image token on (the LM head skips the image positions)."""
    image = [config.image_token_index] * config.image_seq_length
    sequences = [image + caption + [eos_id] for caption in captions]
    length = max(map(len, sequences))
    ids = torch.full((len(sequences), length), eos_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        labels[row, len(image) : len(sequence)] = torch.tensor(sequence[len(image) :])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits_to_keep": length - len(image) + 1}



# -- training ------------------------------------------------------------------------------------------
def bench_training(run: str, args: BenchmarkArguments, device: torch.device) -> dict[str, Any]:
    """Builds the run's model, then times `args.steps` optimizer steps on seeded synthetic batches."""
    cached = TRAINING_RUNS[run]["cached"]
    config = build_config(args.preset, **TRAINING_RUNS[run]["config"])
    batch_size = args.notebook_batch_size if run == "notebook" else args.train_batch_size
    eos_id = config.text_config.eos_token_id
    rng = random.Random(args.seed)
    set_seed(args.seed)
    image_size = config.vision_config.image_size
    # A few distinct batches, cycled (the same for every run: same seed).
    batches = []
    for _ in range(min(args.steps + args.warmup, 4)):
        captions = random_captions(rng, batch_size, config)
        pixel_values = torch.randn(batch_size, 3, image_size, image_size)
        batch = notebook_batch(captions, pixel_values, eos_id) if run == "notebook" else {
            **minivlm_batch(captions, config, eos_id), "pixel_values": pixel_values
        }
        batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})

    precision = args.train_precision if args.train_precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    use_bf16 = run != "notebook" and precision == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    with PeakMemory(device) as memory:
        torch.manual_seed(args.seed)
        if run == "notebook":
            with torch.device(device):
                model = NotebookMiniVLM.from_config(config)
            model.train()
            model.vision_encoder.eval()  # as the notebook's training loop leaves it
        else:
            model = build_minivlm(config, device).train()
        if cached:
            # Precomputed once by the frozen encoder, as cache_vision_features does for a dataset.
            # no_grad, not inference_mode: the projector saves its input for backward.
            with torch.no_grad(), autocast:
                for batch in batches:
                    batch["vision_features"] = model.get_vision_features(batch.pop("pixel_values"))
        trainable = [p for p in model.parameters() if p.requires_grad]
        # MiniVLM: the Trainer's default optimizer (optim="adamw_torch_fused" since torch 2.8), on CPU
        # as on CUDA. The notebook: its own `torch.optim.AdamW(params, lr)` (the foreach kernel).
        fused = {} if run == "notebook" else {"fused": True}
        optimizer = torch.optim.AdamW(trainable, lr=2e-4, **fused)

        losses = []

        def step(i: int) -> None:
            with autocast:
                loss = model(**batches[i % len(batches)]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, max_norm=1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())

        step_seconds = timed(step, args.warmup, args.steps, device)

    n_trainable = count_parameters(model, trainable=True)
    vision = model.vision_encoder if run == "notebook" else model.vision_tower
    n_frozen = count_parameters(vision, trainable=False)
    vision_tokens = (image_size // config.vision_config.patch_size) ** 2 + 1
    image_tokens = vision_tokens if run == "notebook" else config.image_seq_length
    timed_batches = [batches[i % len(batches)] for i in range(args.warmup, args.warmup + args.steps)]
    # LM positions: MiniVLM's input_ids hold the image tokens; the notebook prepends them by cat.
    extra = image_tokens if run == "notebook" else 0
    lm_tokens = sum(b["input_ids"].shape[0] * (b["input_ids"].shape[1] + extra) for b in timed_batches)
    supervised = sum(int((b["labels"] != -100).sum()) for b in timed_batches)
    samples = batch_size * args.steps
    # Throughput from the median step: robust to other jobs on a shared machine.
    seconds = statistics.median(step_seconds) * args.steps
    result = {
        "label": TRAINING_RUNS[run]["label"],
        "batch_size": batch_size,
        "image_tokens": image_tokens,
        "precision": "bf16 autocast" if use_bf16 else "fp32",
        "steps": args.steps,
        "seconds_per_step": seconds / args.steps,
        "seconds_per_step_all": step_seconds,
        "steps_per_s": args.steps / seconds,
        "samples_per_s": samples / seconds,
        "tokens_per_s": lm_tokens / seconds,
        "supervised_tokens_per_s": supervised / seconds,
        "peak_memory_mb": memory.peak_bytes / 2**20,
        "trainable_parameters": n_trainable,
        "frozen_parameters": n_frozen,
        "last_loss": float(losses[-1]),
    }
    if device.type == "cuda":
        flops = 6 * n_trainable * lm_tokens + 2 * n_frozen * (0 if cached else vision_tokens * samples)
        result["model_tflops_per_s"] = flops / seconds / 1e12
        result["mfu"] = result["model_tflops_per_s"] / args.peak_tflops
    del model, optimizer, batches
    release_memory(device)
    return result


# -- padding -------------------------------------------------------------------------------------------
def padding_figures(args: BenchmarkArguments, examples: int = 4000) -> dict[str, dict[str, Any]]:
    """Caption positions per example (padding included) for `examples` synthetic captions of the
    benchmark's lengths in batches of `--train_batch_size`: padded to 64 as the notebook does, to each
    batch's longest in random order (the collator), and with length grouping on top (the Trainer's
    `LengthGroupedSampler`, `--train_sampling_strategy group_by_length`). A count, not a timing:
    every LM position of a training step costs the same, so fewer positions is a proportional gain
    for the LM part of the step (image positions are not padded and are left out here)."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    rng = random.Random(args.seed)
    lengths = [rng.randint(*CAPTION_TOKENS) + 1 for _ in range(examples)]  # + EOS
    batch = args.train_batch_size

    def positions(order: list[int]) -> float:
        batches = [order[i : i + batch] for i in range(0, len(order), batch)]
        return sum(len(b) * max(lengths[j] for j in b) for b in batches) / len(order)

    shuffled = list(range(examples))
    rng.shuffle(shuffled)
    grouped = list(LengthGroupedSampler(batch, lengths=lengths, generator=torch.Generator().manual_seed(args.seed)))
    rows = {
        "notebook_pad_to_64": ("padded to 64 (notebook)", float(NOTEBOOK_MAX_LENGTH)),
        "dynamic": ("to the batch's longest, random order", positions(shuffled)),
        "dynamic_grouped": ("to the batch's longest, grouped by length", positions(grouped)),
    }
    tokens = sum(lengths) / examples
    return {name: {"label": label, "caption_positions_per_example": value, "caption_tokens_per_example": tokens,
                   "padding_share": 1 - tokens / value} for name, (label, value) in rows.items()}


# -- generation ----------------------------------------------------------------------------------------
def generation_precisions(args: BenchmarkArguments, device: torch.device) -> list[str]:
    """`--gen_precisions` resolved: 'auto' is bf16 on CUDA; fp32 on CPU, plus bf16 where the CPU has
    native bf16 matmuls (AVX512-BF16 or AMX, as oneDNN reports it): elsewhere bf16 is emulated, slower."""
    if args.gen_precisions != "auto":
        precisions = [p.strip() for p in args.gen_precisions.split(",") if p.strip()]
        unknown = sorted(set(precisions) - set(DTYPES))
        if unknown or not precisions:
            raise ValueError(
                f"--gen_precisions: expected 'auto' or a comma list of {sorted(DTYPES)}, got {args.gen_precisions!r}."
            )
        return precisions
    if device.type == "cuda":
        return ["bf16"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]



def bench_generation(args: BenchmarkArguments, device: torch.device) -> dict[str, dict[str, Any]]:
    """Captions/s of the notebook loop (batch 1, fp32) and of `generate` with the KV cache (batch 1 and N)
    in each precision of `generation_precisions`, and with pixel shuffle 2 in the last of them."""
    gen_steps = args.gen_steps
    rng = random.Random(args.seed)
    set_seed(args.seed)
    config = build_config(args.preset)
    size = config.vision_config.image_size
    prompt = [rng.randrange(4, config.text_config.vocab_size - 1) for _ in range(PROMPT_TOKENS)]
    results = {}

    torch.manual_seed(args.seed)
    with torch.device(device):
        notebook = NotebookMiniVLM.from_config(config).eval()
    pixel_values = torch.randn(1, 3, size, size, device=device)
    prompt_ids = torch.tensor([prompt], device=device)
    # One caption, no warm-up: its 32 full forward passes average themselves.
    seconds = timed(lambda i: notebook.generate_loop(pixel_values, prompt_ids, args.max_new_tokens), 0, 1, device)
    results["notebook_loop_batch1"] = {"label": "notebook loop, no KV cache (fp32)", "batch_size": 1,
                                       "image_tokens": config.image_seq_length, "captions": 1, "seconds": seconds[0]}
    del notebook
    release_memory(device)

    precisions = generation_precisions(args, device)
    variants = [("minivlm", "MiniVLM generate", {}, precision) for precision in precisions]
    if args.pixel_shuffle:
        variants.append(("minivlm_pixel_shuffle2", "MiniVLM + pixel shuffle 2",
                         TRAINING_RUNS["minivlm_pixel_shuffle2"]["config"], precisions[-1]))
    for name, label, overrides, precision in variants:
        config = build_config(args.preset, **overrides)
        torch.manual_seed(args.seed)
        model = build_minivlm(config, device).to(DTYPES[precision]).eval()
        for batch_size in sorted({1, args.gen_batch_size}):
            ids = torch.tensor([[config.image_token_index] * config.image_seq_length + prompt] * batch_size, device=device)
            inputs = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.randn(batch_size, 3, size, size, device=device, dtype=model.dtype),
            }

            def generate(i: int) -> None:
                out = model.generate(**inputs, do_sample=False, min_new_tokens=args.max_new_tokens,
                                     max_new_tokens=args.max_new_tokens)
                assert out.shape[1] - ids.shape[1] == args.max_new_tokens, "generate stopped early"

            seconds = timed(generate, min(args.warmup, 1), gen_steps, device)
            results[f"{name}_{precision}_batch{batch_size}"] = {
                "label": f"{label}, KV cache ({precision})", "batch_size": batch_size, "precision": precision,
                "image_tokens": config.image_seq_length, "captions": batch_size,
                "seconds": statistics.median(seconds), "seconds_all": seconds,
            }
        del model
        release_memory(device)

    baseline = results["notebook_loop_batch1"]["captions"] / results["notebook_loop_batch1"]["seconds"]
    for entry in results.values():
        entry["captions_per_s"] = entry["captions"] / entry["seconds"]
        entry["new_tokens_per_s"] = entry["captions_per_s"] * args.max_new_tokens
        entry["speedup_vs_notebook"] = entry["captions_per_s"] / baseline
    return results


def run_benchmark(args: BenchmarkArguments) -> dict[str, Any]:
    """Runs every benchmark once (progress on stdout) and returns the results, ratios filled in."""
    if args.steps < 1 or args.gen_steps < 1:
        raise ValueError(f"--steps and --gen_steps must be at least 1, got {args.steps} and {args.gen_steps}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    start = time.perf_counter()

    results: dict[str, Any] = {
        "preset": args.preset,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "arguments": asdict(args),
        "max_new_tokens": args.max_new_tokens,
        "memory_method": PeakMemory(device).method,
        "training": {},
    }
    if device.type == "cuda":
        results["mfu_formula"] = (
            "(6*N_trainable*T_lm + 2*N_frozen*T_vision) * steps/s / peak; T_lm: LM positions processed "
            "(padding included), T_vision: ViT tokens (0 with the feature cache); attention FLOPs not counted"
        )
        results["peak_tflops"] = args.peak_tflops

    runs = [r for r, spec in TRAINING_RUNS.items() if args.pixel_shuffle or not spec["config"]]
    for run in runs:
        print(f"training: {TRAINING_RUNS[run]['label']} ...", flush=True)
        results["training"][run] = bench_training(run, args, device)
    base = results["training"]["notebook"]
    for name, entry in results["training"].items():
        entry["speedup_vs_notebook"] = entry["samples_per_s"] / base["samples_per_s"]
        entry["memory_vs_notebook"] = entry["peak_memory_mb"] / base["peak_memory_mb"] if base["peak_memory_mb"] > 0 else None
        if TRAINING_RUNS[name]["cached"]:
            entry["speedup_vs_minivlm"] = entry["samples_per_s"] / results["training"]["minivlm"]["samples_per_s"]
            uncached = results["training"].get(TRAINING_RUNS[name]["uncached"])
            if uncached is not None:  # the cache's own gain: the same run without it
                entry["speedup_vs_uncached"] = entry["samples_per_s"] / uncached["samples_per_s"]
    results["padding"] = padding_figures(args)
    print("generation ...", flush=True)
    results["generation"] = bench_generation(args, device)
    results["wall_seconds"] = time.perf_counter() - start
    return results
