"""The HF Trainer, made safe for MiniVLM: exact resume, clean interrupts, complete Hub pushes.

- Resume and best-model loading go through `from_pretrained`: the Trainer's own loader uses
  `load_state_dict(strict=False)`, and the ViT's file key names differ from its in-memory
  names, so the encoder would silently stay at its fresh initialisation.
- Only complete checkpoints are resumed from: a save cut short (crash, kill -9, full disk)
  leaves a folder that is skipped with a warning, never loaded.
- Ctrl+C / SIGTERM finish the current step, save a checkpoint and stop.
- Every push (intermediate ones too) carries the remote-code files, the processor and a
  model card, so each commit on the Hub loads with `trust_remote_code=True`.
"""

import json
import logging
import os
import re
from pathlib import Path

from safetensors import safe_open
from transformers import Trainer
from transformers.dynamic_module_utils import custom_object_save
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import GracefulStopCallback  # noqa: F401  (re-exported: it was defined here)


logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(folder: str | os.PathLike, needs_optimizer: bool = True) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None if it is.

    The Trainer writes the weights first and `trainer_state.json` last; the weight files
    are also checked for truncation (safetensors validates offsets against the file size).
    """
    folder = Path(folder)
    state_path = folder / TRAINER_STATE
    if not state_path.is_file():
        return f"{TRAINER_STATE} is missing (the save was cut short)"
    try:
        json.loads(state_path.read_text())
    except (OSError, ValueError) as error:
        return f"{TRAINER_STATE} is unreadable ({error})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no safetensors weights"
    for path in weights:
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as error:  # safetensors raises its own error types
            return f"{path.name} is unreadable ({error})"
    if needs_optimizer and not (folder / "optimizer.pt").is_file():
        return "optimizer.pt is missing"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike, needs_optimizer: bool = True) -> str | None:
    """The newest complete `checkpoint-N` folder in `output_dir`, skipping broken ones with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted(
        (int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    )
    for _, path in reversed(candidates):
        problem = checkpoint_problem(path, needs_optimizer)
        if problem is None:
            return str(path)
        logger.warning("Skipping incomplete checkpoint %s: %s.", path, problem)
    return None


class MiniVLMTrainer(Trainer):
    """`Trainer` with MiniVLM-safe checkpoint loading and self-contained Hub pushes.

    Extra argument `model_card` (callable `output_dir -> None`): writes `README.md` into the
    folder before every push.
    """

    def __init__(self, *args, model_card=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card = model_card

    def _load_weights_via_from_pretrained(self, checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        model = self.accelerator.unwrap_model(model)
        reference = type(model).from_pretrained(checkpoint, dtype=model.dtype)
        # strict=True: every parameter and buffer, the vision encoder's included, is restored.
        model.load_state_dict(reference.state_dict(), strict=True)
        del reference

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        problem = checkpoint_problem(resume_from_checkpoint, needs_optimizer=False)
        if problem is not None:
            raise ValueError(
                f"cannot resume from {resume_from_checkpoint}: {problem}. Delete that folder, or leave "
                "--resume_from_checkpoint unset to resume from the last complete checkpoint."
            )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_weights_via_from_pretrained(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        logger.info("Loading best model from %s (score: %s).", self.state.best_model_checkpoint, self.state.best_metric)
        self._load_weights_via_from_pretrained(self.state.best_model_checkpoint)

    def write_hub_files(self, output_dir: str) -> None:
        """Puts what a loadable Hub repo needs beside the weights the Trainer copies."""
        model = self.accelerator.unwrap_model(self.model)
        # The Trainer copies config and weights only: add the remote code the config points at.
        custom_object_save(model, output_dir)
        custom_object_save(model.config, output_dir)
        if self.model_card is not None:
            self.model_card(output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.is_world_process_zero():
            self.write_hub_files(self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args, **kwargs) -> None:
        if self.model_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            self.model_card(self.args.output_dir)
