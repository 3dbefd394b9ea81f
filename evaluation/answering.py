"""Question answering and grounding evaluation: batched answers, VQA accuracy, box IoU.

- `answer_questions`: one answer per (image, question), batched; each question is a one-turn
  conversation rendered by the processor's chat template, as `pipeline("image-text-to-text")` does.
- `evaluate_answers`: answers scored against their references: `vqa_accuracy` (VQAv2 normalisation)
  over all questions and per question type, and, for the questions whose reference holds a box
  (`[x1, y1, x2, y2]`, see `minivlm.processing.grounding`), `box_accuracy` (IoU >= 0.5) and `box_mean_iou`.
- `evaluate_chat`: several questions about one image asked in one chat, each after the model's own
  earlier answers (as `pipeline("image-text-to-text")` with the history and the app ask them), scored
  per turn: what a user sees from the second question on.
- `load_question_dataset`: the questions of a split of the shapes set (its `metadata.jsonl`), flat:
  ``image``, ``id``, ``type``, ``question``, ``answer``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import datasets
import torch

from minivlm.evaluation.generation import generate_texts, generation_kwargs
from minivlm.processing.conversations import chat_messages
from minivlm.processing.grounding import parse_boxes
from minivlm.evaluation.boxes import BOX_IOU_THRESHOLD, box_iou, box_metrics
from minivlm.evaluation.vqa import vqa_accuracy

__all__ = ["QUESTION_SCORE_KEYS", "answer_decoding", "answer_questions", "answer_chats", "evaluate_answers",
           "evaluate_chat", "load_question_dataset", "load_questions"]

logger = logging.getLogger(__name__)

# The numbers `evaluate_answers` returns (per-type accuracies come as `vqa_accuracy_<type>` besides).
QUESTION_SCORE_KEYS = ("vqa_accuracy", "box_accuracy", "box_mean_iou")


def answer_decoding(model: torch.nn.Module, max_new_tokens: int | None = None) -> dict[str, Any]:
    """How `evaluate_answers` decodes `model`'s answers (recorded beside the scores in the model card):
    greedy, with the model's `generation_config` defaults, `max_new_tokens` when given."""
    return generation_kwargs(model, max_new_tokens=max_new_tokens, do_sample=False)


def answer_questions(
    model: torch.nn.Module,
    processor,
    images: list[Any],
    questions: list[str | list[dict[str, Any]]],
    *,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    progress: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy answers to `questions[i]` about `images[i]`, in order (stripped, special tokens removed), at most
    `max_new_tokens` tokens each (None: the model's `generation_config`, see `generation_kwargs`).

    A question is a string (asked as one user turn: the image, then the text) or a conversation that
    ends with the user's turn (chat-format messages, earlier turns as context); `images[i]` is one
    image or the list of the images its conversation shows, in order.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images but {len(questions)} questions")
    return answer_chats(model, processor, images, [[] for _ in questions], questions, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, progress=progress, **generate_kwargs)


def answer_chats(
    model: torch.nn.Module,
    processor,
    images: list[Any],
    histories: list[list[tuple[str, str]]],
    questions: list[str],
    *,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    progress: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy answers to `questions[i]` about `images[i]` after the turns `histories[i]` (`(question, answer)`
    pairs, oldest first; empty for a first question), in order (stripped, special tokens removed). A
    question given as chat messages (ending with the user's turn) is asked as it is, its history ignored."""
    if not len(images) == len(histories) == len(questions):
        raise ValueError(f"{len(images)} images, {len(histories)} histories and {len(questions)} questions")
    prompts = [processor.apply_chat_template(question if isinstance(question, list) else chat_messages(history, question),
                                             add_generation_prompt=True) for history, question in zip(histories, questions)]
    return generate_texts(model, processor, images, prompts, batch_size=batch_size, progress=progress, desc="Answering",
                          max_new_tokens=max_new_tokens, do_sample=False, **generate_kwargs)


def evaluate_answers(
    model: torch.nn.Module, processor, dataset: datasets.Dataset | list[dict[str, Any]], *, batch_size: int = 32,
    max_new_tokens: int | None = None, progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Answers every question of `dataset` (rows with ``image``, ``question``, ``answer`` or ``answers``, and
    optionally ``type`` and ``id``; or, from a conversation (`minivlm.evaluation.tasks`), ``images`` and the
    ``messages`` before the answer) and scores them.

    Returns ``(predictions, metrics)``: predictions ``[{"id", "type", "question", "prediction",
    "answers"}]``; metrics ``vqa_accuracy`` (over the questions without a box), ``vqa_accuracy_<type>``
    per type, and for the questions whose reference is a box ``box_accuracy``, ``box_mean_iou``.
    """
    rows = list(dataset)
    predictions = answer_questions(
        model, processor, [r["images"] if r.get("images") else r["image"] for r in rows],
        [r.get("messages") or r["question"] for r in rows],
        batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    records, by_type = [], defaultdict(list)
    predicted_boxes, target_boxes = [], []
    for row, prediction in zip(rows, predictions):
        references = row.get("answers") or [row["answer"]]
        references = [references] if isinstance(references, str) else list(references)
        record = {"id": row.get("id"), "type": row.get("type"), "question": row["question"],
                  "prediction": prediction, "answers": references}
        target = parse_boxes(references[0])
        if target:
            predicted = parse_boxes(prediction)
            predicted_boxes.append(predicted[0] if predicted else None)
            target_boxes.append(target[0])
        else:
            record["accuracy"] = vqa_accuracy(prediction, references)
            by_type[row.get("type") or "all"].append(record["accuracy"])
        records.append(record)
    metrics: dict[str, float] = {}
    scored = [a for values in by_type.values() for a in values]
    if scored:
        metrics["vqa_accuracy"] = sum(scored) / len(scored)
        if len(by_type) > 1:
            metrics.update({f"vqa_accuracy_{t}": sum(v) / len(v) for t, v in sorted(by_type.items())})
    if target_boxes:
        metrics.update(box_metrics(predicted_boxes, target_boxes))
    return records, metrics


def _correct(prediction: str, references: list[str]) -> float:
    """1/0 for a box (IoU >= 0.5 with the first reference box), the VQA accuracy otherwise."""
    target = parse_boxes(references[0])
    if target:
        predicted = parse_boxes(prediction)
        return float(bool(predicted) and box_iou(predicted[0], target[0]) >= BOX_IOU_THRESHOLD)
    return vqa_accuracy(prediction, references)


def evaluate_chat(
    model: torch.nn.Module, processor, dataset: datasets.Dataset | list[dict[str, Any]], *, turns: int = 4,
    batch_size: int = 32, max_new_tokens: int | None = None, progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Each image's first `turns` questions asked in one chat, every question after the earlier questions and
    the model's own answers to them.

    `dataset`: rows with ``image``, ``id``, ``question``, ``answer`` (or ``answers``), an image's rows in the
    order they are asked (`load_question_dataset`); images with fewer than `turns` questions are left out.
    A box answer is right at IoU >= 0.5 with the reference, any other by VQA accuracy.

    Returns ``(chats, metrics)``: chats ``[{"id", "turns": [{"question", "prediction", "answers",
    "correct"}]}]``; metrics ``chat_accuracy_turn_<k>`` for k = 1..turns and ``chat_accuracy_later``, the
    mean over turns 2..turns (what a conversation gives after its first answer).
    """
    by_image: dict[str, list[dict[str, Any]]] = {}
    for row in dataset:
        by_image.setdefault(str(row["id"]), []).append(row)
    chats = [{"id": key, "rows": rows[:turns]} for key, rows in by_image.items() if len(rows) >= turns]
    if not chats:
        raise ValueError(f"no image has {turns} questions; ask fewer turns.")
    histories: list[list[tuple[str, str]]] = [[] for _ in chats]
    for chat in chats:
        chat["turns"] = []
    for turn in range(turns):
        rows = [chat["rows"][turn] for chat in chats]
        predictions = answer_chats(model, processor, [r["image"] for r in rows], histories,
                                   [r["question"] for r in rows], batch_size=batch_size,
                                   max_new_tokens=max_new_tokens, progress=progress)
        for chat, history, row, prediction in zip(chats, histories, rows, predictions):
            references = row.get("answers") or [row["answer"]]
            references = [references] if isinstance(references, str) else list(references)
            chat["turns"].append({"question": row["question"], "prediction": prediction, "answers": references,
                                  "correct": _correct(prediction, references)})
            history.append((row["question"], prediction))
    metrics = {f"chat_accuracy_turn_{k + 1}": sum(c["turns"][k]["correct"] for c in chats) / len(chats)
               for k in range(turns)}
    later = [c["turns"][k]["correct"] for c in chats for k in range(1, turns)]
    if later:
        metrics["chat_accuracy_later"] = sum(later) / len(later)
    return [{"id": c["id"], "turns": c["turns"]} for c in chats], metrics


def load_question_dataset(dataset: str, split: str = "test", max_samples: int | None = None) -> datasets.Dataset:
    """The questions of a split of the shapes set, one row each: ``image``, ``id``, ``type``, ``question``, ``answer``.

    `max_samples` keeps the questions of the first N images.
    """
    metadata = Path(dataset) / split / "metadata.jsonl"
    if not metadata.is_file():
        raise ValueError(f"{metadata} not found; pass the folder the shapes set was written to (--shapes_dir).")
    records = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
    if records and "questions" not in records[0]:
        raise ValueError(f"{metadata} holds no questions: the set was written by an older version; generate it again.")
    rows = {"image": [], "id": [], "type": [], "question": [], "answer": []}
    for record in records[:max_samples]:
        for qa in record["questions"]:
            rows["image"].append(str(metadata.parent / record["file_name"]))
            rows["id"].append(str(record["id"]))
            for key in ("type", "question", "answer"):
                rows[key].append(qa[key])
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


def load_questions(
    source: str, split: str, max_samples: int | None = None, seed: int = 42, dataset_config: str | None = None,
) -> datasets.Dataset | None:
    """Questions to score in a split, or None when it has none: the shapes set's (its metadata), or a
    dataset with VQA columns (``image``, ``question``, ``answer`` or ``answers``; `max_samples` rows, seeded),
    a local imagefolder whose metadata rows hold them included. Rows without a question or an answer
    are left out (with a warning)."""
    metadata = Path(source) / split / "metadata.jsonl"
    if metadata.is_file() and '"questions"' in metadata.read_text(encoding="utf-8").split("\n", 1)[0]:
        return load_question_dataset(source, split, max_samples)
    # Any other folder (a VQA imagefolder: metadata rows with file_name, question, answer) or Hub id.
    from minivlm.processing.loading import load_raw_split

    try:
        raw = load_raw_split(source, split, dataset_config=dataset_config)
    except (ValueError, FileNotFoundError):
        return None
    if "question" not in raw.column_names or not {"answer", "answers"} & set(raw.column_names) \
            or "image" not in raw.column_names:
        return None
    if max_samples is not None and max_samples < len(raw):
        raw = raw.shuffle(seed=seed).select(range(max_samples))
    column = "answers" if "answers" in raw.column_names else "answer"

    def flatten(batch):
        out = []
        for answers in batch[column]:
            answers = [answers] if answers is None or isinstance(answers, (str, dict)) else answers
            texts = [a.get("answer", "") if isinstance(a, dict) else a for a in answers]
            out.append([t.strip() for t in texts if isinstance(t, str) and t.strip()])
        return {"answers": out}

    raw = raw.map(flatten, batched=True, remove_columns=[column])
    usable = [i for i, (q, a) in enumerate(zip(raw["question"], raw["answers"])) if q and q.strip() and a]
    if len(usable) < len(raw):
        logger.warning("split %r of %s: %d of %d questions have no question text or no answer; left out",
                       split, source, len(raw) - len(usable), len(raw))
        raw = raw.select(usable)
    return raw if len(raw) else None
