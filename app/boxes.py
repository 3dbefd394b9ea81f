"""Boxes in answers, for the page: the project's text format `[x1, y1, x2, y2]` (integers on a
0–1000 grid, `minivlm.processing.grounding`), read with a label and checked, and drawn large.
"""

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from minivlm.processing.grounding import BOX_PATTERN, GRID, valid_box

# Words that describe the box before it: "the red circle [..]" → "red circle".
_LABEL_STOPWORDS = {"a", "an", "the", "is", "at", "in", "of", "and", "it", "its", "there", "are", "on", "with"}
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


@dataclass(frozen=True)
class Box:
    """A box on the 0–1000 grid (`x1 <= x2`, `y1 <= y2`) and the words that named it (may be empty)."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixels of a `width × height` image."""
        return (self.x1 * width / GRID, self.y1 * height / GRID, self.x2 * width / GRID, self.y2 * height / GRID)


def _label(text_before: str) -> str:
    words = re.findall(r"[\w-]+", text_before.split(".")[-1].split(";")[-1])
    while words and words[0].lower() in _LABEL_STOPWORDS:
        words = words[1:]
    return " ".join(words[-3:])


def parse_boxes(text: str) -> list[Box]:
    """Every `[x1, y1, x2, y2]` in `text` whose numbers lie on the 0–1000 grid, in order.

    Corners given in the wrong order are swapped; boxes with a value above 1000 or no area are
    skipped (not a box in this format). Each box is labelled with up to three words before it.
    """
    boxes = []
    start = 0
    for match in BOX_PATTERN.finditer(text):
        label = _label(text[start : match.start()])
        start = match.end()
        box = valid_box(match.groups())  # corners put in order; off-grid or flat boxes are None
        if box is None:
            continue
        boxes.append(Box(*(float(v) for v in box), label))
    return boxes


def draw_boxes(image: Image.Image, boxes: list[Box], min_side: int = 384) -> Image.Image:
    """A copy of `image` with the boxes and their labels drawn on it.

    Small images (the shapes set is 32–64 px) are enlarged first (nearest neighbour) so that the
    shorter side is at least `min_side` pixels and the lines stay readable.
    """
    image = image.convert("RGB")
    scale = max(1, -(-min_side // min(image.size)))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(12, image.height // 28))
    width = max(2, image.height // 150)
    for index, box in enumerate(boxes):
        colour = COLOURS[index % len(COLOURS)]
        x1, y1, x2, y2 = box.to_pixels(*image.size)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        label = box.label or f"box {index + 1}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        top_y = y1 - (bottom - top) - 2 * width if y1 - (bottom - top) - 2 * width >= 0 else y1
        draw.rectangle((x1, top_y, x1 + right - left + 2 * width, top_y + bottom - top + 2 * width), fill=colour)
        draw.text((x1 + width, top_y + width - (top - y1)), label, fill="white", font=font)
    return image


__all__ = ["BOX_PATTERN", "GRID", "Box", "draw_boxes", "parse_boxes"]
