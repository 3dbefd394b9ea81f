"""Training presets: named sets of argument defaults, as data.

A preset fills the defaults of `scripts/train.py`'s arguments; any flag or config-file
value given explicitly wins.
"""

PRESETS: dict[str, dict] = {
    # The reference notebook's recipe, on the Trainer: pretrained ViT-L/16-224 + SmolLM-360M,
    # 2000 Flickr8k training images, 6 epochs at lr 2e-4, batch 4, vision frozen.
    "notebook": {
        "vision_model": "google/vit-large-patch16-224",
        "language_model": "HuggingFaceTB/SmolLM-360M",
        "freeze": "vision",
        "dataset": "jxie/flickr8k",
        "max_train_samples": 2000,
        "num_train_epochs": 6,
        "learning_rate": 2e-4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.01,
        "max_caption_tokens": 48,
        "save_strategy": "epoch",
        "eval_strategy": "no",
        "logging_steps": 25,
    },
    # The embedded offline captioner: a tiny ViT and a tiny Llama built from configs, trained from
    # scratch (nothing frozen) on the synthetic shapes set, with a word-level tokenizer built from the
    # set's words. Learns to name every object's colour and shape on 2 CPU cores; the first stage of
    # `shapes-instruct`.
    "shapes-tiny": {
        "vision_model": None,
        "language_model": None,
        "tiny_vision_config": {
            "model_type": "vit",
            "image_size": 64,
            "patch_size": 8,
            "hidden_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 192,
        },
        # Three layers and a key/value per head: answering a question about an object (second stage)
        # takes a step more than captioning; with two layers and shared keys it stayed at chance for
        # "what colour is the triangle?" on two-object images.
        "tiny_text_config": {
            "model_type": "llama",
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,
        },
        "vision_feature_select_strategy": "default",
        "pixel_shuffle_factor": 2,
        "freeze": "none",
        "dataset": "shapes",
        "shapes_image_size": 64,
        # 4500 images rather than 3000 at fewer epochs of the second stage: the same number of samples
        # seen, and on seed 0 (an Intel Xeon) more of every score held out (captions 99 %, answers 94.8 %, boxes 91.4 %,
        # questions 2-4 of a chat 93.5 %, against 95 / 92.3 / 76.1 / 89.2 % with 3000 images, 6 + 10 epochs).
        "shapes_num_train": 4500,
        # 6 epochs as the demo's first stage; alone, 12 epochs named every object right in 99 % of the
        # held-out captions.
        "num_train_epochs": 6,
        "learning_rate": 1e-3,
        "warmup_steps": 0.05,
        "lr_scheduler_type": "cosine",
        "weight_decay": 0.0,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 64,
        "max_caption_tokens": 16,
        "save_strategy": "epoch",
        "save_total_limit": 2,
        "eval_strategy": "no",
        "logging_steps": 10,
    },
}

# The second stage (LLaVA's instruction tuning) of the shapes demo: a `shapes-tiny` captioner
# (`--model_name_or_path`) trained on each image's caption and all its questions (objects, colour,
# count, yes/no, where, and the box on the 0-1000 grid), packed as single-turn examples that share the
# image (encoded once). Everything trains, at a higher rate than the first stage: the questions teach
# the LM to look up the object a question names, which captioning never asked of it. From scratch
# (no `--model_name_or_path`) it trains the tiny configs above, but needs far more epochs.
PRESETS["shapes-instruct"] = {
    **PRESETS["shapes-tiny"],
    "dataset": "shapes",
    "dataset_format": "shapes-instruct",
    # After a 6-epoch captioner on 3000 images: 6 epochs left "is there a red square?" near chance when the
    # image held a square of another colour; 10 epochs learned it. On 4500 images, 8 epochs.
    "num_train_epochs": 8,
    "learning_rate": 3e-3,
    # Half of the images each epoch train their caption and questions as one chat, in a shuffled order,
    # each turn after the ones before (as a conversation is asked); the other half as single turns packed
    # on the image. Trained as single turns only, questions 2-4 of a chat were answered right 24-32 % of
    # the time; with half as chats, 89 %.
    "multi_turn_fraction": 0.5,
    # The encoder trains too. Kept frozen (LLaVA's second stage; each image then encoded once, a cheaper
    # step), seed 0 gained (boxes 68.9 -> 91.1 %, chat 94.3 -> 97.7 %) but seed 2 lost (boxes 74.9 -> 65.4 %,
    # captions 91.5 -> 89.5 %) and seed 1 stayed low: a captioner's encoder need not keep where an
    # object lies, which boxes need.
    "freeze": "none",
}
