"""Training MiniVLM with the HF Trainer: arguments → data → model → Trainer → train → save → push.

`scripts/train.py` is the command line over `main()`; tests call `parse_args` and `train`.
"""

import dataclasses
import itertools
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoProcessor, HfArgumentParser, TrainerState, set_seed

from minivlm import MiniVLMForConditionalGeneration
from minivlm import MiniVLMProcessor
from minivlm.processing.collator import ConversationCollator, PreprocessedDataset, preprocessed_size
from minivlm.processing.conversations import training_texts
from minivlm.processing.shapes import shapes_texts
from minivlm.processing.loading import TrainingData, caption_column_argument, format_help, load_training_data
from minivlm.training.feature_cache import FeatureCaptionCollator, cache_vision_features
from minivlm.processing.tokenizer import build_word_level_tokenizer

from minivlm.evaluation.answering import QUESTION_SCORE_KEYS, load_questions
from minivlm.evaluation.captioning import SCORE_KEYS
from minivlm.evaluation.tasks import data_tasks, scores_by_task
from .lora import (
    apply_lora_from_args, check_lora_arguments, is_adapter_folder, load_merged_adapter_folder, merge_into_trainer,
)
from .model_card import answer_examples, card_examples, write_model_card
from . import guards
from .presets import PRESETS
from .callbacks import CaptionEpochCallback, ValidationScoresCallback, GracefulStopCallback, TrainingTimeCallback
from .trainer import EXIT_STOPPED, MiniVLMTrainer, last_complete_checkpoint
from .trainer import MiniVLMTrainingArguments as TrainingArguments


logger = logging.getLogger("minivlm.train")
FREEZE_CHOICES = ("vision", "projector-only", "none")
PREPROCESS_AUTO_BYTES = 2**30  # --preprocess_images by default below this size of the pixel tensor


@dataclass
class ModelArguments:
    preset: str | None = field(default=None, metadata={"help": f"Argument defaults by name: {', '.join(PRESETS)}."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue training a saved MiniVLM (folder or Hub id) instead of building one."}
    )
    vision_model: str | None = field(
        default="google/vit-large-patch16-224", metadata={"help": "Pretrained vision encoder (id or path)."}
    )
    language_model: str | None = field(
        default="HuggingFaceTB/SmolLM-360M", metadata={"help": "Pretrained causal LM (id or path)."}
    )
    tiny_vision_config: str | None = field(
        default=None, metadata={"help": "JSON vision config: build a random encoder from it instead of --vision_model."}
    )
    tiny_text_config: str | None = field(
        default=None, metadata={"help": "JSON text config: build a random LM (and a word-level tokenizer) from it."}
    )
    freeze: str = field(
        default="vision",
        metadata={"help": "What stays fixed: 'vision' (train projector + LM), 'projector-only' (train only the "
                          "projector, LLaVA's first stage) or 'none' (train everything).", "choices": FREEZE_CHOICES},
    )
    vision_feature_select_strategy: str = field(default="full", metadata={"help": "'full' keeps CLS, 'default' drops it."})
    pixel_shuffle_factor: int = field(default=1, metadata={"help": "Merge f×f patches into one image token."})
    attn_implementation: str | None = field(default="sdpa", metadata={"help": "'sdpa', 'eager' or 'flash_attention_2'."})
    cache_vision_features: bool = field(
        default=False,
        metadata={"help": "With a frozen encoder, encode every training image once (memory-mapped Arrow) and "
                          "train the projector and LM from the cached features."},
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LM's linear layers (peft) and the projector in full."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated LM layer names (e.g. q_proj,v_proj); default: all LM linear layers."}
    )
    merge_lora: bool = field(default=False, metadata={"help": "Save a full model with the adapters merged in (adapters in adapter/)."})


@dataclass
class DataArguments:
    dataset: str = field(
        default="jxie/flickr8k",
        metadata={"help": "Hub dataset id, local imagefolder / save_to_disk folder, or 'shapes' (generated)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    train_split: str = field(default="train")
    eval_split: str | None = field(default="validation", metadata={"help": "Split for evaluation (when eval_strategy is set)."})
    image_column: str = field(default="image")
    caption_column: str | None = field(
        default=None, metadata={"help": "Caption column(s), comma-separated; default: auto-detect."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Seeded subset of the training split."})
    max_eval_samples: int | None = field(default=200)
    max_bad_fraction: float = field(
        default=0.05, metadata={"help": "Stop before training if more than this fraction of a split is unusable."}
    )
    max_caption_tokens: int = field(default=48, metadata={"help": "Captions are cut to this many tokens, EOS kept."})
    caption_eval_samples: int = field(
        default=0,
        metadata={"help": "Caption this many evaluation images at each evaluation and log BLEU/ROUGE-L/CIDEr "
                          "(eval_cider works with --metric_for_best_model); the final scores go in the model card."},
    )
    prompt: str = field(default="", metadata={"help": "Text between image and caption, the same at inference."})
    dataset_format: str | None = field(default=None, metadata={"help": format_help()})
    dataset_weights: str | None = field(
        default=None, metadata={"help": "Sampling weights of the datasets, comma-separated (default: all rows once)."}
    )
    multi_turn_fraction: float = field(
        default=0.0,
        metadata={"help": "Rows with an image's caption and questions (shapes-instruct): the share trained each "
                          "epoch as one multi-turn chat instead of packed single turns."},
    )
    grounding_repeats: int = field(
        default=0,
        metadata={"help": "Rows packed with an image's caption and questions (shapes-instruct): extra copies of each "
                          "question answered with a box, so that boxes weigh 1 + this many times in the loss."},
    )
    image_folder: str | None = field(default=None, metadata={"help": "Where LLaVA JSON image paths are relative to."})
    preprocess_images: bool | None = field(
        default=None,
        metadata={"help": "Decode and preprocess every training image once, before training (one float32 tensor in "
                          "memory), instead of in every batch. Default: when that tensor fits in "
                          f"{PREPROCESS_AUTO_BYTES // 2**30} GiB."},
    )
    shapes_dir: str = field(default="data/shapes", metadata={"help": "Where the shapes set is generated."})
    shapes_num_train: int = field(default=3000)
    shapes_num_eval: int = field(default=200)
    shapes_image_size: int = field(default=32)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Flags, after an optional YAML/JSON file: `train.py [config.yaml] [--flag value ...]`.

    Precedence, lowest first: the built-in defaults, the preset (`--preset name`, `--preset=name`
    or `preset:` in the file; the flag wins), the file's values, the flags.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments), epilog=guards.CLI_EPILOG)
    file_values = {}
    if argv and not argv[0].startswith("-") and argv[0].endswith((".yaml", ".yml", ".json")):
        import yaml

        file_values = yaml.safe_load(Path(argv[0]).read_text()) or {}
        if not isinstance(file_values, dict):
            raise ValueError(f"{argv[0]} holds {type(file_values).__name__}; write one `name: value` line per argument.")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(file_values) - known)
        if unknown:
            raise ValueError(f"{argv[0]}: unknown arguments {unknown}; use the flag names of --help, without the dashes.")
        argv = argv[1:]
    preset_name = file_values.get("preset")
    preset_name = guards.preset_from_argv(argv, preset_name)
    defaults = {
        "output_dir": "outputs/minivlm",
        "remove_unused_columns": False,  # the collator needs the image and caption columns
        "report_to": "none",
        "bf16": torch.cuda.is_available(),
        # Without an accelerator, torchrun processes only form a (gloo) process group when the
        # Trainer is told it runs on CPU; otherwise each trains its own unsynchronised copy.
        "use_cpu": not torch.cuda.is_available() and not torch.backends.mps.is_available(),
        "save_total_limit": 3,
    }
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise ValueError(f"unknown preset {preset_name!r}; choose one of {', '.join(PRESETS)}.")
        defaults.update(PRESETS[preset_name])
    defaults.update(file_values)
    # Defaults reach the dataclasses as given: JSON-valued arguments (the tiny configs) as strings.
    parser.set_defaults(**{k: json.dumps(v) if isinstance(v, dict) else v for k, v in defaults.items()})
    return parser.parse_args_into_dataclasses(args=argv)


def load_data(data_args: DataArguments, seed: int) -> TrainingData:
    """The run's data through the one data entry point (`minivlm.processing.loading.load_training_data`):
    the comma-separated flags (``--dataset``, ``--dataset_format``, ``--dataset_weights``,
    ``--caption_column``) as lists, every other data flag as the keyword of the same name."""
    return load_training_data(
        _comma_list(data_args.dataset), dataset_format=_comma_list(data_args.dataset_format) or None,
        dataset_weights=_weights(data_args.dataset_weights), train_split=data_args.train_split,
        eval_split=data_args.eval_split, dataset_config=data_args.dataset_config, image_column=data_args.image_column,
        caption_column=caption_column_argument(data_args.caption_column), image_folder=data_args.image_folder,
        max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples,
        max_bad_fraction=data_args.max_bad_fraction, shapes_dir=data_args.shapes_dir,
        shapes_num_train=data_args.shapes_num_train, shapes_num_eval=data_args.shapes_num_eval,
        shapes_image_size=data_args.shapes_image_size, seed=seed,
    )


def _comma_list(value: str | None) -> list[str]:
    return [item.strip() for item in value.split(",")] if value else []


def _weights(value: str | None) -> list[float] | None:
    """``--dataset_weights`` as numbers (`load_training_data` checks that there is one per dataset)."""
    if not value:
        return None
    try:
        return [float(weight) for weight in _comma_list(value)]
    except ValueError:
        raise ValueError(f"--dataset_weights {value!r} must be numbers separated by commas, e.g. 3,1.") from None


def _eval_questions(data: TrainingData, split: str | None, max_images: int | None):
    """The questions the evaluation callback asks about the evaluation split, or None: read from where
    that split came from (the shapes set's typed questions, or VQA columns with all their answers),
    unless every source is a caption set (a captioner has no questions to answer)."""
    if data.eval_source is None or not split or all(fmt == "captions" for fmt in data.formats):
        return None
    return load_questions(data.eval_source, split, max_images)


def build_model(
    model_args: ModelArguments, train_dataset, data_args: DataArguments | None = None
) -> tuple[MiniVLMForConditionalGeneration, MiniVLMProcessor]:
    """A saved MiniVLM, a tiny one from configs, or one assembled from pretrained parts.

    A tiny model's word-level tokenizer gets the words of the training texts; trained on the shapes
    set, every word the set can say (captions, questions, answers), so a captioner trained on it can
    be instruction-tuned on the same set later (`--model_name_or_path`) without unknown words.
    """
    from minivlm.processing import builder

    attn = model_args.attn_implementation
    if model_args.model_name_or_path:
        if is_adapter_folder(model_args.model_name_or_path):  # LoRA adapters: merged into their base
            model = load_merged_adapter_folder(model_args.model_name_or_path, MiniVLMForConditionalGeneration,
                                               attn_implementation=attn)
        else:
            model = MiniVLMForConditionalGeneration.from_pretrained(model_args.model_name_or_path, attn_implementation=attn)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
        return model, processor
    config_kwargs = {
        "vision_feature_select_strategy": model_args.vision_feature_select_strategy,
        "pixel_shuffle_factor": model_args.pixel_shuffle_factor,
    }
    if model_args.tiny_vision_config or model_args.tiny_text_config:
        if not (model_args.tiny_vision_config and model_args.tiny_text_config):
            raise ValueError("a tiny model needs both --tiny_vision_config and --tiny_text_config.")
        texts = training_texts(train_dataset)
        if data_args is not None and "shapes" in [name.strip() for name in data_args.dataset.split(",")]:
            texts = itertools.chain(texts, shapes_texts(data_args.shapes_dir))
        tokenizer = build_word_level_tokenizer(texts)
        return builder.build_from_configs(
            json.loads(model_args.tiny_vision_config), json.loads(model_args.tiny_text_config), tokenizer,
            attn_implementation=attn, **config_kwargs,
        )
    return builder.build_from_pretrained_parts(
        model_args.vision_model, model_args.language_model, attn_implementation=attn, **config_kwargs
    )


def apply_freezing(model: MiniVLMForConditionalGeneration, freeze: str) -> None:
    """Sets `requires_grad`: the projector always trains; the LM unless 'projector-only'; the encoder only with 'none'."""
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"freeze={freeze!r}; choose one of {', '.join(FREEZE_CHOICES)}.")
    model.vision_tower.requires_grad_(freeze == "none")
    model.language_model.requires_grad_(freeze != "projector-only")
    model.lm_head.requires_grad_(freeze != "projector-only")
    model.multi_modal_projector.requires_grad_(True)


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    callbacks: list | None = None,
) -> MiniVLMTrainer:
    """Runs one training job end to end and returns the Trainer (its state holds the log history).

    Resumes from the last complete checkpoint in `output_dir` when there is one; `callbacks`
    are added to the Trainer's. Before anything is loaded the arguments are checked, `output_dir`
    is locked for this run and compared with the run already there (see `guards`).
    """
    check_lora_arguments(model_args, training_args)
    with guards.guarded_run(model_args, data_args, training_args):
        if not guards.evaluates(data_args, training_args):  # a broken eval split must not stop this run
            data_args = dataclasses.replace(data_args, eval_split=None)
        return _train(model_args, data_args, training_args, callbacks)


def _train(model_args, data_args, training_args, callbacks=None) -> MiniVLMTrainer:
    set_seed(training_args.seed)
    data = load_data(data_args, training_args.seed)
    train_dataset, eval_dataset = data.train, data.evaluation
    model, processor = build_model(model_args, train_dataset, data_args)
    apply_freezing(model, model_args.freeze)
    # What the rows hold, not which columns exist: a caption set in the training view (a mixture,
    # or --dataset_format captions) carries an empty `messages` column and teaches no answers.
    trained_tasks = data_tasks(train_dataset)
    if "answers" in trained_tasks:  # questions and answers, not only captions
        model.config.instruction_tuned = True
    model = apply_lora_from_args(model, model_args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("MiniVLM: %s parameters, %s trainable (freeze=%s)",
                f"{model.num_parameters():,}", f"{trainable:,}", model_args.freeze)

    collator_class = ConversationCollator
    if model_args.cache_vision_features:
        if model_args.freeze == "none":
            raise ValueError("--cache_vision_features needs a frozen encoder; use --freeze vision or projector-only.")
        with training_args.main_process_first(desc="caching vision features"):
            # "_*" is left out of Hub pushes by the Trainer: the cache stays local.
            train_dataset = cache_vision_features(
                model, processor, train_dataset, batch_size=training_args.per_device_eval_batch_size,
                cache_dir=Path(training_args.output_dir) / "_vision_features",
            )
        collator_class = FeatureCaptionCollator
    collator = collator_class(
        processor, prompt=data_args.prompt, max_caption_tokens=data_args.max_caption_tokens, seed=training_args.seed,
        multi_turn_fraction=data_args.multi_turn_fraction, grounding_repeats=data_args.grounding_repeats,
    )
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        # The Trainer's samplers read the lengths from this column; without it they would build
        # every example (decoding its image) to measure it.
        train_dataset = collator.add_length_column(train_dataset, training_args.length_column_name)
    if _preprocesses_images(data_args, training_args, model_args, train_dataset, processor):
        train_dataset = PreprocessedDataset(train_dataset, processor)
        if _encoder_is_fixed(model):
            # A frozen encoder gives each image the same features in every step: encode them once.
            train_dataset.encode_images(model, batch_size=training_args.per_device_eval_batch_size)
            logger.info("MiniVLM: frozen vision encoder; training images encoded once (vision features)")
    card_context = {
        "base_model": [m for m in (model_args.vision_model, model_args.language_model) if m and not model_args.tiny_text_config],
        "dataset": data_args.dataset,
        "training_args": training_args,
        "num_train_examples": len(train_dataset),
        "prompt": data_args.prompt,
        "freeze": model_args.freeze,
        "trained_tasks": trained_tasks,
        "formats": _formats(data_args, train_dataset),
    }
    stopper = GracefulStopCallback()
    clock = TrainingTimeCallback()
    extra_callbacks = list(callbacks or [])
    caption_eval = None
    if data_args.caption_eval_samples > 0 and eval_dataset is not None:
        caption_eval = ValidationScoresCallback(
            processor, eval_dataset, max_samples=data_args.caption_eval_samples, prompt=data_args.prompt,
            batch_size=training_args.per_device_eval_batch_size,
            questions=_eval_questions(data, data_args.eval_split, data_args.caption_eval_samples),
            objects=data.eval_objects,
        )
        _check_best_metric(training_args.metric_for_best_model, caption_eval)
        extra_callbacks.insert(0, caption_eval)  # before any early stopping that reads its metrics
    trainer = MiniVLMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=processor,
        callbacks=[CaptionEpochCallback(collator), stopper, clock, *extra_callbacks],
        model_card=lambda folder: write_model_card(folder, trainer=trainer, **card_context),
    )

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        checkpoint = last_complete_checkpoint(training_args.output_dir, needs_optimizer=not training_args.save_only_model)
        if checkpoint is not None:
            logger.warning("Resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    if stopper.stop_requested:
        logger.warning("Interrupted: checkpoint saved in %s; run the same command to resume.", training_args.output_dir)
        return trainer
    if model_args.merge_lora:
        merge_into_trainer(trainer)
    trainer.save_model()
    if caption_eval is not None:
        card_context["metrics"] = _results_by_task(caption_eval.compute(trainer.model), caption_eval, data_args)
        if caption_eval.last_predictions:
            card_context.update(card_examples(caption_eval.last_predictions, caption_eval.dataset))
        else:
            card_context.update(answer_examples(caption_eval.last_answers, caption_eval.questions))
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        write_model_card(training_args.output_dir, trainer=trainer, **card_context)  # a saved folder has its card
        trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return trainer


def _encoder_is_fixed(model) -> bool:
    """Whether the vision encoder gives an image the same features in every step: nothing in it trains
    (frozen, no LoRA adapter in it) and it has no dropout."""
    encoder = model.vision_tower  # through a PeftModel too: its adapters in the encoder train
    if any(p.requires_grad for p in encoder.parameters()):
        return False
    config = encoder.config.to_dict()
    dropouts = [v for k, v in config.items() if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return not any(v > 0 for v in dropouts) and not any(isinstance(m, torch.nn.Dropout) and m.p > 0
                                                         for m in encoder.modules())


def _preprocesses_images(data_args, training_args, model_args, train_dataset, processor) -> bool:
    """Whether the training images are preprocessed once (`PreprocessedDataset`): asked for, or by default
    when their pixel tensor is small. Not with cached vision features (no images left) nor with the
    Trainer's length-grouping samplers (they read a `datasets.Dataset` column)."""
    if data_args.preprocess_images is False or model_args.cache_vision_features:
        return False
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        if data_args.preprocess_images:
            raise ValueError("--preprocess_images does not combine with --train_sampling_strategy "
                             f"{training_args.train_sampling_strategy}; drop one of them.")
        return False
    if data_args.preprocess_images:
        return True
    return preprocessed_size(train_dataset, processor) <= PREPROCESS_AUTO_BYTES


def _formats(data_args: DataArguments, train_dataset) -> list[str]:
    """The training formats as named by `--dataset_format` ("captions" for a plain caption run; none for
    auto-detected ones: the card then describes the data by its tasks alone)."""
    if "messages" not in train_dataset.column_names:
        return ["captions"]
    named = [f.strip() for f in (data_args.dataset_format or "").split(",") if f.strip() and f.strip() != "auto"]
    return list(dict.fromkeys(named))


def _check_best_metric(metric: str | None, caption_eval: ValidationScoresCallback) -> None:
    """Stops before training when --metric_for_best_model names a score the evaluation split cannot give
    (eval_cider on a split without captions): the Trainer would fail at its first evaluation."""
    if not metric:
        return
    name = metric[len("eval_"):] if metric.startswith("eval_") else metric
    known = {*SCORE_KEYS, "shapes_accuracy", *QUESTION_SCORE_KEYS}
    if name in known and name not in caption_eval.metric_names:
        has = ", ".join(f"eval_{n}" for n in caption_eval.metric_names) or "none"
        raise ValueError(f"--metric_for_best_model {metric}: the evaluation split cannot give it (its scores: {has}, "
                         "and eval_loss). Pick one of those, or an evaluation split that has what you want to score.")


def _results_by_task(scores: dict[str, float], caption_eval: ValidationScoresCallback, data_args: DataArguments) -> dict:
    """The final scores as the card lists them: per task, with the split, the decoding and the number of examples."""
    results = {}
    for task, metrics in scores_by_task(scores).items():
        if task == "captions":
            decoding = {**caption_eval.last_decoding, "prompt": data_args.prompt}
            count = len(caption_eval.dataset)
        else:
            decoding, count = dict(caption_eval.last_answer_decoding), len(caption_eval.questions)
        results[task] = {"metrics": metrics, "split": data_args.eval_split, "decoding": decoding, "num_examples": count}
    return results


def default_workers() -> int:
    """Training processes by default: 2 on a CPU-only machine with 2 cores or more, else 1.

    A demo step is many small operations: two threads in one process ran it no faster than one thread
    (the second core mostly waits), while two single-thread processes that each take half of the batch
    and average their gradients (DDP over gloo) ran a step in 0.64 of the time on 2 cores.
    """
    if torch.cuda.is_available() or (os.cpu_count() or 1) < 2:
        return 1
    return 2


def train_data_parallel(stage_argv: list[str], workers: int, batch_size: int, output_dir: Path) -> TrainerState:
    """Runs one stage as `workers` single-thread processes (torchrun, gloo), each taking `batch_size / workers`
    examples of every batch, so the steps are those of one process at `batch_size`; returns the final
    Trainer state the run saved in `output_dir`."""
    if batch_size % workers:
        raise ValueError(f"the batch of {batch_size} does not split evenly over {workers} processes; pick --workers "
                         "that divides it.")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
               "-m", "minivlm.scripts.train", *stage_argv,
               "--per_device_train_batch_size", str(batch_size // workers), "--ddp_backend", "gloo",
               "--ddp_find_unused_parameters", "false"]  # every parameter trains: no extra graph walk per step
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return TrainerState.load_from_json(str(output_dir / "trainer_state.json"))


def leave_process_group() -> None:
    """Destroys the default process group of a distributed run, if any: every process calls this
    once training is over. Left to interpreter exit, gloo's worker threads can abort the process
    (SIGABRT, "terminate called without an active exception") after a finished run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    log_level = training_args.get_process_log_level()
    for library in (datasets, transformers):
        library.utils.logging.set_verbosity(log_level)
    logger.setLevel(log_level)
    try:
        trainer = train(model_args, data_args, training_args)
    finally:
        leave_process_group()
    if trainer.stop_requested:
        sys.exit(EXIT_STOPPED)  # stopped by a signal, checkpoint saved: requeue to resume


if __name__ == "__main__":
    main()
