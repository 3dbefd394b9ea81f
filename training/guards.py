"""Guards around a training run: what is checked before any data is loaded or model built.

- `check_arguments`: every argument that would fail (or silently do nothing) later is refused
  first, with the flag named and the fix.
- `RunLock`: one run per `output_dir` at a time (a lock file naming the holder's pid and host);
  a stale lock of a dead process is taken over with a warning.
- `prepare_output_dir`: a run whose configuration differs from the one already in `output_dir`
  is reported with the differences named; the user resumes it (`--resume_changed_run`) or
  starts over (`--overwrite_output_dir`, which removes only what the project wrote there).
- `prepare_shapes_set`: the generated shapes set, once per machine, never over other files.
- `guarded_run`: all of these, in that order, around `minivlm.training.run.train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from minivlm.image_loading import short

from .presets import PRESETS
from .trainer import EXIT_STOPPED


logger = logging.getLogger("minivlm.train")

LOCK_NAME = "_minivlm_run.lock"  # "_*" files are never pushed by the Trainer
RECORD_NAME = "_minivlm_run.json"
IMAGE_TOKEN = "<image>"
CLI_EPILOG = (
    f"Exit status: 0 when training finished; {EXIT_STOPPED} when SIGINT/SIGTERM stopped it after saving a "
    "checkpoint (run the same command to resume; schedulers can requeue on it); 1 on an error."
)

# What `--overwrite_output_dir` may remove: the files the Trainer and the project write into an
# output folder. Anything else (the user's files) stays.
_PROJECT_FILES = (
    "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "config.json",
    "generation_config.json", "training_args.bin", "trainer_state.json", "all_results.json",
    "train_results.json", "eval_results.json", "processor_config.json", "preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "configuration_minivlm.py", "modeling_minivlm.py", "processing_minivlm.py",
    "pipeline_minivlm.py", "adapters_minivlm.py", "tasks_minivlm.py", "image_cache_minivlm.py", "image_loading.py",
    "minivlm_adapter_base.json", "README.md", RECORD_NAME,
)
_PROJECT_FOLDERS = ("_vision_features", "last-checkpoint")
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-\d+$")

# The training arguments that change what a run computes; the rest (logging, saving, pushing,
# evaluation) may differ between an interrupted run and its resumption.
_RUN_DEFINING_TRAINING_ARGS = (
    "learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "seed", "data_seed", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay",
    "max_grad_norm", "optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon", "bf16", "fp16",
    "label_smoothing_factor", "train_sampling_strategy", "gradient_checkpointing",
)
_RUN_DEFINING_DATA_ARGS = (
    "dataset", "dataset_config", "train_split", "image_column", "caption_column", "max_train_samples",
    "max_bad_fraction", "max_caption_tokens", "prompt", "dataset_format", "dataset_weights", "multi_turn_fraction",
)
_SHAPES_DATA_ARGS = ("shapes_num_train", "shapes_image_size")


class RunLockedError(RuntimeError):
    """Another run holds `output_dir`."""


class ChangedRunError(ValueError):
    """`output_dir` holds a run with a different configuration, and the user has not chosen what to do."""


# ---------------------------------------------------------------------------------- arguments
def preset_from_argv(argv: list[str], default: str | None = None) -> str | None:
    """The preset named on the command line (`--preset NAME` or `--preset=NAME`), else `default`."""
    name = default
    for index, item in enumerate(argv):
        if item == "--preset":
            value = argv[index + 1] if index + 1 < len(argv) else None
            if value is None or value.startswith("--"):
                raise ValueError(f"--preset needs a value: one of {', '.join(PRESETS)} (e.g. --preset shapes-tiny).")
            name = value
        elif item.startswith("--preset="):
            name = item.split("=", 1)[1]
            if not name:
                raise ValueError(f"--preset= needs a value: one of {', '.join(PRESETS)}.")
    return name


def _json_object(flag: str, value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as error:
        raise ValueError(f"{flag} is not valid JSON ({error}): {short(value)}. Pass a JSON object, e.g. "
                         f'{flag} \'{{"model_type": "vit", "hidden_size": 32}}\'.') from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{flag} must be a JSON object (a config), got {short(parsed)}.")
    return parsed


def check_arguments(model_args, data_args, training_args) -> None:
    """Raises ValueError naming every argument that cannot work, before any data or model is touched."""
    problems = []
    lr = training_args.learning_rate
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        problems.append(f"--learning_rate must be a finite number >= 0, got {lr} (e.g. --learning_rate 1e-4)")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(training_args, name)}")
    epochs = training_args.num_train_epochs
    if training_args.max_steps <= 0 and not (math.isfinite(epochs) and epochs > 0):
        problems.append(f"--num_train_epochs {epochs} with no --max_steps trains nothing and would save an untrained "
                        "model; pass --num_train_epochs > 0 or --max_steps > 0")
    if data_args.max_caption_tokens < 2:
        problems.append(f"--max_caption_tokens must be at least 2 (a token and EOS), got {data_args.max_caption_tokens}")
    fraction = data_args.max_bad_fraction
    if not (math.isfinite(fraction) and 0 <= fraction <= 1):
        problems.append(f"--max_bad_fraction is the fraction of a split that may be dropped, in [0, 1]; got {fraction}")
    share = data_args.multi_turn_fraction
    if not (math.isfinite(share) and 0 <= share <= 1):
        problems.append(f"--multi_turn_fraction is the share of rows trained as one chat, in [0, 1]; got {share}")
    if IMAGE_TOKEN in data_args.prompt:
        problems.append(f"--prompt holds the image token {IMAGE_TOKEN!r}: the image tokens are placed before the "
                        "prompt by the collator; remove it from the prompt")
    if data_args.max_train_samples is not None and data_args.max_train_samples < 1:
        problems.append(f"--max_train_samples must be at least 1 (or unset), got {data_args.max_train_samples}")
    if data_args.caption_eval_samples < 0:
        problems.append(f"--caption_eval_samples must be >= 0, got {data_args.caption_eval_samples}")
    if data_args.dataset == "shapes" and (data_args.shapes_num_train < 1 or data_args.shapes_image_size < 8):
        problems.append("--shapes_num_train must be >= 1 and --shapes_image_size >= 8")
    try:
        vision = _json_object("--tiny_vision_config", model_args.tiny_vision_config)
        text = _json_object("--tiny_text_config", model_args.tiny_text_config)
    except ValueError as error:
        problems.append(str(error).rstrip("."))
    else:
        if (vision is None) != (text is None):
            problems.append("a tiny model needs both --tiny_vision_config and --tiny_text_config")
    if problems:
        raise ValueError("invalid arguments:\n  - " + "\n  - ".join(problems))


def evaluates(data_args, training_args) -> bool:
    """Whether the run reads its evaluation split at all (Trainer evaluation or caption scores)."""
    return str(training_args.eval_strategy) not in ("no", "IntervalStrategy.NO") or data_args.caption_eval_samples > 0


# --------------------------------------------------------------------------------------- lock
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """One run per `output_dir`: `acquire()` creates `output_dir/_minivlm_run.lock` atomically
    (O_EXCL) with the holder's pid and host, `release()` removes it.

    A lock left by a dead process on this host is taken over with a warning; a live holder (or
    one on another host, which cannot be checked) makes `acquire()` raise `RunLockedError`
    naming it and what to do.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self.held = False

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # being written right now, or unreadable: treated as held

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                same_host = holder is not None and holder.get("host") == me["host"]
                pid = holder.get("pid") if holder else None
                if same_host and isinstance(pid, int) and (pid == me["pid"] or not _alive(pid)):
                    logger.warning("Taking over the stale lock %s of process %s (no longer running).", self.path, pid)
                    self.path.unlink(missing_ok=True)
                    continue
                who = (f"process {pid} on {holder.get('host')}, started {holder.get('started')}" if holder
                       else "a run that is starting")
                raise RunLockedError(
                    f"{self.path.parent} is in use by another training run ({who}). Wait for it to finish or stop "
                    f"it, or pick another --output_dir. If that run is gone, delete {self.path}."
                )
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise RunLockedError(f"could not take the lock {self.path}; another run keeps taking it.")

    def release(self) -> None:
        if self.held and (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


# ------------------------------------------------------------------------ configuration changes
def _plain(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return json.loads(json.dumps(value, default=str))


def run_configuration(model_args, data_args, training_args) -> dict[str, Any]:
    """The arguments that define what a run computes (model, data, optimisation), as plain JSON."""
    config = {f"{f.name}": _plain(getattr(model_args, f.name)) for f in dataclasses.fields(model_args)
              if f.name not in ("preset", "attn_implementation", "cache_vision_features")}
    names = _RUN_DEFINING_DATA_ARGS + (_SHAPES_DATA_ARGS if data_args.dataset == "shapes" else ())
    config.update({name: _plain(getattr(data_args, name)) for name in names if hasattr(data_args, name)})
    config.update({name: _plain(getattr(training_args, name)) for name in _RUN_DEFINING_TRAINING_ARGS
                   if hasattr(training_args, name)})
    return config


def _existing_run(output_dir: Path) -> bool:
    return output_dir.is_dir() and (
        (output_dir / "model.safetensors").is_file()
        or any(p.is_dir() and _CHECKPOINT.match(p.name) for p in output_dir.iterdir())
    )


def configuration_changes(old: dict, new: dict) -> list[str]:
    """`name: old → new` for every argument that differs (sorted by name)."""
    return [f"{name}: {short(old.get(name), 60)} → {short(new.get(name), 60)}"
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def remove_project_files(output_dir: str | os.PathLike) -> list[str]:
    """Removes what the Trainer and the project wrote into `output_dir` (checkpoints, weights, configs,
    processor, model card, caches) and returns the names of the other entries, which are kept."""
    output_dir = Path(output_dir)
    kept = []
    for entry in sorted(output_dir.iterdir()):
        name = entry.name
        if entry.is_dir() and not entry.is_symlink():
            trainer_made = _CHECKPOINT.match(name) and any(
                (entry / f).is_file() for f in ("trainer_state.json", "training_args.bin"))
            if trainer_made or name in _PROJECT_FOLDERS:
                shutil.rmtree(entry)
                continue
        elif entry.is_file() and (name == LOCK_NAME or any(Path(name).match(p) for p in _PROJECT_FILES)) and (
            name != "README.md" or "minivlm" in entry.read_text(errors="replace").lower()  # only our model card
        ):
            if name != LOCK_NAME:  # the lock is this run's own
                entry.unlink()
            continue
        kept.append(name)
    return kept


def prepare_output_dir(model_args, data_args, training_args) -> None:
    """Compares this run's configuration with the run already in `output_dir` (if any).

    Same configuration: resume as usual. Different: with `--overwrite_output_dir` the project's
    files are removed and the run starts over; with `--resume_changed_run` it resumes, logging
    the differences; otherwise `ChangedRunError` names the differences and both choices.
    Writes this run's configuration to `output_dir/_minivlm_run.json`.
    """
    output_dir = Path(training_args.output_dir)
    record = output_dir / RECORD_NAME
    current = run_configuration(model_args, data_args, training_args)
    if getattr(training_args, "overwrite_output_dir", False) and output_dir.is_dir():
        kept = remove_project_files(output_dir)
        logger.warning("--overwrite_output_dir: removed the previous run's files from %s%s.", output_dir,
                       f" (kept files it did not write: {', '.join(kept[:10])})" if kept else "")
    elif _existing_run(output_dir):
        if not record.is_file():
            logger.warning("%s holds a run with no record of its configuration (%s): it is resumed as is.",
                           output_dir, RECORD_NAME)
        else:
            try:
                previous = json.loads(record.read_text())
            except (OSError, ValueError):
                previous = {}
            changes = configuration_changes(previous, current)
            if changes and getattr(training_args, "resume_changed_run", False):
                logger.warning("--resume_changed_run: resuming %s with a changed configuration: %s.",
                               output_dir, "; ".join(changes))
            elif changes:
                raise ChangedRunError(
                    f"{output_dir} holds a run with a different configuration ({'; '.join(changes[:8])}"
                    f"{'; ...' if len(changes) > 8 else ''}). Resuming it silently would mix the two runs. Choose: "
                    "--resume_changed_run true to resume it with the new values, --overwrite_output_dir true to "
                    "start over (removes only the files MiniVLM wrote there), or another --output_dir."
                )
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(current, indent=1, sort_keys=True))


def prepare_shapes_set(data_args, training_args) -> None:
    """With `--dataset shapes`: the set in `--shapes_dir`, generated once per machine (the local main
    process writes it while the others wait), only into a new, empty or generator-made folder."""
    if "shapes" not in data_args.dataset.split(","):
        return
    from minivlm.data.shapes import ensure_shapes_dataset

    with training_args.main_process_first(local=True, desc="generating the shapes set"):
        ensure_shapes_dataset(
            data_args.shapes_dir, num_train=data_args.shapes_num_train, num_validation=data_args.shapes_num_eval,
            num_test=data_args.shapes_num_eval, image_size=data_args.shapes_image_size, seed=training_args.seed,
        )


@contextlib.contextmanager
def guarded_run(model_args, data_args, training_args) -> Iterator[None]:
    """Checks the arguments, takes the `output_dir` lock (main process only) and checks the run
    against the one already there; releases the lock when the block ends."""
    check_arguments(model_args, data_args, training_args)
    lock = RunLock(training_args.output_dir) if training_args.process_index == 0 else None
    if lock is not None:
        lock.acquire()
    try:
        with training_args.main_process_first(desc="checking output_dir"):
            if lock is not None:
                prepare_output_dir(model_args, data_args, training_args)
        prepare_shapes_set(data_args, training_args)
        yield
    finally:
        if lock is not None:
            lock.release()
