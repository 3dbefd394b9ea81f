"""The embedded default: train a tiny MiniVLM on synthetic shapes, offline, on CPU.

    python scripts/demo.py [--output_dir outputs/demo]
    python scripts/demo.py --preset shapes-tiny --output_dir outputs/demo-captions

Generates the shapes set (captions, questions and boxes) and captions held-out images with the
untrained model. `shapes-instruct` (the default) then trains in LLaVA's two stages with the HF
Trainer: a captioner (`shapes-tiny`, into `captioner/`), then the same model instruction-tuned on
each image's caption and questions together (`shapes-instruct` with `--model_name_or_path
captioner/`, into `model/`). It reloads the saved folder the way a Hub user would (`AutoModel` /
`pipeline("image-to-text")` / `pipeline("image-text-to-text")` with `trust_remote_code=True`),
scores the held-out captions (every object's colour and shape named correctly; BLEU/CIDEr against
the references), asks the held-out questions one at a time and scores the answers (VQA accuracy,
exact after normalisation) and the boxes (IoU >= 0.5), and writes `loss_curve.png`,
`captions_before_after.png` and `boxes.png` with the predicted boxes. `shapes-tiny` stops after the
first stage: a captioner.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoProcessor, HfArgumentParser, pipeline, set_seed

from minivlm.processing.grounding import parse_boxes
from minivlm.processing.loading import load_split, resolve_dataset
from minivlm.evaluation.answering import chat_messages, evaluate_answers, evaluate_chat, load_question_dataset
from minivlm.evaluation.boxes import box_iou
from minivlm.evaluation.captioning import evaluate_captions, generate_captions
from minivlm.evaluation.plots import plot_box_grid, plot_caption_grid, plot_loss_curve
from minivlm.training.presets import PRESETS
from minivlm.training.run import build_model, default_workers, load_data, parse_args, train, train_data_parallel


CHAT_TURNS = 4  # questions per image asked in one chat
# The demo's captions and answers stop here rather than at the model's default (its generation_config, 32): the
# shapes set's longest texts fit, the demo runs faster, and its figures stay comparable across versions.
DEMO_MAX_NEW_TOKENS = 16


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "Where the data, model and pictures go."})
    preset: str = field(
        default="shapes-instruct",
        metadata={"help": "shapes-instruct (captions, questions and boxes: a captioner, then instruction-tuned) "
                          "or shapes-tiny (the captioner alone).",
                  "choices": ["shapes-tiny", "shapes-instruct"]},
    )
    num_train_epochs: float | None = field(default=None, metadata={"help": "Override the last stage's epochs."})
    captioner_epochs: float | None = field(
        default=None, metadata={"help": "Override the captioner's epochs (the first stage of shapes-instruct)."}
    )
    max_steps: int | None = field(default=None, metadata={"help": "Stop each stage after this many steps (a quick try)."})
    num_train_images: int | None = field(default=None, metadata={"help": "Training images of the shapes set."})
    num_samples: int = field(default=8, metadata={"help": "Test images shown with their captions."})
    workers: int | None = field(
        default=None,
        metadata={"help": "Training processes of each stage (data parallel, one thread each, the batch split between "
                          "them). Default: 2 on a CPU-only machine with 2 cores or more, else 1 (in this process)."},
    )
    seed: int = field(default=0)


def main(argv: list[str] | None = None) -> None:
    """Runs the demo; its summary goes to `demo_summary.json` (returns None: a console command's
    return value would be its exit status)."""
    (demo,) = HfArgumentParser(DemoArguments).parse_args_into_dataclasses(args=argv)
    workers = default_workers() if demo.workers is None else demo.workers
    if workers < 1:
        raise ValueError(f"--workers {demo.workers}: the number of training processes is 1 or more.")
    start = time.perf_counter()
    out = Path(demo.output_dir)
    data_dir, model_dir = out / "shapes", out / "model"
    instruct = bool(PRESETS[demo.preset].get("dataset_format"))
    logging_steps = 20 if demo.max_steps is None else max(1, min(20, demo.max_steps))  # a loss curve to draw
    common = ["--shapes_dir", str(data_dir), "--seed", str(demo.seed), "--disable_tqdm", "true",
              "--logging_steps", str(logging_steps)]
    if demo.max_steps is not None:
        common += ["--max_steps", str(demo.max_steps)]
    if demo.num_train_images is not None:
        common += ["--shapes_num_train", str(demo.num_train_images)]
    # (preset, output folder, epochs override, extra arguments) of each stage, in order.
    stages = [(demo.preset, model_dir, demo.num_train_epochs, [])]
    if instruct:
        captioner_dir = out / "captioner"
        stages = [("shapes-tiny", captioner_dir, demo.captioner_epochs, []),
                  (demo.preset, model_dir, demo.num_train_epochs, ["--model_name_or_path", str(captioner_dir)])]
    stage_args, stage_argvs = [], []
    for preset, stage_dir, epochs, extra in stages:
        stage_argv = ["--preset", preset, "--output_dir", str(stage_dir), *common, *extra]
        if epochs is not None:
            stage_argv += ["--num_train_epochs", str(epochs)]
        stage_argvs.append(stage_argv)
        stage_args.append(parse_args(stage_argv))
        batch = stage_args[-1][2].per_device_train_batch_size
        if batch % workers:  # before any data is generated or model built
            raise ValueError(f"--workers {workers} does not split the batch of {batch} evenly; pick a divisor of {batch}.")
    model_args, data_args, training_args = stage_args[0]

    resolve_dataset("shapes", shapes_dir=data_dir, num_train=data_args.shapes_num_train,
                    num_eval=data_args.shapes_num_eval, image_size=data_args.shapes_image_size, seed=demo.seed)
    test = load_split(str(data_dir), "test")
    samples = test.select(range(demo.num_samples))
    print(f"[{time.perf_counter() - start:5.1f}s] shapes set ready in {data_dir} ({len(test)} held-out images)")

    set_seed(demo.seed)
    untrained, untrained_processor = build_model(model_args, load_data(data_args, demo.seed).train, data_args)
    before = generate_captions(untrained, untrained_processor, samples, max_new_tokens=DEMO_MAX_NEW_TOKENS, progress=False)

    states, train_seconds = [], 0.0
    for (preset, stage_dir, *_), stage_argv, (model_args, data_args, training_args) in zip(stages, stage_argvs, stage_args):
        if workers > 1:
            state = train_data_parallel(stage_argv, workers, training_args.per_device_train_batch_size, stage_dir)
        else:
            state = train(model_args, data_args, training_args).state
        seconds = state.log_history[-1].get("train_runtime", float("nan"))
        print(f"[{time.perf_counter() - start:5.1f}s] {preset}: trained {state.global_step} steps in "
              f"{seconds:.0f}s into {stage_dir} ({workers} process{'es' if workers > 1 else ''})")
        states.append(state)
        train_seconds += seconds
    train_steps = sum(state.global_step for state in states)

    # Reload the saved folder as a Hub user would: remote code, Auto classes, pipeline.
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    predictions, metrics = evaluate_captions(model, processor, test, decoding={"max_new_tokens": DEMO_MAX_NEW_TOKENS},
                                             meteor=False, progress=False)
    captioner = pipeline("image-to-text", model=str(model_dir), trust_remote_code=True)
    after = [result[0]["generated_text"] for result in captioner(list(samples["image"]), max_new_tokens=DEMO_MAX_NEW_TOKENS, batch_size=8)]
    assert after == [p["caption"] for p in predictions[: demo.num_samples]], "pipeline and batched generation disagree"

    # Questions and grounding on the same held-out images, each question asked on its own.
    answers, answer_metrics, chats, chat_metrics = [], {}, [], {}
    if instruct:
        questions = load_question_dataset(str(data_dir), "test")
        answers, answer_metrics = evaluate_answers(model, processor, questions, batch_size=64,
                                                   max_new_tokens=DEMO_MAX_NEW_TOKENS)
        # The first CHAT_TURNS questions of each image in one chat, each after the model's own earlier answers.
        chats, chat_metrics = evaluate_chat(model, processor, questions, turns=CHAT_TURNS, batch_size=64,
                                                   max_new_tokens=DEMO_MAX_NEW_TOKENS)
        chat = pipeline("image-text-to-text", model=str(model_dir), trust_remote_code=True)
        first = [{"role": "user", "content": [{"type": "image", "image": questions[0]["image"]},
                                              {"type": "text", "text": questions[0]["question"]}]}]
        reply = chat(text=first, max_new_tokens=DEMO_MAX_NEW_TOKENS, return_full_text=False)[0]["generated_text"].strip()
        assert reply == answers[0]["prediction"], "the image-text-to-text pipeline and batched answers disagree"
        # The last turn of the first chat, asked through the pipeline with its history, as the app asks it.
        history = [(t["question"], t["prediction"]) for t in chats[0]["turns"][:-1]]
        messages = chat_messages(history, chats[0]["turns"][-1]["question"])
        messages[0]["content"][0]["image"] = questions[0]["image"]
        reply = chat(text=messages, max_new_tokens=DEMO_MAX_NEW_TOKENS, return_full_text=False)[0]["generated_text"].strip()
        assert reply == chats[0]["turns"][-1]["prediction"], "the pipeline and batched chat answers disagree"

    print("\nheld-out captions (untrained -> trained | a reference):")
    for sample, old, new in zip(samples, before, after):
        print(f"  {old[:40]!r:44} -> {new!r:45} | {sample['captions'][0]!r}")
    if instruct:
        print("\nheld-out questions (answer | expected):")
        shown = set()
        for record in answers:
            if record["type"] not in shown:
                shown.add(record["type"])
                print(f"  {record['question']:34} {record['prediction']!r:24} | {record['answers'][0]!r}")
    accuracy = metrics["shapes_accuracy"]
    print(f"\ncaptions: colour and shape of every object right in {accuracy:.1%} of {len(test)} held-out images")
    print(f"          BLEU-4 {metrics['bleu_4']:.3f}  CIDEr-D {metrics['cider']:.3f}  ROUGE-L {metrics['rouge_l']:.3f}")
    if instruct:
        per_type = "  ".join(f"{k.removeprefix('vqa_accuracy_')} {v:.1%}" for k, v in answer_metrics.items()
                             if k.startswith("vqa_accuracy_"))
        n_boxes = sum(1 for r in answers if parse_boxes(r["answers"][0]))
        print(f"answers:  {answer_metrics['vqa_accuracy']:.1%} exact of {len(answers) - n_boxes} questions ({per_type})")
        print(f"boxes:    {answer_metrics['box_accuracy']:.1%} at IoU >= 0.5 of {n_boxes}, "
              f"mean IoU {answer_metrics['box_mean_iou']:.3f}")
        per_turn = "  ".join(f"{k}: {chat_metrics[f'chat_accuracy_turn_{k}']:.1%}" for k in range(1, CHAT_TURNS + 1))
        print(f"chat:     questions 2-{CHAT_TURNS} of one chat {chat_metrics['chat_accuracy_later']:.1%} right "
              f"({len(chats)} chats; by turn {per_turn})")

        box_records = [r for r in answers if r["type"] == "box"][: demo.num_samples]
        by_id = {example_id: index for index, example_id in enumerate(test["id"])}
        predicted = [parse_boxes(r["prediction"])[:1] for r in box_records]
        targets = [parse_boxes(r["answers"][0]) for r in box_records]
        titles = [f"{r['question'].removeprefix('locate the ')}: IoU "
                  f"{box_iou(p[0], t[0]) if p else 0.0:.2f}" for r, p, t in zip(box_records, predicted, targets)]
        plot_box_grid([test[by_id[r["id"]]]["image"] for r in box_records], predicted, targets, titles, out / "boxes.png")

    # One curve over the stages: each stage's steps continue where the one before stopped.
    history, offset = [], 0
    for state in states:
        history += [{**entry, "step": entry["step"] + offset} for entry in state.log_history if "step" in entry]
        offset += state.global_step
    plot_loss_curve(history, out / "loss_curve.png")
    short_before = [text if len(text) <= 40 else text[:39] + "…" for text in before]
    plot_caption_grid(list(samples["image"]), short_before, after, [c[0] for c in samples["captions"]],
                      out / "captions_before_after.png")
    total = time.perf_counter() - start
    summary = {
        "shapes_accuracy": accuracy, "bleu_4": metrics["bleu_4"], "cider": metrics["cider"],
        "rouge_l": metrics["rouge_l"], **answer_metrics, **chat_metrics, "train_steps": train_steps, "train_seconds": train_seconds,
        "total_seconds": total, "torch_threads": torch.get_num_threads(),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "predictions.json").write_text(json.dumps(predictions, indent=1))
    pictures = [out / "loss_curve.png", out / "captions_before_after.png"]
    if instruct:
        (out / "answers.json").write_text(json.dumps(answers, indent=1))
        (out / "chats.json").write_text(json.dumps(chats, indent=1))
        pictures.append(out / "boxes.png")
    print(f"\nwrote {', '.join(str(p) for p in pictures)}, {model_dir}")
    print(f"done in {total:.0f}s")


if __name__ == "__main__":
    main()
