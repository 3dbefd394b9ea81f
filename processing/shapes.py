"""Synthetic "shapes" captioning dataset and its correctness scorer.

This is MiniVLM's embedded offline default dataset: small images (64 px by default)
with one or two plain coloured shapes on a near-white background, each with five
short paraphrased captions (Flickr8k style), e.g.::

    a red circle and a blue square
    a small red circle and a large blue square
    a red circle with a blue square on its right
    a blue square to the right of a red circle

It is designed to be learnable by a tiny ViT + tiny Llama trained from scratch on
CPU: few, clearly distinct colours and shapes, a small closed vocabulary (about 40
words), objects that never overlap, and a consistent mention order (left before
right, top before bottom) in the captions.

Because BLEU/CIDEr say little about whether a caption is *right*, the module also
provides a scorer: :func:`score_caption` is True iff a caption names exactly the
(colour, shape) multiset of the image's objects, and :func:`shapes_accuracy`
averages it over a set of captions.

Writing the dataset to disk (``imagefolder`` layout, loadable with
``datasets.load_dataset("imagefolder", data_dir=...)``)::

    python -m minivlm.processing.shapes --output_dir data/shapes
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

__all__ = [
    "COLOURS",
    "SHAPES",
    "DEFAULT_COLOURS",
    "DEFAULT_SHAPES",
    "SPLITS",
    "make_shapes_examples",
    "generate_shapes_dataset",
    "ensure_shapes_dataset",
    "is_shapes_folder",
    "ShapesFolderError",
    "caption_vocabulary",
    "parse_objects",
    "score_caption",
    "shapes_accuracy",
    "BOX_STEP",
    "shapes_questions",
    "shapes_conversation",
    "question_vocabulary",
    "shapes_texts",
]

# Base RGB per colour name; chosen far apart in RGB so a tiny model separates them
# from mean patch colour alone. Per-object jitter (±_COLOUR_JITTER) adds variety.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (150, 60, 190),
    "orange": (245, 140, 20),
    "black": (30, 30, 30),
}
# Shapes the drawer knows. "diamond"/"star" are opt-in: harder to tell apart at 64 px.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star")
DEFAULT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
SPLITS: tuple[str, ...] = ("train", "validation", "test")

_SS = 4  # supersampling factor: draw at 4x and box-downsample for anti-aliased edges
_COLOUR_JITTER = 20
# Object extent as a fraction of the image side: large enough that a tiny ViT with 4-px
# patches at 32 px sees a shape's edges and corners across several patches.
_SIZE_FRAC = {"small": 0.28, "large": 0.40}
# Object centres (fractions of the side). Pairs sit on opposite sides, at least
# 0.46 apart along the main axis (> 0.44 = max sum of half extents) so never overlap.
_SINGLE_POS = {
    "center": (0.5, 0.5),
    "left": (0.24, 0.5),
    "right": (0.76, 0.5),
    "top": (0.5, 0.24),
    "bottom": (0.5, 0.76),
}
_PAIRS = (("left", "right"), ("top", "bottom"))
_POS_PHRASE = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}

# Caption templates. {c}=colour, {s}=shape, {z}=size, {p}=position phrase; for two
# objects suffixes a/b are the first/second object in reading order (left/top first).
_ONE_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("a {c} {s}",),
    ("a {z} {c} {s}",),
    ("a {c} {s} {p}",),
    ("there is a {z} {c} {s} {p}",),
    ("a {c} {s} on a white background", "an image of a {c} {s}", "a picture of a {z} {c} {s}"),
)
_TWO_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("a {ca} {sa} and a {cb} {sb}",),
    ("a {za} {ca} {sa} and a {zb} {cb} {sb}",),
    (),  # positional caption, depends on the layout: see _LAYOUT_TEMPLATES
    (),  # relation caption, depends on the layout: see _LAYOUT_TEMPLATES
    ("a {ca} {sa} next to a {cb} {sb}", "there is a {ca} {sa} and a {cb} {sb}",
     "a picture of a {ca} {sa} and a {cb} {sb}"),
)
# Per layout (keyed by the first object's position): (positional, relation) options.
_LAYOUT_TEMPLATES = {
    "left": (("a {ca} {sa} with a {cb} {sb} on its right",),
             ("a {cb} {sb} to the right of a {ca} {sa}", "a {ca} {sa} to the left of a {cb} {sb}")),
    "top": (("a {ca} {sa} with a {cb} {sb} below it",),
            ("a {ca} {sa} above a {cb} {sb}", "a {cb} {sb} below a {ca} {sa}")),
}
_SAME_PAIR_TEMPLATE = "two {c} {s}s"  # replaces template 0 when both objects look alike


# ----------------------------------------------------------------------------- drawing


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[float], fill: tuple[int, ...]) -> None:
    """Draw ``shape`` filling the square ``box`` = (x0, y0, x1, y1) (supersampled coords)."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":  # upright; the box centre lies inside it
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _render(
    objects: list[dict[str, Any]], colours_rgb: list[np.ndarray], image_size: int, rng: np.random.Generator
) -> Image.Image:
    """Rasterise the objects on a light, slightly noisy background."""
    background = tuple(int(v) for v in 255 - rng.integers(0, 16, 3))
    big = Image.new("RGB", (image_size * _SS, image_size * _SS), background)
    draw = ImageDraw.Draw(big)
    for obj, rgb in zip(objects, colours_rgb):
        # PIL fills the end coordinate inclusively: stop one supersample short so the
        # shape stays inside its box (keeps the public bbox tight).
        x0, y0, x1, y1 = (v * _SS for v in obj["_box"])
        _draw_shape(draw, obj["shape"], (x0, y0, x1 - 1, y1 - 1), tuple(int(v) for v in rgb))
    pixels = np.asarray(big.reduce(_SS), dtype=np.float32)
    # Mild pixel noise so the model cannot rely on perfectly flat colours.
    pixels += rng.normal(0.0, 3.0, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def _place(position: str, size: str, image_size: int, rng: np.random.Generator, pair_axis: str | None) -> list[float]:
    """Square box (x0, y0, x1, y1) in output pixels for one object, jittered around its anchor."""
    fx, fy = _SINGLE_POS[position]
    extent = _SIZE_FRAC[size] * rng.uniform(0.9, 1.1)
    # A pair gets little jitter along its separating axis (so it never overlaps) and
    # more across it; a lone object gets moderate jitter both ways.
    main, cross = rng.uniform(-0.03, 0.03), rng.uniform(-0.1, 0.1)
    if pair_axis == "x":
        jx, jy = main, cross
    elif pair_axis == "y":
        jx, jy = cross, main
    else:
        jx, jy = main * 1.25, cross * 0.5
    half = extent / 2
    # Keep a 1-pixel margin inside the image.
    m = 1.0 / image_size
    cx = float(np.clip(fx + jx, half + m, 1 - half - m))
    cy = float(np.clip(fy + jy, half + m, 1 - half - m))
    return [round((cx - half) * image_size, 2), round((cy - half) * image_size, 2),
            round((cx + half) * image_size, 2), round((cy + half) * image_size, 2)]


def _captions(objects: list[dict[str, Any]], rng: np.random.Generator) -> list[str]:
    """Five paraphrased captions for the objects (already in reading order)."""
    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    if len(objects) == 1:
        o = objects[0]
        fields = {"c": o["colour"], "s": o["shape"], "z": o["size"], "p": _POS_PHRASE[o["position"]]}
        return [pick(t).format(**fields) for t in _ONE_TEMPLATES]
    a, b = objects
    fields = {"ca": a["colour"], "sa": a["shape"], "za": a["size"], "cb": b["colour"], "sb": b["shape"], "zb": b["size"]}
    out = []
    for i, options in enumerate(_TWO_TEMPLATES):
        if i == 0 and (a["colour"], a["shape"]) == (b["colour"], b["shape"]):
            out.append(_SAME_PAIR_TEMPLATE.format(c=a["colour"], s=a["shape"]))
        elif not options:  # layout-dependent slot: 2 = positional, 3 = relation
            out.append(pick(_LAYOUT_TEMPLATES[a["position"]][i - 2]).format(**fields))
        else:
            out.append(pick(options).format(**fields))
    return out


def _make_example(
    split: str, index: int, image_size: int, seed: int,
    shapes: Sequence[str], colours: Sequence[str], two_object_prob: float,
) -> dict[str, Any]:
    """One example, a pure function of (seed, split, index) so splits are reproducible piecewise."""
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else len(SPLITS), index])
    if rng.random() < two_object_prob:
        positions = _PAIRS[int(rng.integers(2))]
        axis = "x" if positions[0] == "left" else "y"
    else:
        positions, axis = (list(_SINGLE_POS)[int(rng.integers(len(_SINGLE_POS)))],), None
    objects, rgbs = [], []
    for pos in positions:
        shape = shapes[int(rng.integers(len(shapes)))]
        colour = colours[int(rng.integers(len(colours)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        box = _place(pos, size, image_size, rng, axis)
        rgbs.append(np.clip(np.array(COLOURS[colour]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255))
        objects.append({"shape": shape, "colour": colour, "size": size, "position": pos, "_box": box})
    image = _render(objects, rgbs, image_size, rng)
    captions = _captions(objects, rng)
    for obj in objects:  # public bbox: integer pixel box that covers the shape
        x0, y0, x1, y1 = obj.pop("_box")
        obj["bbox"] = [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]
    # A stream of its own, so the questions leave the images and captions as they were.
    question_rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else len(SPLITS), index, 1])
    questions = shapes_questions(objects, image_size, question_rng, colours=colours, shapes=shapes)
    return {"id": f"{split}_{index:05d}", "image": image, "captions": captions, "objects": objects,
            "questions": questions}


def _check_choices(shapes: Sequence[str], colours: Sequence[str]) -> None:
    bad = [s for s in shapes if s not in SHAPES] + [c for c in colours if c not in COLOURS]
    if bad or not shapes or not colours:
        raise ValueError(f"unknown or empty shapes/colours {bad}; known: {SHAPES}, {tuple(COLOURS)}")


def make_shapes_examples(
    n: int,
    image_size: int = 64,
    seed: int = 0,
    split: str = "train",
    shapes: Sequence[str] = DEFAULT_SHAPES,
    colours: Sequence[str] = DEFAULT_COLOURS,
    two_object_prob: float = 0.5,
) -> list[dict[str, Any]]:
    """Generate ``n`` examples in memory (same content as the on-disk split of that name).

    Each example is ``{"id": str, "image": PIL.Image (RGB), "captions": list[str] (5),
    "objects": list[{"shape", "colour", "size", "position", "bbox"}]}``; ``bbox`` is
    ``[x0, y0, x1, y1]`` in pixels. Objects are ordered left-to-right / top-to-bottom.
    """
    _check_choices(shapes, colours)
    return [_make_example(split, i, image_size, seed, shapes, colours, two_object_prob) for i in range(n)]


SHAPES_MARKER = ".minivlm_shapes.json"  # hidden: imagefolder loading ignores it
# Bumped when the questions change for the same images (2: objects named by shape alone, near absent
# objects): a set of ours with another version is written again rather than trained on as it is.
QUESTIONS_VERSION = 2


class ShapesFolderError(ValueError):
    """The target folder holds files the shapes generator did not write: nothing is written or deleted."""


def _marker_record(output_dir: str | Path) -> dict[str, Any]:
    """The generator's record in ``output_dir`` (its parameters), or {} when there is none or it is unreadable."""
    try:
        record = json.loads((Path(output_dir) / SHAPES_MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


# The generator's name in the marker; sets written under the package's former name are ours too.
SHAPES_GENERATOR = "minivlm.processing.shapes"
_FORMER_GENERATORS = ("minivlm.data.shapes",)


def is_shapes_folder(output_dir: str | Path, complete: bool = True) -> bool:
    """Whether ``output_dir`` holds a shapes set this generator wrote (``complete``: and finished writing)."""
    record = _marker_record(output_dir)
    return (record.get("generator") in (SHAPES_GENERATOR, *_FORMER_GENERATORS)
            and bool(record.get("complete") or not complete))


def generate_shapes_dataset(
    output_dir: str | Path,
    num_train: int = 3000,
    num_validation: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    colours: Sequence[str] = DEFAULT_COLOURS,
    two_object_prob: float = 0.5,
) -> Path:
    """Write the dataset as a Hugging Face ``imagefolder`` and return ``output_dir``.

    Layout: ``output_dir/{train,validation,test}/{id}.png`` plus one ``metadata.jsonl``
    per split with ``file_name``, ``id``, ``captions`` (5 strings) and ``objects``, and a marker
    file ``.minivlm_shapes.json`` (written first as incomplete, rewritten as complete last).
    ``output_dir`` must be missing, empty, or a set this generator wrote (it has the marker):
    then the generator's own files in its split folders (``{split}_NNNNN.png``, ``metadata.jsonl``)
    are replaced, stale ones removed (they would break the metadata/image pairing), and any other
    file there is kept (a split folder is removed only when nothing else is left in it). Any other
    folder raises `ShapesFolderError` and nothing in it is touched. Splits with 0 examples are not
    written. Output is byte-identical for the same arguments.
    """
    _check_choices(shapes, colours)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ShapesFolderError(f"{output_dir} is a file, not a folder; pass a new or empty folder for the shapes set.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not is_shapes_folder(output_dir, complete=False):
        raise ShapesFolderError(
            f"{output_dir} is not empty and holds no shapes set written by MiniVLM (no {SHAPES_MARKER}); its files "
            "are left untouched. Pass a new or empty folder (--shapes_dir), or move those files away."
        )
    linked = [split for split in SPLITS if (output_dir / split).is_symlink() or (output_dir / split).is_file()]
    if linked:
        raise ShapesFolderError(
            f"{output_dir}/{linked[0]} is a link or a file, not a folder of the shapes set: writing through it would "
            "put files elsewhere. Remove it, or pass a new or empty folder (--shapes_dir)."
        )
    params = shapes_parameters(num_train, num_validation, num_test, image_size, seed, shapes, colours, two_object_prob)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker = output_dir / SHAPES_MARKER
    marker.write_text(json.dumps({**params, "complete": False}, indent=1) + "\n", encoding="utf-8")
    for split, n in zip(SPLITS, (num_train, num_validation, num_test)):
        split_dir = output_dir / split
        _remove_generated_files(split_dir, split)  # stale images would break the metadata/image pairing
        if n <= 0:
            continue
        split_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(n):
            ex = _make_example(split, i, image_size, seed, shapes, colours, two_object_prob)
            file_name = f"{ex['id']}.png"
            ex["image"].save(split_dir / file_name, format="PNG", optimize=False)
            record = {"file_name": file_name, "id": ex["id"], "captions": ex["captions"], "objects": ex["objects"],
                      "questions": ex["questions"]}
            lines.append(json.dumps(record, sort_keys=False))
        (split_dir / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    marker.write_text(json.dumps({**params, "complete": True}, indent=1) + "\n", encoding="utf-8")
    return output_dir


def shapes_parameters(
    num_train: int = 3000,
    num_validation: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    seed: int = 0,
    shapes: Sequence[str] = DEFAULT_SHAPES,
    colours: Sequence[str] = DEFAULT_COLOURS,
    two_object_prob: float = 0.5,
) -> dict[str, Any]:
    """What the marker records of a set: every argument its content depends on (the same arguments give
    byte-identical files), and the generator's name and `QUESTIONS_VERSION`."""
    return {"generator": SHAPES_GENERATOR, "num_train": num_train, "num_validation": num_validation,
            "num_test": num_test, "image_size": image_size, "seed": seed, "shapes": list(shapes),
            "colours": list(colours), "two_object_prob": two_object_prob, "questions_version": QUESTIONS_VERSION}


def _generated_file(name: str, split: str) -> bool:
    """Whether a file name in a split folder is one the generator writes there (`{split}_00012.png`, the metadata)."""
    return name == "metadata.jsonl" or re.fullmatch(rf"{re.escape(split)}_\d{{5,}}\.png", name) is not None


def _remove_generated_files(split_dir: Path, split: str) -> None:
    """Removes the generator's own files from a split folder, then the folder if nothing else is left:
    a user's file put there (a photo, notes) stays, and `imagefolder` loading ignores it."""
    if not split_dir.is_dir() or split_dir.is_symlink():
        return
    others = []
    for path in split_dir.iterdir():
        if path.is_file() and not path.is_symlink() and _generated_file(path.name, split):
            path.unlink()
        else:
            others.append(path.name)
    if others:
        logger.warning("%s: kept %d file(s) the shapes generator did not write (%s).", split_dir, len(others),
                       ", ".join(sorted(others)[:5]))
    else:
        split_dir.rmdir()


def ensure_shapes_dataset(output_dir: str | Path, **kwargs: Any) -> Path:
    """``output_dir`` if it already holds a complete shapes set made with these arguments, else
    `generate_shapes_dataset` there (only the generator's own files are replaced).

    A set of ours made with other arguments (``num_train``, ``image_size``, ``seed``, ...) or another
    `QUESTIONS_VERSION` is written again, so that what trains is what the run records. A set written
    before the marker existed (``train/metadata.jsonl`` present, no marker) is reused when its splits
    hold the numbers of images asked for, else refused (`ShapesFolderError`): nothing records what else
    it was made with. Under several processes, call it from one per machine (``main_process_first(local=True)``).
    """
    output_dir = Path(output_dir)
    legacy = not (output_dir / SHAPES_MARKER).exists() and (output_dir / "train" / "metadata.jsonl").is_file()
    if legacy:
        _check_legacy_counts(output_dir, kwargs)
        return output_dir
    if is_shapes_folder(output_dir):
        record = {"questions_version": 1, **_marker_record(output_dir)}  # version 1 recorded none
        changes = [f"{name} {record.get(name)} → {value}" for name, value in shapes_parameters(**kwargs).items()
                   if name != "generator" and record.get(name) != value]
        if not changes:
            return output_dir
        logger.warning("%s holds a shapes set made with other arguments (%s); writing it again.", output_dir,
                       ", ".join(changes))
    logger.info("Generating the shapes set in %s", output_dir)
    return generate_shapes_dataset(output_dir, **kwargs)


def _check_legacy_counts(output_dir: Path, kwargs: dict[str, Any]) -> None:
    defaults = shapes_parameters()
    for split in SPLITS:
        wanted = kwargs.get(f"num_{split}", defaults[f"num_{split}"])
        metadata = output_dir / split / "metadata.jsonl"
        found = (sum(1 for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip())
                 if metadata.is_file() else 0)
        if found != wanted:
            raise ShapesFolderError(
                f"{output_dir} holds a shapes set of an older version (no {SHAPES_MARKER}) with {found} {split} "
                f"image(s), not the {wanted} asked for. Pass the numbers it has (--shapes_num_train / "
                "--shapes_num_eval), or delete the folder (or pick another --shapes_dir) to generate it again."
            )


def caption_vocabulary(shapes: Sequence[str] = DEFAULT_SHAPES, colours: Sequence[str] = DEFAULT_COLOURS) -> list[str]:
    """Sorted list of every word the caption templates can produce for these shapes/colours.

    Handy for a word-level tokenizer; captions are lower case, space-separated, no punctuation.
    """
    words: set[str] = set(shapes) | {f"{s}s" for s in shapes} | set(colours) | set(SIZES)
    groups = (*_ONE_TEMPLATES, *_TWO_TEMPLATES, *(g for pair in _LAYOUT_TEMPLATES.values() for g in pair))
    templates = [t for group in groups for t in group]
    for text in [*templates, _SAME_PAIR_TEMPLATE, *_POS_PHRASE.values()]:
        words.update(w for w in text.split() if "{" not in w)
    return sorted(words)


# ----------------------------------------------------------------------------- questions

# Box corners on the 0-1000 grid of `minivlm.processing.grounding`, rounded to multiples of BOX_STEP: 101
# number words for a word-level tokenizer instead of 1001, at 0.64 px per step on a 64-px image.
BOX_STEP = 10
_WHERE = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "center": "center"}
QUESTION_TYPES = ("objects", "colour", "count", "exists", "where", "box")


def _name(obj: Mapping[str, Any]) -> str:
    return f"{obj['colour']} {obj['shape']}"


def shapes_questions(
    objects: Sequence[Mapping[str, Any]],
    image_size: int,
    rng: np.random.Generator,
    colours: Sequence[str] = DEFAULT_COLOURS,
    shapes: Sequence[str] = DEFAULT_SHAPES,
) -> list[dict[str, str]]:
    """Questions about one image whose answers follow from its `objects`, in a shuffled order.

    Each is `{"type", "question", "answer"}`; types (see `QUESTION_TYPES`): `objects` ("what objects
    are in the image?" -> "a red circle and a blue square"), `colour` of a shape found once in the
    image, `count` ("2"), `exists` (one "yes" and one "no" question, the "no" one about an object of a colour or
    a shape the image has), `where` (left / right / top /
    bottom / center) and `box` (`[x1, y1, x2, y2]` on the 0-1000 grid, see `grounding.format_box`) of
    each object whose colour and shape name it alone ("the red circle"; "the circle", half the time, when
    it is the only circle).
    """
    from minivlm.processing.grounding import format_box

    names = [_name(o) for o in objects]
    if len(objects) == 2 and names[0] == names[1]:
        listing = _SAME_PAIR_TEMPLATE.format(c=objects[0]["colour"], s=objects[0]["shape"])
    else:
        listing = " and ".join(f"a {name}" for name in names)
    out = [{"type": "objects", "question": "what objects are in the image?", "answer": listing}]
    shape_counts = Counter(o["shape"] for o in objects)
    for obj in objects:
        if shape_counts[obj["shape"]] == 1:
            out.append({"type": "colour", "question": f"what colour is the {obj['shape']}?", "answer": obj["colour"]})
    out.append({"type": "count", "question": "how many shapes are there?", "answer": str(len(objects))})
    present = objects[int(rng.integers(len(objects)))]
    absent = [f"{c} {s}" for c in colours for s in shapes if f"{c} {s}" not in names]
    # The absent object shares its colour or its shape with one in the image when it can: answering then
    # takes both words of the question, not one.
    near = [name for name in absent if any(name.split()[0] == o["colour"] or name.split()[1] == o["shape"] for o in objects)]
    absent = near or absent
    out.append({"type": "exists", "question": f"is there a {_name(present)}?", "answer": "yes"})
    if absent:
        out.append({"type": "exists", "question": f"is there a {absent[int(rng.integers(len(absent)))]}?", "answer": "no"})
    for obj, name in zip(objects, names):
        if names.count(name) == 1:
            # An object whose shape is the only one of its kind is as often named by its shape alone: finding
            # an object by its shape is then learned too, not only by its colour.
            if shape_counts[obj["shape"]] == 1 and rng.random() < 0.5:
                name = obj["shape"]
            out.append({"type": "where", "question": f"where is the {name}?", "answer": _WHERE[obj["position"]]})
            box = format_box(obj["bbox"], (image_size, image_size), step=BOX_STEP)
            out.append({"type": "box", "question": f"locate the {name}", "answer": box})
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def shapes_conversation(questions: Sequence[Mapping[str, str]], max_turns: int | None = None) -> list[dict[str, Any]]:
    """The questions of one image as a multi-turn conversation: the image comes with the first question."""
    messages = []
    for turn, qa in enumerate(questions[:max_turns]):
        user = ([{"type": "image", "text": None}] if turn == 0 else []) + [{"type": "text", "text": qa["question"]}]
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": qa["answer"]}]})
    return messages


def question_vocabulary(colours: Sequence[str] = DEFAULT_COLOURS, shapes: Sequence[str] = DEFAULT_SHAPES) -> list[str]:
    """Every question and answer text the shapes set can produce, as sample strings for a tokenizer."""
    from minivlm.processing.grounding import format_box

    texts = ["what objects are in the image?", "how many shapes are there? 1 2", "yes no", " ".join(_WHERE)]
    # Every grid value in every place of a box, written as answers are (a tokenizer may read a box's first
    # number with its bracket).
    texts += [format_box((v, v, v, v)) for v in range(0, 1001, BOX_STEP)]
    for colour in colours:
        for shape in shapes:
            texts += [f"what colour is the {shape}?", f"is there a {colour} {shape}?", f"where is the {colour} {shape}?",
                      f"locate the {colour} {shape}", f"where is the {shape}?", f"locate the {shape}"]
    return texts


def shapes_texts(shapes_dir: str | Path | None = None) -> list[str]:
    """Every word the shapes set in ``shapes_dir`` can say (captions, questions, answers), as texts for a
    word-level tokenizer; the default colours and shapes when the folder records none."""
    record = _marker_record(shapes_dir) if shapes_dir is not None else {}
    colours = tuple(record.get("colours") or DEFAULT_COLOURS)
    shapes = tuple(record.get("shapes") or DEFAULT_SHAPES)
    return [" ".join(caption_vocabulary(shapes, colours)), *question_vocabulary(colours, shapes)]


# ----------------------------------------------------------------------------- scoring

# Recognised shape words (singular and plural) -> (shape, is_plural).
_SHAPE_WORDS: dict[str, tuple[str, bool]] = {s: (s, False) for s in SHAPES} | {f"{s}s": (s, True) for s in SHAPES}
_COLOUR_WORDS: dict[str, str] = {c: c for c in COLOURS} | {"violet": "purple"}
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "both": 2, "three": 3, "four": 4}
# Words that end a noun phrase: a colour/number beyond them belongs to another object.
_BOUNDARY = {"and", "or", "of", "with", "above", "below", "under", "over", "beside", "next", "to", "on", "in",
             "at", "near", "is", "are", "there", "than", "while", "but", "left", "right", "top", "bottom"}
_PHRASE_WINDOW = 4  # max modifier tokens looked at before a shape word
_TOKEN_RE = re.compile(r"[a-z]+|[^a-z\s]")


def parse_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) pairs named in ``caption``, one per object, in order of mention.

    The colour of a shape word is the nearest colour word in the few tokens before it
    (stopping at punctuation, another shape or a preposition/conjunction); a shape with
    no colour yields ``("unknown", shape)``. Counts: "two red circles" -> two pairs;
    a plural without number counts as two. Case, punctuation and extra words are ignored.
    """
    tokens = _TOKEN_RE.findall(caption.lower())
    pairs: list[tuple[str, str]] = []
    for i, tok in enumerate(tokens):
        if tok not in _SHAPE_WORDS:
            continue
        shape, plural = _SHAPE_WORDS[tok]
        colour, count = None, None
        for t in reversed(tokens[max(0, i - _PHRASE_WINDOW):i]):
            if t in _SHAPE_WORDS or t in _BOUNDARY or not t.isalpha():
                break
            if colour is None and t in _COLOUR_WORDS:
                colour = _COLOUR_WORDS[t]
            if count is None and t in _NUMBER_WORDS:
                count = _NUMBER_WORDS[t]
        if count is None or (plural and count == 1):  # bare plural "red circles" means (at least) two
            count = 2 if plural else 1
        pairs.extend([(colour or "unknown", shape)] * count)
    return pairs


def _object_pairs(objects: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> list[tuple[str, str]]:
    """(colour, shape) per object; accepts a list of dicts or a datasets-style dict of lists."""
    if isinstance(objects, Mapping):  # older `datasets` turn list-of-struct into struct-of-lists
        return list(zip(objects["colour"], objects["shape"]))
    return [(o.get("colour", o.get("color")), o["shape"]) for o in objects]


def score_caption(caption: str, objects: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]) -> bool:
    """True iff ``caption`` names exactly the image's objects: same multiset of (colour, shape).

    Sizes and positions are not checked; a missing, extra or mis-coloured/mis-shaped
    object makes it False.
    """
    return Counter(parse_objects(caption)) == Counter(_object_pairs(objects))


def shapes_accuracy(captions: Sequence[str], objects_list: Sequence[Any]) -> float:
    """Fraction of ``captions`` that :func:`score_caption` accepts against their objects."""
    if len(captions) != len(objects_list):
        raise ValueError(f"{len(captions)} captions but {len(objects_list)} object lists")
    if not captions:
        return 0.0
    return sum(score_caption(c, o) for c, o in zip(captions, objects_list)) / len(captions)


# ----------------------------------------------------------------------------- CLI


def _summary(output_dir: Path) -> str:
    """Human-readable counts, vocabulary and sample captions of a written dataset."""
    lines, vocab = [], set()
    for split in SPLITS:
        meta = output_dir / split / "metadata.jsonl"
        if not meta.exists():
            continue
        records = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines()]
        n_objects = Counter(len(r["objects"]) for r in records)
        vocab.update(w for r in records for c in r["captions"] for w in c.split())
        lines.append(f"  {split:<10} {len(records):>6} images  "
                     f"(1 object: {n_objects[1]}, 2 objects: {n_objects[2]})")
        if split == "train":
            lines += [f"    e.g. {c}" for c in records[0]["captions"]]
    lines.append(f"  caption vocabulary: {len(vocab)} words")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: write the dataset and print a summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_train", type=int, default=3000)
    p.add_argument("--num_validation", type=int, default=200)
    p.add_argument("--num_test", type=int, default=200)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--two_object_prob", type=float, default=0.5)
    p.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma-separated subset of {SHAPES}")
    p.add_argument("--colours", default=",".join(DEFAULT_COLOURS), help=f"comma-separated subset of {tuple(COLOURS)}")
    args = p.parse_args(argv)
    start = time.perf_counter()
    out = generate_shapes_dataset(
        args.output_dir, args.num_train, args.num_validation, args.num_test, args.image_size, args.seed,
        shapes=tuple(args.shapes.split(",")), colours=tuple(args.colours.split(",")),
        two_object_prob=args.two_object_prob,
    )
    print(f"wrote shapes dataset to {out} in {time.perf_counter() - start:.1f}s ({args.image_size}px)")
    print(_summary(out))


if __name__ == "__main__":
    main()
