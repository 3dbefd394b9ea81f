"""Instruction data adapters: any supported source as conversations, cleaning, and mixtures.

The conversation view is the chat format TRL uses, as a `datasets.Dataset` with the columns

- ``messages``: ``[{"role": "user" | "assistant" | "system", "content": [{"type": "image" | "text", "text": str | None}]}]``,
- ``images``: the images (a list of `datasets.Image()`), in the order their image parts appear,
- ``id``: a string id.

Adapters (each returns that view):

- `from_chat`: HF chat format (``messages`` + ``images``; string contents become one text part),
- `from_llava`: LLaVA's instruct JSON (``conversations`` with ``from``/``value``, ``<image>`` markers,
  ``image``: a path, relative to ``image_folder``, or a list of them),
- `from_cauldron`: the_cauldron style (``images``, ``texts`` with ``user``/``assistant``; the images
  go with the first question),
- `from_vqa`: VQA columns (``question`` + ``answer``, or ``answers``: a list of strings or of
  ``{"answer": ...}`` dicts, VQAv2 style; the most frequent answer is the target),
- `from_shapes_questions`: the questions the synthetic shapes set writes in its metadata;
  `from_shapes_instruct`: its captions and questions together, one row per image.

Caption sources stay in the caption view of `minivlm.processing.adapters` (``image``, ``captions``,
``id``): the collator turns each into a one-turn conversation with a reference drawn per epoch.
`to_training_view` gives both views one schema so they mix (`mix_datasets`, with weights).
`clean_conversations` drops unusable rows with one counted warning, as `clean_caption_dataset` does.
Which adapter a source goes through is the format registry's business (`minivlm.processing.loading`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets

from minivlm.image_loading import short
from minivlm.processing_minivlm import IMAGE_TOKEN

__all__ = [
    "MESSAGES", "CONVERSATION_FEATURES", "TRAINING_FEATURES", "from_chat", "from_llava", "from_cauldron", "from_vqa",
    "from_shapes_questions", "from_shapes_instruct", "clean_conversations", "to_training_view", "check_weights",
    "mix_datasets", "training_texts", "chat_messages",
]

logger = logging.getLogger(__name__)

_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}
MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.List(_PART)})
CONVERSATION_FEATURES = datasets.Features(
    {"messages": MESSAGES, "images": datasets.List(datasets.Image()), "id": datasets.Value("string")}
)
TRAINING_FEATURES = datasets.Features({**CONVERSATION_FEATURES, "captions": datasets.List(datasets.Value("string"))})
_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def chat_messages(history: list[tuple[str, str]], question: str) -> list[dict[str, Any]]:
    """The messages of a chat about one image: the earlier `(question, answer)` turns, then `question`; the
    image comes with the first question, as the pipeline and the app send it (every prompt of one chat
    then starts the same way up to the image, so its encoded prefix can be reused)."""
    messages = []
    for index, (asked, answered) in enumerate([*history, (question, None)]):
        content = ([{"type": "image"}] if index == 0 else []) + [{"type": "text", "text": asked}]
        messages.append({"role": "user", "content": content})
        if answered is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    return messages


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


_IMAGE = {"type": "image", "text": None}


def _split_markers(value: str) -> list[dict[str, Any]]:
    """A LLaVA turn's text as parts: an image part for every `<image>` marker, the text around it."""
    parts = []
    for index, piece in enumerate(value.split(IMAGE_TOKEN)):
        if index:
            parts.append(dict(_IMAGE))
        piece = piece.strip("\n")
        if piece:
            parts.append(_text(piece))
    return parts


def _normalise_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if content is None:
        parts = []
    elif isinstance(content, str):
        parts = [_text(content)]
    else:  # image parts may carry the image itself ({"type": "image", "image": ...}): it goes to `images`
        parts = [dict(_IMAGE) if part.get("type") == "image" else _text(part.get("text") or "") for part in content]
    return {"role": message.get("role"), "content": parts}


def _image_value(image: Any, image_folder: str | Path | None) -> Any:
    if isinstance(image, str) and image_folder is not None and not Path(image).is_absolute():
        return str(Path(image_folder) / image)
    return image


def _build(rows: Iterable[dict[str, Any]]) -> datasets.Dataset:
    rows = list(rows)
    return datasets.Dataset.from_list(rows, features=CONVERSATION_FEATURES)


def _undecoded(ds: datasets.Dataset, column: str) -> list[Any]:
    """A column's values with its images not decoded (`{"bytes", "path"}`): an adapter only moves them, and
    `clean_conversations` checks them from their headers, so a huge or broken image is never decoded here."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        feature = datasets.Image(decode=False)
    elif isinstance(feature, (datasets.List, datasets.LargeList)) and isinstance(feature.feature, datasets.Image):
        feature = datasets.List(datasets.Image(decode=False))
    else:
        return ds[column]
    return ds.select_columns([column]).cast_column(column, feature)[column]


def _ids(ds: datasets.Dataset) -> list[str]:
    return [str(i) for i in ds["id"]] if "id" in ds.column_names else [str(i) for i in range(len(ds))]


def from_chat(ds: datasets.Dataset, messages_column: str = "messages", images_column: str = "images") -> datasets.Dataset:
    """HF chat format (TRL's): a ``messages`` column and an ``images`` column (a list, or one image)."""
    _require(ds, [messages_column], "chat")
    images = _undecoded(ds, images_column) if images_column in ds.column_names else [[] for _ in range(len(ds))]
    rows = []
    for messages, row_images, example_id in zip(ds[messages_column], images, _ids(ds)):
        if row_images is None:
            row_images = []
        elif not isinstance(row_images, list):
            row_images = [row_images]
        rows.append({"messages": [_normalise_message(m) for m in messages], "images": row_images, "id": example_id})
    return _build(rows)


def from_llava(
    source: datasets.Dataset | Sequence[dict[str, Any]] | str | Path, image_folder: str | Path | None = None
) -> datasets.Dataset:
    """LLaVA's instruct JSON: rows ``{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}``.

    ``source`` is a Dataset, a list of rows, or the path of the JSON file (then ``image_folder``
    defaults to its folder). ``<image>`` markers in the turns become image parts; ``image`` is a
    path (relative to ``image_folder``), a list of paths, or absent (a text-only row). Paths are
    only joined here; `clean_conversations` with the same ``image_folder`` drops the rows whose
    images resolve outside it, or are missing (as training does).
    """
    if isinstance(source, (str, Path)):
        image_folder = image_folder if image_folder is not None else Path(source).parent
        source = json.loads(Path(source).read_text(encoding="utf-8"))
    records = source.to_list() if isinstance(source, datasets.Dataset) else list(source)
    rows = []
    for index, record in enumerate(records):
        messages = [{"role": _LLAVA_ROLES.get(str(turn.get("from", "")).lower(), str(turn.get("from"))),
                     "content": _split_markers(turn.get("value") or "")} for turn in record.get("conversations") or []]
        image = record.get("image")
        images = [] if image is None else image if isinstance(image, list) else [image]
        # A path that is not a string (a number, an object) is kept as no image, for cleaning to count.
        rows.append({"messages": messages, "images": [_image_value(i, image_folder) if isinstance(i, str) else None
                                                      for i in images], "id": str(record.get("id", index))})
    return _build(rows)


def from_cauldron(ds: datasets.Dataset, images_column: str = "images", texts_column: str = "texts") -> datasets.Dataset:
    """the_cauldron style: ``images`` (a list) and ``texts`` (``[{"user", "assistant", "source"}]``).

    The images go at the start of the first user turn, as the_cauldron's own formatting does.
    """
    _require(ds, [images_column, texts_column], "cauldron")
    rows = []
    for images, texts, example_id in zip(_undecoded(ds, images_column), ds[texts_column], _ids(ds)):
        images = list(images or [])
        messages = []
        for turn, qa in enumerate(texts or []):
            user = ([dict(_IMAGE) for _ in images] if turn == 0 else []) + [_text(qa.get("user") or "")]
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": [_text(qa.get("assistant") or "")]}]
        rows.append({"messages": messages, "images": images, "id": example_id})
    return _build(rows)


def vqa_target(answers: Sequence[Any]) -> str:
    """The training answer of a VQA row: the most frequent of its answers (ties: the first given)."""
    texts = [a.get("answer", "") if isinstance(a, dict) else a for a in answers]
    texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        return ""
    counts = Counter(texts)
    return max(texts, key=lambda t: (counts[t], -texts.index(t)))


def from_vqa(
    ds: datasets.Dataset, image_column: str = "image", question_column: str = "question", answer_column: str | None = None
) -> datasets.Dataset:
    """VQA columns: ``image``, ``question`` and ``answer`` (a string) or ``answers`` (VQAv2's list)."""
    if answer_column is None:
        answer_column = "answer" if "answer" in ds.column_names else "answers"
    _require(ds, [image_column, question_column, answer_column], "vqa")
    rows = []
    for image, question, answer, example_id in zip(_undecoded(ds, image_column), ds[question_column],
                                                   ds[answer_column], _ids(ds)):
        target = answer.strip() if isinstance(answer, str) else vqa_target(answer or [])
        rows.append({"messages": [{"role": "user", "content": [dict(_IMAGE), _text(question or "")]},
                                  {"role": "assistant", "content": [_text(target)]}],
                     "images": [image], "id": example_id})
    return _build(rows)


def from_shapes_questions(ds: datasets.Dataset, max_turns: int | None = None) -> datasets.Dataset:
    """The shapes set's imagefolder split (``image``, ``questions``, ``id``): each image's questions as one
    multi-turn conversation (see `minivlm.processing.shapes.shapes_conversation`)."""
    from minivlm.processing.shapes import shapes_conversation

    _require(ds, ["image", "questions"], "shapes-questions")

    def convert(batch):
        return {"messages": [shapes_conversation(q, max_turns) for q in batch["questions"]],
                "images": [[image] for image in batch["image"]], "id": [str(i) for i in batch["id"]]}

    return ds.map(convert, batched=True, remove_columns=ds.column_names, features=CONVERSATION_FEATURES)


def from_shapes_instruct(ds: datasets.Dataset) -> datasets.Dataset:
    """The shapes set's imagefolder split as one row per image with its captions AND its questions (the
    training view, `TRAINING_FEATURES`): the collator packs this epoch's caption and every question as
    single-turn examples sharing the image (see `minivlm.processing.collator.ConversationCollator.encode_packed`)."""
    from minivlm.processing.shapes import shapes_conversation

    _require(ds, ["image", "questions", "captions"], "shapes-instruct")

    def convert(batch):
        return {"messages": [shapes_conversation(q) for q in batch["questions"]],
                "images": [[image] for image in batch["image"]], "captions": batch["captions"],
                "id": [str(i) for i in batch["id"]]}

    raw = ds.cast_column("image", datasets.Image(decode=False))
    return raw.map(convert, batched=True, remove_columns=raw.column_names, features=TRAINING_FEATURES)


def _require(ds: datasets.Dataset, columns: list[str], fmt: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"a {fmt!r} dataset needs the columns {columns}; {missing} not found among {ds.column_names}. "
                         "Pick the format that matches the data (--dataset_format).")


def _problem(messages: list[dict[str, Any]], n_images: int) -> str:
    """Why a conversation cannot be trained on, or "" when it can (its text alone)."""
    if not any(m.get("role") == "assistant" for m in messages):
        return "no assistant turn"
    unknown = {m.get("role") for m in messages} - {"user", "assistant", "system"}
    if unknown:
        return "unknown role"
    for message in messages:
        if message["role"] == "assistant" and not "".join(p.get("text") or "" for p in message["content"]).strip():
            return "empty answer"
    if any(IMAGE_TOKEN in (p.get("text") or "") for m in messages for p in m["content"]):
        return "text holds the image token"  # it would be expanded into image tokens with no image for them
    parts = sum(p.get("type") == "image" for m in messages for p in m["content"])
    if parts != n_images:
        return "image count not matching the image markers"
    return ""


def _outside(path: str, folder: str | os.PathLike) -> bool:
    """Whether `path` (as the adapters store it: joined with its folder already, or absolute) resolves,
    `..` and symlinks followed, to a place outside `folder`."""
    root = os.path.realpath(folder)
    try:
        return os.path.commonpath([root, os.path.realpath(path)]) != root
    except (OSError, ValueError):  # a NUL byte, a path too long: nothing it could name is trusted
        return True


def _image_problems(images: list[dict | None], image_folder: str | os.PathLike | None) -> str:
    """Why one of a conversation's undecoded images cannot be used, or "": a path outside `image_folder`
    (when given), then what `minivlm.processing.adapters` checks of a caption image, from the header only."""
    from minivlm.processing.adapters import _image_problem

    for image in images:
        path = (image or {}).get("path")
        if image_folder is not None and (image or {}).get("bytes") is None and path and _outside(path, image_folder):
            return "image path outside the image folder"
        reason = _image_problem(image, decode=False)
        if reason:
            return reason
    return ""


def clean_conversations(
    ds: datasets.Dataset,
    split_name: str = "train",
    *,
    max_bad_fraction: float = 0.05,
    image_folder: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """Drops the conversations training could not use and logs one warning with the counts by reason.

    Dropped, before any training step: no assistant turn, an empty answer, an unknown role, a text
    that holds the image token (`<image>` typed in a question or answer), an image count that does
    not match the image parts, and images that are missing, empty, not an image, or over
    `pixel_limit()` pixels (read from the header; nothing is decoded). With `image_folder`
    (LLaVA JSON's), every image given by path must resolve inside it, symlinks followed: `../`,
    absolute paths and links that lead elsewhere are dropped.

    Raises `BadDataError` (a ValueError) when more than `max_bad_fraction` of the split is dropped,
    naming a few rows and their reasons, or when nothing is left.
    """
    from minivlm.processing.adapters import BadDataError

    images = ds.select_columns(["images"]).cast_column("images", datasets.List(datasets.Image(decode=False)))["images"]
    reasons = [_problem(m, len(i or [])) or _image_problems(i or [], image_folder)
               for m, i in zip(ds["messages"], images)]
    bad = Counter(r for r in reasons if r)
    total = len(ds)
    summary = ", ".join(f"{n} {reason}" for reason, n in bad.most_common())
    ids = _ids(ds)
    if total and sum(bad.values()) / total > max_bad_fraction:
        examples = "; ".join(f"id {ids[i]!r}: {r}" for i, r in enumerate(reasons) if r)
        raise BadDataError(
            f"{sum(bad.values())} of {total} conversations ({sum(bad.values()) / total:.1%}) in split {split_name!r} "
            f"are unusable ({summary}), more than max_bad_fraction={max_bad_fraction}. For example: "
            f"{short(examples, 400)}. Fix or remove them, or raise the threshold (--max_bad_fraction) to drop them "
            "and go on."
        )
    if bad:
        keep = [i for i, r in enumerate(reasons) if not r]
        logger.warning("split %r: dropped %d of %d conversations (%s)", split_name, sum(bad.values()), total, summary)
        ds = ds.select(keep)
    if len(ds) == 0:
        raise BadDataError(f"no usable conversations left in split {split_name!r} ({dict(bad)}); check the data format.")
    return ds


def to_training_view(ds: datasets.Dataset) -> datasets.Dataset:
    """A caption-view or conversation-view dataset with the columns of both (`TRAINING_FEATURES`), so they mix.

    Caption rows get ``images = [image]`` and no messages; conversation rows get no captions. The
    collator tells them apart by which of the two is filled.
    """
    if "captions" in ds.column_names and "messages" not in ds.column_names:
        def convert(batch):
            return {"images": [[image] for image in batch["image"]], "messages": [[] for _ in batch["id"]],
                    "captions": batch["captions"], "id": batch["id"]}
        raw = ds.cast_column("image", datasets.Image(decode=False))
        return raw.map(convert, batched=True, remove_columns=raw.column_names,
                       features=TRAINING_FEATURES.copy()).cast(TRAINING_FEATURES)
    if "captions" not in ds.column_names:
        ds = ds.add_column("captions", [[] for _ in range(len(ds))])
    return ds.select_columns(list(TRAINING_FEATURES)).cast(TRAINING_FEATURES)


def check_weights(weights: Sequence[float], num_sources: int) -> None:
    """Raises ValueError unless `weights` holds one positive, finite number per source. They are
    proportions (3,1 is 0.75,0.25); a source sampled with weight 0 could never be used up, so it is
    left out of --dataset instead."""
    if len(weights) != num_sources or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"--dataset_weights {list(weights)} must give one positive, finite weight per dataset "
                         f"({num_sources}), e.g. 3,1 for three rows of the first to one of the second; leave a "
                         "dataset out of --dataset rather than weighting it 0.")


def mix_datasets(
    sources: Sequence[datasets.Dataset], weights: Sequence[float] | None = None, seed: int = 42
) -> datasets.Dataset:
    """One training set from several (caption or conversation view): all rows once, or with `weights`
    sampled in those proportions (`datasets.interleave_datasets`, seeded, until every source is used up)."""
    sources = [to_training_view(ds) for ds in sources]
    if len(sources) == 1:
        return sources[0]
    if weights is None:
        return datasets.concatenate_datasets(sources)
    check_weights(weights, len(sources))
    total = sum(weights)
    return datasets.interleave_datasets(sources, probabilities=[w / total for w in weights], seed=seed,
                                        stopping_strategy="all_exhausted")


def training_texts(ds: datasets.Dataset, chat_template: str | None = None) -> Iterable[str]:
    """Every text a training set puts before the tokenizer: its captions, and its conversations as the chat
    template renders them (what a word-level tokenizer's vocabulary is built from)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from minivlm.processing_minivlm import DEFAULT_CHAT_TEMPLATE

    columns = [c for c in ("captions", "messages") if c in ds.column_names]
    for row in ds.select_columns(columns):
        yield from row.get("captions") or []
        if row.get("messages"):
            rendered, _ = render_jinja_template([row["messages"]], chat_template=chat_template or DEFAULT_CHAT_TEMPLATE,
                                                eos_token=" ")
            yield " ".join(rendered[0].replace(IMAGE_TOKEN, " ").split())
