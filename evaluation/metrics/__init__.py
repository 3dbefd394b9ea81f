"""Standard image-captioning metrics (COCO caption evaluation), served offline through ``evaluate``.

``compute_caption_metrics`` is the one-call entry point; ``load_caption_metric`` returns the
``evaluate`` module itself (loaded from the folder shipped next to this file, never from the Hub).
The pure-Python pieces (tokenizer and scorers) are re-exported for direct use.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import evaluate

from .caption_metrics.caption_metrics import (
    PTB_PUNCTUATIONS,
    bleu_scores,
    cider_d,
    meteor_score,
    meteor_unavailable_reason,
    ptb_tokenize,
    rouge_l,
)

CAPTION_METRIC_PATH = str(Path(__file__).resolve().parent / "caption_metrics")

__all__ = [
    "CAPTION_METRIC_PATH", "PTB_PUNCTUATIONS", "bleu_scores", "cider_d", "compute_caption_metrics",
    "load_caption_metric", "meteor_score", "meteor_unavailable_reason", "ptb_tokenize", "rouge_l",
]


def load_caption_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    """Load the shipped ``caption_metrics`` module with ``evaluate.load`` (works with HF_HUB_OFFLINE=1).

    Args:
        **kwargs: passed to ``evaluate.load`` (e.g. ``keep_in_memory=True``, ``experiment_id``).

    Returns:
        The metric; call ``.compute(predictions=..., references=..., meteor=None, tokenize=True)``.
    """
    return evaluate.load(CAPTION_METRIC_PATH, **kwargs)


@functools.lru_cache(maxsize=1)
def _cached_metric() -> evaluate.EvaluationModule:
    # loading copies and hashes the script; do it once per process and keep the data in memory
    return load_caption_metric(keep_in_memory=True)


def compute_caption_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str] | str],
    meteor: bool | None = None,
    tokenize: bool = True,
) -> dict[str, Any]:
    """Score generated captions against all reference captions of each image (COCO style).

    Args:
        predictions: one generated caption per image.
        references: the reference captions of each image (a bare string counts as one reference).
        meteor: ``None`` computes METEOR when java and pycocoevalcap are available, ``True``
            requires it (``RuntimeError`` otherwise), ``False`` skips it.
        tokenize: apply the PTB-style tokenizer (``ptb_tokenize``) to every caption first.

    Returns:
        ``{"bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"}`` as floats (``meteor``
        is ``None`` when not computed) plus ``"unavailable"``: ``{metric: reason}`` for skipped metrics.

    Raises:
        ValueError: if the numbers of predictions and reference lists differ, there are no
            predictions, an image has no references, or a reference is not a string.
    """
    predictions = list(predictions)
    references = [[r] if isinstance(r, str) else list(r) for r in references]
    for index, refs in enumerate(references):
        for position, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"references[{index}][{position}] is a {type(ref).__name__}, not a string: pass one "
                                 "list of reference strings per image (not nested lists).")
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    return _cached_metric().compute(
        predictions=predictions, references=references, meteor=meteor, tokenize=tokenize
    )
