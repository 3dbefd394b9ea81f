"""The demo's training steps, timed through the Trainer as `minivlm-train` runs them (`--demo_steps true`).

Both stages of `make demo` (`shapes-tiny`, then `shapes-instruct` from a captioner) on a small shapes set,
side by side in one run: the images decoded and preprocessed in every batch (`--preprocess_images false`,
how every step ran before `PreprocessedDataset`), preprocessed once (the demo's steps; its second stage
trains the encoder too, `--freeze none`), for the second stage with a frozen encoder its features computed
once (`--freeze vision`: `PreprocessedDataset.encode_images`; a lever the preset does not take, see
`training/presets.py`), and as the demo trains (the batch split over
single-thread processes: `minivlm.training.run.train_data_parallel`). For each: the median wall time
between consecutive optimizer steps (data, forward, backward, clipping, AdamW, callbacks: all of it),
samples/s, the model FLOPs of one step (counted by `torch.utils.flop_counter` on a real batch: the
matrix products, attention's included) and the share of this machine's matmul roofline that reaches,
the roofline being a large fp32 matrix product timed here with the same threads.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

PEAK_SIDE = 2048  # the roofline's matrix product: (2048 x 2048) @ (2048 x 2048), fp32
STAGES = ("shapes-tiny", "shapes-instruct")


def matmul_peak_gflops(repeats: int = 10) -> float:
    """GFLOP/s of a large fp32 matrix product on this machine, with torch's current threads (best of `repeats`)."""
    a, b = torch.randn(PEAK_SIDE, PEAK_SIDE), torch.randn(PEAK_SIDE, PEAK_SIDE)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * PEAK_SIDE**3 / best / 1e9


class _StepClock(TrainerCallback):
    """Wall time between consecutive optimizer steps."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def _step_flops(trainer) -> float:
    """FLOPs of one training step's forward and backward on the run's first batch."""
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# Each stage's rows: (label, --preprocess_images, extra arguments); the first is how steps ran before.
VARIANTS = {
    "shapes-tiny": [("decoded every batch", False, ()), ("preprocessed once", True, ())],
    "shapes-instruct": [("decoded every batch", False, ("--freeze", "none")),
                        ("preprocessed once", True, ("--freeze", "none")),
                        ("encoded once (frozen)", True, ("--freeze", "vision"))],
}


def time_stage(preset: str, preprocess: bool, shapes_dir: str, steps: int, warmup: int, seed: int,
               num_train: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One stage's training steps, timed: `warmup` untimed steps, then `steps` timed ones."""
    from minivlm.training.run import parse_args, train

    clock = _StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        argv = ["--preset", preset, "--shapes_dir", shapes_dir, "--output_dir", output_dir, "--seed", str(seed),
                "--max_steps", str(warmup + steps + 1), "--save_strategy", "no", "--logging_steps", "1000000",
                "--disable_tqdm", "true", "--shapes_num_train", str(num_train),
                "--preprocess_images", str(preprocess).lower(), *extra]
        trainer = train(*parse_args(argv), callbacks=[clock])
        flops = _step_flops(trainer)
    intervals = [b - a for a, b in zip(clock.ends[warmup:], clock.ends[warmup + 1:])]
    seconds = statistics.median(intervals)
    batch = trainer.args.per_device_train_batch_size
    return {"stage": preset, "preprocessed": preprocess, "batch_size": batch, "step_ms": seconds * 1e3,
            "samples_per_s": batch / seconds, "gflop_per_step": flops / 1e9, "gflops": flops / seconds / 1e9}


def time_stage_data_parallel(preset: str, shapes_dir: str, steps: int, warmup: int, seed: int, num_train: int,
                             workers: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One stage as the demo trains it: `workers` single-thread processes splitting each batch (images
    preprocessed once). Timed from the run's own `train_runtime` over `warmup + steps` steps, so its warm-up
    steps (and the processes' first step) count too: a slightly pessimistic figure."""
    from minivlm.training.run import parse_args, train_data_parallel

    with tempfile.TemporaryDirectory() as output_dir:
        argv = ["--preset", preset, "--shapes_dir", shapes_dir, "--output_dir", output_dir, "--seed", str(seed),
                "--max_steps", str(warmup + steps), "--save_strategy", "no", "--logging_steps", "1000000",
                "--disable_tqdm", "true", "--shapes_num_train", str(num_train), "--preprocess_images", "true", *extra]
        batch = parse_args(argv)[2].per_device_train_batch_size
        state = train_data_parallel(argv, workers, batch, Path(output_dir))
    seconds = state.log_history[-1]["train_runtime"] / state.global_step
    return {"stage": preset, "preprocessed": True, "workers": workers, "batch_size": batch, "step_ms": seconds * 1e3,
            "samples_per_s": batch / seconds}


def _captioner(shapes_dir: str, folder: Path, seed: int, num_train: int) -> str:
    """A `shapes-tiny` captioner trained for one step and saved: the second stage starts from a trained model."""
    from minivlm.training.run import parse_args, train

    train(*parse_args(["--preset", "shapes-tiny", "--shapes_dir", shapes_dir, "--output_dir", str(folder), "--seed",
                       str(seed), "--max_steps", "1", "--save_strategy", "no", "--disable_tqdm", "true",
                       "--shapes_num_train", str(num_train)]))
    return str(folder)


def run_demo_steps(steps: int = 20, warmup: int = 3, seed: int = 0, num_train: int = 640,
                   shapes_dir: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Both demo stages in each of their `VARIANTS` (this process, torch's threads), and as the demo runs them
    (`workers` single-thread processes, default `default_workers()`; 1 leaves that row out)."""
    from minivlm.training.run import default_workers

    workers = workers or default_workers()
    from .measure import cpu_name

    peak = matmul_peak_gflops()
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = shapes_dir or str(Path(scratch) / "shapes")
        for preset in STAGES:
            stage_extra: tuple[str, ...] = ()
            if preset == "shapes-instruct":
                stage_extra = ("--model_name_or_path", _captioner(folder, Path(scratch) / "captioner", seed, num_train))
            stage_runs = []
            for label, preprocess, extra in VARIANTS[preset]:
                run = time_stage(preset, preprocess, folder, steps, warmup, seed, num_train, (*stage_extra, *extra))
                run.update(label=label, workers=1, roofline_share=run["gflops"] / peak)
                stage_runs.append(run)
            if workers > 1:
                run = time_stage_data_parallel(preset, folder, steps, warmup, seed, num_train, workers, stage_extra)
                run["label"] = f"+ {workers} procs x 1 thread"
                # The same batch, split, as the "preprocessed once" row (the preset's arguments).
                run["gflop_per_step"] = next(r for r in stage_runs if r["label"] == "preprocessed once")["gflop_per_step"]
                run["gflops"] = run["gflop_per_step"] / (run["step_ms"] / 1e3)
                run["roofline_share"] = run["gflops"] / peak
                stage_runs.append(run)
            for run in stage_runs:  # against how steps ran before
                run["speedup"] = run["samples_per_s"] / stage_runs[0]["samples_per_s"]
            runs += stage_runs
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "runs": runs}


def format_demo_steps(results: dict[str, Any]) -> str:
    """The table of `run_demo_steps`."""
    lines = [f"demo training steps: {results['cpu']}, {results['threads']} threads in one process, "
             f"matmul roofline {results['matmul_peak_gflops']:.0f} GFLOP/s ({PEAK_SIDE}^3 fp32)", "",
             f"{'stage':16} {'images':22} {'batch':>5} {'ms/step':>8} {'samples/s':>10} {'GFLOP/step':>10} "
             f"{'GFLOP/s':>8} {'roofline':>8} {'vs before':>9}"]
    for run in results["runs"]:
        images = run["label"]
        lines.append(f"{run['stage']:16} {images:22} {run['batch_size']:>5} {run['step_ms']:>8.1f} "
                     f"{run['samples_per_s']:>10.1f} {run['gflop_per_step']:>10.2f} {run['gflops']:>8.1f} "
                     f"{run['roofline_share']:>8.1%} {run['speedup']:>8.2f}x")
    return "\n".join(lines)
