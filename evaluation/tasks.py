"""One evaluation for every training format: what a dataset holds, by task, and the sets that score it.

The tasks are ``captions`` (an image and its reference captions), ``answers`` (a question about
images and its reference answers) and ``boxes`` (answers that are ``[x1, y1, x2, y2]`` boxes on the
0–1000 grid, see `minivlm.processing.grounding`). Every training format reduces to them:

- `data_tasks`: the tasks a dataset's rows really hold, read from their content (caption view,
  conversation view, or the training view of a mixture where empty columns mean nothing).
- `evaluation_sets`: an evaluation split in any view as the two sets the scorers take: captions
  (``image``, ``captions``, ``id``, and the shapes ``objects`` when known) for `evaluate_captions`,
  and questions for `evaluate_answers`: every assistant turn of a conversation, asked with the turns
  before it as context (``images``, ``messages``, ``question``, ``answers``, ``id``).
- `load_evaluation_sets`: the same from a dataset name or folder, as `minivlm-evaluate` reads it: the
  shapes set (captions and its typed questions), a caption set, a chat / LLaVA / cauldron set, a VQA
  imagefolder or Hub-style set (``question`` + ``answer`` / ``answers``), with or without captions.
- `scores_by_task`: flat scores (``cider``, ``vqa_accuracy``, ``box_mean_iou``, ...) grouped by task,
  as the model card's model-index lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import datasets
import pyarrow.compute as pc

from minivlm.processing.conversations import MESSAGES
from minivlm.processing.grounding import BOX_PATTERN

__all__ = ["TASKS", "EvaluationSets", "data_tasks", "evaluation_sets", "load_evaluation_sets", "scores_by_task"]

logger = logging.getLogger(__name__)

TASKS = ("captions", "answers", "boxes")
QUESTION_FEATURES = datasets.Features({
    "images": datasets.List(datasets.Image()), "messages": MESSAGES, "question": datasets.Value("string"),
    "answers": datasets.List(datasets.Value("string")), "id": datasets.Value("string"), "type": datasets.Value("string"),
})
# Caption view column names that `to_caption_dataset` auto-detects (numbered `caption_N` aside).
_CAPTION_COLUMNS = ("captions", "caption", "text", "sentences")


@dataclass
class EvaluationSets:
    """An evaluation split by task: either set may be None (a VQA set has no captions, a caption set no questions)."""

    captions: datasets.Dataset | None = None
    questions: datasets.Dataset | None = None

    def __bool__(self) -> bool:
        return self.captions is not None or self.questions is not None


def data_tasks(dataset: datasets.Dataset) -> list[str]:
    """The tasks (`TASKS`, in that order) that the rows of ``dataset`` hold, from their content.

    ``captions`` when some row has a non-empty caption list; ``answers`` when some conversation has
    an assistant turn with text; ``boxes`` when some assistant turn holds a box. A caption set in the
    training view (an empty ``messages`` list per row) is a caption set only.
    """
    columns = [c for c in ("captions", "messages") if c in dataset.column_names]
    found: set[str] = set()
    for table in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        if "captions" in table.column_names and "captions" not in found:
            longest = pc.max(pc.list_value_length(table["captions"])).as_py()
            if longest:
                found.add("captions")
        if "messages" in table.column_names and not {"answers", "boxes"} <= found:
            turns = pc.list_flatten(table["messages"])
            assistant = pc.filter(turns, pc.equal(pc.struct_field(turns, "role"), "assistant"))
            texts = pc.drop_null(pc.struct_field(pc.list_flatten(pc.struct_field(assistant, "content")), "text"))
            if pc.any(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0)).as_py():
                found.add("answers")
            if len(texts) and pc.any(pc.match_substring_regex(texts, BOX_PATTERN.pattern)).as_py():
                found.add("boxes")
        if found == set(TASKS):
            break
    return [task for task in TASKS if task in found]


def _text(parts: list[dict[str, Any]]) -> str:
    return " ".join((p.get("text") or "").strip() for p in parts if p.get("type") != "image").strip()


def conversation_questions(dataset: datasets.Dataset) -> datasets.Dataset | None:
    """Every assistant turn of a conversation-view dataset as a question row, or None when there are none.

    Turn k is asked with the conversation before it (earlier questions and their reference answers)
    as context, as a chat user would ask it; its images are those the context shows. Rows without an
    image before the question are left out: the scores are about images.
    """
    images_column = dataset.select_columns(["images"]).cast_column(
        "images", datasets.List(datasets.Image(decode=False)))["images"]
    rows = []
    for messages, images, example_id in zip(dataset["messages"], images_column, dataset["id"]):
        images = list(images or [])
        shown = 0
        for index, message in enumerate(messages):
            if message["role"] == "user":
                shown += sum(p.get("type") == "image" for p in message["content"])
                continue
            if message["role"] != "assistant" or index == 0 or messages[index - 1]["role"] != "user":
                continue
            answer = _text(message["content"])
            if not answer or shown == 0 or shown > len(images):
                continue
            rows.append({"images": images[:shown], "messages": messages[:index],
                         "question": _text(messages[index - 1]["content"]), "answers": [answer],
                         "id": str(example_id), "type": None})
    return datasets.Dataset.from_list(rows, features=QUESTION_FEATURES) if rows else None


def evaluation_sets(
    dataset: datasets.Dataset | None, *, max_rows: int | None = None, objects: Mapping[str, Any] | None = None,
) -> EvaluationSets:
    """An evaluation split in any view (caption, conversation or training view) as `EvaluationSets`.

    Args:
        dataset: the split (None: nothing to evaluate).
        max_rows: use the first N rows only (images of a caption set, conversations of a chat set).
        objects: the shapes set's objects by id (`minivlm.processing.loading.shapes_objects`): attached to
            the captions set as an ``objects`` column, for `shapes_accuracy`, when every id has them.
    """
    if dataset is None:
        return EvaluationSets()
    if max_rows is not None and max_rows < len(dataset):
        dataset = dataset.select(range(max_rows))
    columns = dataset.column_names
    captions = questions = None
    if "captions" in columns and "messages" not in columns:  # the caption view
        captions = dataset
    elif "captions" in columns:  # the training view: rows with captions are caption rows
        keep = [i for i, refs in enumerate(dataset["captions"]) if refs]
        if keep:
            rows = dataset.select(keep)
            captions = datasets.Dataset.from_dict(
                {"image": [images[0] for images in rows.select_columns(["images"]).cast_column(
                    "images", datasets.List(datasets.Image(decode=False)))["images"]],
                 "captions": rows["captions"], "id": rows["id"]},
                features=datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string")),
                                            "id": datasets.Value("string")}))
    if "messages" in columns:
        questions = conversation_questions(dataset)
    if captions is not None and objects and "objects" not in captions.column_names:
        if all(i in objects for i in captions["id"]):
            captions = captions.add_column("objects", [objects[i] for i in captions["id"]])
    return EvaluationSets(captions, questions)


def _has_caption_column(columns: list[str], caption_column: str | list[str] | None) -> bool:
    if caption_column:
        return True
    return any(c in columns for c in _CAPTION_COLUMNS) or any(c.startswith("caption_") for c in columns)


def load_evaluation_sets(
    source: str,
    split: str,
    *,
    dataset_config: str | None = None,
    image_column: str = "image",
    caption_column: str | list[str] | None = None,
    image_folder: str | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    questions: bool = True,
) -> EvaluationSets:
    """A split of a dataset (Hub id, local folder, LLaVA ``.json`` file, or a resolved shapes folder) as
    `EvaluationSets`, whatever its training format.

    Captions come from the caption view (`minivlm.processing.loading.load_split`, with the shapes
    ``objects``) when the split has a caption column. Questions, unless ``questions`` is False: the
    shapes set's typed questions, VQA columns (``question`` + ``answer`` / ``answers``: every given
    answer is a reference), or the assistant turns of a chat / LLaVA / cauldron set. ``max_samples``
    keeps a seeded subset of the rows.
    """
    from minivlm.processing.conversations import clean_conversations, from_llava
    from minivlm.processing.loading import detect_format, load_raw_split, load_split, to_conversations
    from minivlm.evaluation.answering import load_questions

    def subset(ds: datasets.Dataset) -> datasets.Dataset:
        if max_samples is not None and max_samples < len(ds):
            return ds.shuffle(seed=seed).select(range(max_samples))
        return ds

    if source.endswith(".json"):
        chats = clean_conversations(subset(from_llava(source, image_folder)), split_name=split)
        return EvaluationSets(None, conversation_questions(chats) if questions else None)
    raw = load_raw_split(source, split, dataset_config=dataset_config)
    fmt = detect_format(raw)
    captions = None
    if fmt in ("captions", "vqa", "shapes-questions") and image_column in raw.column_names \
            and _has_caption_column(raw.column_names, caption_column):
        captions = load_split(source, split, dataset_config=dataset_config, image_column=image_column,
                              caption_column=caption_column, max_samples=max_samples, seed=seed)
    asked = None
    if questions:
        asked = load_questions(source, split, max_samples, seed)  # the shapes set's, or VQA columns
        if asked is None and fmt in ("chat", "llava", "cauldron"):
            chats = clean_conversations(subset(to_conversations(raw, fmt, image_folder=image_folder)), split_name=split)
            asked = conversation_questions(chats)
    return EvaluationSets(captions, asked)


# Which task a flat score belongs to, by name.
def _task_of(name: str) -> str | None:
    if name.startswith("box_"):
        return "boxes"
    if name.startswith("vqa_accuracy"):
        return "answers"
    if name.startswith(("bleu_", "rouge", "meteor", "cider", "shapes_accuracy")):
        return "captions"
    return None


def scores_by_task(scores: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Flat scores grouped by task: ``{"captions": {"cider": ...}, "answers": {"vqa_accuracy": ...},
    "boxes": {"box_accuracy": ...}}``; tasks without a number are left out, other keys ignored."""
    grouped: dict[str, dict[str, float]] = {}
    for name, value in scores.items():
        task = _task_of(name)
        if task is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            grouped.setdefault(task, {})[name] = float(value)
    return {task: grouped[task] for task in TASKS if task in grouped}
