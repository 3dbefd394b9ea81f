"""Hostile or careless runs: arguments refused before any data is loaded, one run per output_dir,
a changed configuration reported (never silently resumed), the user's files never deleted."""

import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import TINY_TEXT, TINY_VISION, shapes_dir, tiny_argv  # noqa: F401 (fixture)

import minivlm.training.run as run_module
from minivlm.processing.adapters import clean_caption_dataset, load_caption_dataset
from minivlm.processing.shapes import generate_shapes_dataset
from minivlm.training.run import parse_args, train


# Spelled out (not imported) so that these tests also run, and fail, against the code before the fix.
LOCK_NAME = "_minivlm_run.lock"  # guards.LOCK_NAME
SHAPES_MARKER = ".minivlm_shapes.json"  # shapes.SHAPES_MARKER


# -- arguments, before any data or model -------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning_rate", "-1"], "--learning_rate must be a finite number >= 0, got -1"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number >= 0, got nan"),
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1, got 0"),
        (["--max_caption_tokens", "1"], "--max_caption_tokens must be at least 2"),
        (["--num_train_epochs", "0"], "trains nothing and would save an untrained model"),
        (["--max_bad_fraction", "-1"], r"--max_bad_fraction .* in \[0, 1\]; got -1"),
        (["--max_bad_fraction", "1.5"], r"--max_bad_fraction .* in \[0, 1\]; got 1.5"),
        (["--multi_turn_fraction", "2"], r"--multi_turn_fraction .* in \[0, 1\]; got 2"),
        (["--multi_turn_fraction", "nan"], r"--multi_turn_fraction .* in \[0, 1\]; got nan"),
        (["--prompt", "<image> describe"], "--prompt holds the image token '<image>'"),
        (["--tiny_text_config", "{bad json"], "--tiny_text_config is not valid JSON"),
        (["--tiny_vision_config", "[1, 2]"], "--tiny_vision_config must be a JSON object"),
    ],
)
def test_bad_arguments_are_refused_before_any_data_is_loaded(tmp_path, shapes_dir, monkeypatch, extra, message):  # noqa: F811
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(run_module, "load_data", no_data)
    monkeypatch.setattr(run_module, "build_model", no_data)
    with pytest.raises(ValueError, match=message):
        train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, *extra)))
    assert not (tmp_path / "out").exists()  # nothing written either


def test_preset_takes_the_equals_form_and_a_missing_value_is_a_clear_error(tmp_path):
    model_args, data_args, training_args = parse_args(["--preset=shapes-tiny", "--output_dir", str(tmp_path)])
    assert data_args.dataset == "shapes" and training_args.learning_rate == 1e-3  # the preset's defaults
    assert json.loads(model_args.tiny_vision_config)["model_type"] == "vit"
    with pytest.raises(ValueError, match="--preset needs a value: one of notebook, shapes-tiny"):
        parse_args(["--output_dir", str(tmp_path), "--preset"])
    with pytest.raises(ValueError, match="--preset needs a value"):
        parse_args(["--preset", "--output_dir", str(tmp_path)])


def test_a_broken_validation_split_does_not_stop_a_run_that_does_not_evaluate(tmp_path, shapes_dir):  # noqa: F811
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    for path in (data / "validation").glob("*.png"):
        path.write_bytes(b"broken")
    trainer = train(*parse_args(tiny_argv(tmp_path / "out", str(data), "--max_steps", "1", "--save_strategy", "no")))
    assert trainer.state.global_step == 1


def test_captions_holding_the_image_token_are_dropped_with_a_counted_reason(shapes_dir, caplog):  # noqa: F811
    dataset = load_caption_dataset(shapes_dir, "train")
    poisoned = dataset.map(lambda row, i: {"captions": ["a red <image> circle"] if i == 3 else row["captions"]},
                           with_indices=True)
    with caplog.at_level(logging.WARNING):
        cleaned = clean_caption_dataset(poisoned, max_bad_fraction=0.1)
    assert len(cleaned) == len(dataset) - 1
    assert not any("<image>" in c for captions in cleaned["captions"] for c in captions)
    assert "1 caption holds the image token" in caplog.text


# -- one run per output_dir --------------------------------------------------------------------
def write_lock(output_dir: Path, pid: int) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))


def test_a_second_run_into_a_busy_output_dir_fails_at_once_naming_the_holder(tmp_path, shapes_dir, monkeypatch):  # noqa: F811
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(out, holder.pid)
        monkeypatch.setattr(run_module, "load_data", lambda *a, **k: pytest.fail("a locked run loaded data"))
        with pytest.raises(RuntimeError, match=rf"in use by another training run \(process {holder.pid} on .*"
                                                 rf"delete .*{LOCK_NAME}"):
            train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2")))
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # the holder's lock is left alone
    assert not any(out.glob("checkpoint-*"))


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, shapes_dir, caplog):  # noqa: F811
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(out, dead.pid)
    with caplog.at_level(logging.WARNING):
        trainer = train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "1", "--save_strategy", "no")))
    assert trainer.state.global_step == 1
    assert f"stale lock {out / LOCK_NAME} of process {dead.pid}" in caplog.text
    assert not (out / LOCK_NAME).exists()  # released when the run ended


def test_the_lock_is_exclusive_and_released(tmp_path, monkeypatch):
    import os

    import minivlm.training.guards as guards

    first = guards.RunLock(tmp_path).acquire()
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    me = os.getpid()
    with monkeypatch.context() as patch:  # another live process (our parent) asks for the same folder
        patch.setattr(guards.os, "getpid", os.getppid)
        with pytest.raises(guards.RunLockedError, match=f"process {me} on "):
            guards.RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    guards.RunLock(tmp_path).acquire().release()  # free again


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun is not installed")
def test_torchrun_into_a_new_shapes_dir_generates_it_once_and_every_rank_trains(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shapes = tmp_path / "new" / "shapes"
    argv = tiny_argv(tmp_path / "out", "shapes", "--shapes_dir", str(shapes), "--shapes_num_train", "16",
                     "--shapes_num_eval", "4", "--shapes_image_size", "32", "--max_steps", "1", "--ddp_backend", "gloo",
                     "--save_strategy", "no")
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
         "-m", "minivlm.training.run", *argv],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "FileExistsError" not in proc.stderr
    assert json.loads((shapes / SHAPES_MARKER).read_text())["complete"] is True
    assert len(list((shapes / "train").glob("*.png"))) == 16
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / LOCK_NAME).exists()


# -- a changed configuration against an existing run ----------------------------------------------
def test_a_changed_configuration_is_reported_and_the_user_chooses(tmp_path, shapes_dir, caplog):  # noqa: F811
    out = tmp_path / "run"
    train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2")))
    (out / "my_notes.txt").write_text("the user's own file")
    (out / "my_folder").mkdir()

    changed = tiny_argv(out, shapes_dir, "--max_steps", "4", "--learning_rate", "1e-3")
    with pytest.raises(ValueError, match=r"learning_rate: 0.005 → 0.001; max_steps: 2 → 4.*"
                                              r"--resume_changed_run true.*--overwrite_output_dir true"):
        train(*parse_args(changed))
    assert (out / "checkpoint-2").is_dir()  # nothing touched

    with caplog.at_level(logging.WARNING):
        resumed = train(*parse_args(changed + ["--resume_changed_run", "true"]))
    assert resumed.state.global_step == 4
    resume_records = [r for r in caplog.records if r.getMessage().startswith("Resuming from")]
    assert resume_records and all(r.levelno == logging.WARNING for r in resume_records)
    assert "resuming" in caplog.text and "learning_rate: 0.005 → 0.001" in caplog.text

    caplog.clear()
    restarted = train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2", "--overwrite_output_dir", "true")))
    assert restarted.state.global_step == 2
    assert not (out / "checkpoint-4").exists()  # the old run's checkpoints were removed, then the new one trained
    assert (out / "my_notes.txt").read_text() == "the user's own file" and (out / "my_folder").is_dir()


def test_the_same_configuration_resumes_without_complaint(tmp_path, shapes_dir):  # noqa: F811
    out = tmp_path / "run"
    argv = tiny_argv(out, shapes_dir, "--max_steps", "4")
    train(*parse_args(argv))
    shutil.rmtree(out / "checkpoint-4")  # as if stopped after step 2
    (out / "model.safetensors").unlink()
    # Logging, saving and evaluation flags may change between an interrupted run and its resumption.
    again = train(*parse_args(argv + ["--logging_steps", "5", "--save_total_limit", "3"]))
    assert again.state.global_step == 4


# -- the shapes set never deletes what it did not write -----------------------------------------
def test_shapes_generation_refuses_a_folder_it_did_not_write(tmp_path):
    folder = tmp_path / "mine"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "holiday.png").write_bytes(b"my photo")
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="holds no shapes set written by MiniVLM.*left untouched"):
        generate_shapes_dataset(folder, 4, 2, 2, image_size=32)
    assert (folder / "train" / "holiday.png").read_bytes() == b"my photo"
    assert (folder / "notes.txt").read_text() == "keep me"
    # Its own set (marker present) is regenerated in place; an empty folder is fine.
    own = generate_shapes_dataset(tmp_path / "own", 4, 2, 2, image_size=32)
    generate_shapes_dataset(own, 2, 2, 0, image_size=32)
    assert len(list((own / "train").glob("*.png"))) == 2 and not (own / "test").exists()
    (tmp_path / "empty").mkdir()
    generate_shapes_dataset(tmp_path / "empty", 2, 0, 0, image_size=32)


def test_training_on_shapes_never_deletes_the_users_files(tmp_path):
    folder = tmp_path / "data"
    (folder / "validation").mkdir(parents=True)
    (folder / "validation" / "keep.txt").write_text("mine")
    argv = tiny_argv(tmp_path / "out", "shapes", "--shapes_dir", str(folder), "--shapes_num_train", "8",
                     "--shapes_image_size", "32", "--max_steps", "1")
    with pytest.raises(ValueError, match="--shapes_dir"):
        train(*parse_args(argv))
    assert (folder / "validation" / "keep.txt").read_text() == "mine"
