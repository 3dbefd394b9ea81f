"""Grounding as text: boxes are written `[x1, y1, x2, y2]` with integers on a 0–1000 grid.

As Qwen-VL does, a box is plain text the tokenizer already has, not added location tokens: the
corners are relative to the image (0 = left/top edge, 1000 = right/bottom edge), so a box means
the same on any image size and any resize the image processor does. `format_box` writes one and
`draw_boxes` draws them; reading boxes back (`parse_boxes`, `valid_box`, `grid_to_pixels`, the
grid and the pattern) lives in the shipped `minivlm.grounding_minivlm`, re-exported here, so that
the model's `detect` on the Hub and the project read boxes the same way.

    format_box((12, 8, 40, 36), image_size=(64, 64))   # "[190, 130, 630, 560]"
    parse_boxes("the circle is at [190, 130, 630, 560]")  # [(190, 130, 630, 560)]
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from minivlm.grounding_minivlm import BOX_PATTERN, GRID, grid_to_pixels, parse_boxes, valid_box

__all__ = ["GRID", "BOX_PATTERN", "box_to_grid", "grid_to_pixels", "format_box", "parse_boxes", "valid_box",
           "draw_boxes"]


def box_to_grid(box: Sequence[float], image_size: tuple[int, int], step: int = 1) -> tuple[int, int, int, int]:
    """A pixel box `(x1, y1, x2, y2)` of an image of `image_size` `(width, height)` on the 0–1000 grid.

    `step` rounds every corner to a multiple of it (1: every integer; the shapes set uses 10),
    clipped to [0, 1000].
    """
    if step < 1 or GRID % step:
        raise ValueError(f"step must divide {GRID} (1, 2, 5, 10, 20, 25, 50, ...), got {step}")
    width, height = image_size
    scaled = (box[0] / width, box[1] / height, box[2] / width, box[3] / height)
    return tuple(min(GRID, max(0, int(round(v * GRID / step)) * step)) for v in scaled)


def format_box(box: Sequence[float], image_size: tuple[int, int] | None = None, step: int = 1) -> str:
    """The text of one box: `[x1, y1, x2, y2]`. Without `image_size`, `box` is already on the grid."""
    grid = box_to_grid(box, image_size, step) if image_size is not None else tuple(int(v) for v in box)
    return "[" + ", ".join(str(v) for v in grid) + "]"


def draw_boxes(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[str] | None = None,
    colours: Sequence[str] | str = "black",
    width: int | None = None,
) -> Image.Image:
    """A copy of `image` with the 0–1000 grid `boxes` drawn as rectangles (and `labels` above them)."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    colours = [colours] * len(boxes) if isinstance(colours, str) else list(colours)
    line = width or max(1, round(min(out.size) / 64))
    for index, box in enumerate(boxes):
        x1, y1, x2, y2 = grid_to_pixels(box, out.size)
        draw.rectangle((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), outline=colours[index], width=line)
        if labels is not None and index < len(labels) and labels[index]:
            draw.text((min(x1, x2) + 1, max(0, min(y1, y2) - 11)), labels[index], fill=colours[index])
    return out
