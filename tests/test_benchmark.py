"""scripts/benchmark.py runs end to end on the `small` preset and reports every section.

Timings are never asserted: only that each figure is there, positive, and the ratios are filled.
"""

import importlib.util
import json
import math
import sys

import pytest
import torch
from conftest import REPO_ROOT


def load_benchmark(monkeypatch):
    """The benchmark module (`minivlm.benchmark`)."""
    return importlib.import_module("minivlm.benchmark")


def test_small_preset_writes_every_section_with_positive_figures(tmp_path, capsys, monkeypatch):
    benchmark = load_benchmark(monkeypatch)
    output = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        # One thread: steady on a shared 2-core machine, and quick; a few new tokens suffice here.
        benchmark.main([
            "--preset", "small", "--steps", "1", "--warmup", "0", "--gen_steps", "1", "--gen_batch_size", "2",
            "--max_new_tokens", "4", "--threads", "1", "--gen_precisions", "fp32,bf16", "--output_json", str(output),
        ])
    finally:
        torch.set_num_threads(threads)

    results = json.loads(output.read_text())
    assert results["preset"] == "small" and results["device"] in ("cpu", "cuda") and results["memory_method"]

    training = results["training"]
    assert list(training) == [
        "notebook", "minivlm", "minivlm_feature_cache", "minivlm_pixel_shuffle2", "minivlm_feature_cache_pixel_shuffle2"
    ]
    for name, entry in training.items():
        for key in ("samples_per_s", "steps_per_s", "tokens_per_s", "supervised_tokens_per_s", "peak_memory_mb",
                    "speedup_vs_notebook", "memory_vs_notebook", "trainable_parameters"):
            assert entry[key] > 0, (name, key, entry[key])
        assert math.isfinite(entry["last_loss"])
        if results["device"] == "cuda":
            assert 0 < entry["mfu"] < 1
    assert training["notebook"]["speedup_vs_notebook"] == 1.0
    assert training["minivlm_feature_cache"]["speedup_vs_minivlm"] > 0
    assert training["minivlm_feature_cache_pixel_shuffle2"]["speedup_vs_minivlm"] > 0
    assert training["minivlm_feature_cache"]["speedup_vs_uncached"] > 0
    assert training["minivlm_feature_cache_pixel_shuffle2"]["speedup_vs_uncached"] > 0
    assert training["notebook"]["image_tokens"] == training["minivlm"]["image_tokens"] == 197
    assert training["minivlm_feature_cache_pixel_shuffle2"]["image_tokens"] == 49
    # The frozen encoder is all that differs: same trainable parameters in the notebook and MiniVLM.
    assert training["notebook"]["trainable_parameters"] == training["minivlm"]["trainable_parameters"]

    # Counts, not timings: deterministic, so their order is asserted.
    padding = results["padding"]
    assert list(padding) == ["notebook_pad_to_64", "dynamic", "dynamic_grouped"]
    positions = [entry["caption_positions_per_example"] for entry in padding.values()]
    assert positions[0] == 64 > positions[1] > positions[2] >= padding["dynamic"]["caption_tokens_per_example"]

    generation = results["generation"]
    assert list(generation) == [
        "notebook_loop_batch1", "minivlm_fp32_batch1", "minivlm_fp32_batch2", "minivlm_bf16_batch1",
        "minivlm_bf16_batch2", "minivlm_pixel_shuffle2_bf16_batch1", "minivlm_pixel_shuffle2_bf16_batch2",
    ]
    for name, entry in generation.items():
        for key in ("captions_per_s", "new_tokens_per_s", "speedup_vs_notebook"):
            assert entry[key] > 0, (name, key, entry[key])
    assert generation["minivlm_fp32_batch2"]["batch_size"] == 2
    assert generation["minivlm_bf16_batch1"]["precision"] == "bf16"
    assert generation["minivlm_pixel_shuffle2_bf16_batch2"]["image_tokens"] == 49

    printed = capsys.readouterr().out
    for entry in [*training.values(), *padding.values(), *generation.values()]:
        assert entry["label"] in printed
    assert str(output) in printed


def test_generation_precisions(monkeypatch):
    benchmark = importlib.import_module("minivlm.benchmark.runs")
    args = benchmark.BenchmarkArguments()
    assert benchmark.generation_precisions(args, torch.device("cuda")) == ["bf16"]
    # On CPU, bf16 only where it runs natively: emulated bf16 would be slower than fp32.
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: True)
    assert benchmark.generation_precisions(args, torch.device("cpu")) == ["fp32", "bf16"]
    monkeypatch.setattr(benchmark, "cpu_has_native_bf16", lambda: False)
    assert benchmark.generation_precisions(args, torch.device("cpu")) == ["fp32"]
    args.gen_precisions = "bf16, fp32"
    assert benchmark.generation_precisions(args, torch.device("cpu")) == ["bf16", "fp32"]
    args.gen_precisions = "fp16"
    with pytest.raises(ValueError, match="--gen_precisions"):
        benchmark.generation_precisions(args, torch.device("cpu"))


def test_demo_steps_times_a_real_stage_and_counts_its_flops(tmp_path):
    """One demo stage through the Trainer: the step's FLOPs equal the matrix products of the batch counted
    by hand for the projector and LM head, and figures follow from each other."""
    from minivlm.benchmark.demo_steps import time_stage

    run = time_stage("shapes-tiny", True, str(tmp_path / "shapes"), steps=2, warmup=1, seed=0, num_train=96)
    assert run["batch_size"] == 32 and run["step_ms"] > 0
    assert run["samples_per_s"] == pytest.approx(32 / (run["step_ms"] / 1e3))
    assert run["gflops"] == pytest.approx(run["gflop_per_step"] / (run["step_ms"] / 1e3))
    # The tiny ViT alone (3 layers, 96 wide, 65 tokens of 64-px images at patch 8) costs 2 * params * tokens
    # FLOPs per image forward; forward + backward is about three times that: a floor for the whole step.
    vit_params = 3 * (4 * 96 * 96 + 2 * 96 * 192)
    assert run["gflop_per_step"] > 3 * 2 * vit_params * 65 * 32 / 1e9


def test_demo_steps_report_speedups_and_roofline_shares_from_the_runs(monkeypatch, tmp_path):
    from minivlm.benchmark import demo_steps

    timings = {("shapes-tiny", False, ()): 100.0, ("shapes-tiny", True, ()): 50.0,
               ("shapes-instruct", False, ("--freeze", "none")): 200.0,
               ("shapes-instruct", True, ("--freeze", "none")): 160.0, ("shapes-instruct", True, ("--freeze", "vision")): 80.0}
    seen = []

    def fake(preset, preprocess, shapes_dir, steps, warmup, seed, num_train, extra=()):
        seen.append((preset, extra))
        start = extra.index("--model_name_or_path") + 2 if "--model_name_or_path" in extra else 0
        ms = timings[(preset, preprocess, tuple(extra[start:]))]
        flops = 3.0 if "vision" in extra else 5.0  # a frozen encoder's step does less
        return {"stage": preset, "preprocessed": preprocess, "batch_size": 32, "step_ms": ms,
                "samples_per_s": 32 / (ms / 1e3), "gflop_per_step": flops, "gflops": flops / (ms / 1e3)}

    monkeypatch.setattr(demo_steps, "time_stage", fake)
    monkeypatch.setattr(demo_steps, "_captioner", lambda *a: str(tmp_path / "captioner"))
    monkeypatch.setattr(demo_steps, "matmul_peak_gflops", lambda: 200.0)
    results = demo_steps.run_demo_steps(steps=2, warmup=0, workers=1)
    by = {(r["stage"], r["label"]): r for r in results["runs"]}
    assert by[("shapes-tiny", "preprocessed once")]["speedup"] == pytest.approx(2.0)
    assert by[("shapes-instruct", "preprocessed once")]["speedup"] == pytest.approx(1.25)
    assert by[("shapes-instruct", "encoded once (frozen)")]["speedup"] == pytest.approx(2.5)  # 200 ms -> 80 ms
    assert by[("shapes-tiny", "preprocessed once")]["roofline_share"] == pytest.approx(100.0 / 200.0)  # 5 GFLOP in 50 ms
    assert "50.0%" in demo_steps.format_demo_steps(results)
    # The second stage always starts from the captioner, the first never does.
    assert all(("--model_name_or_path" in extra) == (preset == "shapes-instruct") for preset, extra in seen)
    # With 2 processes: the data-parallel row runs the preset's arguments, so it has their FLOPs.
    monkeypatch.setattr(demo_steps, "time_stage_data_parallel", lambda preset, *a, **k: {
        "stage": preset, "preprocessed": True, "workers": 2, "batch_size": 32, "step_ms": 40.0,
        "samples_per_s": 800.0})
    results = demo_steps.run_demo_steps(steps=2, warmup=0, workers=2)
    parallel = [r for r in results["runs"] if r.get("workers") == 2]
    assert [r["gflop_per_step"] for r in parallel] == [5.0, 5.0]
    assert parallel[1]["speedup"] == pytest.approx(800.0 / 160.0)  # against the 200 ms per-batch row
