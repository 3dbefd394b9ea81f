"""The benchmark's report: the training, padding and generation tables as plain text, and `main`,
which runs everything, prints the tables and writes the results as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser

from .runs import BenchmarkArguments, run_benchmark


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


def main(argv: list[str] | None = None) -> None:
    """Runs every benchmark once, prints the tables and writes the results as JSON (`--output_json`).

    Returns None: as the `minivlm-benchmark` console command, a returned value would be its exit status.
    """
    parser = HfArgumentParser(BenchmarkArguments)
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.demo_steps:
        from .demo_steps import format_demo_steps, run_demo_steps

        results = run_demo_steps(steps=max(args.steps, 2), warmup=args.warmup, seed=args.seed, workers=args.demo_workers)
        print()
        print(format_demo_steps(results))
        output = Path(args.output_json or "outputs/benchmark-demo-steps.json")
    else:
        results = run_benchmark(args)
        print()
        print(format_tables(results))
        output = Path(args.output_json or f"outputs/benchmark-{args.preset}-{results['device']}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    print(f"\nresults written to {output}")
