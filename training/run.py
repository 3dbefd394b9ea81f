"""Training MiniVLM with the HF Trainer: arguments → data → model → Trainer → train → save → push.

`scripts/train.py` is the command line over `main()`; tests call `parse_args` and `train`.
"""

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoProcessor, HfArgumentParser, TrainingArguments, ViTImageProcessorPil, set_seed

from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration
from minivlm import MiniVLMProcessor
from minivlm.data.collator import CaptionCollator, CaptionEpochCallback
from minivlm.data.adapters import clean_caption_dataset, load_caption_dataset
from minivlm.data.conversations import load_eval_questions, load_training_data, training_texts
from minivlm.training.feature_cache import FeatureCaptionCollator, cache_vision_features
from minivlm.data.tokenizer import build_word_level_tokenizer

from minivlm.evaluation.captioning import DEFAULT_DECODING, CaptionEvalCallback
from .model_card import write_model_card
from .presets import PRESETS
from .trainer import GracefulStopCallback, MiniVLMTrainer, last_complete_checkpoint


logger = logging.getLogger("minivlm.train")
FREEZE_CHOICES = ("vision", "projector-only", "none")


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
    dataset_format: str | None = field(
        default=None,
        metadata={"help": "Format of each --dataset (comma-separated): auto, captions, chat, llava, cauldron, vqa, "
                          "shapes-questions. Set it (or give several datasets) to train on conversations."},
    )
    dataset_weights: str | None = field(
        default=None, metadata={"help": "Sampling weights of the datasets, comma-separated (default: all rows once)."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Where LLaVA JSON image paths are relative to."})
    shapes_dir: str = field(default="data/shapes", metadata={"help": "Where the shapes set is generated."})
    shapes_num_train: int = field(default=3000)
    shapes_num_eval: int = field(default=200)
    shapes_image_size: int = field(default=32)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Flags, or one YAML/JSON file; `--preset` (or `preset:` in the file) fills the defaults first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    file_values = {}
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml", ".json")):
        import yaml

        file_values = yaml.safe_load(Path(argv[0]).read_text()) or {}
        argv = []
    preset_name = file_values.get("preset")
    if "--preset" in argv:
        preset_name = argv[argv.index("--preset") + 1]
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
        for key, value in PRESETS[preset_name].items():
            defaults[key] = json.dumps(value) if isinstance(value, dict) else value
    parser.set_defaults(**defaults)
    if file_values:
        merged = {**defaults, **{k: json.dumps(v) if isinstance(v, dict) else v for k, v in file_values.items()}}
        return parser.parse_dict(merged)
    return parser.parse_args_into_dataclasses(args=argv)


def load_data(data_args: DataArguments, seed: int):
    """The training split (and evaluation split, if any) in the uniform caption view, cleaned."""
    if data_args.dataset_format or "," in data_args.dataset:
        return load_training_data(data_args, seed)  # conversations, mixtures
    source = data_args.dataset
    if source == "shapes":
        from minivlm.data.shapes import generate_shapes_dataset

        source = data_args.shapes_dir
        if not (Path(source) / "train" / "metadata.jsonl").is_file():
            generate_shapes_dataset(
                source, num_train=data_args.shapes_num_train, num_validation=data_args.shapes_num_eval,
                num_test=data_args.shapes_num_eval, image_size=data_args.shapes_image_size, seed=seed,
            )
    columns = data_args.caption_column.split(",") if data_args.caption_column else None
    if columns is not None and len(columns) == 1:
        columns = columns[0]
    common = dict(dataset_config=data_args.dataset_config, image_column=data_args.image_column,
                  caption_column=columns, seed=seed)
    train = load_caption_dataset(source, data_args.train_split, max_samples=data_args.max_train_samples, **common)
    train = clean_caption_dataset(train, max_bad_fraction=data_args.max_bad_fraction, split_name=data_args.train_split)
    evaluation = None
    if data_args.eval_split:
        try:
            evaluation = load_caption_dataset(source, data_args.eval_split, max_samples=data_args.max_eval_samples, **common)
        except ValueError as error:
            logger.warning("No evaluation split: %s", error)
        else:
            evaluation = clean_caption_dataset(
                evaluation, max_bad_fraction=data_args.max_bad_fraction, split_name=data_args.eval_split
            )
    return train, evaluation


def build_model(model_args: ModelArguments, train_dataset) -> tuple[MiniVLMForConditionalGeneration, MiniVLMProcessor]:
    """A saved MiniVLM, a tiny one from configs, or one assembled from pretrained parts."""
    attn = model_args.attn_implementation
    if model_args.model_name_or_path:
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
        vision_config = json.loads(model_args.tiny_vision_config)
        text_config = json.loads(model_args.tiny_text_config)
        tokenizer = build_word_level_tokenizer(training_texts(train_dataset))
        text_config.update(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        )
        config = MiniVLMConfig(
            vision_config=vision_config, text_config=text_config,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"), **config_kwargs,
        )
        config._attn_implementation = attn
        model = MiniVLMForConditionalGeneration(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        size = config.vision_config.image_size
        image_processor = ViTImageProcessorPil(size={"height": size, "width": size})
        processor = MiniVLMProcessor(image_processor, tokenizer, image_seq_length=config.image_seq_length)
        return model, processor
    model = MiniVLMForConditionalGeneration.from_pretrained_parts(
        model_args.vision_model, model_args.language_model, attn_implementation=attn, config_kwargs=config_kwargs
    )
    processor = MiniVLMProcessor.from_pretrained_parts(
        model_args.vision_model, model_args.language_model, image_seq_length=model.config.image_seq_length
    )
    return model, processor


def apply_freezing(model: MiniVLMForConditionalGeneration, freeze: str) -> None:
    """Sets `requires_grad`: the projector always trains; the LM unless 'projector-only'; the encoder only with 'none'."""
    if freeze not in FREEZE_CHOICES:
        raise ValueError(f"freeze={freeze!r}; choose one of {', '.join(FREEZE_CHOICES)}.")
    model.vision_tower.requires_grad_(freeze == "none")
    model.language_model.requires_grad_(freeze != "projector-only")
    model.multi_modal_projector.requires_grad_(True)


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    callbacks: list | None = None,
) -> MiniVLMTrainer:
    """Runs one training job end to end and returns the Trainer (its state holds the log history).

    Resumes from the last complete checkpoint in `output_dir` when there is one; `callbacks`
    are added to the Trainer's.
    """
    set_seed(training_args.seed)
    train_dataset, eval_dataset = load_data(data_args, training_args.seed)
    model, processor = build_model(model_args, train_dataset)
    apply_freezing(model, model_args.freeze)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("MiniVLM: %s parameters, %s trainable (freeze=%s)",
                f"{model.num_parameters():,}", f"{trainable:,}", model_args.freeze)

    collator_class = CaptionCollator
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
        processor, prompt=data_args.prompt, max_caption_tokens=data_args.max_caption_tokens, seed=training_args.seed
    )
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        # The Trainer's samplers read the lengths from this column; without it they would build
        # every example (decoding its image) to measure it.
        train_dataset = collator.add_length_column(train_dataset, training_args.length_column_name)
    card_context = {
        "base_model": [m for m in (model_args.vision_model, model_args.language_model) if m and not model_args.tiny_text_config],
        "dataset": data_args.dataset,
        "training_args": training_args,
        "num_train_examples": len(train_dataset),
        "prompt": data_args.prompt,
        "freeze": model_args.freeze,
    }
    stopper = GracefulStopCallback()
    extra_callbacks = list(callbacks or [])
    caption_eval = None
    if data_args.caption_eval_samples > 0 and eval_dataset is not None:
        caption_eval = CaptionEvalCallback(
            processor, eval_dataset, max_samples=data_args.caption_eval_samples, prompt=data_args.prompt,
            batch_size=training_args.per_device_eval_batch_size,
            questions=load_eval_questions(data_args, data_args.caption_eval_samples),
        )
        extra_callbacks.insert(0, caption_eval)  # before any early stopping that reads its metrics
    trainer = MiniVLMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=processor,
        callbacks=[CaptionEpochCallback(collator), stopper, *extra_callbacks],
        model_card=lambda folder: write_model_card(folder, trainer=trainer, **card_context),
    )

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint is None:
        checkpoint = last_complete_checkpoint(training_args.output_dir, needs_optimizer=not training_args.save_only_model)
        if checkpoint is not None:
            logger.info("Resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)
    if stopper.stop_requested:
        logger.warning("Interrupted: checkpoint saved in %s; run the same command to resume.", training_args.output_dir)
        return trainer
    trainer.save_model()
    if caption_eval is not None:
        card_context["metrics"] = caption_eval.compute(trainer.model)
        card_context["decoding"] = {"split": data_args.eval_split, "images": len(caption_eval.dataset),
                                    **DEFAULT_DECODING, **caption_eval.decoding, "prompt": data_args.prompt}
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
        trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    return trainer


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
        train(model_args, data_args, training_args)
    finally:
        leave_process_group()


if __name__ == "__main__":
    main()
