"""The HF Trainer, made safe for MiniVLM: exact resume, clean interrupts, complete Hub pushes.

- Resume and best-model loading go through `from_pretrained`: the Trainer's own loader uses
  `load_state_dict(strict=False)`, and the ViT's file key names differ from its in-memory
  names, so the encoder would silently stay at its fresh initialisation.
- Only complete checkpoints are resumed from: a save cut short (crash, kill -9, full disk)
  leaves a folder that is skipped with a warning, never loaded.
- Ctrl+C / SIGTERM finish the current step, save a checkpoint and stop.
- Every push (intermediate ones too) carries the remote-code files, the processor and a
  model card, so each commit on the Hub loads with `trust_remote_code=True`.
- No secret is written or pushed: token-like fields (`hub_token`) are redacted from the pickled
  `training_args.bin`, and pushes upload no pickle (training arguments, optimizer, scheduler and
  RNG state stay local unless `--hub_push_training_state` is given).

Public hooks do what they can (`save_model`, `push_to_hub`, `create_model_card`, callbacks). Three
private methods are overridden because no public hook reaches that step: `_load_from_checkpoint` and
`_load_best_model` (the strict loader above) and `_push_from_checkpoint` (remote code and card in the
folder before each intermediate upload); pushes swap `transformers.trainer.hf_api` to leave pickles
out. tests/test_trainer_overrides.py fails, naming the piece, when an upgrade changes one of them.
"""

import contextlib
import copy
import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers.trainer
from peft import PeftModel
from safetensors import safe_open
from transformers import Trainer, TrainingArguments
from transformers.dynamic_module_utils import custom_object_save
from transformers.trainer_pt_utils import safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callbacks import GracefulStopCallback  # noqa: F401  (re-exported: it was defined here)
from .lora import load_adapter_checkpoint, write_base_record


logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# Exit status of a run stopped by SIGINT/SIGTERM after its checkpoint was saved: EX_TEMPFAIL
# ("try again later"), so a scheduler can tell "requeue me" from a failure (1) or success (0).
EXIT_STOPPED = 75
# Pickles the Trainer writes: they stay local unless the user opts in to pushing them.
TRAINING_STATE_PATTERNS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle")
_SECRET_FIELD = re.compile(r"(^|_)(token|secret|password|api_key)$")
REDACTED = "<redacted>"


@dataclass
class MiniVLMTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus MiniVLM's run-safety flags; pickles with every token-like field
    (`hub_token`, ...) redacted, so `training_args.bin` never holds a secret."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds a run: removes the checkpoints and files the "
                          "project wrote there (never other files), then trains from scratch."},
    )
    resume_changed_run: bool = field(
        default=False,
        metadata={"help": "Resume the run in output_dir although its configuration differs from this one "
                          "(the differences are logged). Without it a changed configuration stops the run."},
    )
    hub_push_training_state: bool = field(
        default=False,
        metadata={"help": "Also push the pickled training state (training_args.bin, optimizer, scheduler, RNG "
                          "state). By default pushes hold no pickle and these files stay local."},
    )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name, value in state.items():
            if value and isinstance(value, str) and _SECRET_FIELD.search(name):
                state[name] = REDACTED
        return state

    # Copies keep the token (only pickles lose it): copy/deepcopy would otherwise go through __getstate__.
    def __copy__(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new


def _loads(path: Path) -> None:
    """Raises if `path` does not load as the Trainer loads it (weights_only, with the numpy types its
    RNG state needs allowed); mmap reads only the file's index, not its tensors."""
    with safe_globals():
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def checkpoint_problem(folder: str | os.PathLike, needs_optimizer: bool = True) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None if it is.

    Complete means every file a resume reads is there and loads: `trainer_state.json`,
    `config.json` (`adapter_config.json` for LoRA adapters), the safetensors weights (offsets checked against the file size) and, with
    `needs_optimizer`, `optimizer.pt`, `scheduler.pt` and the RNG state (`rng_state*.pth`),
    each opened the way the Trainer opens it (`torch.load(weights_only=True)`).
    """
    folder = Path(folder)
    # A LoRA checkpoint holds adapters (adapter_config.json + adapter_model.safetensors), no config.json.
    model_config = "adapter_config.json" if (folder / "adapter_model.safetensors").is_file() else "config.json"
    for name in (TRAINER_STATE, model_config):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (the save was cut short)"
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as error:
            return f"{name} is unreadable ({error})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no safetensors weights"
    for path in weights:
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as error:  # safetensors raises its own error types
            return f"{path.name} is unreadable ({error})"
    if needs_optimizer:
        rng_files = sorted(folder.glob("rng_state*.pth"))
        if not rng_files:
            return "rng_state.pth is missing (the resumed run would not be exact)"
        for path in [folder / "optimizer.pt", folder / "scheduler.pt", *rng_files]:
            if not path.is_file():
                return f"{path.name} is missing"
            try:
                _loads(path)
            except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
                return f"{path.name} is unreadable ({str(error)[:200]})"
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
        logger.warning("Skipping incomplete checkpoint %s: %s; falling back to an earlier one.", path, problem)
    return None


class _PushFilter:
    """Wraps the `HfApi` the Trainer pushes with: every `upload_folder` leaves the pickles out."""

    def __init__(self, api, ignore: list[str], push_training_state: bool):
        self._api, self._ignore, self._push_training_state = api, ignore, push_training_state

    def upload_folder(self, *args, **kwargs):
        kwargs["ignore_patterns"] = [*(kwargs.get("ignore_patterns") or []), *self._ignore]
        if self._push_training_state:
            folder = Path(kwargs["folder_path"])
            pushed = sorted(p.name for p in folder.iterdir()
                            if any(fnmatch.fnmatch(p.name, pattern) for pattern in TRAINING_STATE_PATTERNS))
            if pushed:
                logger.warning("--hub_push_training_state: pushing %s from %s.", ", ".join(pushed), folder)
        return self._api.upload_folder(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._api, name)


class MiniVLMTrainer(Trainer):
    """`Trainer` with MiniVLM-safe checkpoint loading and self-contained, secret-free Hub pushes.

    Extra argument `model_card` (callable `output_dir -> None`): writes `README.md` into the
    folder before every push. Plain `TrainingArguments` are upgraded to
    `MiniVLMTrainingArguments`, so the saved `training_args.bin` never holds a token.
    """

    def __init__(self, *args, model_card=None, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if type(training_args) is TrainingArguments:  # same fields plus ours (class defaults)
            training_args.__class__ = MiniVLMTrainingArguments
        super().__init__(*args, **kwargs)
        self.model_card = model_card

    @property
    def stop_requested(self) -> bool:
        """True when a SIGINT/SIGTERM stopped training (a checkpoint was saved): exit with EXIT_STOPPED."""
        return any(isinstance(c, GracefulStopCallback) and c.stop_requested for c in self.callback_handler.callbacks)

    @contextlib.contextmanager
    def _filtered_pushes(self):
        push_state = bool(getattr(self.args, "hub_push_training_state", False))
        # Opted in: the Trainer's own state files go up (and are logged); other pickles still never do.
        ignore = ["*.pkl", "*.pickle"] if push_state else list(PICKLE_PATTERNS)
        original = transformers.trainer.hf_api
        transformers.trainer.hf_api = lambda *a, **k: _PushFilter(original(*a, **k), ignore, push_state)
        try:
            yield
        finally:
            transformers.trainer.hf_api = original

    def push_to_hub(self, *args, **kwargs):
        with self._filtered_pushes():
            return super().push_to_hub(*args, **kwargs)

    def _load_weights_via_from_pretrained(self, checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        model = self.accelerator.unwrap_model(model)
        if isinstance(model, PeftModel):  # a LoRA run's checkpoints hold its adapters and projector only
            return load_adapter_checkpoint(model, checkpoint)
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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # The public save every checkpoint and the final save go through.
        super().save_model(output_dir, _internal_call)
        model = self.accelerator.unwrap_model(self.model)
        if self.args.should_save and isinstance(model, PeftModel):  # adapters name their base and its fingerprint
            write_base_record(model, output_dir if output_dir is not None else self.args.output_dir)

    def write_hub_files(self, output_dir: str) -> None:
        """Puts what a loadable Hub repo needs beside the weights the Trainer copies."""
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(model, PeftModel):
            model = model.get_base_model()
        # The Trainer copies config and weights only: add the remote code the config points at.
        custom_object_save(model, output_dir)
        custom_object_save(model.config, output_dir)
        if self.model_card is not None:
            self.model_card(output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self.is_world_process_zero():
            self.write_hub_files(self.args.output_dir)
        with self._filtered_pushes():
            super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args, **kwargs) -> None:
        if self.model_card is None:
            return super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            self.model_card(self.args.output_dir)
