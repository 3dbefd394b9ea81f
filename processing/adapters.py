"""Caption dataset adapters: any caption dataset as one uniform view, and bad-data handling.

Every adapter returns a `datasets.Dataset` with exactly three columns:

- ``image``: a decodable `datasets.Image()` feature,
- ``captions``: all reference captions of the image (list of str, surrounding whitespace stripped),
- ``id``: a string id (the dataset's id column, else the row index in the full split).

Sources: a Hub dataset id (Flickr8k, ``jxie/flickr8k``: ``image`` and ``caption_0``..``caption_4``),
a local ``imagefolder`` with a metadata file (the synthetic set written by `minivlm.processing.shapes`),
a folder written by ``save_to_disk``, a local Hub-style repo of parquet files, or any in-memory
`Dataset` (`to_caption_dataset`).

`clean_caption_dataset` then drops the examples that would crash or poison training (missing,
empty, truncated or undecodable images; no non-empty caption), warns once with the counts, and
refuses to go on when too much of a split is bad.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import datasets
from PIL import Image

from minivlm.image_loading import pixel_limit
from minivlm.processing_minivlm import IMAGE_TOKEN

__all__ = [
    "FLICKR8K", "BadDataError", "check_max_samples", "check_not_empty", "clean_caption_dataset", "load_caption_dataset", "load_raw_split",
    "sample_rows", "to_caption_dataset",
]

FLICKR8K = "jxie/flickr8k"
_METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
_CAPTIONS = datasets.List(datasets.Value("string"))
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
logger = logging.getLogger(__name__)


class BadDataError(ValueError):
    """Too much of a split is unusable (bad images, no captions), or nothing of it is left."""


def load_caption_dataset(
    dataset: str,
    split: str = "train",
    *,
    dataset_config: str | None = None,
    image_column: str = "image",
    caption_column: str | list[str] | None = None,
    id_column: str | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """Loads one split of a caption dataset in the uniform view (``image``, ``captions``, ``id``).

    ``dataset`` is a Hub id (loaded with ``datasets.load_dataset(dataset, dataset_config,
    split=split)``) or a local folder: one written by ``save_to_disk``, an ``imagefolder`` with
    a ``metadata.jsonl``/``.csv``/``.parquet``, or any other layout ``load_dataset`` reads.
    ``max_samples`` keeps the first N rows after ``shuffle(seed=seed)``, the notebook's
    ``shuffle(seed=42).select(range(N))``. Column arguments are those of `to_caption_dataset`.
    Raises ValueError for an unknown split (naming the available ones) or an empty one.
    """
    check_max_samples(max_samples)  # before anything is loaded
    ds = load_raw_split(dataset, split, dataset_config=dataset_config, cache_dir=cache_dir)
    check_not_empty(ds, dataset, split)
    ds = sample_rows(ds, max_samples, seed=seed, id_column=id_column)
    return to_caption_dataset(ds, image_column, caption_column, id_column)


def check_not_empty(ds: datasets.Dataset, dataset: str, split: str) -> None:
    """A ValueError naming the split when it has no rows (a run could neither train nor evaluate on it)."""
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of {dataset!r} has no rows: nothing to train or evaluate on")


def check_max_samples(max_samples: int | None) -> None:
    """A ValueError unless ``max_samples`` is None (the whole split) or at least 1."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1 (or None for the whole split), got {max_samples}")


def sample_rows(
    ds: datasets.Dataset, max_samples: int | None, *, seed: int = 42, id_column: str | None = None
) -> datasets.Dataset:
    """The first ``max_samples`` rows after ``shuffle(seed=seed)`` (the notebook's
    ``shuffle(seed=42).select(range(N))``), or ``ds`` itself when it has no more rows than that.

    A split without an id column (and no ``id_column`` named) first gets ``id``: the row index in the
    full split, so that a subset's ids still name the rows of the split they came from. The order
    depends only on the number of rows and the seed, so sampling the raw rows and then converting
    them (one view row per raw row) gives the rows that converting and then sampling would.
    """
    check_max_samples(max_samples)
    if max_samples is None or max_samples >= len(ds):
        return ds
    if id_column is None and "id" not in ds.column_names:
        ds = ds.add_column("id", [str(i) for i in range(len(ds))])
    return ds.shuffle(seed=seed).select(range(max_samples))


def load_raw_split(
    dataset: str, split: str = "train", *, dataset_config: str | None = None, cache_dir: str | None = None
) -> datasets.Dataset:
    """One split as stored, before any adapter: from a ``save_to_disk`` folder, an ``imagefolder`` (a local
    folder with a metadata file, checked first for clear errors), or ``datasets.load_dataset`` (a Hub id
    or a local Hub-style repo). Raises ValueError for an unknown split, naming the available ones."""
    path = Path(dataset)
    if path.is_dir() and any((path / f).is_file() for f in (datasets.config.DATASETDICT_JSON_FILENAME,
                                                            datasets.config.DATASET_STATE_JSON_FILENAME)):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            if split != "train":
                logger.warning("%s holds a single saved split; using it as split %r", dataset, split)
            return loaded
        if split not in loaded:
            raise ValueError(f"unknown split {split!r} in {dataset!r}; available splits: {list(loaded)}")
        return loaded[split]
    if path.is_dir():
        _check_metadata(path)
    try:
        # A caption imagefolder needs a metadata file (captions live there); without one,
        # `load_dataset` infers the layout itself (e.g. a Hub-style repo of parquet files).
        if path.is_dir() and any(next(path.rglob(name), None) for name in _METADATA_FILES):
            return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, cache_dir=cache_dir)
        return datasets.load_dataset(dataset, dataset_config, split=split, cache_dir=cache_dir)
    except ValueError as err:
        if "Unknown split" in str(err):  # datasets' own message lists the available splits
            raise ValueError(f"unknown split {split!r} in {dataset!r}: {err}") from err
        raise


def _check_metadata(folder: Path) -> None:
    """Clear errors (file, line, fix) for an image folder's metadata: missing, empty or not JSON Lines.

    `datasets` would otherwise fail later with an error that names no file (ArrowInvalid,
    IndexError, or "no caption column found")."""
    jsonl = sorted(folder.rglob("metadata.jsonl"))
    if not jsonl and not any(next(folder.rglob(name), None) for name in _METADATA_FILES):
        has_images = any(p.suffix.lower() in _IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())
        has_tables = any(next(folder.rglob(f"*.{ext}"), None) for ext in ("parquet", "arrow", "csv", "json", "jsonl"))
        if has_images and not has_tables:
            raise ValueError(
                f"no metadata.jsonl in {folder}: an image folder needs one (beside the images, or in each split "
                'folder) with one line per image, e.g. {"file_name": "0001.png", "caption": "a red circle"}.'
            )
        return
    for path in jsonl:
        seen = False
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise ValueError(f"{path} line {number} is not valid JSON ({error}): "
                                     f"{line.strip()[:80]!r}; fix or remove that line.") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path} line {number} is not a JSON object: {line.strip()[:80]!r}; each line "
                                     'must be one object such as {"file_name": "0001.png", "caption": "..."}.')
                seen = True
        if not seen:
            raise ValueError(f"{path} is empty: it needs one JSON line per image, e.g. "
                             '{"file_name": "0001.png", "caption": "a red circle"}; fill it or delete it.')


def to_caption_dataset(
    ds: datasets.Dataset,
    image_column: str = "image",
    caption_column: str | list[str] | None = None,
    id_column: str | None = None,
) -> datasets.Dataset:
    """Maps any caption dataset's columns onto the uniform view ``image``, ``captions``, ``id``.

    ``image_column`` holds images (a `datasets.Image` feature, or strings: file paths).
    ``caption_column`` is a column of strings or of lists of strings, or a list of string columns
    (Flickr8k's ``caption_0``..``caption_4``); None tries ``captions``, ``caption``,
    ``caption_0``..``caption_N``, ``text``, ``sentences`` in that order. ``id_column`` None
    uses ``id`` if present, else the row index. Images are not decoded (no pixels are read);
    captions are stripped but empty ones kept, for `clean_caption_dataset` to count.
    """
    columns = ds.column_names
    if image_column not in columns:
        raise ValueError(_missing_column(image_column, "image_column", "images", columns))
    image_feature = ds.features[image_column]
    is_path_column = isinstance(image_feature, datasets.Value) and image_feature.dtype in ("string", "large_string")
    if not (isinstance(image_feature, datasets.Image) or is_path_column):
        raise ValueError(f"column {image_column!r} holds {image_feature}, not images or file paths; "
                         f"pass image_column= (--image_column) naming the image column of {columns}")
    caption_columns = _caption_columns(ds, caption_column)
    if id_column is not None and id_column not in columns:
        raise ValueError(_missing_column(id_column, "id_column", "example ids", columns))
    id_column = id_column or ("id" if "id" in columns else None)
    n_caption_columns = len(caption_columns)

    def convert(*values):  # the input columns, then the row indices (with_indices)
        rows = zip(*values[:n_caption_columns])  # one tuple of cells per row
        ids = values[n_caption_columns] if id_column else values[-1]
        return {"captions": [_flatten_captions(cells) for cells in rows], "id": [str(i) for i in ids]}

    ds = ds.map(
        convert, batched=True, with_indices=True, input_columns=caption_columns + ([id_column] if id_column else []),
        remove_columns=[c for c in columns if c != image_column],  # image bytes pass through untouched
        features=datasets.Features({image_column: image_feature, "captions": _CAPTIONS, "id": datasets.Value("string")}),
    )
    if image_column != "image":
        ds = ds.rename_column(image_column, "image")
    if is_path_column or not image_feature.decode:
        ds = ds.cast_column("image", datasets.Image())
    return ds.select_columns(["image", "captions", "id"])


def _missing_column(name: str, argument: str, what: str, columns: list[str]) -> str:
    return (f"column {name!r} not found; the dataset has columns {columns}. "
            f"Pass {argument}= (--{argument}) naming the column that holds the {what}.")


def _is_text(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _caption_columns(ds: datasets.Dataset, caption_column: str | list[str] | None) -> list[str]:
    """The caption columns, given or auto-detected, checked to hold strings or lists of strings."""
    columns = ds.column_names
    if caption_column is None:
        numbered = sorted((c for c in columns if re.fullmatch(r"caption_\d+", c)), key=lambda c: int(c[8:]))
        candidates = [["captions"], ["caption"], numbered, ["text"], ["sentences"]]
        names = next((c for c in candidates if c and c[0] in columns), None)
        if names is None:
            raise ValueError(f"no caption column found among the dataset's columns {columns} (looked for captions, "
                             "caption, caption_0..caption_N, text, sentences). Pass caption_column= "
                             "(--caption_column) naming the column(s) that hold the captions.")
    else:
        names = [caption_column] if isinstance(caption_column, str) else list(caption_column)
        for name in names:
            if name not in columns:
                raise ValueError(_missing_column(name, "caption_column", "captions", columns))
    for name in names:
        feature = ds.features[name]
        if not (_is_text(feature) or (isinstance(feature, (datasets.List, datasets.LargeList))
                                      and _is_text(feature.feature))):
            raise ValueError(f"caption column {name!r} holds {feature}; expected strings or lists of strings. "
                             "Pass caption_column= (--caption_column) naming the caption column(s).")
    return names


def _flatten_captions(cells) -> list[str]:
    """One row's caption cells (each a string, a list of strings, or None) as one stripped list."""
    out = []
    for cell in cells:
        for caption in [cell] if cell is None or isinstance(cell, str) else cell:
            out.append("" if caption is None else caption.strip())
    return out


def clean_caption_dataset(
    ds: datasets.Dataset,
    *,
    max_bad_fraction: float = 0.05,
    split_name: str = "train",
    num_proc: int | None = None,
    image_token: str = IMAGE_TOKEN,
) -> datasets.Dataset:
    """Drops bad examples from a uniform-view dataset and returns the rest (same columns).

    Bad: a missing or zero-byte image file, an image PIL cannot decode fully (corrupt or
    truncated), no non-empty caption, or a caption that holds the image token ``<image>`` (it
    would be read as an image placeholder and break the batch). Empty captions of otherwise good examples are
    removed; any PIL mode is fine (the processor converts to RGB). Logs one warning with the
    counts by reason. Raises `BadDataError` when more than ``max_bad_fraction`` of the split is
    bad (naming a few ids and reasons) or when nothing is left.
    """
    missing = {"image", "captions", "id"} - set(ds.column_names)
    if missing:
        raise ValueError(f"columns {sorted(missing)} missing; clean_caption_dataset expects the uniform view "
                         f"(image, captions, id) of to_caption_dataset, got {ds.column_names}")
    total = len(ds)
    if total == 0:
        raise BadDataError(f"split {split_name!r} is empty: nothing to train or evaluate on")
    # decode=False: bad files reach our check as {bytes, path} instead of raising inside datasets.
    raw = ds.select_columns(["image", "captions", "id"]).cast_column("image", datasets.Image(decode=False))
    features = raw.features.copy()
    features.update({"_bad": datasets.Value("string"), "_empty": datasets.Value("int64")})
    checked = raw.map(_check_batch, batched=True, input_columns=["image", "captions"], num_proc=num_proc,
                      features=features, desc=f"Checking {split_name} images", fn_kwargs={"image_token": image_token})
    reasons = list(checked["_bad"])
    bad_rows = [i for i, reason in enumerate(reasons) if reason]
    counts = Counter(reasons[i] for i in bad_rows)
    summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    if len(bad_rows) / total > max_bad_fraction:
        examples = "; ".join(
            f"id {row['id']!r}: {row['_bad']}" + (f" ({row['image']['path']})" if (row["image"] or {}).get("path") else "")
            for row in checked.select(bad_rows[:5])
        )
        raise BadDataError(
            f"{len(bad_rows)} of {total} examples ({len(bad_rows) / total:.1%}) in split {split_name!r} are bad "
            f"({summary}), more than max_bad_fraction={max_bad_fraction}. For example: {examples}. Fix or remove "
            f"them, or raise the threshold (max_bad_fraction= / --max_bad_fraction) to drop them and go on.")
    empty_captions = sum(checked["_empty"])
    if bad_rows:
        checked = checked.filter(lambda reason: [not r for r in reason], batched=True, input_columns="_bad")
    if len(checked) == 0:
        raise BadDataError(f"no examples left in split {split_name!r} after dropping {summary}")
    if bad_rows or empty_captions:
        logger.warning("split %r: dropped %d of %d examples (%s); removed %d empty captions from kept examples",
                       split_name, len(bad_rows), total, summary or "none bad", empty_captions)
    return checked.remove_columns(["_bad", "_empty"]).cast_column("image", datasets.Image())


def _check_batch(images: list[dict | None], captions: list[list[str] | None], image_token: str = IMAGE_TOKEN
                 ) -> dict[str, list]:
    """Batched map function: stripped non-empty captions, the reason a row is bad ("" if fine)
    and how many empty captions a kept row lost."""
    out = {"captions": [], "_bad": [], "_empty": []}
    for image, caps in zip(images, captions):
        caps = caps or []
        kept = [c.strip() for c in caps if c and c.strip()]
        reason = _image_problem(image) or ("" if kept else "no non-empty caption")
        if not reason and any(image_token in c for c in kept):
            reason = "caption holds the image token"
        out["captions"].append(kept)
        out["_bad"].append(reason)
        out["_empty"].append(0 if reason else len(caps) - len(kept))
    return out


def _image_problem(image: dict | None, decode: bool = True) -> str:
    """Why an undecoded image ({bytes, path}) cannot be used, or "" when it can.

    Checked from the file and the header: present, not empty, an image PIL recognises, at most
    `pixel_limit()` pixels (exactly that many is allowed; the limit images are loaded with). With `decode` the pixels are then
    decoded in full (truncated or corrupt files); without it nothing past the header is read.
    """
    data, path = (image or {}).get("bytes"), (image or {}).get("path")
    if data is None and not path:
        return "missing image"
    if data is None and not os.path.isfile(path):
        return "missing file"
    if (len(data) if data is not None else os.path.getsize(path)) == 0:
        return "empty file"
    source = io.BytesIO(data) if data is not None else path  # embedded bytes win over a (stale) path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the full decode below is the verdict
            with Image.open(source) as im:
                if im.size[0] * im.size[1] > pixel_limit():  # from the header, before decoding
                    return "image too large"
                if decode:
                    im.draft(None, (1, 1))  # JPEG: decode at 1/8 scale, faster; every byte is still read
                    im.load()  # open() reads only the header: load() is what catches truncation
    except Image.DecompressionBombError:  # PIL's own limit (twice its MAX_IMAGE_PIXELS), met at open()
        return "image too large"
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return "truncated image" if "truncated" in str(err).lower() else "undecodable image"
    return ""
