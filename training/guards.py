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
import fnmatch
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from minivlm.image_loading import short
from minivlm.processing_minivlm import IMAGE_TOKEN

from .presets import PRESETS
from .trainer import EXIT_STOPPED


logger = logging.getLogger("minivlm.train")

LOCK_NAME = "_minivlm_run.lock"  # "_*" files are never pushed by the Trainer
RECORD_NAME = "_minivlm_run.json"
CLI_EPILOG = (
    f"Exit status: 0 when training finished; {EXIT_STOPPED} when SIGINT/SIGTERM stopped it after saving a "
    "checkpoint (run the same command to resume; schedulers can requeue on it); 1 on an error."
)

# Folders only the project writes into an output folder: removed whole by `--overwrite_output_dir`.
_PROJECT_FOLDERS = ("_vision_features", "last-checkpoint")
# Subfolders the project writes files into, by name pattern: only those files go, then the folder if empty.
_PROJECT_SUBFOLDER_FILES = {
    "examples": (r"(example|failure)_\d+\.png",),  # the model card's images
}
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
    "grounding_repeats",
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
    if data_args.grounding_repeats < 0:
        problems.append(f"--grounding_repeats is a number of extra copies, 0 or more; got {data_args.grounding_repeats}")
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
        elif vision is not None and not model_args.model_name_or_path and model_args.freeze != "none":
            problems.append(
                f"--freeze {model_args.freeze} would keep the vision encoder built from --tiny_vision_config at its random "
                "initialisation: pass --model_name_or_path a trained model (e.g. the shapes-tiny captioner, as the "
                "shapes-instruct preset expects), or --freeze none to train the encoder too"
            )
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


# Run-defining arguments added after runs were recorded: a record without one ran with this value.
_RECORDED_SINCE = {"grounding_repeats": 0}


def configuration_changes(old: dict, new: dict) -> list[str]:
    """`name: old → new` for every argument that differs (sorted by name)."""
    old = {**{name: value for name, value in _RECORDED_SINCE.items() if name in new}, **old}
    return [f"{name}: {short(old.get(name), 60)} → {short(new.get(name), 60)}"
            for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]


def shipped_code_files() -> list[str]:
    """The remote-code files a saved MiniVLM folder holds, found as `save_pretrained` finds them: the module
    of each class it copies (config, model, processor, the custom pipeline) and every module those import
    relatively (transformers' `get_relative_import_files`). A new sibling module is covered as it ships."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration, MiniVLMImageToTextPipeline, MiniVLMProcessor

    names = set()
    for cls in (MiniVLMConfig, MiniVLMForConditionalGeneration, MiniVLMProcessor, MiniVLMImageToTextPipeline):
        module = Path(sys.modules[cls.__module__].__file__)
        names.add(module.name)
        names.update(Path(path).name for path in get_relative_import_files(str(module)))
    return sorted(names)


def project_files() -> list[str]:
    """Names (glob patterns) of every file a run writes at the top of its `output_dir`: the one list
    `--overwrite_output_dir` removes by (the model card `README.md` only when it is one, `is_project_card`).

    Taken from the code that writes them: transformers' names for weights (single, sharded, indexed),
    configs, processor, tokenizer and Trainer state; peft's adapter files (a LoRA run); the remote code
    that ships (`shipped_code_files`); this module's run record.
    """
    from transformers import tokenization_utils_base as tokenization
    from transformers import trainer as hf_trainer
    from transformers import utils as hf

    from .lora import ADAPTER_FILES

    weights = [hf.SAFE_WEIGHTS_NAME, hf.WEIGHTS_NAME]
    shards = [f"{Path(name).stem}-*-of-*{Path(name).suffix}" for name in weights]  # model-00001-of-00002.safetensors
    return [
        *weights, *shards, hf.SAFE_WEIGHTS_INDEX_NAME, hf.WEIGHTS_INDEX_NAME, hf.CONFIG_NAME, hf.GENERATION_CONFIG_NAME,
        hf.PROCESSOR_NAME, hf.IMAGE_PROCESSOR_NAME, hf.CHAT_TEMPLATE_FILE, hf.LEGACY_PROCESSOR_CHAT_TEMPLATE_FILE,
        tokenization.FULL_TOKENIZER_FILE, tokenization.TOKENIZER_CONFIG_FILE, tokenization.SPECIAL_TOKENS_MAP_FILE,
        tokenization.ADDED_TOKENS_FILE, hf_trainer.TRAINING_ARGS_NAME, hf_trainer.TRAINER_STATE_NAME,
        *(f"{split}_results.json" for split in ("all", "train", "eval", "test")),  # Trainer.save_metrics
        *ADAPTER_FILES, *shipped_code_files(), RECORD_NAME,
    ]


def remove_project_files(output_dir: str | os.PathLike) -> list[str]:
    """Removes what the Trainer and the project wrote into `output_dir` and returns the names of the
    other entries, which are kept.

    Removed: the files of `project_files()`, the model card (`README.md` when `is_project_card` says it
    is one), the Trainer's checkpoints, the feature cache, the card's example images in `examples/` and
    the merged LoRA run's `adapter/` files. A user's file is never removed, whatever folder it is in
    beside these (a folder left non-empty is kept).
    """
    from .lora import ADAPTER_FILES, ADAPTER_SUBFOLDER
    from .model_card import is_project_card

    output_dir = Path(output_dir)
    patterns = project_files()
    subfolders = {"examples": lambda path: re.fullmatch(r"(example|failure)_\d+\.png", path.name) is not None,
                  ADAPTER_SUBFOLDER: lambda path: path.name in ADAPTER_FILES or is_project_card(path)}
    kept = []
    for entry in sorted(output_dir.iterdir()):
        name = entry.name
        if entry.is_dir() and not entry.is_symlink():
            trainer_made = _CHECKPOINT.match(name) and any(
                (entry / f).is_file() for f in ("trainer_state.json", "training_args.bin"))
            if trainer_made or name in _PROJECT_FOLDERS:
                shutil.rmtree(entry)
                continue
            if name in subfolders:
                for path in entry.iterdir():
                    if path.is_file() and not path.is_symlink() and subfolders[name](path):
                        path.unlink()
                if not any(entry.iterdir()):
                    entry.rmdir()
                    continue
        elif name == LOCK_NAME:  # this run's own lock
            continue
        elif entry.is_file() and (is_project_card(entry) if name == "README.md"
                                  else any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)):
            entry.unlink()
            continue
        kept.append(name)
    return kept


def check_model_card_target(output_dir: str | os.PathLike) -> None:
    """Refuses a `README.md` in `output_dir` that is not a model card the project wrote: the run ends by
    writing its model card there (and every push uploads it as the repo's card), which would replace it."""
    from .model_card import is_project_card

    readme = Path(output_dir) / "README.md"
    if readme.is_file() and not is_project_card(readme):
        raise FileExistsError(
            f"{readme} is not a model card MiniVLM wrote, and the run would replace it with its model card. Move it "
            "out of the folder (or rename it), or pick another --output_dir; nothing was changed."
        )


def check_stale_adapters(output_dir: str | os.PathLike, model_args) -> None:
    """Refuses a full-model run into a folder holding LoRA adapters at its top: a full model saved beside
    `adapter_config.json` is loaded with those adapters applied (`AutoModel`, pipelines, evaluation)."""
    from .lora import ADAPTER_FILES

    if getattr(model_args, "lora", False) and not getattr(model_args, "merge_lora", False):
        return  # a LoRA run writes (and resumes from) these files itself
    found = [name for name in ADAPTER_FILES if (Path(output_dir) / name).is_file()]
    if found:
        raise ValueError(
            f"{output_dir} holds LoRA adapters of an earlier run ({', '.join(found)}); a full model saved beside "
            "them would load with them applied. Pass --overwrite_output_dir true to start over (removes the files "
            "MiniVLM wrote there, adapters included) or pick another --output_dir."
        )


def prepare_output_dir(model_args, data_args, training_args) -> None:
    """Compares this run's configuration with the run already in `output_dir` (if any).

    Same configuration: resume as usual. Different: with `--overwrite_output_dir` the project's
    files are removed and the run starts over; with `--resume_changed_run` it resumes, logging
    the differences; otherwise `ChangedRunError` names the differences and both choices.
    Refused first, before anything is removed: a `README.md` that is not the project's model card
    (`check_model_card_target`) and, without `--overwrite_output_dir`, LoRA adapters a full model
    would be saved beside (`check_stale_adapters`).
    Writes this run's configuration to `output_dir/_minivlm_run.json`.
    """
    output_dir = Path(training_args.output_dir)
    record = output_dir / RECORD_NAME
    current = run_configuration(model_args, data_args, training_args)
    check_model_card_target(output_dir)  # before anything is removed: a refused run changes nothing
    if getattr(training_args, "overwrite_output_dir", False) and output_dir.is_dir():
        kept = remove_project_files(output_dir)
        logger.warning("--overwrite_output_dir: removed the previous run's files from %s%s.", output_dir,
                       f" (kept files it did not write: {', '.join(kept[:10])})" if kept else "")
    elif output_dir.is_dir():
        check_stale_adapters(output_dir, model_args)
    if _existing_run(output_dir):  # none left after --overwrite_output_dir
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
    from minivlm.processing.shapes import ensure_shapes_dataset

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
