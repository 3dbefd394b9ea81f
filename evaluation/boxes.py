"""Box metrics for grounding: IoU, accuracy at IoU >= 0.5 and mean IoU.

Boxes are `(x1, y1, x2, y2)` in any one coordinate system (MiniVLM's 0-1000 grid, see
`minivlm.processing.grounding`); a prediction with no parsable box scores IoU 0.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BOX_IOU_THRESHOLD", "box_iou", "box_metrics"]

BOX_IOU_THRESHOLD = 0.5  # a predicted box is right at this IoU with the reference, or more


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (corners in any order along each axis); 0 if either is empty."""
    ax1, ax2 = sorted((a[0], a[2]))
    ay1, ay2 = sorted((a[1], a[3]))
    bx1, bx2 = sorted((b[0], b[2]))
    by1, by2 = sorted((b[1], b[3]))
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def box_metrics(
    predictions: Sequence[Sequence[float] | None], targets: Sequence[Sequence[float]], threshold: float = BOX_IOU_THRESHOLD
) -> dict[str, float]:
    """`box_accuracy` (fraction with IoU >= `threshold`) and `box_mean_iou` of predicted vs target boxes.

    A `None` prediction (no box in the generated text) counts as IoU 0.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predicted boxes but {len(targets)} targets")
    ious = [box_iou(p, t) if p is not None else 0.0 for p, t in zip(predictions, targets)]
    if not ious:
        return {"box_accuracy": 0.0, "box_mean_iou": 0.0}
    return {"box_accuracy": sum(i >= threshold for i in ious) / len(ious), "box_mean_iou": sum(ious) / len(ious)}
