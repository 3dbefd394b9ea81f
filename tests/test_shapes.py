"""Tests for the synthetic shapes dataset (processing/shapes.py): generator and scorer."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from minivlm.processing.shapes import (
    COLOURS,
    DEFAULT_COLOURS,
    DEFAULT_SHAPES,
    SHAPES,
    caption_vocabulary,
    generate_shapes_dataset,
    main,
    make_shapes_examples,
    parse_objects,
    score_caption,
    shapes_accuracy,
)

IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return make_shapes_examples(300, IMAGE_SIZE, seed=0)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a = _files(generate_shapes_dataset(tmp_path / "a", 6, 3, 3, seed=0))
    b = _files(generate_shapes_dataset(tmp_path / "b", 6, 3, 3, seed=0))
    c = _files(generate_shapes_dataset(tmp_path / "c", 6, 3, 3, seed=1))
    assert len(a) == 12 + 3 * 1 + 1 and a == b  # 12 PNGs + 3 metadata.jsonl + the marker
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)  # every image and every metadata file changes


def test_regeneration_replaces_stale_files(tmp_path):
    generate_shapes_dataset(tmp_path, 8, 2, 2)
    generate_shapes_dataset(tmp_path, 4, 2, 0)
    assert len(list((tmp_path / "train").glob("*.png"))) == 4
    assert not (tmp_path / "test").exists()


def test_in_memory_examples_match_disk(tmp_path):
    root = generate_shapes_dataset(tmp_path, 2, 5, 2, seed=7)
    import json

    records = [json.loads(l) for l in (root / "validation" / "metadata.jsonl").read_text().splitlines()]
    mem = make_shapes_examples(5, IMAGE_SIZE, seed=7, split="validation")
    for rec, ex in zip(records, mem, strict=True):
        assert rec["id"] == ex["id"] and rec["captions"] == ex["captions"] and rec["objects"] == ex["objects"]
        disk = np.asarray(Image.open(root / "validation" / rec["file_name"]))
        np.testing.assert_array_equal(disk, np.asarray(ex["image"]))


def test_loads_with_imagefolder(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = generate_shapes_dataset(tmp_path / "data", 8, 4, 4)
    ds = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "validation", "test"}
    assert [ds[s].num_rows for s in ("train", "validation", "test")] == [8, 4, 4]
    assert {"image", "captions", "objects", "id"} <= set(ds["train"].column_names)
    row = ds["test"][0]
    assert row["image"].size == (IMAGE_SIZE, IMAGE_SIZE) and len(row["captions"]) == 5
    # The scorer accepts objects exactly as `datasets` returns them.
    for split in ds:
        for k in range(5):
            assert shapes_accuracy([c[k] for c in ds[split]["captions"]], ds[split]["objects"]) == 1.0


@pytest.mark.parametrize("shapes,colours", [(DEFAULT_SHAPES, DEFAULT_COLOURS), (SHAPES, tuple(COLOURS))])
def test_reference_captions_score_true(shapes, colours):
    exs = make_shapes_examples(300, IMAGE_SIZE, seed=1, shapes=shapes, colours=colours)
    for ex in exs:
        for cap in ex["captions"]:
            assert score_caption(cap, ex["objects"]), (cap, ex["objects"])


def test_caption_style_and_vocabulary(examples):
    vocab = set(caption_vocabulary())
    assert len(vocab) < 60 and len(caption_vocabulary(SHAPES, tuple(COLOURS))) < 60
    used = set()
    for ex in examples:
        caps = ex["captions"]
        assert len(caps) == 5 and len(set(caps)) == 5
        for cap in caps:
            assert cap == cap.lower().strip() and not cap.endswith(".") and len(cap.split()) <= 12
            used.update(cap.split())
    assert used <= vocab
    assert any(cap.startswith("two ") for ex in make_shapes_examples(400, 32, seed=2) for cap in ex["captions"])


def test_generator_covers_the_label_space(examples):
    objs = [o for ex in examples for o in ex["objects"]]
    assert {o["shape"] for o in objs} == set(DEFAULT_SHAPES)
    assert {o["colour"] for o in objs} == set(DEFAULT_COLOURS)
    assert {o["size"] for o in objs} == {"small", "large"}
    assert {o["position"] for o in objs} == {"left", "right", "top", "bottom", "center"}
    n_two = sum(len(ex["objects"]) == 2 for ex in examples)
    assert 0.35 < n_two / len(examples) < 0.65 and all(len(ex["objects"]) in (1, 2) for ex in examples)


def test_drawn_colour_at_object_position(examples):
    palette = {c: np.array(COLOURS[c], dtype=float) for c in DEFAULT_COLOURS}
    for ex in examples:
        img = np.asarray(ex["image"], dtype=float)
        assert img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        for o in ex["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
            pixel = img[(y0 + y1) // 2, (x0 + x1) // 2]
            nearest = min(palette, key=lambda c: np.abs(pixel - palette[c]).sum())
            assert nearest == o["colour"] and np.abs(pixel - palette[o["colour"]]).max() < 40, (ex["id"], o, pixel)
        # Background (a pixel outside every box) is light.
        mask = np.ones((IMAGE_SIZE, IMAGE_SIZE), bool)
        for o in ex["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            mask[y0:y1, x0:x1] = False
        assert img[mask].min() > 200
    widths = {s: [o["bbox"][2] - o["bbox"][0] for ex in examples for o in ex["objects"] if o["size"] == s]
              for s in ("small", "large")}
    assert max(widths["small"]) < min(widths["large"])


def test_objects_do_not_overlap(examples):
    for ex in examples:
        if len(ex["objects"]) < 2:
            continue
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (o["bbox"] for o in ex["objects"])
        inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
        smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
        assert inter <= 0.05 * smaller, ex["objects"]
        # Reading order: the first object is left of / above the second.
        first, second = ex["objects"]
        assert (first["position"], second["position"]) in {("left", "right"), ("top", "bottom")}


@pytest.mark.parametrize(
    "caption,expected",
    [
        ("a red circle", [("red", "circle")]),
        ("A small RED circle, on the left.", [("red", "circle")]),
        ("there is a large blue square at the top", [("blue", "square")]),
        ("a blue square to the right of a red circle", [("blue", "square"), ("red", "circle")]),
        ("two red circles", [("red", "circle")] * 2),
        ("green triangles", [("green", "triangle")] * 2),
        ("a circle", [("unknown", "circle")]),
        ("a nice bright yellow triangle!", [("yellow", "triangle")]),
        ("red and", []),
    ],
)
def test_parse_objects(caption, expected):
    assert parse_objects(caption) == expected


def test_score_caption_hand_cases():
    two_red = [{"colour": "red", "shape": "circle"}] * 2
    red_blue = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}]
    assert score_caption("a red circle and a red circle", two_red)
    assert score_caption("Two red circles.", two_red)
    assert not score_caption("a red circle", two_red)
    assert score_caption("a blue square to the right of a red circle", red_blue)  # order-free
    assert score_caption("A  Red circle, and a BLUE square!", red_blue)
    assert not score_caption("a red circle and a blue circle", red_blue)  # wrong shape
    assert not score_caption("a red circle and a green square", red_blue)  # wrong colour
    assert not score_caption("a red circle", red_blue)  # missing object
    assert not score_caption("a red circle and a blue square and a red circle", red_blue)  # extra
    assert not score_caption("a circle and a blue square", red_blue)  # colour not named
    assert not score_caption("", red_blue)
    assert score_caption("a red circle and a blue square", {"colour": ["red", "blue"], "shape": ["circle", "square"]})


def test_corrupted_reference_captions_score_false(examples):
    others = {c: next(d for d in DEFAULT_COLOURS if d != c) for c in DEFAULT_COLOURS}
    other_shape = {s: next(t for t in DEFAULT_SHAPES if t != s) for s in DEFAULT_SHAPES}
    for ex in examples:
        objs, first = ex["objects"], ex["objects"][0]
        for cap in ex["captions"]:
            wrong_colour = re.sub(rf"\b{first['colour']}\b", others[first["colour"]], cap, count=1)
            wrong_shape = re.sub(rf"\b{first['shape']}(s?)\b", rf"{other_shape[first['shape']]}\1", cap, count=1)
            assert not score_caption(wrong_colour, objs), wrong_colour
            assert not score_caption(wrong_shape, objs), wrong_shape
            assert not score_caption(cap + " and a green star", objs)
        if len(objs) == 2:
            assert not score_caption(ex["captions"][1].split(" and ")[0], objs)  # one object dropped


def test_shapes_accuracy(examples):
    caps = [ex["captions"][0] for ex in examples[:10]]
    objs = [ex["objects"] for ex in examples[:10]]
    assert shapes_accuracy(caps, objs) == 1.0
    assert shapes_accuracy(caps[:5] + ["nothing here"] * 5, objs) == 0.5
    assert shapes_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        shapes_accuracy(caps, objs[:3])


def test_cli(tmp_path, capsys):
    main(["--output_dir", str(tmp_path), "--num_train", "4", "--num_validation", "2", "--num_test", "2",
          "--image_size", "32"])
    out = capsys.readouterr().out
    assert "train" in out and "vocabulary" in out
    assert Counter(p.parent.name for p in tmp_path.rglob("*.png")) == {"train": 4, "validation": 2, "test": 2}
    assert Image.open(next(tmp_path.rglob("*.png"))).size == (32, 32)
