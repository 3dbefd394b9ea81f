"""Each shared constant has one home: the others read it there, so they cannot drift apart."""

import re
from pathlib import Path

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
