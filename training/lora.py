"""LoRA fine-tuning of MiniVLM through peft: adapters on the language model, the projector trained in full.

- Targets are computed from the model's objects, not from name patterns: the `nn.Linear` layers
  inside the language model's decoder (`model.get_decoder()`), named as they are in the full
  model, LM head excluded. Patterns such as `["q_proj", "v_proj"]` also match a CLIP/SigLIP
  vision tower's layers; these targets never can, whatever the module layout.
- The projector goes in peft's `modules_to_save`: trained in full and saved with the adapters.
- A run's output folder holds the adapters (`adapter_model.safetensors`, `adapter_config.json`
  naming the base model), the processor and the model card, and no `config.json`: beside one,
  transformers would take the folder for a full model and look for its weights there.
  `merge_into_trainer` makes it a full merged model instead (adapters kept in `adapter/`).
- A local base is named by its absolute path in `adapter_config.json` (the folder then loads from
  any working directory), and `minivlm_adapter_base.json` records the base as typed, its path
  relative to the adapter folder (found again when both folders move together) and a fingerprint of
  its weights: loading refuses a base whose weights changed since (`minivlm.adapters_minivlm`).
- An adapter folder given as `--model_name_or_path` is merged into its base first
  (`load_merged_adapter_folder`): training goes on from the adapted model, whose weights no folder
  holds, so new LoRA adapters on it need `--merge_lora`.
"""

import json
import logging
import os
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import CONFIG_NAME as ADAPTER_CONFIG_NAME
from peft.utils import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME
from safetensors.torch import load_file
from torch import nn

from minivlm.adapters_minivlm import BASE_RECORD_NAME, base_weights_fingerprint, check_adapter_base


logger = logging.getLogger(__name__)

ADAPTER_FILES = (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, BASE_RECORD_NAME)  # peft's files (weights first), then the base record
ADAPTER_SUBFOLDER = "adapter"


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def model_part(model: nn.Module, attribute: str) -> nn.Module:
    """`model.<attribute>`, or the base model's (the layout of transformers' LLaVA)."""
    for owner in (model, getattr(model, "base_model", model)):
        module = getattr(owner, attribute, None)
        if isinstance(module, nn.Module):
            return module
    raise AttributeError(f"{type(model).__name__} has no {attribute!r} module (nor its base model)")


def language_model_linear_layers(model: nn.Module) -> list[str]:
    """Full names (in `model`) of the `nn.Linear` layers of the language model's decoder, LM head excluded.

    The decoder is found with `model.get_decoder()` and its layers are mapped to their names in
    `model` by identity, so the result follows the model's actual module layout.
    """
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    names = _module_names(model)
    targets = [
        names[id(module)]
        for module in decoder.modules()
        if isinstance(module, nn.Linear) and module is not head and id(module) in names
    ]
    if not targets:
        raise ValueError(f"found no nn.Linear layer in the language model of {type(model).__name__}; LoRA has nothing to adapt.")
    return targets


def lora_targets(model: nn.Module, target_modules: list[str] | None = None) -> list[str]:
    """The LoRA targets: every LM linear layer, or those whose last name part is in `target_modules`.

    Raises ValueError naming the available names when a requested name matches no LM linear layer.
    """
    layers = language_model_linear_layers(model)
    if not target_modules:
        return layers
    available = sorted({name.rsplit(".", 1)[-1] for name in layers})
    unknown = [t for t in target_modules if t not in available]
    if unknown:
        raise ValueError(
            f"--lora_target_modules {','.join(unknown)} match no linear layer of the language model; "
            f"choose among {','.join(available)} (LoRA adapts the language model only)."
        )
    return [name for name in layers if name.rsplit(".", 1)[-1] in target_modules]


def apply_lora(
    model: nn.Module,
    r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    target_modules: list[str] | None = None,
) -> PeftModel:
    """Wraps `model` in a peft `PeftModel` with LoRA on the LM's linear layers and the projector in full.

    Everything else (vision tower, embeddings, norms, the LM's base weights) is frozen. Returns the
    wrapped model; `model` itself is modified in place (LoRA layers injected).
    """
    projector_name = _module_names(model)[id(model_part(model, "multi_modal_projector"))]
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=lora_targets(model, target_modules),
        modules_to_save=[projector_name],
    )
    fingerprint = base_weights_fingerprint(model)  # before LoRA layers wrap the base ones
    peft_model = get_peft_model(model, config)
    peft_config = peft_model.peft_config["default"]
    typed = peft_config.base_model_name_or_path or getattr(model, "name_or_path", None)
    if typed and Path(typed).is_dir():
        # As typed ("outputs/full") the base resolves only from the directory the run started in.
        peft_config.base_model_name_or_path = str(Path(typed).resolve())
    peft_model.minivlm_base_record = {
        "base_model_name_or_path": typed,
        "base_weights_sha256": fingerprint["sha256"],
        "base_weights_dtype": fingerprint["dtype"],
        "base_weights_tensors": fingerprint["tensors"],
    }
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d alpha=%d on %d LM layers + %s in full: %s of %s parameters trainable",
                r, lora_alpha, len(config.target_modules), projector_name, f"{trainable:,}", f"{total:,}")
    return peft_model


def apply_lora_from_args(model: nn.Module, model_args) -> nn.Module:
    """`apply_lora` with the `--lora*` flags of `ModelArguments`; `model` unchanged without `--lora`."""
    if not model_args.lora:
        return model
    targets = model_args.lora_target_modules.split(",") if model_args.lora_target_modules else None
    return apply_lora(model, r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                      lora_dropout=model_args.lora_dropout, target_modules=targets)


def check_lora_arguments(model_args, training_args) -> None:
    """Refuses LoRA set-ups whose result could not be loaded, before any data or model work."""
    if not model_args.lora:
        if model_args.merge_lora:
            raise ValueError("--merge_lora merges LoRA adapters: add --lora.")
        return
    if model_args.freeze != "vision":
        logger.warning("--freeze %s is ignored with --lora: LoRA trains the adapters and the projector.", model_args.freeze)
    if model_args.cache_vision_features:
        raise ValueError("--cache_vision_features is not supported with --lora; drop one of them.")
    if is_adapter_folder(model_args.model_name_or_path) and not model_args.merge_lora:
        raise ValueError(
            f"--model_name_or_path {model_args.model_name_or_path} holds LoRA adapters: training starts from them "
            "merged into their base, a model no folder holds, so new adapters on it could not be loaded; add "
            "--merge_lora to save a full model, or drop --lora to fine-tune the merged model in full."
        )
    if not model_args.model_name_or_path and not model_args.merge_lora:
        raise ValueError(
            "--lora without --model_name_or_path trains adapters on a model built in this run, which nothing "
            "could load them onto; pass --model_name_or_path (a saved MiniVLM, e.g. a captioning run) or add "
            "--merge_lora to save a full merged model."
        )
    if training_args.push_to_hub and not model_args.merge_lora and Path(model_args.model_name_or_path).is_dir():
        logger.warning(
            "Pushing adapters whose base is the local folder %s: adapter_config.json names it, so the repo loads "
            "only where that folder exists; train from the base's Hub id to publish loadable adapters.",
            model_args.model_name_or_path,
        )
    if model_args.merge_lora and training_args.push_to_hub and training_args.hub_strategy != "end":
        raise ValueError(
            "--merge_lora pushes a merged model at the end, but --hub_strategy "
            f"{training_args.hub_strategy} would push adapters to the same repo during training; "
            "use --hub_strategy end."
        )


def write_base_record(peft_model: PeftModel, folder: str | Path) -> None:
    """Writes `minivlm_adapter_base.json` beside adapters saved in `folder`: the base (as typed, absolute and
    relative to `folder`) and the fingerprint of its weights. Nothing is written for a model without a record."""
    record = dict(getattr(peft_model, "minivlm_base_record", None) or {})
    if not record:
        return
    base = peft_model.peft_config["default"].base_model_name_or_path
    if base and Path(base).is_dir():
        record["base_model_path"] = str(Path(base).resolve())
        record["base_model_relative_path"] = os.path.relpath(Path(base).resolve(), Path(folder).resolve())
    (Path(folder) / BASE_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")


def is_adapter_folder(path: str | Path | None) -> bool:
    """Whether `path` is a local folder of LoRA adapters (`adapter_config.json`, no `config.json`)."""
    return bool(path) and (Path(path) / ADAPTER_FILES[1]).is_file() and not (Path(path) / "config.json").is_file()


def resolve_adapter_base(folder: str | Path) -> str:
    """The base model of the adapter folder `folder`: a local folder that exists, or a Hub id.

    Tried in order: `base_model_name_or_path` of `adapter_config.json`, and, when that is a path that
    does not exist, the base's path relative to the adapter folder recorded at save time (the two
    folders moved together) and the path as typed, relative to the adapter folder. Raises ValueError
    naming the missing folder and the fix when none exists.
    """
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_FILES[1]).read_text())
    base = config.get("base_model_name_or_path")
    record_path = folder / BASE_RECORD_NAME
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if not base:
        raise ValueError(f"{folder / ADAPTER_FILES[1]} names no base model (base_model_name_or_path is empty); "
                         "set it to the folder or Hub id of the model the adapters were trained on.")
    if Path(base).is_dir():
        return base
    candidates = [folder / record["base_model_relative_path"]] if record.get("base_model_relative_path") else []
    if not Path(base).is_absolute():
        candidates.append(folder / base)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            logger.warning("The base %s of the adapters in %s does not exist; using %s (found relative to the adapters).",
                           base, folder, candidate.resolve())
            return str(candidate.resolve())
    if not (record.get("base_model_path") or Path(base).is_absolute() or base.startswith((".", "~"))):
        return base  # a Hub id ("org/name"), or a folder we cannot tell from one
    raise ValueError(
        f"the adapters in {folder} were trained on the base model folder {base}, which does not exist here"
        + (f" (nor at {', '.join(str(c) for c in candidates)})" if candidates else "")
        + f". Copy the base model there, or set base_model_name_or_path in {folder / ADAPTER_FILES[1]} to where "
        "it is (a folder or its Hub id)."
    )


def load_merged_adapter_folder(folder: str | Path, model_class, **kwargs) -> nn.Module:
    """Loads the adapters in `folder` onto their base (checked against the recorded fingerprint) and merges them.

    Returns a plain `model_class` instance holding the adapted weights. Merging is what lets training go on
    from an adapter folder with this peft version: transformers' own adapter saving needs peft >= 0.22.
    """
    base_path = resolve_adapter_base(folder)
    base = model_class.from_pretrained(base_path, **kwargs)
    record_path = Path(folder) / BASE_RECORD_NAME
    check_adapter_base(base, str(folder), record=json.loads(record_path.read_text()) if record_path.is_file() else {})
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    logger.info("Merged the adapters in %s into their base %s.", folder, base_path)
    return merged


def load_adapter_checkpoint(model: PeftModel, folder: str | Path) -> None:
    """Loads a checkpoint's adapter and projector weights into `model`; every one must be present.

    The base weights are not in an adapter checkpoint: they are the run's base model, rebuilt the
    same way on resume.
    """
    path = Path(folder) / ADAPTER_FILES[0]
    if not path.is_file():
        raise ValueError(
            f"cannot resume a LoRA run from {folder}: it has no {ADAPTER_FILES[0]} (a full-model run's checkpoint?); "
            "use a new --output_dir for the LoRA run, or resume without --lora."
        )
    state = load_file(str(path))
    expected = set(get_peft_model_state_dict(model))
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"cannot resume from {folder}: {len(missing)} adapter weights are missing, e.g. {missing[:3]}.")
    set_peft_model_state_dict(model, state)


def merge_into_trainer(trainer) -> None:
    """Ends a LoRA run with a full model: saves the adapters to `output_dir/adapter/`, merges them and the
    trained projector into the base weights, and makes the merged model the one the Trainer saves and pushes."""
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    output_dir = Path(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        peft_model.save_pretrained(output_dir / ADAPTER_SUBFOLDER)
        write_base_record(peft_model, output_dir / ADAPTER_SUBFOLDER)
        for name in ADAPTER_FILES:  # from an earlier save in this folder: beside a full model they would apply twice
            (output_dir / name).unlink(missing_ok=True)
    merged = peft_model.merge_and_unload()
    trainer.model = trainer.model_wrapped = merged


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with `requires_grad`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "apply_lora", "apply_lora_from_args", "lora_targets", "language_model_linear_layers", "check_lora_arguments",
    "load_adapter_checkpoint", "load_merged_adapter_folder", "resolve_adapter_base", "is_adapter_folder",
    "write_base_record", "model_part", "merge_into_trainer", "count_trainable", "ADAPTER_FILES", "ADAPTER_SUBFOLDER",
]
