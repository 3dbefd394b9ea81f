"""Tiny, seeded fixtures: a 32-px two-layer ViT, a two-layer Llama, a word-level tokenizer.

Nothing here touches the network: tests run with HF_HUB_OFFLINE=1.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads
# slow tiny-model steps many times over. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from minivlm import MiniVLMConfig, MiniVLMForConditionalGeneration
from minivlm import MiniVLMProcessor
from minivlm.processing.builder import build_model_from_config, build_processor
from minivlm.processing.tokenizer import build_word_level_tokenizer


REPO_ROOT = Path(__file__).resolve().parents[1]
# transformers' common test mixins (tests/transformers_common/README.md): imported, not collected.
collect_ignore = ["transformers_common"]
# Sub-configs for `--tiny_vision_config` / `--tiny_text_config` (JSON) of training runs in the tests.
TINY_VISION = {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32,
               "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_TEXT = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
WORDS = (
    "a an the red green blue yellow circle square triangle small large on left right top bottom "
    "of and two dog cat runs sits in grass photo this image shows"
)


def missing_metric_tools(which=None, find_spec=None) -> list[str]:
    """What the metric parity tests need and this machine lacks: they skip locally without it."""
    which, find_spec = which or shutil.which, find_spec or importlib.util.find_spec
    missing = []
    if find_spec("pycocoevalcap") is None:
        missing.append("pycocoevalcap (pip install -e '.[test]')")
    if which("java") is None:
        missing.append("java (apt-get install -y default-jre-headless)")
    return missing


def pytest_sessionstart(session):
    # In CI (the CI variable set, as .ci/run and CI services do) a missing tool is an error, not a
    # skipped METEOR / PTB-tokenizer parity test that nobody reads.
    missing = missing_metric_tools()
    if os.environ.get("CI") and missing:
        raise pytest.UsageError(f"CI is set but the metric parity tests would skip: missing {', '.join(missing)}.")


def seed_everything(seed: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed():
    seed_everything(0)


def make_tokenizer():
    return build_word_level_tokenizer([WORDS])


def make_config(tokenizer=None, **overrides) -> MiniVLMConfig:
    """A MiniVLM config with hidden sizes of 32: builds in milliseconds, runs in seconds."""
    tokenizer = tokenizer or make_tokenizer()
    vision = dict(
        model_type="vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, image_size=32, patch_size=8,
    )
    text = dict(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    vision.update(overrides.pop("vision_config", {}))
    text.update(overrides.pop("text_config", {}))
    overrides.setdefault("image_token_index", tokenizer.convert_tokens_to_ids("<image>"))
    return MiniVLMConfig(vision_config=vision, text_config=text, **overrides)


def make_model(config: MiniVLMConfig | None = None, seed: int = 0, tokenizer=None) -> MiniVLMForConditionalGeneration:
    torch.manual_seed(seed)
    return build_model_from_config(config or make_config(), tokenizer or make_tokenizer())


def make_processor(config: MiniVLMConfig | None = None, tokenizer=None) -> MiniVLMProcessor:
    return build_processor(config or make_config(), tokenizer or make_tokenizer())


def make_images(n: int, size: int = 40, seed: int = 0) -> list[Image.Image]:
    """Deterministic RGB noise images of assorted sizes."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (size + 3 * i, size + 5 * i, 3), dtype=np.uint8))
        for i in range(n)
    ]


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def config(tokenizer):
    return make_config(tokenizer)


@pytest.fixture
def model(config):
    return make_model(config)


@pytest.fixture
def processor(config, tokenizer):
    return make_processor(config, tokenizer)


@pytest.fixture
def images():
    return make_images(3)


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory) -> Path:
    """A tiny random MiniVLM and its processor, saved once per session."""
    path = tmp_path_factory.mktemp("tiny-minivlm")
    tokenizer = make_tokenizer()
    config = make_config(tokenizer)
    make_model(config, seed=1).save_pretrained(path)
    make_processor(config, tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def onnx_export_dir(saved_model_dir, tmp_path_factory) -> Path:
    """`minivlm-export` of `saved_model_dir`, written once per session (read it, do not change it)."""
    pytest.importorskip("onnxscript", reason='the export extra is not installed: pip install -e ".[export]"')
    pytest.importorskip("onnxruntime", reason='the export extra is not installed: pip install -e ".[export]"')
    from minivlm.scripts.export import main as export_main

    output = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    export_main([str(saved_model_dir), str(output)])  # `minivlm-export MODEL_DIR OUTPUT_DIR`
    return output


def write_vqa_imagefolder(root: Path, splits: dict[str, int], seed: int = 0) -> Path:
    """A local VQA imagefolder, no captions: ``{split}/metadata.jsonl`` rows ``file_name``, ``question``,
    ``answer`` (words of `WORDS`), beside PNG noise images of assorted sizes."""
    import json

    questions = [("what colour is the circle?", "red"), ("is this a dog?", "yes"), ("what is on the left?", "cat")]
    for split, count in splits.items():
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for index, image in enumerate(make_images(count, size=24, seed=seed + len(split))):
            name = f"{split}_{index:03d}.png"
            image.save(folder / name)
            question, answer = questions[index % len(questions)]
            lines.append(json.dumps({"file_name": name, "question": question, "answer": answer}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return Path(root)
