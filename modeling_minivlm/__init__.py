"""MiniVLM: a vision encoder, an MLP projector and a causal LM, as a Hub-native transformers model.

This folder is the installed `minivlm` package. Its module files ship to the Hub verbatim as
remote code (`configuration_minivlm.py`, `modeling_minivlm.py`, `processing_minivlm.py`,
`pipeline_minivlm.py` and the siblings they import: `image_loading.py`, `image_cache_minivlm.py`,
`tasks_minivlm.py` (caption/query/detect), `grounding_minivlm.py` (boxes as text),
`adapters_minivlm.py` (LoRA adapters checked against their base); torch, transformers and relative
imports only; `minivlm.training.guards.shipped_code_files` lists them as `save_pretrained` finds
them). This file is not shipped:
it registers the classes with the Auto classes, for local use and so that `save_pretrained`
writes `auto_map` and copies the code.

The rest of the project lives in sub-packages mapped from their own folders (see pyproject.toml):
`minivlm.processing` (processing/), `minivlm.training` (training/), `minivlm.evaluation` (evaluation/),
`minivlm.benchmark` (benchmark/) and `minivlm.scripts` (scripts/, the console commands).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_minivlm import MiniVLMConfig
from .modeling_minivlm import (
    MiniVLMForConditionalGeneration,
    MiniVLMModel,
    MiniVLMMultiModalProjector,
    MiniVLMPreTrainedModel,
)
from .pipeline_minivlm import MiniVLMImageToTextPipeline
from .processing_minivlm import MiniVLMProcessor


AutoConfig.register(MiniVLMConfig.model_type, MiniVLMConfig, exist_ok=True)
# AutoModel gives the class that generates (the Hub usage `AutoModel.from_pretrained(...).generate`).
AutoModel.register(MiniVLMConfig, MiniVLMForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MiniVLMConfig, MiniVLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MiniVLMConfig, MiniVLMProcessor, exist_ok=True)
# One Auto class per class is recorded (the last call wins); the config's default
# `auto_map` names AutoModelForImageTextToText too.
MiniVLMConfig.register_for_auto_class("AutoConfig")
MiniVLMForConditionalGeneration.register_for_auto_class("AutoModel")
MiniVLMProcessor.register_for_auto_class("AutoProcessor")


class _RenamedPackageFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Keeps the old name `minivlm.data` importable for one release: it and its submodules are the
    `minivlm.processing` modules themselves (one object, so monkeypatches and isinstance checks
    agree), and the first import of each warns with the new name."""

    old, new = "minivlm.data", "minivlm.processing"
    _specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.old and not fullname.startswith(self.old + "."):
            return None
        target_name = self.new + fullname[len(self.old) :]
        if importlib.util.find_spec(target_name) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == self.old)

    def create_module(self, spec):
        new_name = self.new + spec.name[len(self.old) :]
        warnings.warn(
            f"`{spec.name}` was renamed `{new_name}` (the name of its folder, processing/); the old "
            "name is deprecated and will be removed in the next release. Import "
            f"`{new_name}` instead.",
            FutureWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new_name)
        self._specs[new_name] = module.__spec__
        return module

    def exec_module(self, module):
        # The module already ran under its new name; importlib has just stamped the old name's spec
        # on it, so give it its own back (relative imports and reloads read it).
        module.__spec__ = self._specs[module.__name__]


if not any(isinstance(finder, _RenamedPackageFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RenamedPackageFinder())


def __getattr__(name: str):
    # The builder lives in minivlm.processing (it is not shipped); imported on first use, so that
    # `import minivlm` stays light and free of import cycles.
    if name in ("build_from_pretrained_parts", "build_from_parts", "build_from_configs"):
        from .processing import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'minivlm' has no attribute {name!r}")


__all__ = [
    "build_from_configs",
    "build_from_parts",
    "build_from_pretrained_parts",
    "MiniVLMConfig",
    "MiniVLMForConditionalGeneration",
    "MiniVLMImageToTextPipeline",
    "MiniVLMModel",
    "MiniVLMMultiModalProjector",
    "MiniVLMPreTrainedModel",
    "MiniVLMProcessor",
]
