"""Grounding as text: boxes are written `[x1, y1, x2, y2]` with integers on a 0–1000 grid.

As Qwen-VL does, a box is plain text the tokenizer already has, not added location tokens: the
corners are relative to the image (0 = left/top edge, 1000 = right/bottom edge), so a box means
the same on any image size and any resize the image processor does. `format_box` writes one and
`draw_boxes` draws them (for the app's page and the evaluation plots alike); reading boxes back
(`parse_boxes`, `parse_labelled_boxes`, `valid_box`, `grid_to_pixels`, the grid and the pattern)
lives in the shipped `minivlm.grounding_minivlm`, re-exported here, so that the model's `detect` on
the Hub, the evaluation and the app read boxes the same way.

    format_box((12, 8, 40, 36), image_size=(64, 64))   # "[190, 130, 630, 560]"
    parse_boxes("the circle is at [190, 130, 630, 560]")  # [(190, 130, 630, 560)]
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from minivlm.grounding_minivlm import (
    BOX_PATTERN, GRID, grid_to_pixels, parse_boxes, parse_labelled_boxes, valid_box,
)

__all__ = ["GRID", "BOX_PATTERN", "PALETTE", "box_to_grid", "grid_to_pixels", "format_box", "parse_boxes",
           "parse_labelled_boxes", "valid_box", "draw_boxes"]

# Colours of drawn boxes, cycled: distinct on photos and on the shapes set's flat colours.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


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
    colours: Sequence[str] | str = PALETTE,
    width: int | None = None,
    min_side: int | None = None,
) -> Image.Image:
    """A copy of `image` with the 0–1000 grid `boxes` drawn as rectangles, each labelled when `labels` is given.

    The one drawing of boxes (the app's page, the evaluation plots). Corners in either order.
    `labels[i]` names box i on a tag of its colour ("" → "box i+1"); None draws no tags. `colours`: one
    colour for all, or colours cycled over the boxes. `width`: line width in pixels (default: the
    image's height / 150, at least 2). `min_side`: small images (the shapes set is 32–64 px) are first
    enlarged by a whole factor (nearest neighbour) until their shorter side is at least that many
    pixels, so lines and tags stay readable.
    """
    out = image.convert("RGB").copy()
    if min_side:
        scale = max(1, -(-min_side // min(out.size)))
        if scale > 1:
            out = out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(out)
    colours = [colours] if isinstance(colours, str) else list(colours)
    line = width or max(2, out.height // 150)
    font = ImageFont.load_default(size=max(12, out.height // 28)) if labels is not None else None
    for index, box in enumerate(boxes):
        colour = colours[index % len(colours)]
        x1, y1, x2, y2 = grid_to_pixels(box, out.size)
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if labels is None:
            continue
        label = (labels[index] if index < len(labels) else "") or f"box {index + 1}"
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font)
        top_y = y1 - (bottom - top) - 2 * line if y1 - (bottom - top) - 2 * line >= 0 else y1
        draw.rectangle((x1, top_y, x1 + right - left + 2 * line, top_y + bottom - top + 2 * line), fill=colour)
        draw.text((x1 + line, top_y + line - (top - y1)), label, fill="white", font=font)
    return out
