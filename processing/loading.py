"""The one data entry point: a dataset name or folder to clean splits that the scorers can use.

Training (`minivlm.training.run`), evaluation (`minivlm-evaluate`) and the demo all load data
through here, so that their splits cannot drift apart:

- `resolve_dataset`: ``"shapes"`` becomes the folder of the synthetic set, generated there
  when missing (or a clear error where generating is not wanted); other names pass through.
- `load_split`: one split in the uniform view (``image``, ``captions``, ``id``) of
  `load_caption_dataset`, cleaned by `clean_caption_dataset`, and, on an imagefolder whose
  metadata records carry ``objects`` (the shapes set), an ``objects`` column for
  `shapes_accuracy`.
- `load_dataset_splits`: the training split and, if any, the evaluation split, as a run needs them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import datasets

from .adapters import BadDataError, clean_caption_dataset, load_caption_dataset


__all__ = ["SHAPES_DATASET", "caption_column_argument", "load_dataset_splits", "load_split", "resolve_dataset", "shapes_objects"]

SHAPES_DATASET = "shapes"  # the dataset name that stands for the generated synthetic set
logger = logging.getLogger(__name__)


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
    """The source `load_split` reads: ``dataset`` itself, or for ``"shapes"`` the folder of the set.

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


def load_split(
    dataset: str,
    split: str = "test",
    *,
    max_bad_fraction: float = 0.05,
    attach_objects: bool = True,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """One split in the uniform view, cleaned, with the shapes ``objects`` where the metadata has them.

    Args:
        dataset: a resolved source (see `resolve_dataset`): Hub id or local folder.
        split: the split's name.
        max_bad_fraction: passed to `clean_caption_dataset` (BadDataError above it).
        attach_objects: on a local imagefolder whose ``{split}/metadata.jsonl`` records carry
            ``id`` and ``objects`` (the shapes set), add an ``objects`` column matched by id:
            `evaluate_captions` then adds ``shapes_accuracy``.
        load_kwargs: ``dataset_config``, ``image_column``, ``caption_column``, ``id_column``,
            ``max_samples``, ``seed``: as for `load_caption_dataset`.

    Returns:
        A `datasets.Dataset` with ``image``, ``captions``, ``id`` (and ``objects`` when attached).
    """
    ds = load_caption_dataset(dataset, split, **load_kwargs)
    ds = clean_caption_dataset(ds, max_bad_fraction=max_bad_fraction, split_name=split)
    objects = shapes_objects(dataset, split) if attach_objects else None
    if objects and all(i in objects for i in ds["id"]):
        ds = ds.add_column("objects", [objects[i] for i in ds["id"]])
    return ds


def shapes_objects(dataset: str, split: str) -> dict[str, Any] | None:
    """The shapes set's ``objects`` by image id, from ``{dataset}/{split}/metadata.jsonl``, or None
    when the source is not such a folder. The views (caption, conversation, training) keep no
    objects: the scorers read them back from here, matched by id."""
    metadata = Path(dataset) / split / "metadata.jsonl"
    if not metadata.is_file():
        return None
    records = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["id"]): r["objects"] for r in records if isinstance(r, dict) and "id" in r and "objects" in r} or None


def load_dataset_splits(
    dataset: str,
    *,
    train_split: str = "train",
    eval_split: str | None = "validation",
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    shapes_dir: str | Path = "data/shapes",
    shapes_num_train: int = 3000,
    shapes_num_eval: int = 200,
    shapes_image_size: int = 64,
    seed: int = 42,
    max_bad_fraction: float = 0.05,
    **load_kwargs: Any,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training split and the evaluation split (None when ``eval_split`` is None or missing).

    ``"shapes"`` is resolved (and generated with ``seed`` when missing) by `resolve_dataset`. The
    training split keeps the uniform view only; the evaluation split also carries the shapes
    ``objects``, so that caption evaluation during training reports ``eval_shapes_accuracy``.
    ``load_kwargs`` are those of `load_split`'s (``dataset_config``, ``image_column``, ...).
    """
    source = resolve_dataset(dataset, shapes_dir=shapes_dir, split=train_split, num_train=shapes_num_train,
                             num_eval=shapes_num_eval, image_size=shapes_image_size, seed=seed)
    common = dict(max_bad_fraction=max_bad_fraction, seed=seed, **load_kwargs)
    train = load_split(source, train_split, max_samples=max_train_samples, attach_objects=False, **common)
    evaluation = None
    if eval_split:
        try:
            evaluation = load_split(source, eval_split, max_samples=max_eval_samples, **common)
        except BadDataError:
            raise  # a split that is there but bad stops the run, as the training split does
        except ValueError as error:  # no such split (or an empty one): train without evaluation
            logger.warning("No evaluation split: %s", error)
    return train, evaluation


def caption_column_argument(value: str | None) -> str | list[str] | None:
    """A ``--caption_column`` flag as `load_caption_dataset` takes it: None, one name, or a list of
    names from a comma-separated value (``caption_0,caption_1``)."""
    if not value:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    return names[0] if len(names) == 1 else names
