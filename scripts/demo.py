"""The embedded default: train a tiny MiniVLM to caption synthetic shapes, offline, on CPU.

    python scripts/demo.py [--output_dir outputs/demo] [--num_train_epochs N]

Generates the shapes set, captions held-out images with the untrained model, trains the
`shapes-tiny` preset with the HF Trainer, reloads the saved folder the way a Hub user would
(`AutoModel` / `pipeline("image-to-text")` with `trust_remote_code=True`), scores the held-out
captions (every object's colour and shape named correctly; BLEU/CIDEr against the references)
and writes `loss_curve.png` and `captions_before_after.png`.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, HfArgumentParser, pipeline, set_seed

from minivlm.data.loading import load_split, resolve_dataset
from minivlm.evaluation.captioning import evaluate_captions, generate_captions
from minivlm.evaluation.plots import plot_caption_grid, plot_loss_curve
from minivlm.training.run import build_model, parse_args, train


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the data, model and pictures go."})
    num_train_epochs: float | None = field(default=None, metadata={"help": "Override the preset's epochs."})
    num_samples: int = field(default=8, metadata={"help": "Test images shown with their captions."})
    seed: int = field(default=0)


def main(argv: list[str] | None = None) -> None:
    """Runs the demo; its summary goes to `demo_summary.json` (returns None: a console command's
    return value would be its exit status)."""
    (demo,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    start = time.perf_counter()
    out = Path(demo.output_dir)
    data_dir, model_dir = out / "shapes", out / "model"
    train_argv = ["--preset", "shapes-tiny", "--dataset", str(data_dir), "--output_dir", str(model_dir),
                  "--seed", str(demo.seed), "--disable_tqdm", "true", "--logging_steps", "20"]
    if demo.num_train_epochs is not None:
        train_argv += ["--num_train_epochs", str(demo.num_train_epochs)]
    model_args, data_args, training_args = parse_args(train_argv)

    resolve_dataset("shapes", shapes_dir=data_dir, num_train=data_args.shapes_num_train,
                    num_eval=data_args.shapes_num_eval, image_size=data_args.shapes_image_size, seed=demo.seed)
    test = load_split(str(data_dir), "test")
    samples = test.select(range(demo.num_samples))
    print(f"[{time.perf_counter() - start:5.1f}s] shapes set ready in {data_dir} ({len(test)} held-out images)")

    set_seed(demo.seed)
    untrained, untrained_processor = build_model(model_args, load_split(str(data_dir), "train"))
    before = generate_captions(untrained, untrained_processor, samples, max_new_tokens=16, progress=False)

    trainer = train(model_args, data_args, training_args)
    train_seconds = trainer.state.log_history[-1].get("train_runtime", float("nan"))
    print(f"[{time.perf_counter() - start:5.1f}s] trained {trainer.state.global_step} steps in {train_seconds:.0f}s")

    # Reload the saved folder as a Hub user would: remote code, Auto classes, pipeline.
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    predictions, metrics = evaluate_captions(model, processor, test, decoding={"max_new_tokens": 16},
                                             meteor=False, progress=False)
    captioner = pipeline("image-to-text", model=str(model_dir), trust_remote_code=True)
    after = [result[0]["generated_text"] for result in captioner(list(samples["image"]), max_new_tokens=16, batch_size=8)]
    assert after == [p["caption"] for p in predictions[: demo.num_samples]], "pipeline and batched generation disagree"

    print("\nheld-out captions (untrained -> trained | a reference):")
    for sample, old, new in zip(samples, before, after):
        print(f"  {old[:40]!r:44} -> {new!r:45} | {sample['captions'][0]!r}")
    accuracy = metrics["shapes_accuracy"]
    print(f"\ncolour and shape of every object right: {accuracy:.1%} of {len(test)} held-out images")
    print(f"BLEU-4 {metrics['bleu_4']:.3f}  CIDEr-D {metrics['cider']:.3f}  ROUGE-L {metrics['rouge_l']:.3f}")

    plot_loss_curve(trainer.state.log_history, out / "loss_curve.png")
    short_before = [text if len(text) <= 40 else text[:39] + "…" for text in before]
    plot_caption_grid(list(samples["image"]), short_before, after, [c[0] for c in samples["captions"]],
                      out / "captions_before_after.png")
    total = time.perf_counter() - start
    summary = {
        "shapes_accuracy": accuracy, "bleu_4": metrics["bleu_4"], "cider": metrics["cider"],
        "rouge_l": metrics["rouge_l"], "train_steps": trainer.state.global_step, "train_seconds": train_seconds,
        "total_seconds": total, "torch_threads": torch.get_num_threads(),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    print(f"\nwrote {out / 'loss_curve.png'}, {out / 'captions_before_after.png'}, {model_dir}")
    print(f"done in {total:.0f}s")


if __name__ == "__main__":
    main()
