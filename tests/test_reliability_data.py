"""Careless data: image folders whose metadata.jsonl is broken, empty or missing get errors naming
the file (and line) and the fix; nested reference lists are refused, not scored as strings."""

import shutil

import pytest
from test_training import shapes_dir  # noqa: F401 (fixture)

from minivlm.processing.adapters import load_caption_dataset
from minivlm.evaluation.metrics import compute_caption_metrics


@pytest.fixture
def folder(tmp_path, shapes_dir):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    return data


def test_a_bad_metadata_line_is_named_with_its_file_and_line(folder):
    metadata = folder / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    lines[2] = '{"file_name": "train_00002.png", "captions": ["a red'
    metadata.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train/metadata\.jsonl line 3 is not valid JSON .*fix or remove that line"):
        load_caption_dataset(str(folder), "train")


def test_an_empty_metadata_file_is_named(folder):
    (folder / "validation" / "metadata.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"validation/metadata\.jsonl is empty: it needs one JSON line per image"):
        load_caption_dataset(str(folder), "validation")


def test_a_missing_metadata_file_is_named(tmp_path, folder):
    images = tmp_path / "images"
    shutil.copytree(folder / "train", images)
    (images / "metadata.jsonl").unlink()
    with pytest.raises(ValueError, match=r"no metadata\.jsonl in .*images: an image folder needs one"):
        load_caption_dataset(str(images), "train")


def test_nested_reference_lists_are_refused_not_stringified():
    with pytest.raises(ValueError, match=r"references\[1\]\[0\] is a list, not a string"):
        compute_caption_metrics(["a red circle", "a blue square"],
                                [["a red circle"], [["a blue square", "blue square"]]], meteor=False)
    scores = compute_caption_metrics(["a red circle"], [["a red circle", "red circle"]], meteor=False)
    assert scores["bleu_1"] > 0.9
