"""Caption evaluation: batched generation, COCO metrics against all references, and a Trainer callback.

- `generate_captions`: one caption per image of a uniform-view dataset (``image``, ``captions``,
  ``id``), batched, in dataset order, the prompt cut off.
- `evaluate_captions`: predictions plus BLEU-1..4 / METEOR / ROUGE-L / CIDEr against every
  reference of each image (and `shapes_accuracy` on the synthetic shapes set), with the decoding
  settings recorded beside the scores, since beam search or sampling changes them.
- `load_evaluation_dataset`: a split in the uniform view, cleaned; on an imagefolder whose metadata
  holds ``objects`` (the shapes set) those are attached, for `shapes_accuracy`.
- `CaptionEvalCallback`: the same metrics during training, merged into the Trainer's evaluation
  metrics so that ``metric_for_best_model="eval_cider"`` keeps the best checkpoint by CIDEr.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from PIL import Image
from transformers import TrainerCallback
from transformers.utils.logging import tqdm

from minivlm.data.adapters import clean_caption_dataset, load_caption_dataset
from minivlm.evaluation.metrics import compute_caption_metrics
from minivlm.data.shapes import shapes_accuracy


__all__ = ["DEFAULT_DECODING", "CaptionEvalCallback", "evaluate_captions", "generate_captions", "load_evaluation_dataset"]

logger = logging.getLogger(__name__)

# Greedy decoding, the notebook's and the pipeline's default: scores are comparable across runs.
DEFAULT_DECODING: dict[str, Any] = {"max_new_tokens": 32, "num_beams": 1, "do_sample": False}
# The metrics `compute_caption_metrics` returns as numbers (METEOR may be None).
SCORE_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def _images(dataset: datasets.Dataset | Sequence[Any], start: int, stop: int) -> list[Image.Image]:
    """Images ``start:stop`` of a dataset with an ``image`` column, or of a list of images / example dicts."""
    if isinstance(dataset, datasets.Dataset):
        # Select the column first: only the images of this slice are decoded, no other column is read.
        return dataset.select_columns(["image"])[start:stop]["image"]
    return [item["image"] if isinstance(item, dict) else item for item in dataset[start:stop]]


def generate_captions(
    model: torch.nn.Module,
    processor,
    dataset: datasets.Dataset | Sequence[Any],
    *,
    batch_size: int = 32,
    prompt: str = "",
    max_new_tokens: int = 32,
    num_beams: int = 1,
    do_sample: bool = False,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Captions every image of ``dataset``, in order.

    Args:
        model: a MiniVLM (anything with ``generate``); put in eval mode, its training mode restored after.
        processor: its `MiniVLMProcessor` (images → ``pixel_values``, prompt → ids, ids → text).
        dataset: a uniform-view `datasets.Dataset` (an ``image`` column), or a list of PIL images
            or of example dicts with an ``image``.
        batch_size: images per ``generate`` call; the prompt is the same for all, so no row is padded.
        prompt: text the caption continues (the one used in training).
        max_new_tokens, num_beams, do_sample, generate_kwargs: passed to ``model.generate``.
        progress: show a tqdm bar over batches.

    Returns:
        One stripped caption per image (the prompt is not part of it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    captions: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(dataset), batch_size), desc="Captioning", unit="batch", disable=not progress):
                images = _images(dataset, start, start + batch_size)
                inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt").to(model.device)
                generated = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, **generate_kwargs
                )
                # generate() returns prompt + continuation; left padding puts every row's prompt in
                # the first input_ids.shape[1] columns.
                new_tokens = generated[:, inputs["input_ids"].shape[1]:]
                captions.extend(processor.post_process_image_text_to_text(new_tokens))
    finally:
        model.train(was_training)
    return captions


def evaluate_captions(
    model: torch.nn.Module,
    processor,
    dataset: datasets.Dataset,
    *,
    decoding: dict[str, Any] | None = None,
    batch_size: int = 32,
    prompt: str = "",
    meteor: bool | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Captions a uniform-view dataset and scores the captions against all references of each image.

    Args:
        model, processor: as for `generate_captions`.
        dataset: ``image``, ``captions`` (list of str), ``id``; with an ``objects`` column (the
            shapes set, see `load_evaluation_dataset`) `shapes_accuracy` is added.
        decoding: ``generate`` settings (``max_new_tokens``, ``num_beams``, ``do_sample``, any other
            ``generate`` keyword); missing ones take `DEFAULT_DECODING`.
        batch_size, prompt: as for `generate_captions`.
        meteor: None computes METEOR when Java is present, False skips it (it starts a JVM, ~8 s).

    Returns:
        ``(predictions, metrics)``: predictions ``[{"id", "caption", "references"}]`` in dataset
        order; metrics as `compute_caption_metrics` returns them (``bleu_1``..``cider``,
        ``unavailable``), plus ``shapes_accuracy`` when available and ``decoding``: the settings
        used, the prompt included.
    """
    decoding = {**DEFAULT_DECODING, **(decoding or {})}
    if decoding.setdefault("prompt", prompt) != prompt:
        raise ValueError(f"the prompt is given twice: prompt={prompt!r} and decoding['prompt']={decoding['prompt']!r}")
    generate_kwargs = {k: v for k, v in decoding.items() if k != "prompt"}
    captions = generate_captions(
        model, processor, dataset, batch_size=batch_size, prompt=prompt, progress=progress, **generate_kwargs
    )
    references = dataset["captions"]
    predictions = [
        {"id": str(example_id), "caption": caption, "references": list(refs)}
        for example_id, caption, refs in zip(dataset["id"], captions, references)
    ]
    metrics = compute_caption_metrics(captions, references, meteor=meteor)
    if "objects" in dataset.column_names:
        metrics["shapes_accuracy"] = shapes_accuracy(captions, dataset["objects"])
    metrics["decoding"] = decoding
    return predictions, metrics


def load_evaluation_dataset(
    dataset: str,
    split: str = "test",
    *,
    dataset_config: str | None = None,
    image_column: str = "image",
    caption_column: str | list[str] | None = None,
    id_column: str | None = None,
    max_samples: int | None = None,
    seed: int = 42,
    max_bad_fraction: float = 0.05,
) -> datasets.Dataset:
    """A split in the uniform view (`processing.data.load_caption_dataset`), cleaned, ready to caption.

    For a local imagefolder whose ``{split}/metadata.jsonl`` records carry ``id`` and ``objects``
    (the synthetic shapes set), an ``objects`` column is added (matched by id), which turns on
    `shapes_accuracy` in `evaluate_captions`. Other arguments as for `load_caption_dataset`.
    """
    ds = load_caption_dataset(
        dataset, split, dataset_config=dataset_config, image_column=image_column, caption_column=caption_column,
        id_column=id_column, max_samples=max_samples, seed=seed,
    )
    ds = clean_caption_dataset(ds, max_bad_fraction=max_bad_fraction, split_name=split)
    metadata = Path(dataset) / split / "metadata.jsonl"
    if metadata.is_file():
        # The uniform view keeps image, captions and id only: read the objects back from the metadata.
        records = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
        objects = {str(r["id"]): r["objects"] for r in records if "id" in r and "objects" in r}
        if objects and all(i in objects for i in ds["id"]):
            ds = ds.add_column("objects", [objects[i] for i in ds["id"]])
    return ds


class CaptionEvalCallback(TrainerCallback):
    """Caption metrics during training, on a small validation subset, merged into the Trainer's evaluation.

    With the Trainer's own schedule (``eval_strategy`` + ``eval_steps``) the metrics are added, as
    ``eval_cider``, ``eval_bleu_4``, ... (``eval_shapes_accuracy`` on the shapes set), to the
    metrics dict ``on_evaluate`` receives: `Trainer._determine_best_metric` reads that same dict,
    so ``metric_for_best_model="eval_cider"`` with ``load_best_model_at_end=True`` keeps the best
    checkpoint by CIDEr. The Trainer has logged its evaluation before ``on_evaluate``, so the
    caption metrics are appended to ``state.log_history`` as their own entry (with ``step``).
    Place this callback before an ``EarlyStoppingCallback`` that watches a caption metric.

    With ``every_n_steps`` the callback also evaluates every N optimizer steps by itself (logged
    only: the Trainer picks its best model at its own evaluations). Every process generates the
    whole subset, so that all of them see the same metrics; keep ``max_samples`` small.

    Args:
        processor: the model's processor.
        dataset: validation examples in the uniform view (``image``, ``captions``, ``id``).
        max_samples: evaluate on the first N examples only (None: all).
        every_n_steps: also evaluate every N steps (None: only when the Trainer evaluates).
        decoding, batch_size, prompt: as for `evaluate_captions` (the prompt the model trains with).
        meteor: METEOR costs a JVM start; off by default.
        questions: optional questions about validation images (`evaluation.answering.load_questions`):
            their ``vqa_accuracy`` (and ``box_accuracy``, ``box_mean_iou`` when answers are boxes) join
            the caption metrics.
    """

    def __init__(
        self,
        processor,
        dataset: datasets.Dataset,
        *,
        max_samples: int | None = 64,
        every_n_steps: int | None = None,
        decoding: dict[str, Any] | None = None,
        batch_size: int = 32,
        prompt: str = "",
        meteor: bool | None = False,
        questions: datasets.Dataset | None = None,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1 (or None), got {every_n_steps}")
        if max_samples is not None and max_samples < len(dataset):
            dataset = dataset.select(range(max_samples))
        self.processor = processor
        self.dataset = dataset
        self.every_n_steps = every_n_steps
        self.decoding = dict(decoding or {})
        self.batch_size = batch_size
        self.prompt = prompt
        self.meteor = meteor
        self.questions = questions
        self.last_predictions: list[dict[str, Any]] = []
        self._step_scores: tuple[int, dict[str, float]] | None = None  # from on_step_end, for on_evaluate

    def compute(self, model: torch.nn.Module) -> dict[str, float]:
        """Caption metrics of ``model`` on the subset, unprefixed (``cider``, ``bleu_4``, ...), numbers only."""
        predictions, metrics = evaluate_captions(
            model, self.processor, self.dataset, decoding=self.decoding, batch_size=self.batch_size,
            prompt=self.prompt, meteor=self.meteor, progress=False,
        )
        self.last_predictions = predictions
        # A None (METEOR off) would break the Trainer's best-metric comparison: leave it out.
        scores = {k: float(metrics[k]) for k in (*SCORE_KEYS, "shapes_accuracy") if metrics.get(k) is not None}
        if self.questions is not None:
            from minivlm.evaluation.answering import QUESTION_SCORE_KEYS, evaluate_answers

            _, answer_metrics = evaluate_answers(model, self.processor, self.questions, batch_size=self.batch_size)
            scores.update({k: float(answer_metrics[k]) for k in QUESTION_SCORE_KEYS if k in answer_metrics})
        return scores

    @staticmethod
    def _log(state, prefix: str, scores: dict[str, float]) -> dict[str, float]:
        logs = {f"{prefix}_{k}": v for k, v in scores.items()}
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        logger.info("Caption metrics at step %d: %s", state.global_step,
                    ", ".join(f"{k}={v:.4f}" for k, v in logs.items()))
        return logs

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            scores = self.compute(model)
            self._log(state, "eval", scores)
            self._step_scores = (state.global_step, scores)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if metrics is None:
            return
        # The Trainer's prefix ("eval", or what trainer.evaluate(metric_key_prefix=...) was given):
        # speed_metrics always adds "<prefix>_runtime".
        prefix = next((k[: -len("_runtime")] for k in metrics if k.endswith("_runtime")), "eval")
        if self._step_scores is not None and self._step_scores[0] == state.global_step:
            # Computed (and logged) by on_step_end just before this evaluation: same weights.
            logs = {f"{prefix}_{k}": v for k, v in self._step_scores[1].items()}
        else:
            logs = self._log(state, prefix, self.compute(model))
        self._step_scores = None
        metrics.update(logs)  # in place: this is the dict Trainer._determine_best_metric reads
