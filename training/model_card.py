"""The Hub model card: `model_card.md` (the repository root's, linked here and shipped in the wheel) rendered with huggingface_hub's ModelCard."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData


TEMPLATE = Path(__file__).with_name("model_card.md")  # a link to the repository's model_card.md, shipped in the wheel


def _describe(config) -> str:
    return f"{config.model_type} ({config.num_hidden_layers} layers, hidden size {config.hidden_size})"


def format_metrics(metrics: dict | None, decoding: dict | None = None) -> str:
    """A Markdown table of caption metrics (None → 'unavailable'), with the decoding settings."""
    if not metrics:
        return "No evaluation was run for this upload."
    rows = ["| metric | value |", "|---|---|"]
    for name, value in metrics.items():
        rows.append(f"| {name} | {'unavailable' if value is None else f'{value:.4f}' if isinstance(value, float) else value} |")
    if decoding:
        rows.append("")
        rows.append("Decoding: " + ", ".join(f"{k}={v}" for k, v in decoding.items()))
    return "\n".join(rows)


def write_model_card(
    folder: str,
    trainer=None,
    *,
    base_model: list[str] | None = None,
    dataset: str = "",
    training_args=None,
    num_train_examples: int = 0,
    prompt: str = "",
    freeze: str = "vision",
    metrics: dict | None = None,
    decoding: dict | None = None,
    license: str = "apache-2.0",
) -> Path:
    """Renders the card into `folder/README.md` and returns its path.

    YAML metadata: `library_name: transformers`, `pipeline_tag: image-to-text`, `base_model`,
    `datasets`, `metrics`, `license`, tags; then usage, training details and results.
    """
    model = trainer.accelerator.unwrap_model(trainer.model) if trainer is not None else None
    args = training_args if training_args is not None else getattr(trainer, "args", None)
    history = trainer.state.log_history if trainer is not None else []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    hub_id = getattr(args, "hub_model_id", None) or Path(folder).resolve().name
    is_hub_dataset = "/" in dataset and not Path(dataset).exists()
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-to-text",
        license=license,
        base_model=base_model or None,
        datasets=[dataset] if is_hub_dataset else None,
        metrics=["bleu", "meteor", "rouge", "cider"],
        tags=["minivlm", "image-captioning", "vision-language", "custom_code"],
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=hub_id.split("/")[-1],
        repo_id=hub_id,
        vision_description=_describe(model.config.vision_config) if model is not None else "ViT",
        text_description=_describe(model.config.text_config) if model is not None else "Llama",
        image_seq_length=model.config.image_seq_length if model is not None else "a fixed number of",
        prompt=prompt,
        dataset=dataset,
        num_train_examples=num_train_examples,
        freeze=freeze,
        epochs=getattr(args, "num_train_epochs", ""),
        learning_rate=getattr(args, "learning_rate", ""),
        batch_size=getattr(args, "per_device_train_batch_size", ""),
        precision="bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32",
        global_step=trainer.state.global_step if trainer is not None else 0,
        final_loss=f"{losses[-1]:.4f}" if losses else "n/a",
        results=format_metrics(metrics, decoding),
    )
    path = Path(folder) / "README.md"
    card.save(path)
    return path
