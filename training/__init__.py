"""Training MiniVLM with the HF Trainer: presets, the Trainer subclass and its callbacks, the model card."""
