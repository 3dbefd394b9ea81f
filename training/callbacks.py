"""Every Trainer callback of a MiniVLM run, in one place.

- `CaptionEpochCallback`: tells the collator which epoch is under way, so each epoch draws its own
  reference caption per image (also when a run resumes mid-epoch).
- `GracefulStopCallback`: Ctrl+C / SIGTERM finish the current step, save a checkpoint and stop.
- `CaptionEvalCallback`: caption metrics (BLEU, ROUGE-L, CIDEr, shapes accuracy) during training,
  merged into the Trainer's evaluation metrics (``metric_for_best_model="eval_cider"``).
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import datasets
import torch
from transformers import TrainerCallback

from minivlm.data.collator import CaptionCollator
from minivlm.evaluation.captioning import SCORE_KEYS, evaluate_captions


__all__ = ["CaptionEpochCallback", "CaptionEvalCallback", "GracefulStopCallback"]

logger = logging.getLogger(__name__)


class CaptionEpochCallback(TrainerCallback):
    """Tells the collator which epoch it is, so each epoch draws its own references.

    `state.epoch` is fractional (1.5 = halfway through the second epoch), also when a run
    resumes mid-epoch, so `int(state.epoch)` is the 0-based index of the epoch under way.
    """

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class GracefulStopCallback(TrainerCallback):
    """Turns SIGINT/SIGTERM into "save a checkpoint at the end of this step, then stop".

    A second signal while stopping restores the default handler, so a stuck run can still
    be killed with another Ctrl+C.
    """

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.stop_requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        if self.stop_requested:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            raise KeyboardInterrupt
        self.stop_requested = True
        logger.warning("Received %s: saving a checkpoint after this step, then stopping.", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


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
