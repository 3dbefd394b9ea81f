"""Benchmark MiniVLM side by side with the reference notebook: training and generation speed.

    python scripts/benchmark.py                                    # preset `small`, CPU-friendly (< 1 min)
    python scripts/benchmark.py --preset notebook --train_batch_size 32 --output_json outputs/bench-h200.json

Models are built from configs (random weights, no download): `notebook` has the real shapes
(ViT-L/16-224 + SmolLM-360M, 667 M parameters), `small` the same widths with a few layers
(ViT 3, LM 4), 224-px images and an 8k vocabulary (88 M parameters). Inputs are synthetic and
seeded: random pixels, random caption tokens of 8–20 tokens (Flickr8k's captions are ~12 words).

Training, samples/s and tokens/s of one optimizer step (forward, backward, clip, AdamW):

- (a) `notebook`: the notebook's way, re-implemented below as it is written there: fp32,
  batch 4, captions padded to 64 tokens, the frozen ViT run on every step under no_grad,
  `torch.cat([projector(vit(pixels).last_hidden_state), embed(ids)])` fed to the LM.
- (b) `minivlm`: MiniVLM's training step as the Trainer runs it with `--freeze vision`
  (`requires_grad=False` on the encoder): padding to the batch's longest caption, sdpa, no LM
  head on image positions, the Trainer's fused AdamW, and bf16 autocast on CUDA (fp32 on CPU;
  `--train_precision bf16` autocasts there too, as the Trainer's `--bf16 true` does).
- (c) `minivlm_feature_cache`: (b) on features precomputed by the frozen encoder
  (`processing.feature_cache`): only the projector and the LM run.
- (d) `minivlm_pixel_shuffle2`: (b) with pixel shuffle 2 (49 image tokens, not 197).
- (e) `minivlm_feature_cache_pixel_shuffle2`: (d) on cached features. The cache saves the
  encoder's forward, so its gain grows as the LM's share of a step shrinks: compare (c)/(b)
  with (e)/(d).

Caption padding (a count, not a timing): caption positions per example in batches of
`--train_batch_size`, padded to 64 as in the notebook, to the batch's longest (the collator), and
to the batch's longest with length grouping (`--train_sampling_strategy group_by_length`).

Generation, captions/s for a fixed 32 new tokens (greedy, `min_new_tokens=max_new_tokens`):
the notebook's per-token loop (re-runs the image embeddings and the whole sequence through
the LM for every token, batch 1, fp32) against `model.generate` with the KV cache at batch 1
and batch `--gen_batch_size`: bf16 weights on CUDA; on CPU fp32, and bf16 as well where the CPU
has native bf16 matmuls (`--gen_precisions`). The fp32 rows are the KV cache's and batching's gain
alone; the bf16 rows add what bf16 weights give. Last, the pixel-shuffle model (49 image
tokens) in the last precision: a shorter prefill and a shorter KV cache.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` above what was allocated before the
model was built; on CPU the peak resident set size (RSS) above the RSS before the model was
built, sampled every 5 ms from /proc/self/statm (freed heap is returned with malloc_trim
first). Both include weights, gradients, optimizer state and activations.

MFU (CUDA only): model FLOPs per step = 6·N_trainable·T_lm + 2·N_frozen·T_vision (N: parameter
counts, tied embeddings once; T_lm: LM positions processed, padding included; T_vision: ViT
tokens, 0 with the feature cache; attention's own FLOPs not counted), times steps/s, over a
dense bf16 peak of `--peak_tflops` (989 TFLOP/s, an H200 SXM).

Throughputs come from the median timed step (or generate call), which shrugs off the odd step
slowed down by another job. Timings are figures, not assertions: on a shared machine they vary
from run to run; `--threads 1` is the steadiest choice on a busy 2-core machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import platform
import random
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable


# Idle OpenMP threads spin-wait by default: on a machine shared with other jobs, spinning threads
# fight them, and here a 2-thread generate ran 25x slower than with passive waiting. Only takes
# effect before torch is first imported (the command line; set it yourself to choose otherwise).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import AutoModelForCausalLM, HfArgumentParser, ViTModel, set_seed  # noqa: E402

from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration  # noqa: E402
from minivlm.configuration_minivlm import SMOLLM_360M, VIT_LARGE_PATCH16_224  # noqa: E402


# Presets are data: sub-config overrides on top of MiniVLMConfig's defaults (the real shapes).
PRESETS: dict[str, dict[str, dict]] = {
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
    preset: str = field(default="small", metadata={"help": "Model shapes.", "choices": list(PRESETS)})
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
    output_json: str | None = field(
        default=None, metadata={"help": "Where to write the results (default: outputs/benchmark-<preset>-<device>.json)."}
    )


# -- the notebook's model, re-implemented as the notebook writes it ----------------------------------
class NotebookVLM(nn.Module):
    """The notebook's `MiniVLM`: ViT (frozen, run every step) → projector → LM, joined by `torch.cat`.

    `forward(pixel_values (B,3,H,W), input_ids (B,T), attention_mask (B,T), labels (B,T))` prepends
    the projected image features to the text embeddings; `generate_loop` is its generation loop.
    """

    def __init__(self, config: MiniVLMConfig):
        super().__init__()
        self.vision_encoder = ViTModel(config.vision_config)  # with the pooler, as from_pretrained loads it
        self.vision_encoder.requires_grad_(False).eval()
        vision_dim, language_dim = config.vision_config.hidden_size, config.text_config.hidden_size
        self.projector = nn.Sequential(
            nn.Linear(vision_dim, language_dim), nn.GELU(), nn.LayerNorm(language_dim), nn.Linear(language_dim, language_dim)
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
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
    def generate_loop(self, pixel_values: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """The notebook's loop, greedy and without its EOS stop (fixed length): `(1, prompt + new)` ids."""
        image_embeds = self.encode_image(pixel_values)
        generated_ids = prompt_ids.clone()
        for _ in range(max_new_tokens):
            current_embeds = self.language_model.get_input_embeddings()(generated_ids)
            full_embeds = torch.cat([image_embeds, current_embeds], dim=1)
            outputs = self.language_model(inputs_embeds=full_embeds)
            next_token = outputs.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            generated_ids = torch.cat([generated_ids, next_token], dim=1)
        return generated_ids


# -- models, inputs, measurement -----------------------------------------------------------------------
def build_config(preset: str, **overrides: Any) -> MiniVLMConfig:
    """The preset's MiniVLMConfig; `<image>` is the last token of the vocabulary, EOS/pad token 0."""
    shapes = PRESETS[preset]
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
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.eos_token_id
    return model


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
    """CaptionCollator's layout: `<image>`×N, caption, EOS; right padded to the longest; labels on the
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release_memory(device: torch.device) -> None:
    """Frees what the previous run left, so the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back to the OS, so RSS drops


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or platform.machine() or "cpu"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


class PeakMemory:
    """Context manager: `.peak_bytes` is the peak memory of the block above its start.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: resident set size sampled every 5 ms from
    /proc/self/statm; where there is no /proc, the growth of `getrusage`'s high-water mark.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_bytes = device, 0
        self._stop = threading.Event()

    @property
    def method(self) -> str:
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated above the allocation before the model was built"
        if _rss_bytes() is not None:
            return "peak RSS above the RSS before the model was built, sampled every 5 ms (/proc/self/statm)"
        return "growth of the process's peak RSS (getrusage ru_maxrss): 0 when below an earlier run's peak"

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __enter__(self) -> "PeakMemory":
        _release_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif _rss_bytes() is not None:
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, _rss_bytes() or 0) - self._base
        else:
            unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
            self.peak_bytes = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base) * unit


def timed(fn: Callable[[int], Any], warmup: int, calls: int, device: torch.device) -> list[float]:
    """Runs `fn(i)` `warmup` times untimed, then `calls` times; returns the seconds of each timed call."""
    for i in range(warmup):
        fn(i)
    seconds = []
    for i in range(calls):
        synchronize(device)
        start = time.perf_counter()
        fn(warmup + i)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def count_parameters(module: nn.Module, trainable: bool) -> int:
    """Parameters (tied ones once) that do (`trainable=True`) or do not require grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)


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
                model = NotebookVLM(config)
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
    _release_memory(device)
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


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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
        notebook = NotebookVLM(config).eval()
    pixel_values = torch.randn(1, 3, size, size, device=device)
    prompt_ids = torch.tensor([prompt], device=device)
    # One caption, no warm-up: its 32 full forward passes average themselves.
    seconds = timed(lambda i: notebook.generate_loop(pixel_values, prompt_ids, args.max_new_tokens), 0, 1, device)
    results["notebook_loop_batch1"] = {"label": "notebook loop, no KV cache (fp32)", "batch_size": 1,
                                       "image_tokens": config.image_seq_length, "captions": 1, "seconds": seconds[0]}
    del notebook
    _release_memory(device)

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
        _release_memory(device)

    baseline = results["notebook_loop_batch1"]["captions"] / results["notebook_loop_batch1"]["seconds"]
    for entry in results.values():
        entry["captions_per_s"] = entry["captions"] / entry["seconds"]
        entry["new_tokens_per_s"] = entry["captions_per_s"] * args.max_new_tokens
        entry["speedup_vs_notebook"] = entry["captions_per_s"] / baseline
    return results


# -- report --------------------------------------------------------------------------------------------
def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_tables(results: dict[str, Any]) -> str:
    """The training and generation tables, as plain text."""
    cuda = results["device"] == "cuda"
    lines = [
        f"MiniVLM benchmark: preset {results['preset']}, {results['device_name']}, torch {results['torch']}, "
        f"{results['threads']} threads, {results['wall_seconds']:.0f} s in all",
        f"peak memory: {results['memory_method']}",
        "",
        f"{'training':44} {'batch':>5} {'precision':>13} {'img tok':>7} {'samples/s':>10} {'tokens/s':>10} {'sup tok/s':>10} "
        f"{'peak MB':>9} {'vs (a)':>7} {'mem vs (a)':>10}" + (f" {'MFU':>6}" if cuda else ""),
    ]
    for entry in results["training"].values():
        lines.append(
            f"{entry['label']:44} {entry['batch_size']:>5} {entry['precision']:>13} {entry['image_tokens']:>7} "
            f"{entry['samples_per_s']:>10.2f} "
            f"{entry['tokens_per_s']:>10.0f} {entry['supervised_tokens_per_s']:>10.1f} {entry['peak_memory_mb']:>9.0f} "
            f"{entry['speedup_vs_notebook']:>6.2f}x {_ratio(entry['memory_vs_notebook']):>10}"
            + (f" {entry['mfu']:>6.1%}" if cuda else "")
            + (f"  cache: {entry['speedup_vs_uncached']:.2f}x" if "speedup_vs_uncached" in entry else "")
        )
    lines += ["", f"{'caption padding, batch ' + str(results['arguments']['train_batch_size']):44} "
                  f"{'positions/example':>17} {'padding':>8}"]
    for entry in results["padding"].values():
        lines.append(f"{entry['label']:44} {entry['caption_positions_per_example']:>17.1f} {entry['padding_share']:>8.1%}")
    lines += ["", f"{'generation (' + str(results['max_new_tokens']) + ' new tokens)':44} {'batch':>5} "
                  f"{'img tok':>7} {'captions/s':>10} {'new tok/s':>10} {'vs loop':>8}"]
    for entry in results["generation"].values():
        lines.append(
            f"{entry['label']:44} {entry['batch_size']:>5} {entry['image_tokens']:>7} {entry['captions_per_s']:>10.2f} "
            f"{entry['new_tokens_per_s']:>10.1f} {entry['speedup_vs_notebook']:>7.1f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs every benchmark once, prints the tables, writes the JSON; returns the results."""
    parser = HfArgumentParser(BenchmarkArguments)
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    if args.steps < 1 or args.gen_steps < 1:
        raise ValueError(f"--steps and --gen_steps must be at least 1, got {args.steps} and {args.gen_steps}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    start = time.perf_counter()

    results: dict[str, Any] = {
        "preset": args.preset,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
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

    print()
    print(format_tables(results))
    output = Path(args.output_json or f"outputs/benchmark-{args.preset}-{device.type}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {output}")
    return results


if __name__ == "__main__":
    main()
