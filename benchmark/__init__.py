"""`minivlm.benchmark`: MiniVLM side by side with the reference notebook: training and generation speed.

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
  (`minivlm.training.feature_cache`): only the projector and the LM run.
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

The package, by job: `notebook` (the notebook's model, as written there), `measure` (timing, peak
memory, parameter counts), `runs` (presets, arguments, inputs, the training / padding / generation
runs) and `report` (the tables and `main`, the `minivlm-benchmark` command).
"""

import os


# Idle OpenMP threads spin-wait by default: on a machine shared with other jobs, spinning threads
# fight them, and here a 2-thread generate ran 25x slower than with passive waiting. Only takes
# effect before torch is first imported (the command line; set it yourself to choose otherwise).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .report import format_tables, main  # noqa: E402
from .runs import BenchmarkArguments, run_benchmark  # noqa: E402


__all__ = ["BenchmarkArguments", "format_tables", "main", "run_benchmark"]
