"""Files a run or the shapes generator finds in its folder: what the project wrote is replaced, a user's
file never is, and nothing that was left over changes the model that is saved or the data that is trained."""

import json
import logging
from pathlib import Path

import pytest
import torch
from test_training import shapes_dir, tiny_argv  # noqa: F401 (fixture)

from minivlm.training.run import parse_args, train


def _logits(folder, inputs):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        return model(**inputs).logits


# -- --overwrite_output_dir removes every file the project wrote, and nothing else ---------------------
def test_overwriting_a_lora_run_with_a_full_run_leaves_no_adapter_to_apply(tmp_path, shapes_dir):  # noqa: F811
    base, out = tmp_path / "base", tmp_path / "out"
    train(*parse_args(tiny_argv(base, shapes_dir, "--max_steps", "1", "--save_strategy", "no")))
    train(*parse_args(tiny_argv(out, shapes_dir, "--model_name_or_path", str(base), "--lora", "true",
                                "--lora_r", "4", "--max_steps", "2", "--learning_rate", "0.05", "--save_strategy", "no")))
    assert (out / "adapter_config.json").is_file()  # the LoRA run's top level holds its adapters
    (out / "notes.txt").write_text("the user's")
    (out / "examples").mkdir(exist_ok=True)
    (out / "examples" / "my_plot.png").write_bytes(b"the user's")

    full = train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "1", "--save_strategy", "no",
                                       "--overwrite_output_dir", "true")))
    names = {p.name for p in out.iterdir()}
    assert not {"adapter_config.json", "adapter_model.safetensors"} & names
    assert (out / "notes.txt").read_text() == "the user's"
    assert (out / "examples" / "my_plot.png").read_bytes() == b"the user's"
    processor = full.processing_class
    from PIL import Image

    inputs = processor(images=Image.new("RGB", (32, 32), (200, 30, 30)), text="<image>", return_tensors="pt")
    with torch.no_grad():
        expected = full.model.eval()(**inputs).logits
    torch.testing.assert_close(_logits(out, inputs), expected)  # the model trained, no adapter on top


def test_a_full_run_into_a_folder_holding_adapters_is_refused_without_overwrite(tmp_path, shapes_dir):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")
    (out / "adapter_model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"adapter_model.safetensors, adapter_config.json.*--overwrite_output_dir true"):
        train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "1")))
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_remove_project_files_takes_every_file_a_run_writes_and_no_other(tmp_path):
    from minivlm.training.guards import remove_project_files

    # What full, LoRA and merged runs write at the top of output_dir (listed from real runs), and the user's.
    ours = ["README.md", "_minivlm_run.json", "adapter_config.json", "adapter_model.safetensors",
            "chat_template.jinja", "config.json", "configuration_minivlm.py", "generation_config.json",
            "image_cache_minivlm.py", "image_loading.py", "model.safetensors", "model-00001-of-00002.safetensors",
            "model.safetensors.index.json", "modeling_minivlm.py", "pipeline_minivlm.py", "processing_minivlm.py",
            "processor_config.json", "tokenizer.json", "tokenizer_config.json", "trainer_state.json",
            "training_args.bin"]
    users = ["notes.txt", "model.py", "my_config.json", "image_loading_notes.py", "README.txt", "adapter.json"]
    for name in ours + users:
        (tmp_path / name).write_text("x")
    (tmp_path / "README.md").write_text("---\ntags:\n- minivlm\n---\n# card\n")
    (tmp_path / "adapter").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (tmp_path / "adapter" / name).write_text("x")
    (tmp_path / "adapter" / "README.md").write_text("---\nlibrary_name: peft\n---\n\n# Model Card for Model ID\n")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "example_0.png").write_text("x")
    (tmp_path / "examples" / "failure_12.png").write_text("x")
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()  # not the Trainer's name: the user's
    kept = remove_project_files(tmp_path)
    assert sorted(kept) == sorted(users + ["checkpoint-x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(users + ["checkpoint-x"])


def test_a_users_readme_in_the_adapter_or_examples_folder_is_kept(tmp_path):
    from minivlm.training.guards import remove_project_files

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter" / "README.md").write_text("# my notes on these adapters\n")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "example_0.png").write_text("x")
    (tmp_path / "examples" / "example_a.png").write_text("mine")
    assert sorted(remove_project_files(tmp_path)) == ["adapter", "examples"]
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["README.md"]
    assert [p.name for p in (tmp_path / "examples").iterdir()] == ["example_a.png"]


# -- the model card never replaces the user's README ---------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_readme_in_output_dir_stops_the_run_before_anything_changes(tmp_path, shapes_dir, overwrite):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    mine = "# My experiments\n\nNotes about minivlm runs.\n"  # mentions the project, yet is not its card
    (out / "README.md").write_text(mine)
    (out / "config.json").write_text("{}")
    extra = ["--overwrite_output_dir", "true"] if overwrite else []
    with pytest.raises(FileExistsError, match=r"README.md is not a model card MiniVLM wrote.*Move it"):
        train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "1", *extra)))
    assert (out / "README.md").read_text() == mine
    assert (out / "config.json").read_text() == "{}"  # refused before --overwrite_output_dir removed anything


def test_the_projects_own_model_card_is_replaced_by_the_next_run(tmp_path, shapes_dir):  # noqa: F811
    out = tmp_path / "out"
    train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "1", "--save_strategy", "no")))
    first = (out / "README.md").read_text()
    assert "minivlm" in first
    train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2", "--save_strategy", "no",
                                "--overwrite_output_dir", "true")))
    assert (out / "README.md").read_text() != first  # the new run's card (2 steps)


@pytest.mark.parametrize("text", ["---\nkey: [unclosed\n---\n# mine\n", "---\n- a\n---\n", "---\ntags: minivlm\n---\n",
                                  "---\nlibrary_name: peft\n---\n# my adapters\n", ""])
def test_only_a_card_the_project_writes_counts_as_its_own(tmp_path, text):
    from minivlm.training.model_card import is_project_card

    (tmp_path / "README.md").write_text(text)
    assert is_project_card(tmp_path / "README.md") is False


def test_write_model_card_keeps_a_readme_it_did_not_write(tmp_path, caplog):
    from minivlm.training.model_card import write_model_card

    (tmp_path / "README.md").write_text("mine")
    with caplog.at_level(logging.WARNING):
        write_model_card(tmp_path, dataset="shapes")
    assert (tmp_path / "README.md").read_text() == "mine"
    assert "not a model card MiniVLM wrote" in caplog.text


# -- the shapes set: only the generator's files are replaced, and the set trained is the one recorded ---
def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_regenerating_the_shapes_set_keeps_the_users_files_in_its_split_folders(tmp_path):
    from minivlm.processing.shapes import SHAPES_MARKER, ensure_shapes_dataset, generate_shapes_dataset

    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=4, num_validation=2, num_test=2, image_size=32)
    (folder / "train" / "myphoto.jpg").write_bytes(b"the user's photo")
    (folder / "train" / "train_7.png").write_bytes(b"not the generator's name")  # 5 digits are
    (folder / "test" / "keep.txt").write_text("the user's notes")
    # Questions of an older version: the set is written again.
    record = json.loads((folder / SHAPES_MARKER).read_text())
    (folder / SHAPES_MARKER).write_text(json.dumps({**record, "questions_version": 1}))
    ensure_shapes_dataset(folder, num_train=2, num_validation=2, num_test=0, image_size=32)
    assert (folder / "train" / "myphoto.jpg").read_bytes() == b"the user's photo"
    assert (folder / "train" / "train_7.png").read_bytes() == b"not the generator's name"
    assert (folder / "test" / "keep.txt").read_text() == "the user's notes"
    assert _pngs(folder / "train") == ["train_00000.png", "train_00001.png", "train_7.png"]  # 2 and 3 were stale
    assert not (folder / "test" / "metadata.jsonl").exists() and _pngs(folder / "test") == []
    assert not (folder / "validation" / "keep.txt").exists() and len(_pngs(folder / "validation")) == 2


def test_an_interrupted_generation_is_finished_without_touching_the_users_files(tmp_path):
    from minivlm.processing.shapes import SHAPES_MARKER, ensure_shapes_dataset, generate_shapes_dataset

    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=3, num_validation=0, num_test=0, image_size=32)
    record = json.loads((folder / SHAPES_MARKER).read_text())
    (folder / SHAPES_MARKER).write_text(json.dumps({**record, "complete": False}))  # as if killed mid-way
    (folder / "train" / "train_00001.png").unlink()
    (folder / "train" / "notes.md").write_text("mine")
    ensure_shapes_dataset(folder, num_train=3, num_validation=0, num_test=0, image_size=32)
    assert _pngs(folder / "train") == ["train_00000.png", "train_00001.png", "train_00002.png"]
    assert (folder / "train" / "notes.md").read_text() == "mine"
    assert json.loads((folder / SHAPES_MARKER).read_text())["complete"] is True


def test_asking_for_more_shapes_images_than_the_set_holds_trains_on_that_many(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    common = ["--shapes_dir", str(data), "--shapes_image_size", "32", "--shapes_num_eval", "2", "--max_steps", "1",
              "--save_strategy", "no", "--eval_strategy", "no"]
    train(*parse_args(tiny_argv(out, "shapes", "--shapes_num_train", "8", *common)))
    assert len(_pngs(data / "train")) == 8
    trainer = train(*parse_args(tiny_argv(out, "shapes", "--shapes_num_train", "12", "--overwrite_output_dir", "true",
                                          *common)))
    assert len(trainer.train_dataset) == 12 and len(_pngs(data / "train")) == 12
    assert json.loads((out / "_minivlm_run.json").read_text())["shapes_num_train"] == 12
    # Fewer again: the 4 images past the eighth are the generator's and go.
    trainer = train(*parse_args(tiny_argv(tmp_path / "out2", "shapes", "--shapes_num_train", "8", *common)))
    assert len(trainer.train_dataset) == 8 and len(_pngs(data / "train")) == 8


def test_a_set_from_before_the_marker_with_other_counts_is_refused_not_trained(tmp_path):
    from minivlm.processing.shapes import SHAPES_MARKER, ShapesFolderError, ensure_shapes_dataset, generate_shapes_dataset

    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=8, num_validation=2, num_test=2, image_size=32)
    (folder / SHAPES_MARKER).unlink()  # written by a version that left no marker
    ensure_shapes_dataset(folder, num_train=8, num_validation=2, num_test=2, image_size=32)  # the counts match: used
    with pytest.raises(ShapesFolderError, match=r"8 train image\(s\), not the 12 asked for.*--shapes_num_train"):
        ensure_shapes_dataset(folder, num_train=12, num_validation=2, num_test=2, image_size=32)
    assert len(_pngs(folder / "train")) == 8


def test_a_split_folder_that_is_a_link_is_refused_and_nothing_is_written_through_it(tmp_path):
    import os
    import shutil

    from minivlm.processing.shapes import ShapesFolderError, ensure_shapes_dataset, generate_shapes_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "metadata.jsonl").write_text("the user's\n")
    (photos / "train_00000.png").write_bytes(b"the user's")
    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=2, num_validation=0, num_test=0, image_size=32)
    shutil.rmtree(folder / "train")
    os.symlink(photos, folder / "train")
    with pytest.raises(ShapesFolderError, match=r"train is a link or a file"):
        ensure_shapes_dataset(folder, num_train=3, num_validation=0, num_test=0, image_size=32)
    assert sorted(p.name for p in photos.iterdir()) == ["metadata.jsonl", "train_00000.png"]
    assert (photos / "train_00000.png").read_bytes() == b"the user's"


def test_a_set_written_under_the_former_package_name_is_ours_and_reused_untouched(tmp_path):
    from minivlm.processing.shapes import SHAPES_MARKER, ensure_shapes_dataset, generate_shapes_dataset

    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=4, num_validation=2, num_test=2, image_size=32)
    marker = folder / SHAPES_MARKER
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "generator": "minivlm.data.shapes"}))  # the previous release's record
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    ensure_shapes_dataset(folder, num_train=4, num_validation=2, num_test=2, image_size=32)
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps  # neither refused nor rewritten
    # Other arguments: it is ours, so it is written again (not refused as a stranger's folder).
    ensure_shapes_dataset(folder, num_train=6, num_validation=2, num_test=2, image_size=32)
    assert len(_pngs(folder / "train")) == 6
    assert json.loads(marker.read_text())["generator"] == "minivlm.processing.shapes"
