"""Boxes in answers, for the page: the project's text format `[x1, y1, x2, y2]` (integers on a
0–1000 grid), read with the words that name them and checked, by the shipped parser
(`minivlm.grounding_minivlm`); drawn by `minivlm.processing.grounding.draw_boxes`.
"""

from dataclasses import dataclass

from PIL import Image

from minivlm.grounding_minivlm import GRID, grid_to_pixels, parse_labelled_boxes, valid_box
from minivlm.processing.grounding import draw_boxes

DISPLAY_MIN_SIDE = 384  # small images are enlarged to at least this many pixels before boxes are drawn


@dataclass(frozen=True)
class Box:
    """A box on the 0–1000 grid (`x1 <= x2`, `y1 <= y2`) and the words that named it (may be empty)."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""

    @property
    def grid(self) -> tuple[float, float, float, float]:
        """The corners `(x1, y1, x2, y2)` on the grid."""
        return (self.x1, self.y1, self.x2, self.y2)

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixels of a `width × height` image."""
        return grid_to_pixels(self.grid, (width, height))


def reply_boxes(text: str) -> list[Box]:
    """The boxes of a reply the page shows: every box of `text` that is one in this format, in order.

    Read by `parse_labelled_boxes` (each labelled with up to three words before it) and checked by
    `valid_box`: corners in the wrong order are swapped; boxes with a value outside [0, 1000] or no
    area are skipped.
    """
    boxes = []
    for raw, label in parse_labelled_boxes(text):
        box = valid_box(raw)
        if box is not None:
            boxes.append(Box(*(float(v) for v in box), label))
    return boxes


def draw_reply_boxes(image: Image.Image, boxes: list[Box], min_side: int = DISPLAY_MIN_SIDE) -> Image.Image:
    """A copy of `image`, enlarged to at least `min_side` pixels, with `boxes` and their labels drawn."""
    return draw_boxes(image, [box.grid for box in boxes], labels=[box.label for box in boxes], min_side=min_side)


__all__ = ["DISPLAY_MIN_SIDE", "GRID", "Box", "draw_reply_boxes", "reply_boxes"]
