"""The one data entry point: dataset names, folders or files to clean splits that training and the scorers use.

Training (`minivlm.training.run`), evaluation (`minivlm-evaluate`) and the demo load data through here, so
that their splits cannot drift apart. Every source, whatever its format, goes the same way:

    resolve_dataset → load_raw_split (each split read once) → sample_rows (the seeded subset)
    → the format's adapter → cleaning (drops counted by reason) → its view, with what the scorers need

- `DATASET_FORMATS`: every dataset format, declared once as a `DatasetFormat`: its name, its line of
  ``--dataset_format`` help, how a split's columns show it (for ``auto``), its adapter and its view.
  `register_format` adds one; `detect_format`, `load_training_data` and the help (`format_help`) follow.
- `load_training_data`: the training split of one source or of a weighted mixture, and the evaluation
  split of the first source (the shapes ``objects`` attached), as a `TrainingData`.
- `load_split`: one split in the caption view, cleaned, with the shapes ``objects`` (evaluation, demo).
- `resolve_dataset`: ``"shapes"`` becomes the folder of the synthetic set, generated there when missing.
- `load_raw_split`: one split as stored, before any adapter (what evaluation reads questions from).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from .adapters import (
    BadDataError, check_max_samples, check_not_empty, clean_caption_dataset, load_raw_split, sample_rows,
    to_caption_dataset,
)
from .conversations import (
    check_weights, clean_conversations, from_cauldron, from_chat, from_llava, from_shapes_instruct,
    from_shapes_questions, from_vqa, mix_datasets,
)


__all__ = [
    "AUTO", "DATASET_FORMATS", "SHAPES_DATASET", "AdapterOptions", "DatasetFormat", "TrainingData", "caption_column_argument",
    "detect_format", "format_help", "load_raw_split", "load_split", "load_training_data", "register_format",
    "resolve_dataset", "shapes_objects", "to_conversations",
]

SHAPES_DATASET = "shapes"  # the dataset name that stands for the generated synthetic set
AUTO = "auto"  # the format name that asks for detection from a split's columns
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterOptions:
    """What an adapter may read besides the split: a caption set's column names, LLaVA's image folder."""

    image_column: str = "image"
    caption_column: str | list[str] | None = None
    id_column: str | None = None
    image_folder: str | None = None


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format: all that the data path and the command line know of it.

    Attributes:
        name: what ``--dataset_format`` calls it.
        help: its line in ``--dataset_format``'s help: what the rows hold.
        adapt: ``adapt(raw, options) -> view``: the raw split (a `datasets.Dataset`; for LLaVA also the path
            of its JSON file) in this format's view, one view row per raw row.
        view: ``"captions"``: the caption view (``image``, ``captions``, ``id``), cleaned by
            `clean_caption_dataset`; ``"conversations"``: the conversation view (``messages``, ``images``,
            ``id``, and ``captions`` for a row that has both), cleaned by `clean_conversations`.
        detect: ``detect(columns) -> bool``: whether a split with these column names is in this format,
            for ``auto``; formats are asked in registration order, and a split none claims is read as
            ``captions``. None: used only when named.
        confines_images: images given by path must resolve inside the image folder (``--image_folder``;
            by default the JSON file's folder, else the working directory), symlinks followed.
    """

    name: str
    help: str
    adapt: Callable[[Any, AdapterOptions], datasets.Dataset]
    view: str = "conversations"
    detect: Callable[[Collection[str]], bool] | None = None
    confines_images: bool = False


VIEWS = ("captions", "conversations")
FALLBACK_FORMAT = "captions"  # what a split that no format's `detect` claims is read as
DATASET_FORMATS: dict[str, DatasetFormat] = {}


def register_format(fmt: DatasetFormat) -> DatasetFormat:
    """Adds ``fmt`` to `DATASET_FORMATS` (replacing a format of the same name) and returns it: from then on
    ``--dataset_format`` accepts it, ``auto`` detects it (when it has ``detect``) and its help lists it."""
    if fmt.view not in VIEWS:
        raise ValueError(f"format {fmt.name!r} has view={fmt.view!r}; choose one of {', '.join(VIEWS)}.")
    if fmt.name == AUTO or not fmt.name or "," in fmt.name:
        raise ValueError(f"{fmt.name!r} cannot name a format: it must be non-empty, without commas, and not {AUTO!r}.")
    DATASET_FORMATS[fmt.name] = fmt
    return fmt


def _shapes(adapter: Callable[[datasets.Dataset], datasets.Dataset], name: str):
    """A shapes-set adapter that first says how to fix a set written before the questions existed."""
    def adapt(raw: datasets.Dataset, options: AdapterOptions) -> datasets.Dataset:
        if "questions" not in raw.column_names:
            raise ValueError(f"format {name} reads the shapes set's questions, and this split has none (columns "
                             f"{raw.column_names}): either it is not the shapes set (pick its format with "
                             "--dataset_format), or a shapes set written by an older version; delete that folder "
                             "(or pick another --shapes_dir) to generate it again.")
        return adapter(raw)
    return adapt


for _format in (
    DatasetFormat(
        "captions", "an image column and caption column(s) (--image_column, --caption_column: strings or lists of "
        "strings; default: captions, caption, caption_0..N, text or sentences)",
        lambda raw, o: to_caption_dataset(raw, o.image_column, o.caption_column, o.id_column), view="captions"),
    DatasetFormat("chat", "HF/TRL chat: messages + images", lambda raw, o: from_chat(raw),
                  detect=lambda columns: "messages" in columns),
    DatasetFormat("llava", "LLaVA's instruct JSON (a .json file, or conversations + image columns), image paths "
                  "under --image_folder", lambda raw, o: from_llava(raw, o.image_folder),
                  detect=lambda columns: "conversations" in columns, confines_images=True),
    DatasetFormat("cauldron", "the_cauldron: images + texts (user/assistant pairs)", lambda raw, o: from_cauldron(raw),
                  detect=lambda columns: {"texts", "images"} <= set(columns)),
    DatasetFormat("vqa", "image + question + answer (or VQAv2's answers list)", lambda raw, o: from_vqa(raw),
                  detect=lambda columns: "question" in columns and bool({"answer", "answers"} & set(columns))),
    DatasetFormat("shapes-questions", "the shapes set's questions, one multi-turn chat per image",
                  _shapes(from_shapes_questions, "shapes-questions"),
                  detect=lambda columns: {"questions", "image"} <= set(columns)),
    DatasetFormat("shapes-instruct", "the shapes set's captions and questions, one row per image (packed turns)",
                  _shapes(from_shapes_instruct, "shapes-instruct")),
):
    register_format(_format)


def format_help() -> str:
    """``--dataset_format``'s help, written from `DATASET_FORMATS`: every format with its line."""
    listed = "; ".join(f"{fmt.name}: {fmt.help}" for fmt in DATASET_FORMATS.values())
    return (f"Format of each --dataset (comma-separated), {AUTO} (detected from the columns) or one of: {listed}. "
            f"Default: {FALLBACK_FORMAT} for one dataset, {AUTO} for several.")


def _format(name: str) -> DatasetFormat:
    if name not in DATASET_FORMATS:
        raise ValueError(f"unknown dataset format {name!r}; choose {AUTO} or one of {', '.join(DATASET_FORMATS)} "
                         "(--dataset_format).")
    return DATASET_FORMATS[name]


def detect_format(ds: datasets.Dataset) -> str:
    """The format a split's columns call for: the first registered format whose ``detect`` claims them,
    else ``captions``."""
    columns = frozenset(ds.column_names)
    for fmt in DATASET_FORMATS.values():
        if fmt.detect is not None and fmt.detect(columns):
            return fmt.name
    return FALLBACK_FORMAT


def to_conversations(ds: datasets.Dataset, fmt: str = AUTO, image_folder: str | None = None) -> datasets.Dataset:
    """A raw split of a conversation format (`fmt`, or ``auto``) in the conversation view, not cleaned."""
    entry = _format(detect_format(ds) if fmt == AUTO else fmt)
    if entry.view != "conversations":
        conversational = [f.name for f in DATASET_FORMATS.values() if f.view == "conversations"]
        raise ValueError(f"format {entry.name!r} is not a conversation format; choose one of {', '.join(conversational)} "
                         "(caption data goes through load_split).")
    return entry.adapt(ds, AdapterOptions(image_folder=image_folder))


def resolve_dataset(
    dataset: str,
    *,
    shapes_dir: str | Path = "data/shapes",
    split: str = "train",
    generate: bool = True,
    num_train: int = 3000,
    num_eval: int = 200,
    image_size: int = 64,
    seed: int = 0,
) -> str:
    """The source `load_raw_split` reads: ``dataset`` itself, or for ``"shapes"`` the folder of the set.

    With ``dataset == "shapes"`` the set is looked for in ``shapes_dir`` (its ``split`` must hold a
    ``metadata.jsonl``); when missing it is generated there (``num_train`` training images,
    ``num_eval`` validation and test images each, ``image_size`` pixels, ``seed``), or, with
    ``generate=False``, a FileNotFoundError says how to generate it.
    """
    if dataset != SHAPES_DATASET:
        return dataset
    folder = Path(shapes_dir)
    if (folder / split / "metadata.jsonl").is_file():
        return str(folder)
    if not generate:
        raise FileNotFoundError(
            f"no shapes split {split!r} in {folder}; generate it as training did "
            f"(python -m minivlm.processing.shapes --output_dir {folder} --image_size <model image size>) "
            "or pass --shapes_dir naming the folder training wrote"
        )
    from .shapes import ensure_shapes_dataset

    logger.info("Generating the shapes set in %s", folder)
    ensure_shapes_dataset(folder, num_train=num_train, num_validation=num_eval, num_test=num_eval,
                          image_size=image_size, seed=seed)
    return str(folder)


def _load_view(
    source: str,
    fmt: str,
    split: str,
    *,
    options: AdapterOptions,
    dataset_config: str | None,
    max_samples: int | None,
    seed: int,
    max_bad_fraction: float,
    read: dict[tuple[str, str], datasets.Dataset] | None = None,
) -> tuple[str, datasets.Dataset]:
    """One split of one resolved source the one way: read once, seeded subset, adapter, cleaning.

    Returns the format (``auto`` resolved on this split) and the cleaned view. A ``.json`` file in
    format ``auto`` or ``llava`` is LLaVA's instruct JSON (records, not splits: ``split`` only names it).
    ``read`` keeps the raw splits already read, by ``(source, split)``, for a source given in several formats.
    """
    llava_json = source.endswith(".json") and fmt in (AUTO, "llava")
    if llava_json:
        if not Path(source).is_file():
            raise FileNotFoundError(f"{source}: no such file; --dataset names LLaVA's instruct JSON by its path "
                                    "(image paths in it are relative to --image_folder, by default its folder).")
        entry = _format("llava")
        view = sample_rows(entry.adapt(source, options), max_samples, seed=seed)  # every record has an id
    else:
        read = {} if read is None else read
        if (source, split) not in read:
            read[source, split] = load_raw_split(source, split, dataset_config=dataset_config)
        raw = read[source, split]
        check_not_empty(raw, source, split)
        entry = _format(detect_format(raw) if fmt == AUTO else fmt)
        id_column = options.id_column if entry.view == "captions" else None  # conversation adapters read `id`
        view = entry.adapt(sample_rows(raw, max_samples, seed=seed, id_column=id_column), options)
    if entry.view == "captions":
        return entry.name, clean_caption_dataset(view, max_bad_fraction=max_bad_fraction, split_name=split)
    folder = None
    if entry.confines_images:
        default = str(Path(source).parent) if llava_json else os.curdir
        folder = options.image_folder if options.image_folder is not None else default
    return entry.name, clean_conversations(view, split, max_bad_fraction=max_bad_fraction, image_folder=folder)


def _attach_objects(ds: datasets.Dataset, objects: dict[str, Any] | None) -> datasets.Dataset:
    """A caption-view split with an ``objects`` column when ``objects`` holds every id (the shapes set)."""
    if objects and "objects" not in ds.column_names and all(i in objects for i in ds["id"]):
        ds = ds.add_column("objects", [objects[i] for i in ds["id"]])
    return ds


def load_split(
    dataset: str,
    split: str = "test",
    *,
    dataset_config: str | None = None,
    image_column: str = "image",
    caption_column: str | list[str] | None = None,
    id_column: str | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    max_bad_fraction: float = 0.05,
    attach_objects: bool = True,
) -> datasets.Dataset:
    """One split in the caption view, cleaned, with the shapes ``objects`` where the metadata has them.

    Args:
        dataset: a resolved source (see `resolve_dataset`): Hub id or local folder.
        split: the split's name.
        dataset_config, image_column, caption_column, id_column: as for `to_caption_dataset`.
        max_samples, seed: the first ``max_samples`` rows after ``shuffle(seed=seed)`` (`sample_rows`).
        max_bad_fraction: passed to `clean_caption_dataset` (BadDataError above it).
        attach_objects: on a local imagefolder whose ``{split}/metadata.jsonl`` records carry
            ``id`` and ``objects`` (the shapes set), add an ``objects`` column matched by id:
            `evaluate_captions` then adds ``shapes_accuracy``.

    Returns:
        A `datasets.Dataset` with ``image``, ``captions``, ``id`` (and ``objects`` when attached).
    """
    check_max_samples(max_samples)
    options = AdapterOptions(image_column=image_column, caption_column=caption_column, id_column=id_column)
    _, ds = _load_view(dataset, FALLBACK_FORMAT, split, options=options, dataset_config=dataset_config,
                       max_samples=max_samples, seed=seed, max_bad_fraction=max_bad_fraction)
    return _attach_objects(ds, shapes_objects(dataset, split)) if attach_objects else ds


def shapes_objects(dataset: str, split: str) -> dict[str, Any] | None:
    """The shapes set's ``objects`` by image id, from ``{dataset}/{split}/metadata.jsonl``, or None
    when the source is not such a folder. The views (caption, conversation, training) keep no
    objects: the scorers read them back from here, matched by id."""
    metadata = Path(dataset) / split / "metadata.jsonl"
    if not metadata.is_file():
        return None
    records = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["id"]): r["objects"] for r in records if isinstance(r, dict) and "id" in r and "objects" in r} or None


@dataclass
class TrainingData:
    """What `load_training_data` returns: the splits and what the scorers need beside them.

    Attributes:
        train: the training split: the caption view for one caption source of no named format, else
            the training view (`to_training_view`: captions and conversations in one schema) of every
            source, mixed (`mix_datasets`).
        evaluation: the first source's evaluation split in its format's view (the caption view with
            the shapes ``objects`` column), or None (no ``eval_split``, or no such split).
        formats: each source's format, ``auto`` resolved from its training split.
        eval_source: the resolved first source (the shapes set's folder), where the evaluation split's
            questions are read (`minivlm.evaluation.answering.load_questions`); None without ``eval_split``.
        eval_objects: the shapes ``objects`` of the evaluation split by id (`shapes_objects`), or None.
    """

    train: datasets.Dataset
    evaluation: datasets.Dataset | None
    formats: list[str]
    eval_source: str | None = None
    eval_objects: dict[str, Any] | None = None


def _names(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def load_training_data(
    dataset: str | Sequence[str],
    *,
    dataset_format: str | Sequence[str] | None = None,
    dataset_weights: Sequence[float] | None = None,
    train_split: str = "train",
    eval_split: str | None = "validation",
    dataset_config: str | None = None,
    image_column: str = "image",
    caption_column: str | list[str] | None = None,
    id_column: str | None = None,
    image_folder: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_bad_fraction: float = 0.05,
    shapes_dir: str | Path = "data/shapes",
    shapes_num_train: int = 3000,
    shapes_num_eval: int = 200,
    shapes_image_size: int = 64,
    seed: int = 42,
) -> TrainingData:
    """The training data of a run, every format the one way (`_load_view`), checked before anything loads.

    Args:
        dataset: one source or several (Hub id, local folder, LLaVA ``.json`` file, or ``"shapes"``, the
            synthetic set: resolved in ``shapes_dir``, generated with ``shapes_num_train``,
            ``shapes_num_eval``, ``shapes_image_size`` and ``seed`` when missing).
        dataset_format: the format of each source (names of `DATASET_FORMATS`, or ``auto``); one for
            all; None: ``captions`` for one source, ``auto`` for several. One source with several formats
            is one source per format (the shapes set's captions and its questions), its splits read once.
        dataset_weights: sampling proportions of the sources (None: every row once).
        train_split, eval_split: split names (``eval_split`` None: no evaluation split; a missing or
            empty one is logged and skipped, a bad one raises `BadDataError`).
        dataset_config, image_column, caption_column, id_column: of a caption source (`to_caption_dataset`).
        image_folder: where LLaVA image paths are relative to (and must stay inside).
        max_train_samples, max_eval_samples: the seeded subset of each source's split (`sample_rows`).
        max_bad_fraction: the share of a split that may be dropped as unusable before `BadDataError`.
        seed: the subsets, the mixture and the shapes set's generation.

    Returns:
        `TrainingData`: the training split, the evaluation split of the first source and what its
        scorers need (the shapes ``objects``, where its questions are).
    """
    names = _names(dataset)
    formats = _names(dataset_format) or [FALLBACK_FORMAT if len(names) == 1 else AUTO]
    if not names or not all(names):
        raise ValueError(f"no dataset named ({dataset!r}); pass --dataset: a Hub id, a folder, a .json file or shapes.")
    if len(names) == 1 and len(formats) > 1:
        names = names * len(formats)
    if len(formats) == 1 and len(names) > 1:
        formats = formats * len(names)
    if len(names) != len(formats):
        raise ValueError(f"--dataset names {len(names)} source(s) but --dataset_format {len(formats)} format(s); "
                         "give one format per dataset (or one for all).")
    unknown = [f for f in formats if f != AUTO and f not in DATASET_FORMATS]
    if unknown:
        raise ValueError(f"unknown --dataset_format {unknown}; choose from {AUTO}, {', '.join(DATASET_FORMATS)}.")
    if dataset_weights is not None:
        check_weights(dataset_weights, len(names))
    check_max_samples(max_train_samples)
    check_max_samples(max_eval_samples)

    sources = {name: resolve_dataset(name, shapes_dir=shapes_dir, split=train_split, num_train=shapes_num_train,
                                     num_eval=shapes_num_eval, image_size=shapes_image_size, seed=seed)
               for name in dict.fromkeys(names)}
    options = AdapterOptions(image_column=image_column, caption_column=caption_column, id_column=id_column,
                             image_folder=image_folder)
    common = dict(options=options, dataset_config=dataset_config, seed=seed, max_bad_fraction=max_bad_fraction,
                  read={})  # each split read once, whatever number of formats it is given in
    loaded = [_load_view(sources[name], fmt, train_split, max_samples=max_train_samples, **common)
              for name, fmt in zip(names, formats)]
    resolved, views = [fmt for fmt, _ in loaded], [view for _, view in loaded]
    if dataset_format is None and len(views) == 1 and _format(resolved[0]).view == "captions":
        train = views[0]  # a plain caption run: the caption view, which the vision-feature cache reads
    else:
        train = mix_datasets(views, dataset_weights, seed)
    if not eval_split:
        return TrainingData(train, None, resolved)
    first = sources[names[0]]
    evaluation = None
    try:
        fmt, evaluation = _load_view(first, formats[0], eval_split, max_samples=max_eval_samples, **common)
    except BadDataError:
        raise  # a split that is there but bad stops the run, as the training split does
    except ValueError as error:  # no such split (or an empty one): train without evaluation
        logger.warning("No evaluation split: %s", error)
    objects = shapes_objects(first, eval_split)
    if evaluation is not None and _format(fmt).view == "captions":
        evaluation = _attach_objects(evaluation, objects)
    return TrainingData(train, evaluation, resolved, eval_source=first, eval_objects=objects)


def caption_column_argument(value: str | None) -> str | list[str] | None:
    """A ``--caption_column`` flag as `to_caption_dataset` takes it: None, one name, or a list of
    names from a comma-separated value (``caption_0,caption_1``)."""
    if not value:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    return names[0] if len(names) == 1 else names
