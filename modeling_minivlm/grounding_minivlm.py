"""Boxes as text: `[x1, y1, x2, y2]` with integers on a 0–1000 grid, read back out of generated text.

As Qwen-VL does, a box is plain text the tokenizer already has, not added location tokens: the
corners are relative to the image (0 = left/top edge, 1000 = right/bottom edge), so a box means
the same on any image size and any resize the image processor does.

    parse_boxes("the circle is at [190, 130, 630, 560]")  # [(190, 130, 630, 560)]
    parse_labelled_boxes("the circle is at [190, 130, 630, 560]")  # [((190, 130, 630, 560), "circle")]
    valid_box((630, 130, 190, 560))                       # (190, 130, 630, 560): corners put in order
    grid_to_pixels((190, 130, 630, 560), (64, 64))         # (12.16, 8.32, 40.32, 35.84)

Ships to the Hub verbatim as remote code (the task helpers' `detect` reads boxes with it); the
project's data side re-exports it (`minivlm.processing.grounding`). Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


GRID = 1000
BOX_PATTERN = re.compile(r"\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")


# Words that describe a box without naming it: "the red circle is at [..]" → "red circle".
_LABEL_STOPWORDS = {"a", "an", "the", "is", "at", "in", "of", "and", "it", "its", "there", "are", "on", "with"}


def _label(text_before: str) -> str:
    """Up to three words naming a box: the last words of the clause before it, leading stopwords dropped."""
    words = re.findall(r"[\w-]+", text_before.split(".")[-1].split(";")[-1])
    while words and words[0].lower() in _LABEL_STOPWORDS:
        words = words[1:]
    return " ".join(words[-3:])


def parse_labelled_boxes(text: str) -> list[tuple[tuple[int, int, int, int], str]]:
    """Every `[x1, y1, x2, y2]` box in `text`, in order, with the words before it that name it.

    Each item is `(box, label)`: the box as `parse_boxes` reads it (not checked; `valid_box` checks
    it), the label up to three words of the text between the previous box and this one ("the red
    circle [..]" → "red circle"; "" when nothing names it).
    """
    found, start = [], 0
    for match in BOX_PATTERN.finditer(text):
        found.append((tuple(int(v) for v in match.groups()), _label(text[start : match.start()])))
        start = match.end()
    return found


def parse_boxes(text: str) -> list[tuple[int, int, int, int]]:
    """Every `[x1, y1, x2, y2]` box in `text`, in order, as integer tuples (grid units, not checked).

    Any integers, any spacing: also the `[ 120, 80, 400, 360 ]` a word-level tokenizer decodes to.
    """
    return [box for box, _ in parse_labelled_boxes(text)]


def valid_box(box: Sequence[float]) -> tuple[int, int, int, int] | None:
    """`box` as a drawable grid box, or None when it is not one.

    Corners given in the wrong order (`x1 > x2` or `y1 > y2`) are swapped; a box with a value
    outside [0, 1000] (not this format) or without area (a line or a point) is None.
    """
    x1, y1, x2, y2 = (int(v) for v in box)
    if min(x1, y1, x2, y2) < 0 or max(x1, y1, x2, y2) > GRID:
        return None
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    if x1 == x2 or y1 == y2:
        return None
    return (x1, y1, x2, y2)


def grid_to_pixels(box: Sequence[float], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A 0–1000 grid box in pixel coordinates of an image of `image_size` `(width, height)`."""
    width, height = image_size
    return (box[0] * width / GRID, box[1] * height / GRID, box[2] * width / GRID, box[3] * height / GRID)


__all__ = ["GRID", "BOX_PATTERN", "grid_to_pixels", "parse_boxes", "parse_labelled_boxes", "valid_box"]
