"""Train MiniVLM with the HF Trainer.

    python scripts/train.py --preset shapes-tiny --output_dir outputs/shapes-tiny      # offline, CPU
    python scripts/train.py --preset notebook --output_dir outputs/flickr8k             # the notebook's recipe
    python scripts/train.py config.yaml                                                 # arguments from a file
    accelerate launch scripts/train.py --preset notebook ...                            # several GPUs
    torchrun --nproc_per_node 2 scripts/train.py ...

All TrainingArguments flags are accepted (--bf16, --gradient_checkpointing, --push_to_hub
--hub_model_id org/minivlm, --report_to tensorboard, --deepspeed ds.json, --fsdp ...).
Ctrl+C or SIGTERM saves a checkpoint and stops with exit status 75 (a scheduler can requeue
on it); the same command resumes from the last complete checkpoint.
"""

from minivlm.training.run import main


if __name__ == "__main__":
    main()
