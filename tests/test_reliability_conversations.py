"""Hostile conversation data (LLaVA JSON, VQA, the_cauldron): every unusable row is dropped before the
first training step with one counted warning, or the run stops there naming rows; image paths stay inside
the image folder; image sizes are checked from the header at exactly the documented limit."""

import json
import logging
import os
import struct
import zlib

import datasets
import numpy as np
import pytest
from PIL import Image
from test_training import tiny_argv

from minivlm.processing.adapters import BadDataError
from minivlm.processing.conversations import clean_conversations, from_cauldron, from_llava, from_vqa
from minivlm.processing.loading import load_training_data
from minivlm.training.run import parse_args, train

LIMIT = 8192 * 8192  # the pixel limit the README states (67,108,864)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG signature and IHDR for `width` x `height` (1-bit grey), no pixel data: PIL reads its size
    from the header, and any decode would fail."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def save_image(path, seed=0, size=16):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def llava_row(row_id, image, question="<image>\nwhat is it?", answer="a square"):
    return {"id": row_id, "image": image, "conversations": [{"from": "human", "value": question},
                                                          {"from": "gpt", "value": answer}]}


@pytest.fixture
def hostile_llava(tmp_path):
    """8 rows: 4 good (one by an absolute path inside the folder, one through a link that stays inside),
    then a missing file, a `../` escape, an absolute path outside, and a link leading outside."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        save_image(folder / f"good{i}.png", i)
    save_image(tmp_path / "outside.png", 9)
    os.symlink(folder / "good0.png", folder / "inner_link.png")
    os.symlink(tmp_path / "outside.png", folder / "outer_link.png")
    rows = [llava_row("good0", "good0.png"), llava_row("good1", "good1.png"),
            llava_row("absolute_inside", str(folder / "good1.png")), llava_row("inner_link", "inner_link.png"),
            llava_row("missing", "nowhere.png"), llava_row("escape", "../../../../etc/passwd"),
            llava_row("absolute_outside", str(tmp_path / "outside.png")), llava_row("outer_link", "outer_link.png")]
    path = tmp_path / "data" / "llava.json"
    path.parent.mkdir()
    path.write_text(json.dumps(rows))
    return path, folder


def test_llava_rows_outside_the_image_folder_or_missing_are_dropped_before_training(hostile_llava, caplog):
    path, folder = hostile_llava
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.conversations"):
        train = load_training_data(str(path), dataset_format="llava", image_folder=str(folder), max_bad_fraction=0.5,
                                   eval_split=None, seed=0).train
    assert sorted(train["id"]) == ["absolute_inside", "good0", "good1", "inner_link"]
    assert "dropped 4 of 8 conversations (3 image path outside the image folder, 1 missing file)" in caplog.text


def test_too_many_bad_llava_rows_stop_before_training_naming_them(hostile_llava):
    path, folder = hostile_llava
    with pytest.raises(BadDataError, match=r"4 of 8 conversations \(50.0%\).*max_bad_fraction=0.05.*"
                                           r"id 'missing': missing file; id 'escape': image path outside"):
        load_training_data(str(path), dataset_format="llava", image_folder=str(folder), eval_split=None, seed=0)


def test_the_json_folder_is_the_image_folder_when_none_is_given(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "secret").mkdir()
    save_image(tmp_path / "secret" / "b.png")
    json_dir = tmp_path / "set"
    json_dir.mkdir()
    save_image(json_dir / "c.png")
    rows = [llava_row("in", "c.png"), llava_row("up", "../a.png"), llava_row("side", "../secret/b.png")]
    (json_dir / "llava.json").write_text(json.dumps(rows))
    train = load_training_data(str(json_dir / "llava.json"), dataset_format="llava", max_bad_fraction=1.0,
                               eval_split=None, seed=0).train
    assert train["id"] == ["in"]


def test_a_llava_run_with_bad_rows_trains_and_resumes_past_them(hostile_llava, tmp_path):
    path, folder = hostile_llava
    out = tmp_path / "out"
    argv = tiny_argv(out, str(path), "--dataset_format", "llava", "--image_folder", str(folder),
                     "--max_bad_fraction", "0.5", "--max_steps", "2", "--per_device_train_batch_size", "2",
                     "--save_steps", "1", "--tiny_vision_config",
                     json.dumps({"model_type": "vit", "image_size": 16, "patch_size": 8, "hidden_size": 32,
                                 "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}))
    first = train(*parse_args(argv))  # every kept row is seen: 2 steps of 2 rows
    assert first.state.global_step == 2 and len(first.train_dataset) == 4
    again = train(*parse_args(argv + ["--max_steps", "4", "--resume_changed_run", "true"]))  # resumed at step 2
    assert again.state.global_step == 4


# -- the image token typed into a question or an answer -------------------------------------------------
def test_the_image_token_in_a_vqa_question_or_a_cauldron_turn_is_caught_while_cleaning(caplog):
    image = Image.new("RGB", (8, 8))
    vqa = from_vqa(datasets.Dataset.from_dict({
        "image": [image] * 4, "id": ["q0", "q1", "q2", "q3"],
        "question": ["what colour?", "what is <image> here?", "how many?", "shape?"],
        "answer": ["red", "two", "3 <image>", "round"]}))
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.conversations"):
        kept = clean_conversations(vqa, max_bad_fraction=0.5)
    assert kept["id"] == ["q0", "q3"]
    assert "dropped 2 of 4 conversations (2 text holds the image token)" in caplog.text
    cauldron = from_cauldron(datasets.Dataset.from_dict({
        "id": ["c0", "c1"], "images": [[image], [image]],
        "texts": [[{"user": "describe", "assistant": "dark"}],
                  [{"user": "fine", "assistant": "ok"}, {"user": "and <image>?", "assistant": "no"}]]}))
    with pytest.raises(BadDataError, match=r"id 'c1': text holds the image token"):
        clean_conversations(cauldron)


# -- image sizes from the header, at exactly the limit ---------------------------------------------------
def test_conversation_images_are_checked_from_the_header_at_exactly_the_pixel_limit(tmp_path, caplog):
    assert 5 * 13421773 == LIMIT + 1
    sizes = {"at_limit": (8192, 8192), "one_over": (5, 13421773), "100_mp": (10000, 10000),
             "201_mp": (14177, 14177), "small": (16, 16)}
    paths = []
    for name, (width, height) in sizes.items():
        (tmp_path / f"{name}.png").write_bytes(header_only_png(width, height))
        paths.append(str(tmp_path / f"{name}.png"))
    vqa = from_vqa(datasets.Dataset.from_dict({"image": paths, "id": list(sizes), "question": ["q"] * 5,
                                               "answer": ["a"] * 5}).cast_column("image", datasets.Image()))
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.conversations"):
        kept = clean_conversations(vqa, max_bad_fraction=1.0)
    assert kept["id"] == ["at_limit", "small"]  # read from the header only: none of them could be decoded
    assert "dropped 3 of 5 conversations (3 image too large)" in caplog.text


def test_the_caption_path_keeps_an_image_of_exactly_the_limit_and_drops_one_more_pixel(tmp_path):
    from minivlm.processing.adapters import clean_caption_dataset

    Image.new("1", (8192, 8192)).save(tmp_path / "at_limit.png")  # decodable: the caption path decodes in full
    (tmp_path / "one_over.png").write_bytes(header_only_png(5, 13421773))
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "at_limit.png"), str(tmp_path / "one_over.png")],
                                     "captions": [["a"], ["b"]], "id": ["at_limit", "one_over"]})
    kept = clean_caption_dataset(ds.cast_column("image", datasets.Image()), max_bad_fraction=0.5)
    assert kept["id"] == ["at_limit"]


def test_load_image_allows_exactly_the_pixel_limit(tmp_path):
    from minivlm.image_loading import ImageLoadError, check_pixels

    (tmp_path / "at.png").write_bytes(header_only_png(8192, 8192))
    (tmp_path / "over.png").write_bytes(header_only_png(5, 13421773))
    assert check_pixels(Image.open(tmp_path / "at.png")).size == (8192, 8192)
    with pytest.raises(ImageLoadError, match="67,108,865 pixels, over the 67,108,864-pixel limit"):
        check_pixels(Image.open(tmp_path / "over.png"))
    assert check_pixels(Image.open(tmp_path / "at.png"), max_pixels=LIMIT).size == (8192, 8192)
    with pytest.raises(ImageLoadError):
        check_pixels(Image.open(tmp_path / "at.png"), max_pixels=LIMIT - 1)


def test_odd_llava_paths_are_dropped_not_crashed_on(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    save_image(folder / "ok.png")
    os.symlink("/dev/zero", folder / "zero.png")
    rows = [llava_row("ok", "ok.png"), llava_row("nul", "ok\x00.png"), llava_row("number", 5),
            llava_row("device", "zero.png"), llava_row("folder", "sub"), llava_row("inside", "sub/../ok.png")]
    kept = clean_conversations(from_llava(rows, folder), max_bad_fraction=1.0, image_folder=folder)
    assert kept["id"] == ["ok", "inside"]
