"""MiniVLMTrainer overrides private `Trainer` methods and swaps `transformers.trainer.hf_api`:
these tests fail, naming the piece, when a transformers upgrade renames, re-signs or stops using one.

Each override exists for correctness (training/trainer.py says why): resume and best-model loading
through `from_pretrained` (the ViT's file key names differ from its in-memory ones), pushes that
carry the remote code and leave pickles out.
"""

import inspect

import pytest
import transformers.trainer
from transformers import Trainer

from minivlm.training.trainer import MiniVLMTrainer


# Each private Trainer method MiniVLMTrainer overrides, and why no public hook does the job.
OVERRIDDEN_PRIVATE_METHODS = {
    # resume: the Trainer loads with strict=False, and the ViT's file keys differ from its module keys
    "_load_from_checkpoint": "weights through from_pretrained, strict",
    # load_best_model_at_end: the same loader as resume
    "_load_best_model": "weights through from_pretrained, strict",
    # hub_strategy every_save/checkpoint: the remote code and card must be in the folder before each upload
    "_push_from_checkpoint": "remote code + card in every pushed commit, no pickles",
}


def _parameters(function) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("name", OVERRIDDEN_PRIVATE_METHODS)
def test_overridden_private_trainer_methods_still_exist_with_the_same_signature(name):
    base = getattr(Trainer, name, None)
    assert callable(base), (
        f"transformers.Trainer.{name} is gone: MiniVLMTrainer.{name} now overrides nothing, so the Trainer's own "
        "code runs instead. Find the method that replaced it and move the override there (training/trainer.py)."
    )
    assert name in vars(MiniVLMTrainer), f"MiniVLMTrainer no longer overrides {name}; update this list."
    assert _parameters(getattr(MiniVLMTrainer, name)) == _parameters(base), (
        f"transformers.Trainer.{name} changed its signature to {inspect.signature(base)}, MiniVLMTrainer.{name} has "
        f"{inspect.signature(getattr(MiniVLMTrainer, name))}: the Trainer may call it with arguments the override "
        "drops. Update the override in training/trainer.py."
    )


def test_every_private_trainer_method_overridden_is_listed_here_with_its_reason():
    overridden = {name for name in vars(MiniVLMTrainer)
                  if name.startswith("_") and not name.startswith("__") and hasattr(Trainer, name)}
    assert overridden == set(OVERRIDDEN_PRIVATE_METHODS), (
        f"MiniVLMTrainer overrides private Trainer methods {sorted(overridden)}; this test guards "
        f"{sorted(OVERRIDDEN_PRIVATE_METHODS)}. Add each new one with its reason (or prefer a public hook)."
    )


@pytest.mark.parametrize("caller", ["push_to_hub", "_push_from_checkpoint"])
def test_the_trainer_still_uploads_through_the_hf_api_that_pushes_swap(caller):
    # MiniVLMTrainer._filtered_pushes swaps this module attribute to leave pickles out of uploads: if the
    # Trainer stopped reading it, pushes would upload training_args.bin and optimizer state again, silently.
    assert callable(getattr(transformers.trainer, "hf_api", None)), (
        "transformers.trainer.hf_api is gone: MiniVLMTrainer._filtered_pushes patches it to keep pickles out of "
        "pushes. Find how the Trainer uploads now and filter there (training/trainer.py)."
    )
    source = inspect.getsource(getattr(Trainer, caller))
    assert "hf_api()" in source, (
        f"transformers.Trainer.{caller} no longer uploads through transformers.trainer.hf_api(): the pickle filter "
        "of MiniVLMTrainer._filtered_pushes would not apply. Update training/trainer.py."
    )
