"""Evaluate a MiniVLM: caption a split, answer its questions, score both, and draw the pictures.

(Not named evaluate.py: run from scripts/, that name would shadow the `evaluate` library for
every script beside it.)

    python scripts/evaluate_model.py --model outputs/shapes-tiny --dataset shapes --shapes_dir data/shapes
    python scripts/evaluate_model.py --model org/minivlm --dataset jxie/flickr8k --split test --num_beams 3

Any training format evaluates: a caption set, the shapes set, a chat / LLaVA (`.json`) / cauldron
set, a VQA imagefolder or Hub-style set (`question` + `answer`/`answers`). Captions are scored when
the split has them; questions (the shapes set's, VQA columns, or every assistant turn of a
conversation, asked with the turns before it) are answered and scored: VQA accuracy (VQAv2
normalisation) and, for box answers, accuracy at IoU >= 0.5 and mean IoU; the answers go to
`answers.jsonl`. A split with questions and no captions is scored on its answers alone.

Writes to --output_dir: `predictions.jsonl` (id, caption, references; when there are captions), `metrics.json` (scores,
decoding settings, model, dataset, split, number of images), `patch_heatmap.png` (the first
image), and `loss_curve.png` when the model folder holds `trainer_state.json` (or --log_history
names a JSON log). Prints the metrics as a table.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, HfArgumentParser

from minivlm.processing.loading import caption_column_argument, resolve_dataset
from minivlm.evaluation.answering import QUESTION_SCORE_KEYS, answer_decoding, evaluate_answers
from minivlm.evaluation.captioning import SCORE_KEYS, evaluate_captions
from minivlm.evaluation.tasks import load_evaluation_sets
from minivlm.training.model_card import format_metrics
from minivlm.evaluation.plots import plot_loss_curve, plot_patch_heatmap


logger = logging.getLogger("minivlm.evaluate")


@dataclass
class EvalArguments:
    model: str = field(metadata={"help": "A saved MiniVLM: folder or Hub id (loaded with trust_remote_code=True)."})
    dataset: str = field(
        default="shapes",
        metadata={"help": "Hub dataset id, local imagefolder / save_to_disk folder, or 'shapes' (the set at --shapes_dir)."},
    )
    shapes_dir: str = field(default="data/shapes", metadata={"help": "Where scripts/train.py generated the shapes set."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    split: str = field(default="test")
    image_column: str = field(default="image")
    caption_column: str | None = field(
        default=None, metadata={"help": "Caption column(s), comma-separated; default: auto-detect."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Where LLaVA JSON image paths are relative to."})
    max_samples: int | None = field(default=None, metadata={"help": "Seeded subset of the split (default: all)."})
    seed: int = field(default=42, metadata={"help": "Seed of the --max_samples subset (and of sampling)."})
    batch_size: int = field(default=32)
    prompt: str = field(default="", metadata={"help": "Text the caption continues: the prompt used in training."})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Default: the model's generation_config "
                                                                      "(32 for the models this project builds)."})
    num_beams: int | None = field(default=None, metadata={"help": "Default: the model's generation_config (1)."})
    do_sample: bool | None = field(default=None, metadata={"help": "Captions only (answers are greedy). Default: the "
                                                                   "model's generation_config (False)."})
    questions: str = field(
        default="auto",
        metadata={"help": "Answer and score the split's questions: 'auto' (when it has any), 'yes' or 'no'.",
                  "choices": ["auto", "yes", "no"]},
    )
    skip_meteor: bool = field(default=False, metadata={"help": "Skip METEOR (it needs Java and starts a JVM)."})
    output_dir: str = field(default="outputs/eval")
    log_history: str | None = field(
        default=None, metadata={"help": "trainer_state.json (or a JSON list of log entries) for the loss curve."}
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda when available, else cpu."})


def _log_history(args: EvalArguments) -> list[dict] | None:
    source = Path(args.log_history) if args.log_history else Path(args.model) / "trainer_state.json"
    if not source.is_file():
        if args.log_history:
            raise FileNotFoundError(f"--log_history {args.log_history} does not exist")
        return None
    data = json.loads(source.read_text())
    return data["log_history"] if isinstance(data, dict) else data


def main(argv: list[str] | None = None) -> None:
    """Runs the evaluation and writes the files above (returns None: a console command's return
    value would be its exit status)."""
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    torch.manual_seed(args.seed)

    source = resolve_dataset(args.dataset, shapes_dir=args.shapes_dir, split=args.split, generate=False)
    sets = load_evaluation_sets(
        source, args.split, dataset_config=args.dataset_config, image_column=args.image_column,
        caption_column=caption_column_argument(args.caption_column), image_folder=args.image_folder,
        max_samples=args.max_samples, seed=args.seed, questions=args.questions != "no",
    )
    if sets.questions is None and args.questions == "yes":
        raise ValueError(f"split {args.split!r} of {source} has no questions (the shapes set's, VQA columns "
                         "question + answer/answers, or conversations with answers); use --questions auto or no.")
    if not sets:
        raise ValueError(f"split {args.split!r} of {source} has nothing to score: no caption column"
                         + (" (and --questions no)" if args.questions == "no" else " and no questions with answers")
                         + "; name the captions with --caption_column, or evaluate another split.")

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModel.from_pretrained(args.model, trust_remote_code=True).to(device).eval()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)

    decoding = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "do_sample": args.do_sample}
    decoding = {name: value for name, value in decoding.items() if value is not None}  # the rest: the model's
    predictions, metrics = [], {}
    if sets.captions is not None:
        predictions, metrics = evaluate_captions(
            model, processor, sets.captions, decoding=decoding, batch_size=args.batch_size, prompt=args.prompt,
            meteor=False if args.skip_meteor else None,
        )

    answers = []
    if sets.questions is not None:
        answers, answer_metrics = evaluate_answers(model, processor, sets.questions, batch_size=args.batch_size,
                                                   max_new_tokens=args.max_new_tokens, progress=True)
        metrics.update(answer_metrics)
        metrics["answer_decoding"] = answer_decoding(model, args.max_new_tokens)

    # write
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if answers:
        with open(output_dir / "answers.jsonl", "w", encoding="utf-8") as f:
            for answer in answers:
                f.write(json.dumps(answer, ensure_ascii=False) + "\n")
    if predictions:
        with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
            for prediction in predictions:
                f.write(json.dumps(prediction, ensure_ascii=False) + "\n")
    report = {
        **metrics,
        "model": args.model,
        "dataset": args.dataset,
        "split": args.split,
        "num_images": len(predictions),
        "num_questions": len(answers),
        "arguments": asdict(args),
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    row = sets.captions[0] if sets.captions is not None else sets.questions[0]
    first = row["image"] if "image" in row else row["images"][0]
    plot_patch_heatmap(model, processor, first, output_dir / "patch_heatmap.png")
    history = _log_history(args)
    if history is not None and any("loss" in entry for entry in history):
        plot_loss_curve(history, output_dir / "loss_curve.png")
    elif history is not None:
        logger.warning("the log history holds no training loss: no loss curve")

    scores = {k: metrics[k] for k in (*SCORE_KEYS, "shapes_accuracy", *QUESTION_SCORE_KEYS) if k in metrics}
    print(f"{args.model} on {args.dataset} [{args.split}], {len(predictions)} images captioned, "
          f"{len(answers)} questions answered")
    print(format_metrics(scores, metrics.get("decoding") or metrics.get("answer_decoding")))
    for name, reason in metrics.get("unavailable", {}).items():
        print(f"{name} unavailable: {reason}")
    print(f"wrote {output_dir}")


if __name__ == "__main__":
    main()
