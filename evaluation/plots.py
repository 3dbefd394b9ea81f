"""The notebook's pictures as PNG files: the loss curve, before/after captions, the patch-feature heatmap.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through
`pyplot`: no window, no global backend switch, no figure left open in a long training process.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from minivlm.processing_minivlm import to_rgb


__all__ = ["patch_feature_norms", "plot_caption_grid", "plot_loss_curve", "plot_patch_heatmap"]

_WRAP = 36  # characters per caption line under a grid image


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    return path


def plot_loss_curve(log_history: Sequence[dict], path: str | Path) -> Path:
    """Training loss by step (and evaluation loss, when logged) from a Trainer's ``state.log_history``.

    Args:
        log_history: the Trainer's log entries (``trainer.state.log_history`` or the
            ``log_history`` of ``trainer_state.json``); entries with ``loss`` / ``eval_loss`` and ``step``.
        path: the PNG to write (folders are created).

    Returns:
        ``path``. Raises ValueError when no entry holds a training loss.
    """
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train:
        raise ValueError(f"no training loss in the {len(log_history)} log entries; was logging_steps larger "
                         "than the number of steps? (the Trainer logs 'loss' every logging_steps)")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    ax.plot(*zip(*train), marker="o" if len(train) < 50 else None, label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", label="evaluation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_caption_grid(
    images: Sequence[Image.Image],
    before: Sequence[str],
    after: Sequence[str],
    references: Sequence[str],
    path: str | Path,
    ncols: int = 4,
) -> Path:
    """The notebook's before/after comparison: each image with its untrained, trained and reference caption.

    Args:
        images: PIL images (any mode).
        before: captions of the untrained model, one per image.
        after: captions of the trained model, one per image.
        references: one reference caption per image.
        path: the PNG to write.
        ncols: images per row.

    Returns:
        ``path``.
    """
    n = len(images)
    if not n or not (len(before) == len(after) == len(references) == n):
        raise ValueError(f"need one before/after/reference caption per image and at least one image; got "
                         f"{n} images, {len(before)} before, {len(after)} after, {len(references)} references")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(4 * ncols, 5.2 * nrows))
    for i, image in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(to_rgb(image))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(
            "\n".join(textwrap.fill(f"{label}: {text}", _WRAP) for label, text in
                      (("BEFORE", before[i]), ("AFTER", after[i]), ("REFERENCE", references[i]))),
            fontsize=8, ha="center",
        )
    fig.suptitle("Before vs after training", fontsize=14, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)


def patch_feature_norms(model: torch.nn.Module, processor, image: Image.Image) -> np.ndarray:
    """Per-patch feature magnitude of the vision encoder, as a patch grid.

    The L2 norm of each patch's ``last_hidden_state`` vector (CLS dropped), reshaped to
    ``(image_size // patch_size, image_size // patch_size)``: 14×14 for ViT-L/16 at 224 px.
    Reads the encoder directly, so the model's feature strategy and pixel shuffle do not apply.
    """
    vision_config = model.config.vision_config
    side = vision_config.image_size // vision_config.patch_size
    pixel_values = processor.image_processor(to_rgb(image), return_tensors="pt")["pixel_values"]
    tower = model.vision_tower
    with torch.inference_mode():
        features = tower(pixel_values.to(tower.device, tower.dtype)).last_hidden_state[0]  # (tokens, dim)
    if features.shape[0] == side * side + 1:  # a CLS token comes first
        features = features[1:]
    if features.shape[0] != side * side:
        raise ValueError(f"the encoder returned {features.shape[0]} tokens, not a {side}x{side} patch grid "
                         f"(image_size {vision_config.image_size} / patch_size {vision_config.patch_size})")
    return features.float().norm(dim=-1).reshape(side, side).cpu().numpy()


def plot_patch_heatmap(model: torch.nn.Module, processor, image: Image.Image, path: str | Path) -> np.ndarray:
    """The notebook's "vision feature magnitude per patch": the image beside a heatmap with a colorbar.

    Args:
        model: a MiniVLM (its ``vision_tower`` is read).
        processor: its processor (the image processor resizes to the encoder's size).
        image: a PIL image.
        path: the PNG to write.

    Returns:
        The plotted grid from `patch_feature_norms`, ``(image_size // patch_size,) * 2``.
    """
    grid = patch_feature_norms(model, processor, image)
    fig = Figure(figsize=(10, 4.5))
    ax_image, ax_map = fig.subplots(1, 2)
    ax_image.imshow(to_rgb(image))
    ax_image.set_title("Image")
    ax_image.axis("off")
    heat = ax_map.imshow(grid, cmap="hot")
    ax_map.set_title(f"Vision feature magnitude per patch ({grid.shape[0]}x{grid.shape[1]})")
    ax_map.axis("off")
    colorbar = fig.colorbar(heat, ax=ax_map, fraction=0.046)
    colorbar.formatter.set_useOffset(False)  # an offset label would sit on the title when the range is narrow
    colorbar.update_ticks()
    fig.tight_layout()
    _save(fig, path)
    return grid


def plot_box_grid(
    images: Sequence[Image.Image],
    predicted: Sequence[Sequence[Sequence[float]]],
    targets: Sequence[Sequence[Sequence[float]]],
    titles: Sequence[str],
    path: str | Path,
    ncols: int = 4,
    scale: int = 4,
) -> Path:
    """Grounding at a glance: each image with its predicted boxes (red) and the true ones (green).

    Args:
        images: PIL images (any mode).
        predicted, targets: per image, a list of boxes on the 0-1000 grid (`minivlm.processing.grounding`).
        titles: one line per image (e.g. the object asked for and the IoU).
        path: the PNG to write.
        ncols: images per row; scale: upsampling of the (small) images before drawing.

    Returns:
        ``path``.
    """
    from minivlm.processing.grounding import draw_boxes

    n = len(images)
    if not n or not (len(predicted) == len(targets) == len(titles) == n):
        raise ValueError(f"need predicted boxes, target boxes and a title per image; got {n} images, "
                         f"{len(predicted)} predicted, {len(targets)} targets, {len(titles)} titles")
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3 * ncols, 3.4 * nrows))
    for i, image in enumerate(images):
        big = to_rgb(image).resize((image.width * scale, image.height * scale), Image.NEAREST)
        big = draw_boxes(big, list(targets[i]), colours="green", width=2)
        big = draw_boxes(big, list(predicted[i]), colours="red", width=2)
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(big)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(textwrap.fill(titles[i], _WRAP), fontsize=8)
    fig.suptitle("Grounding: predicted (red) and true (green) boxes", fontsize=12, fontweight="bold")
    fig.tight_layout()
    return _save(fig, path)
