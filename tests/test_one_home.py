"""Each shared constant has one home: the others read it there, so they cannot drift apart."""

import importlib
import re
from pathlib import Path

import pytest
from PIL import Image

from minivlm.processing.adapters import _image_problem
from minivlm.processing_minivlm import IMAGE_TOKEN

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("modeling_minivlm", "processing", "training", "evaluation", "benchmark", "scripts", "app", "export")


def _code_lines(pattern: str) -> list[str]:
    """`path:line` of every non-comment, non-docstring-example line of the project's code matching `pattern`."""
    found = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if re.search(pattern, code) and not code.lstrip().startswith(("`", ">>>")):
                    found.append(f"{path.relative_to(ROOT)}:{number}")
    return found


def test_the_image_token_string_is_written_once():
    assert IMAGE_TOKEN == "<image>"
    # Code that assigns or passes the literal (docstrings may show it); only its home writes it.
    assert [line.split(":")[0] for line in _code_lines(r'(=|\(|,)\s*"<image>"')] == [
        "modeling_minivlm/processing_minivlm.py"]


def test_the_hub_id_pattern_is_written_once():
    assert len(_code_lines(r're\.compile\(r"\[\\w\.-\]\+/')) == 1


def test_dataset_checks_use_the_loaders_pixel_limit(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (10, 10)).save(path)  # 100 pixels
    monkeypatch.setenv("MINIVLM_MAX_IMAGE_PIXELS", "100")
    assert _image_problem({"path": str(path), "bytes": None}) == ""  # exactly at the limit: allowed
    monkeypatch.setenv("MINIVLM_MAX_IMAGE_PIXELS", "99")
    assert _image_problem({"path": str(path), "bytes": None}) == "image too large"


@pytest.mark.parametrize("module,old,new", [
    ("minivlm.processing.collator", "CaptionCollator", "ConversationCollator"),
    ("minivlm.training.callbacks", "CaptionEvalCallback", "ValidationScoresCallback"),
])
def test_old_class_names_still_work_and_name_the_new_one(module, old, new):
    imported = importlib.import_module(module)
    with pytest.warns(FutureWarning, match=new):
        assert getattr(imported, old) is getattr(imported, new)


def test_the_two_preset_tables_have_names_that_say_what_they_hold():
    from minivlm.benchmark import runs
    from minivlm.processing import loading, shapes
    from minivlm.training import presets

    assert "num_train_epochs" in presets.PRESETS["shapes-tiny"]  # training argument defaults
    assert not hasattr(runs, "PRESETS") and set(runs.MODEL_SHAPES["small"]) == {"vision_config", "text_config"}
    assert loading.SHAPES_DATASET == "shapes" and not hasattr(loading, "SHAPES") and "circle" in shapes.SHAPES
