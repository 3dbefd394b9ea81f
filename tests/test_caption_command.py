"""`minivlm-caption`: a folder or glob of images captioned (or questioned) in batches to JSONL, bad files skipped."""

import json
import logging

import pytest
from conftest import make_images
from transformers import AutoModel, AutoProcessor, pipeline

from minivlm.scripts.caption import find_files, main


@pytest.fixture
def photos(tmp_path):
    """Five images of assorted sizes, a corrupt PNG, a text file and a hidden file, one image in a subfolder."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    images = make_images(5)
    for i, image in enumerate(images[:4]):
        image.save(folder / f"img{i}.png")
    images[4].save(folder / "more" / "img4.jpg")
    (folder / "broken.png").write_bytes(images[0].tobytes()[:100])  # not a PNG at all
    png = (folder / "img0.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])  # a real PNG cut in half
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    return folder


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_is_captioned_in_batches_equal_to_the_pipeline(photos, tmp_path, saved_model_dir, caplog):
    out = tmp_path / "captions.jsonl"
    with caplog.at_level(logging.WARNING, logger="minivlm.caption"):
        main([str(photos), "--model", str(saved_model_dir), "--output", str(out), "--batch_size", "2",
              "--max_new_tokens", "5"])
    rows = read_jsonl(out)
    good = sorted([*(photos / f"img{i}.png" for i in range(4)), photos / "more" / "img4.jpg"])
    assert [row["file"] for row in rows] == [str(p) for p in good]  # every image, in file order; bad ones skipped
    captioner = pipeline("image-to-text", model=str(saved_model_dir), trust_remote_code=True)
    assert [row["caption"] for row in rows] == [captioner(str(p), max_new_tokens=5)[0]["generated_text"] for p in good]
    skipped = caplog.text
    assert "Skipped 3 file(s)" in skipped
    assert all(name in skipped for name in ("broken.png", "truncated.png", "notes.txt")) and ".DS_Store" not in skipped


def test_a_question_is_answered_for_each_image_of_a_glob(photos, tmp_path, saved_model_dir):
    out = tmp_path / "answers.jsonl"
    main([str(photos / "img*.png"), "--model", str(saved_model_dir), "--output", str(out), "--question",
          "the red circle", "--max_new_tokens", "4", "--batch_size", "3"])
    rows = read_jsonl(out)
    model = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(saved_model_dir, trust_remote_code=True)
    assert [row["file"] for row in rows] == [str(photos / f"img{i}.png") for i in range(4)]
    for row in rows:
        assert row["question"] == "the red circle"
        assert row["answer"] == model.query(row["file"], "the red circle", processor=processor, max_new_tokens=4)


def test_an_existing_output_is_kept_unless_overwrite(photos, tmp_path, saved_model_dir):
    out = tmp_path / "captions.jsonl"
    out.write_text("precious\n")
    with pytest.raises(ValueError, match="captions.jsonl exists; pass --overwrite"):
        main([str(photos), "--model", "no/such-model-is-loaded", "--output", str(out)])  # refused before loading
    assert out.read_text() == "precious\n"
    with pytest.raises(ValueError, match="is a folder; name a file"):
        main([str(photos), "--model", str(saved_model_dir), "--output", str(tmp_path)])
    main([str(photos / "img0.png"), "--model", str(saved_model_dir), "--output", str(out), "--overwrite", "true",
          "--max_new_tokens", "2"])
    assert [row["file"] for row in read_jsonl(out)] == [str(photos / "img0.png")]


def test_inputs_that_name_no_file_or_no_image_are_refused(photos, tmp_path, saved_model_dir):
    with pytest.raises(ValueError, match="no files in or matching 'nowhere/\\*.jpg'"):
        find_files([str(photos), "nowhere/*.jpg"])
    out = photos / "captions.jsonl"  # written inside the captioned folder: never read as an input
    assert out not in find_files([str(photos)], skip=out)
    with pytest.raises(SystemExit) as stopped:  # nothing readable: status 1
        main([str(photos / "notes.txt"), "--model", str(saved_model_dir), "--output", str(tmp_path / "o.jsonl")])
    assert stopped.value.code == 1
    with pytest.raises(SystemExit):
        main(["--model", str(saved_model_dir)])  # no folder or glob named
