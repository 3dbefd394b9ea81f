"""The Hub model card: `model_card.md` (the repository root's, linked here and shipped in the wheel) rendered with huggingface_hub's ModelCard.

`write_model_card` renders it into `README.md` of a model folder: at every push (the Trainer's
`model_card` hook) and at the final save of `minivlm.training.run.train`. Evaluation results go in
twice: as the Hub's `model-index` (one `EvalResult` per task and metric, with dataset, split and
decoding settings) and as tables in the text.

Results are given generically, `{task: {metric_name: value}}`; a task's dict may also carry
`dataset`, `split` and `decoding` (or hold its numbers under `metrics`). A flat `{metric_name:
value}` is the caption task. Known task names: `captions`, `answers`, `boxes` (and aliases).
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from minivlm.processing.builder import HUB_ID


logger = logging.getLogger(__name__)
TEMPLATE = Path(__file__).with_name("model_card.md")  # a link to the repository's model_card.md, shipped in the wheel

# Task name → (Hub task type, readable name). Aliases map other spellings onto these.
TASKS: dict[str, tuple[str, str]] = {
    "captions": ("image-to-text", "Image captioning"),
    "answers": ("visual-question-answering", "Visual question answering"),
    "boxes": ("object-detection", "Grounding: boxes for named objects"),
}
TASK_ALIASES = {
    "caption": "captions", "captioning": "captions", "image-to-text": "captions",
    "answer": "answers", "vqa": "answers", "questions": "answers", "visual-question-answering": "answers",
    "box": "boxes", "grounding": "boxes", "detection": "boxes", "object-detection": "boxes",
}
CAPTION_METRICS = ["bleu", "meteor", "rouge", "cider"]
_RESERVED = ("dataset", "split", "decoding", "metrics", "num_examples")


def is_project_card(path: str | os.PathLike) -> bool:
    """Whether the file at `path` is a model card MiniVLM wrote: `write_model_card`'s (its metadata tags
    `minivlm`) or the blank card peft saves beside LoRA adapters. A user's own `README.md` is neither."""
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(path) or {}
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except Exception:  # unreadable, or front matter that is not YAML (yaml's own errors): not ours
        return False
    if not isinstance(metadata, dict):
        return False
    tags = metadata.get("tags") or []
    if isinstance(tags, list) and "minivlm" in tags:
        return True
    return metadata.get("library_name") == "peft" and "# Model Card for Model ID" in text


def _describe(config) -> str:
    return f"{config.model_type} ({config.num_hidden_layers} layers, hidden size {config.hidden_size})"


def format_metrics(metrics: dict | None, decoding: dict | None = None) -> str:
    """A Markdown table of caption metrics (None → 'unavailable'), with the decoding settings."""
    if not metrics:
        return "No evaluation was run for this upload."
    rows = ["| metric | value |", "|---|---|"]
    for name, value in metrics.items():
        rows.append(f"| {name} | {'unavailable' if value is None else f'{value:.4f}' if isinstance(value, float) else value} |")
    if decoding:
        rows.append("")
        rows.append("Decoding: " + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in decoding.items()))
    return "\n".join(rows)


def normalize_results(
    metrics: Mapping[str, Any] | None, decoding: Mapping[str, Any] | None = None, dataset: str = "",
) -> dict[str, dict[str, Any]]:
    """`{task: {"metrics": {name: number or None}, "dataset", "split", "decoding"}}` from what callers pass.

    `metrics` is either flat (`{"cider": 0.5, ...}`: the caption task, with `decoding` and `dataset`
    from the arguments; a `split` in `decoding` is the split) or nested per task. Values that are
    not numbers or None (e.g. `compute_caption_metrics`' `unavailable` reasons) are left out.
    """
    if not metrics:
        return {}
    nested = all(isinstance(value, Mapping) for value in metrics.values())
    per_task = metrics if nested else {"captions": {**metrics, "decoding": decoding}}
    results = {}
    for task, entry in per_task.items():
        name = TASK_ALIASES.get(task, task)
        entry = dict(entry)
        task_decoding = dict(entry.get("decoding") or (decoding if nested else None) or {})
        split = entry.get("split") or task_decoding.get("split")
        values = entry["metrics"] if isinstance(entry.get("metrics"), Mapping) else {
            k: v for k, v in entry.items() if k not in _RESERVED
        }
        values = {k: (float(v) if v is not None else None) for k, v in values.items()
                  if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        results[name] = {
            "metrics": values, "dataset": entry.get("dataset") or dataset, "split": split,
            "decoding": task_decoding, "num_examples": entry.get("num_examples") or task_decoding.get("images"),
        }
    return results


def _dataset_id(dataset: str) -> tuple[str, str]:
    """(dataset_type, dataset_name) for model-index: a Hub id as it is; a local folder by its name."""
    if not dataset:
        return "unknown", "unknown"
    if _is_hub_dataset(dataset):
        return dataset, dataset
    name = Path(dataset).name or dataset
    readable = "MiniVLM shapes (synthetic)" if name == "shapes" else name
    return name, readable


def _is_hub_dataset(dataset: str) -> bool:
    return bool(HUB_ID.fullmatch(dataset)) and not Path(dataset).exists()


def eval_results(results: dict[str, dict[str, Any]]) -> list[EvalResult]:
    """One `EvalResult` per task and numeric metric; the decoding settings travel as `metric_args`."""
    out = []
    for task, entry in results.items():
        task_type, task_name = TASKS.get(task, ("image-text-to-text", task))
        dataset_type, dataset_name = _dataset_id(entry["dataset"])
        args = {k: v for k, v in entry["decoding"].items() if k not in ("split", "images")} or None
        for metric, value in entry["metrics"].items():
            if value is None:
                continue
            out.append(EvalResult(
                task_type=task_type, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                dataset_split=entry["split"], metric_type=metric, metric_name=metric, metric_value=value,
                metric_args=args,
            ))
    return out


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """The results section: per task, its dataset and split, a metric table and the decoding line."""
    if not results:
        return format_metrics(None)
    if list(results) == ["captions"]:  # the common case keeps its plain form
        entry = results["captions"]
        return format_metrics(entry["metrics"], entry["decoding"])
    parts = []
    for task, entry in results.items():
        heading = TASKS.get(task, (None, task))[1]
        where = ", ".join(x for x in (entry["dataset"] and _dataset_id(entry["dataset"])[1],
                                      entry["split"] and f"split {entry['split']}") if x)
        parts.append(f"### {heading}\n\n" + (f"Dataset: {where}.\n\n" if where else "")
                     + format_metrics(entry["metrics"], entry["decoding"]))
    return "\n\n".join(parts)


def describe_hardware() -> str:
    """The machine this runs on: the CPU model and cores, and the GPUs if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"CPU {cpu} ({os.cpu_count()} cores)"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        text += "; GPU " + ", ".join(f"{n} ×{names.count(n)}" for n in dict.fromkeys(names))
    else:
        text += "; no GPU"
    return text


def _training_time(trainer) -> str:
    """The run's training time: every segment's (first run and resumes) added up by
    `TrainingTimeCallback`; the Trainer's ``train_runtime`` (one segment) only where that is missing."""
    from .callbacks import TrainingTimeCallback

    if trainer is None:
        return "not measured"
    clock = next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TrainingTimeCallback)), None)
    stored = (trainer.state.stateful_callbacks or {}).get(TrainingTimeCallback.__name__)
    stored = stored.get("args", {}) if isinstance(stored, dict) else {}
    seconds, segments = (clock.seconds, clock.segments) if clock is not None else (
        stored.get("seconds"), stored.get("segments", 0))
    running = clock is not None and clock._started is not None
    if segments:
        text = f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"
        if segments > 1:
            text += f", {segments} training sessions added up (the run was resumed)"
        return text + (" so far (training in progress)" if running else "")
    history = trainer.state.log_history
    runtime = next((entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry), None)
    if runtime is None:
        return "not yet measured (training in progress)" if history else "not measured"
    return f"{runtime:.0f} s ({runtime / 60:.1f} min; the Trainer's train_runtime of the last session)"


def _epochs(epoch: float | None) -> str:
    """The epochs a number of steps amounts to: "1 epoch", "2.13 epochs"."""
    if not epoch:
        return "no training step yet"
    text = f"{epoch:.2f}".rstrip("0").rstrip(".")
    return f"{text} epoch" + ("" if text == "1" else "s")


def _data_description(tasks: Sequence[str]) -> str:
    """What the training rows held, in words, from their tasks (`minivlm.evaluation.tasks.data_tasks`)."""
    parts = []
    if "captions" in tasks:
        parts.append("images with reference captions, one drawn per image and epoch,")
    if "answers" in tasks:
        parts.append("questions about images with their answers" + (", some of them boxes on the 0–1000 grid"
                                                                    if "boxes" in tasks else ""))
    return " and ".join(parts).rstrip(",") or "no recorded data"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def word_overlap(prediction: str, references: Sequence[str]) -> float:
    """F1 of the prediction's words against its closest reference (0–1): a cheap per-example score."""
    best = 0.0
    predicted = _words(prediction)
    for reference in references:
        wanted = _words(reference)
        common = sum(min(predicted.count(w), wanted.count(w)) for w in set(predicted))
        if common:
            precision, recall = common / len(predicted), common / len(wanted)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def card_examples(predictions: Sequence[Mapping[str, Any]], dataset=None, count: int = 4) -> dict[str, Any]:
    """`examples` and `failures` for `write_model_card` from an evaluation's predictions.

    `predictions` are `{"id", "caption", "references"}` in dataset order (`evaluate_captions`'
    output); `dataset` (the evaluated rows, same order) lends each example its `image`. Failures
    are the `count` lowest-scoring predictions: on the shapes set (an `objects` column) the wrong
    ones by `score_caption`, else by word overlap with the closest reference.
    """
    predictions = [dict(p) for p in predictions]
    if not predictions:
        return {}
    has_images = dataset is not None and "image" in getattr(dataset, "column_names", ())
    if dataset is not None and "objects" in getattr(dataset, "column_names", ()):
        from minivlm.processing.shapes import score_caption

        for prediction, objects in zip(predictions, dataset["objects"]):
            prediction["score"] = float(score_caption(prediction["caption"], objects))
        criterion = "colour and shape of every object named right: 1, else 0"
    else:
        for prediction in predictions:
            prediction["score"] = word_overlap(prediction["caption"], prediction["references"])
        criterion = "word overlap (F1) with the closest reference"

    def with_image(index: int) -> dict[str, Any]:
        example = dict(predictions[index])
        if has_images:
            example["image"] = dataset[index]["image"]
        return example

    order = sorted(range(len(predictions)), key=lambda i: (predictions[i]["score"], i))
    failures = [with_image(i) for i in order[:count] if predictions[i]["score"] < 1.0]
    return {"examples": [with_image(i) for i in range(min(count, len(predictions)))], "failures": failures,
            "failure_criterion": criterion}


def answer_examples(records: Sequence[Mapping[str, Any]], questions=None, count: int = 4) -> dict[str, Any]:
    """`examples` and `failures` for `write_model_card` from `evaluate_answers`' records (a split that
    has questions and no captions). `questions` (the answered rows, same order) lends each its image;
    failures are the `count` answers with the lowest VQA accuracy below 1 (box answers are not ranked)."""
    if not records:
        return {}
    rows = list(questions) if questions is not None else [{} for _ in records]

    def example(index: int) -> dict[str, Any]:
        record, row = records[index], rows[index]
        image = row.get("image") or (row.get("images") or [None])[0]
        return {"id": record.get("id"), "question": record["question"], "prediction": record["prediction"],
                "references": record["answers"], "score": record.get("accuracy"), "image": image}

    scored = [i for i, r in enumerate(records) if r.get("accuracy") is not None and r["accuracy"] < 1.0]
    failures = [example(i) for i in sorted(scored, key=lambda i: (records[i]["accuracy"], i))[:count]]
    return {"examples": [example(i) for i in range(min(count, len(records)))], "failures": failures,
            "failure_criterion": "VQA accuracy against the reference answers"}


def _examples_table(folder: Path, examples: Sequence[Mapping[str, Any]], stem: str, score: bool = False) -> str:
    """A Markdown table of examples; their images are saved under `folder/examples/`."""
    header = "| image | prediction | reference |" + (" score |" if score else "")
    rows = [header, "|---|---|---|" + ("---|" if score else "")]
    for index, example in enumerate(examples):
        image = example.get("image")
        cell = str(example.get("id", ""))
        if image is not None and hasattr(image, "save"):
            (folder / "examples").mkdir(parents=True, exist_ok=True)
            name = f"examples/{stem}_{index}.png"
            thumbnail = image.convert("RGB")
            if max(thumbnail.size) < 128:  # the shapes set is 32–64 px: enlarge so it can be seen
                factor = -(-128 // max(thumbnail.size))
                thumbnail = thumbnail.resize((thumbnail.width * factor, thumbnail.height * factor), 0)
            thumbnail.thumbnail((256, 256))
            thumbnail.save(folder / name)
            cell = f'<img src="{name}" width="96" alt="{example.get("id", index)}">'
        prediction = example.get("prediction", example.get("caption", example.get("answer", "")))
        references = example.get("references") or example.get("reference") or []
        reference = references if isinstance(references, str) else (references[0] if references else "")
        question = example.get("question")
        shown = f"**Q:** {question} **A:** {prediction}" if question else prediction
        row = f"| {cell} | {_cell(shown)} | {_cell(reference)} |"
        if score:
            row += f" {example['score']:.2f} |" if isinstance(example.get("score"), (int, float)) else "  |"
        rows.append(row)
    return "\n".join(rows)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_model_card(
    folder: str,
    trainer=None,
    *,
    base_model: list[str] | None = None,
    dataset: str = "",
    training_args=None,
    num_train_examples: int = 0,
    prompt: str = "",
    freeze: str = "vision",
    metrics: dict | None = None,
    decoding: dict | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
    failures: Sequence[Mapping[str, Any]] | None = None,
    failure_criterion: str = "lowest score first",
    hardware: str | None = None,
    license: str = "apache-2.0",
    instruction_tuned: bool | None = None,
    trained_tasks: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
) -> Path:
    """Renders the card into `folder/README.md` and returns its path.

    Args:
        folder: the model folder (its `README.md` is written; example images go to `examples/`).
        trainer: the Trainer, for the model's shapes, the arguments, the steps, the last loss and
            the training time (`train_runtime`); None writes a card from the other arguments.
        metrics: `{task: {metric: value}}` (with optional `dataset`, `split`, `decoding` per task) or
            a flat `{metric: value}` for captions; see `normalize_results`.
        decoding: the caption task's decoding settings (for flat `metrics`).
        examples: a few predictions beside their references: dicts with `prediction` (or
            `caption` / `answer`), `references`, optional `image` (PIL), `id`, `question`.
        failures: the same form, the lowest-scoring ones (with `score`); `card_examples` makes both.
        hardware: what trained it; default: this machine (`describe_hardware`).
        instruction_tuned: whether it answers questions; default: the model's
            ``config.instruction_tuned`` (False without a model). The text follows it, never the results.
        trained_tasks: what the training rows held (`minivlm.evaluation.tasks.data_tasks`: "captions",
            "answers", "boxes"); default: read from the trainer's training set, else captions (and
            answers when instruction-tuned).
        formats: the training formats as named (`--dataset_format`), shown beside the data.

    The model-index lists exactly the results given in `metrics`: what was evaluated.

    YAML metadata: `library_name: transformers`, `pipeline_tag: image-text-to-text`, `base_model`,
    `datasets`, `metrics`, `license`, tags and the `model-index` of every numeric result.
    """
    folder = Path(folder)
    model = trainer.accelerator.unwrap_model(trainer.model) if trainer is not None else None
    args = training_args if training_args is not None else getattr(trainer, "args", None)
    history = trainer.state.log_history if trainer is not None else []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    hub_id = getattr(args, "hub_model_id", None) or folder.resolve().name
    model_name = hub_id.split("/")[-1]
    results = normalize_results(metrics, decoding, dataset)
    if instruction_tuned is None:
        instruction_tuned = bool(getattr(getattr(model, "config", None), "instruction_tuned", False))
    if trained_tasks is None and getattr(trainer, "train_dataset", None) is not None:
        from minivlm.evaluation.tasks import data_tasks

        trained_tasks = data_tasks(trainer.train_dataset)
    if trained_tasks is None:
        trained_tasks = ["captions", "answers"] if instruction_tuned else ["captions"]
    trains_captions = "captions" in trained_tasks
    trains_boxes = "boxes" in trained_tasks
    metric_names = list(CAPTION_METRICS) if "captions" in results else []
    for entry in results.values():
        metric_names += [name for name in entry["metrics"] if name not in metric_names
                         and not re.fullmatch(r"(bleu_\d|rouge_l|meteor|cider)", name)]
    tags = ["minivlm", "image-to-text", "vision-language", "custom_code"]
    tags += ["image-captioning"] if trains_captions else []
    tags += ["visual-question-answering"] if instruction_tuned else []
    tags += ["grounding"] if trains_boxes else []
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license=license,
        base_model=base_model or None,
        datasets=[dataset] if _is_hub_dataset(dataset) else None,
        metrics=metric_names or None,
        tags=tags,
        model_name=model_name,
        eval_results=eval_results(results) or None,
    )
    vision_config = model.config.vision_config if model is not None else None
    dataset_label = _dataset_id(dataset)[1] if dataset else "its training set"
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        repo_id=hub_id,
        vision_description=_describe(vision_config) if model is not None else "ViT",
        text_description=_describe(model.config.text_config) if model is not None else "Llama",
        image_seq_length=model.config.image_seq_length if model is not None else "a fixed number of",
        image_size=getattr(vision_config, "image_size", 224),
        prompt=prompt,
        dataset=dataset,
        dataset_description=dataset_label,
        num_train_examples=num_train_examples,
        freeze=freeze,
        epochs_trained=_epochs(trainer.state.epoch if trainer is not None else None),
        learning_rate=getattr(args, "learning_rate", ""),
        batch_size=getattr(args, "per_device_train_batch_size", ""),
        precision="bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32",
        global_step=trainer.state.global_step if trainer is not None else 0,
        final_loss=f"{losses[-1]:.4f}" if losses else "n/a",
        results=format_results(results),
        instruction_tuned=instruction_tuned,
        trains_captions=trains_captions,
        trains_boxes=trains_boxes,
        evaluated_answers="answers" in results or "boxes" in results,
        data_description=_data_description(trained_tasks),
        formats=list(formats or []),
        examples=_examples_table(folder, examples, "example") if examples else "",
        failures=_examples_table(folder, failures, "failure", score=True) if failures else "",
        failure_criterion=failure_criterion,
        hardware=hardware or describe_hardware(),
        training_time=_training_time(trainer),
        year=datetime.date.today().year,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "README.md"
    if path.is_file() and not is_project_card(path):  # training refuses such a folder up front
        logger.warning("%s is not a model card MiniVLM wrote: kept as it is, the model card was not written.", path)
        return path
    card.save(path)
    return path
