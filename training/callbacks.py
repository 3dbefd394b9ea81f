"""Every Trainer callback of a MiniVLM run, in one place.

- `CaptionEpochCallback`: tells the collator which epoch is under way, so each epoch draws its own
  reference caption per image (also when a run resumes mid-epoch).
- `GracefulStopCallback`: Ctrl+C / SIGTERM finish the current step, save a checkpoint and stop.
- `ValidationScoresCallback` (formerly `CaptionEvalCallback`): caption metrics (BLEU, ROUGE-L, CIDEr,
  shapes accuracy), answer and box scores during training, for an evaluation split of any training format, merged into the Trainer's
  evaluation metrics (``metric_for_best_model="eval_cider"``).
- `TrainingTimeCallback`: the training time of the whole run, every resumed segment added up; it
  travels in each checkpoint's ``trainer_state.json`` and ends in the output folder's.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from typing import Any

import datasets
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from minivlm.processing.collator import ConversationCollator
from minivlm.evaluation.captioning import SCORE_KEYS, evaluate_captions
from minivlm.evaluation.tasks import evaluation_sets


__all__ = ["CaptionEpochCallback", "ValidationScoresCallback", "GracefulStopCallback", "TrainingTimeCallback"]

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


class ValidationScoresCallback(TrainerCallback):
    """Caption, answer and box scores during training, on a small validation subset, merged into the
    Trainer's evaluation.

    The split may be in any view (`minivlm.evaluation.tasks.evaluation_sets`): its rows with captions
    are captioned and scored, the assistant turns of its conversations are answered and scored
    (``vqa_accuracy``; ``box_accuracy``, ``box_mean_iou`` for box answers); a split with questions and
    no captions reports answer scores only.

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
        dataset: validation examples in any view: caption (``image``, ``captions``, ``id``), conversation
            (``messages``, ``images``, ``id``) or the training view of both.
        max_samples: evaluate on the first N examples (images or conversations) only (None: all).
        every_n_steps: also evaluate every N steps (None: only when the Trainer evaluates).
        decoding, batch_size, prompt: as for `evaluate_captions` (the prompt the model trains with).
        meteor: METEOR costs a JVM start; off by default.
        questions: questions about validation images (`evaluation.answering.load_questions`: the shapes
            set's typed questions, or VQA columns with all their answers) to use instead of those the
            conversations of ``dataset`` hold.
        objects: the shapes set's objects by id (`minivlm.processing.loading.shapes_objects`), for
            ``shapes_accuracy`` when ``dataset`` does not carry them.

    Attributes:
        dataset: the captions set (None when the split has no captions); ``questions``: the questions
        set (or None); ``last_predictions`` / ``last_answers``: the latest evaluation's records;
        ``last_decoding`` / ``last_answer_decoding``: how it decoded captions / answers.
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
        objects: dict[str, Any] | None = None,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1 (or None), got {every_n_steps}")
        sets = evaluation_sets(dataset, max_rows=max_samples, objects=objects)
        if questions is not None:
            sets.questions = questions
        if not sets:
            raise ValueError(f"the evaluation split (columns {dataset.column_names}) holds no captions and no "
                             "questions with answers: nothing to score. Pick another --eval_split, or set "
                             "--caption_eval_samples 0.")
        self.processor = processor
        self.dataset = sets.captions
        self.every_n_steps = every_n_steps
        self.decoding = dict(decoding or {})
        self.batch_size = batch_size
        self.prompt = prompt
        self.meteor = meteor
        self.questions = sets.questions
        self.last_predictions: list[dict[str, Any]] = []
        self.last_answers: list[dict[str, Any]] = []
        # How the latest evaluation decoded (the model's generation_config under `decoding`), for the card.
        self.last_decoding: dict[str, Any] = {}
        self.last_answer_decoding: dict[str, Any] = {}
        self._step_scores: tuple[int, dict[str, float]] | None = None  # from on_step_end, for on_evaluate

    @property
    def metric_names(self) -> list[str]:
        """The scores `compute` can return (unprefixed), for checking ``metric_for_best_model`` up front."""
        from minivlm.evaluation.answering import QUESTION_SCORE_KEYS

        names = []
        if self.dataset is not None:
            names += [k for k in SCORE_KEYS if k != "meteor" or self.meteor is not False]
            names += ["shapes_accuracy"] if "objects" in self.dataset.column_names else []
        if self.questions is not None:
            names += list(QUESTION_SCORE_KEYS)
        return names

    def compute(self, model: torch.nn.Module) -> dict[str, float]:
        """Scores of ``model`` on the subset, unprefixed (``cider``, ``bleu_4``, ..., ``vqa_accuracy``,
        ``box_accuracy``), numbers only."""
        scores: dict[str, float] = {}
        self.last_predictions, self.last_answers = [], []
        if self.dataset is not None:
            predictions, metrics = evaluate_captions(
                model, self.processor, self.dataset, decoding=self.decoding, batch_size=self.batch_size,
                prompt=self.prompt, meteor=self.meteor, progress=False,
            )
            self.last_predictions = predictions
            self.last_decoding = metrics["decoding"]
            # A None (METEOR off) would break the Trainer's best-metric comparison: leave it out.
            scores = {k: float(metrics[k]) for k in (*SCORE_KEYS, "shapes_accuracy") if metrics.get(k) is not None}
        if self.questions is not None:
            from minivlm.evaluation.answering import QUESTION_SCORE_KEYS, answer_decoding, evaluate_answers

            self.last_answers, answer_metrics = evaluate_answers(model, self.processor, self.questions,
                                                                 batch_size=self.batch_size)
            self.last_answer_decoding = answer_decoding(model)
            scores.update({k: float(answer_metrics[k]) for k in QUESTION_SCORE_KEYS if k in answer_metrics})
        return scores

    @staticmethod
    def _log(state, prefix: str, scores: dict[str, float]) -> dict[str, float]:
        logs = {f"{prefix}_{k}": v for k, v in scores.items()}
        state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
        logger.info("Validation scores at step %d: %s", state.global_step,
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


class TrainingTimeCallback(TrainerCallback, ExportableState):
    """The wall-clock training time of a run across all its segments (first run and every resume).

    The Trainer's ``train_runtime`` measures one ``train()`` call: after a resume only the last
    segment, after re-running a finished run about 0 s. This callback adds each segment's time to
    the time stored in the checkpoint it resumed from: the total is saved in every checkpoint's
    ``trainer_state.json`` (``stateful_callbacks``) and, at the end, in the output folder's.
    ``seconds`` is the total so far; ``segments`` counts the ``train()`` calls that trained. Time
    after a run's last checkpoint is lost with a hard kill (its steps are trained again, and counted).
    """

    def __init__(self, seconds: float = 0.0, segments: int = 0):
        self.previous_seconds = float(seconds)
        self.previous_segments = int(segments)
        self._started: float | None = None
        self._start_step = 0

    @property
    def seconds(self) -> float:
        running = time.monotonic() - self._started if self._started is not None else 0.0
        return self.previous_seconds + running

    @property
    def segments(self) -> int:
        return self.previous_segments + int(self._started is not None)

    def state(self) -> dict:
        # As constructor arguments: `from_state` (restore_callback_states_from_checkpoint) rebuilds it from them.
        return {"args": {"seconds": self.seconds, "segments": self.segments}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        # On resume `state` is the checkpoint's: its stored total is where this segment starts from.
        name = type(self).__name__
        stored = (state.stateful_callbacks or {}).get(name)
        if isinstance(stored, list):
            stored = stored[-1] if stored else None
        stored = (stored or {}).get("args", {}) if isinstance(stored, dict) else {}
        self.previous_seconds = float(stored.get("seconds", 0.0))
        self.previous_segments = int(stored.get("segments", 0))
        self._start_step = state.global_step
        self._started = time.monotonic()
        state.stateful_callbacks[name] = self.state()  # a checkpoint from before this callback lacks the key

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step > self._start_step:  # a finished run run again trains nothing: adds nothing
            self.previous_seconds, self.previous_segments = self.seconds, self.segments
        self._started = None
        state.stateful_callbacks[type(self).__name__] = self.state()


def __getattr__(name: str):
    # The callback's name from when it scored captions only; deprecated for one release.
    if name == "CaptionEvalCallback":
        warnings.warn("CaptionEvalCallback was renamed ValidationScoresCallback (it scores captions, answers and "
                      "boxes); the old name will be removed in the next release.", FutureWarning, stacklevel=2)
        return ValidationScoresCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
