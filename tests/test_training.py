"""Training on the HF Trainer: presets, freezing, interrupt and exact resume, half-written
checkpoints, bad data, and the saved output."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_VISION
from transformers import TrainerCallback

from minivlm import MiniVLMForConditionalGeneration
from minivlm.processing.adapters import BadDataError
from minivlm.training.presets import PRESETS
from minivlm.training.run import apply_freezing, parse_args, train
from minivlm.training.trainer import EXIT_STOPPED, checkpoint_problem, last_complete_checkpoint


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from minivlm.processing.shapes import generate_shapes_dataset

    return str(generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=24, num_validation=8,
                                       num_test=8, image_size=32, seed=0))


def tiny_argv(output_dir, shapes_dir, *extra):
    return [
        "--preset", "shapes-tiny", "--dataset", shapes_dir, "--output_dir", str(output_dir),
        "--tiny_vision_config", json.dumps(TINY_VISION), "--tiny_text_config", json.dumps(TINY_TEXT),
        "--pixel_shuffle_factor", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "10",
        "--learning_rate", "5e-3", "--dataloader_num_workers", "0", *extra,
    ]


def weights(model_or_folder) -> dict[str, torch.Tensor]:
    model = model_or_folder
    if not isinstance(model, torch.nn.Module):
        model = MiniVLMForConditionalGeneration.from_pretrained(model_or_folder)
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert different == []


# -- arguments ------------------------------------------------------------------------------
def test_preset_fills_defaults_and_flags_win(tmp_path):
    model_args, data_args, training_args = parse_args(["--preset", "notebook", "--output_dir", str(tmp_path)])
    assert model_args.vision_model == "google/vit-large-patch16-224"
    assert model_args.language_model == "HuggingFaceTB/SmolLM-360M"
    assert (data_args.dataset, data_args.max_train_samples) == ("jxie/flickr8k", 2000)
    assert (training_args.num_train_epochs, training_args.learning_rate) == (6, 2e-4)
    assert training_args.per_device_train_batch_size == 4 and model_args.freeze == "vision"
    assert training_args.remove_unused_columns is False
    _, _, overridden = parse_args(["--preset", "notebook", "--learning_rate", "1e-5", "--output_dir", str(tmp_path)])
    assert overridden.learning_rate == 1e-5


def test_arguments_from_a_yaml_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(f"preset: shapes-tiny\noutput_dir: {tmp_path / 'out'}\nnum_train_epochs: 2\nfreeze: vision\n")
    model_args, data_args, training_args = parse_args([str(path)])
    assert training_args.num_train_epochs == 2 and model_args.freeze == "vision"
    assert data_args.dataset == "shapes" and json.loads(model_args.tiny_vision_config)["model_type"] == "vit"


def test_config_file_and_flags_together_flags_win(tmp_path):
    # defaults < preset < file < flags
    path = tmp_path / "config.yaml"
    path.write_text("preset: shapes-tiny\nlearning_rate: 3e-3\nnum_train_epochs: 2\nprompt: a photo of\n")
    model_args, data_args, training_args = parse_args([str(path), "--learning_rate", "1e-4", "--output_dir", str(tmp_path)])
    assert training_args.learning_rate == 1e-4  # the flag over the file
    assert training_args.num_train_epochs == 2 and data_args.prompt == "a photo of"  # the file over the preset
    assert training_args.per_device_train_batch_size == 32 and model_args.pixel_shuffle_factor == 2  # the preset
    assert data_args.max_eval_samples == 200 and training_args.remove_unused_columns is False  # defaults
    _, _, from_file = parse_args([str(path), "--output_dir", str(tmp_path)])
    assert from_file.learning_rate == 3e-3  # YAML reads 3e-3 as a string: converted like a flag

    # --preset=name is the same flag as --preset name, and a preset flag wins over the file's.
    (tmp_path / "preset.json").write_text(json.dumps({"preset": "shapes-tiny", "freeze": "vision"}))
    model_args, data_args, training_args = parse_args([str(tmp_path / "preset.json"), "--preset=notebook"])
    assert (model_args.preset, data_args.dataset, training_args.learning_rate) == ("notebook", "jxie/flickr8k", 2e-4)
    assert model_args.freeze == "vision" and model_args.tiny_text_config is None
    model_args, _, training_args = parse_args(["--preset=shapes-tiny", "--output_dir", str(tmp_path)])
    assert training_args.num_train_epochs == PRESETS["shapes-tiny"]["num_train_epochs"] != 3.0  # the preset, not the default
    assert json.loads(model_args.tiny_text_config)["model_type"] == "llama"

    path.write_text("preset: shapes-tiny\nlearning_rat: 1e-3\n")
    with pytest.raises(ValueError, match=r"unknown arguments \['learning_rat'\]"):
        parse_args([str(path)])


def test_unknown_preset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'flickr'; choose one of notebook, shapes-tiny"):
        parse_args(["--preset", "flickr", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize(
    "freeze, trains",
    [("vision", {"multi_modal_projector", "language_model"}), ("projector-only", {"multi_modal_projector"}),
     ("none", {"vision_tower", "multi_modal_projector", "language_model"})],
)
def test_freezing_choices(model, freeze, trains):
    apply_freezing(model, freeze)
    for name, parameter in model.named_parameters():
        part = "language_model" if name.startswith("lm_head.") else name.removeprefix("model.").split(".")[0]
        assert parameter.requires_grad == (part in trains), name


# -- a run, interrupted and resumed ----------------------------------------------------------------
class InterruptAt(TrainerCallback):
    """Sends this process a real signal during a given step, as Ctrl+C / kill would."""

    def __init__(self, step, signum=signal.SIGINT):
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            os.kill(os.getpid(), self.signum)


def test_interrupted_and_resumed_run_ends_bit_exact(tmp_path, shapes_dir):
    straight = tmp_path / "straight"
    trainer = train(*parse_args(tiny_argv(straight, shapes_dir, "--max_steps", "8")))
    assert trainer.state.global_step == 8
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))

    resumed = tmp_path / "resumed"
    argv = tiny_argv(resumed, shapes_dir, "--max_steps", "8")
    interrupted = train(*parse_args(argv), callbacks=[InterruptAt(3, signal.SIGTERM)])
    assert interrupted.state.global_step == 3
    assert last_complete_checkpoint(resumed) == str(resumed / "checkpoint-3")  # saved on the signal
    assert not (resumed / "model.safetensors").exists()  # an interrupted run is not a finished model
    # The vision encoder trains in this preset: resuming must restore it too, not re-initialise it.
    finished = train(*parse_args(argv))
    assert finished.state.global_step == 8
    assert_same_weights(weights(straight), weights(resumed))
    assert_same_weights(weights(finished.model), weights(straight))


def test_resume_restores_every_parameter(tmp_path, shapes_dir):
    out = tmp_path / "run"
    trainer = train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2")))
    checkpoint = out / "checkpoint-2"
    saved = weights(checkpoint)
    torch.manual_seed(123)
    fresh = MiniVLMForConditionalGeneration(trainer.model.config)
    trainer.model = fresh
    trainer._load_from_checkpoint(str(checkpoint))
    assert_same_weights(weights(fresh), saved)


def four_steps_with_two_checkpoints(tmp_path, shapes_dir):
    """A finished 4-step run saved at steps 2 and 4: its folder, argv and final weights."""
    out = tmp_path / "run"
    argv = tiny_argv(out, shapes_dir, "--max_steps", "4")
    train(*parse_args(argv))
    return out, argv, weights(out)


def test_half_written_checkpoint_is_never_resumed_from(tmp_path, shapes_dir, caplog):
    out, argv, expected = four_steps_with_two_checkpoints(tmp_path, shapes_dir)
    # A crash while saving checkpoint-4: its weights are cut short and trainer_state.json never written.
    broken = out / "checkpoint-4"
    (broken / "trainer_state.json").unlink()
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    assert "Skipping incomplete checkpoint" in caplog.text and "trainer_state.json is missing" in caplog.text
    (broken / "trainer_state.json").write_text("{}")
    assert "model.safetensors is unreadable" in checkpoint_problem(broken)

    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-4: model.safetensors is unreadable"):
        train(*parse_args(argv + ["--resume_from_checkpoint", str(broken)]))
    shutil.rmtree(broken)
    (out / "model.safetensors").unlink()
    resumed = train(*parse_args(argv))  # picks checkpoint-2 and finishes the run
    assert resumed.state.global_step == 4
    assert_same_weights(weights(resumed.model), expected)


def test_sigterm_saves_a_checkpoint_and_exits_with_the_stopped_status(tmp_path, shapes_dir):
    out = tmp_path / "run"
    argv = tiny_argv(out, shapes_dir, "--max_steps", "100000", "--save_steps", "100000")
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "minivlm.training.run", *argv], stdout=handle, stderr=subprocess.STDOUT)
        deadline = time.time() + 240
        while "'loss'" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        # A distinct status (EXIT_STOPPED = 75), not 0: a scheduler can tell "requeue me" from "done".
        assert proc.wait(timeout=120) == EXIT_STOPPED, log.read_text()[-3000:]
    text = log.read_text()
    assert "Received SIGTERM" in text and "run the same command to resume" in text
    checkpoint = last_complete_checkpoint(out)
    assert checkpoint is not None and int(checkpoint.rsplit("-", 1)[1]) >= 1


# -- data problems stop before training ---------------------------------------------------------------
def test_too_much_bad_data_stops_before_training(tmp_path, shapes_dir):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    images = sorted((data / "train").glob("*.png"))
    for path in images[: len(images) // 2]:
        path.write_bytes(b"not a png")
    with pytest.raises(BadDataError, match="max_bad_fraction"):
        train(*parse_args(tiny_argv(tmp_path / "out", str(data), "--max_steps", "2")))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("checkpoint-*"))


def test_a_few_bad_images_are_skipped(tmp_path, shapes_dir, caplog):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (sorted((data / "train").glob("*.png"))[0]).write_bytes(b"")
    with caplog.at_level("WARNING"):
        trainer = train(*parse_args(tiny_argv(tmp_path / "out", str(data), "--max_steps", "2",
                                              "--max_bad_fraction", "0.1")))
    assert len(trainer.train_dataset) == 23
    assert "empty file" in caplog.text


def test_trained_folder_loads_with_remote_code_and_captions(tmp_path, shapes_dir):
    from transformers import AutoModel, AutoProcessor, pipeline

    out = tmp_path / "run"
    train(*parse_args(tiny_argv(out, shapes_dir, "--num_train_epochs", "1")))
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "modeling_minivlm.py", "processing_minivlm.py", "tokenizer.json"} <= names
    model = AutoModel.from_pretrained(out, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert processor.image_seq_length == model.config.image_seq_length == 16  # CLS dropped in this preset
    captioner = pipeline("image-to-text", model=str(out), trust_remote_code=True)
    first_test_image = sorted(Path(shapes_dir, "test").glob("*.png"))[0]
    caption = captioner(str(first_test_image), max_new_tokens=4)[0]["generated_text"]
    inputs = processor(images=str(first_test_image))
    ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert caption == processor.post_process_image_text_to_text(ids[:, inputs["input_ids"].shape[1]:])[0]


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory, shapes_dir):
    """A tiny captioner trained for two steps and saved: a trained encoder to freeze."""
    out = tmp_path_factory.mktemp("tiny_captioner")
    train(*parse_args(tiny_argv(out, shapes_dir, "--max_steps", "2", "--save_strategy", "no")))
    return out


def test_freezing_a_fresh_tiny_encoder_is_refused_before_any_work(tmp_path, shapes_dir):
    argv = tiny_argv(tmp_path / "out", shapes_dir, "--freeze", "vision", "--max_steps", "1")
    with pytest.raises(ValueError, match=r"--freeze vision would keep the vision encoder .* random initialisation.*"
                                         r"--model_name_or_path.*--freeze none"):
        train(*parse_args(argv))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ValueError, match="--freeze projector-only would keep"):
        train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, "--freeze", "projector-only", "--max_steps", "1")))


def test_training_from_cached_vision_features_matches_pixels(tmp_path, shapes_dir, tiny_captioner):
    common = ("--max_steps", "3", "--freeze", "vision", "--save_strategy", "no", "--model_name_or_path", str(tiny_captioner))
    from_pixels = train(*parse_args(tiny_argv(tmp_path / "pixels", shapes_dir, *common)))
    cached = train(*parse_args(tiny_argv(tmp_path / "cached", shapes_dir, *common, "--cache_vision_features", "true")))
    assert "vision_features" in cached.train_dataset.column_names
    pixel_losses = [e["loss"] for e in from_pixels.state.log_history if "loss" in e]
    cached_losses = [e["loss"] for e in cached.state.log_history if "loss" in e]
    assert cached_losses == pytest.approx(pixel_losses, rel=1e-4)
    a, b = weights(from_pixels.model), weights(cached.model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)


def test_group_by_length_reads_lengths_from_the_captions_and_resumes_bit_exact(tmp_path, shapes_dir):
    from transformers.trainer_pt_utils import LengthGroupedSampler

    grouping = ("--max_steps", "6", "--train_sampling_strategy", "group_by_length")
    straight = train(*parse_args(tiny_argv(tmp_path / "straight", shapes_dir, *grouping)))
    dataset = straight.train_dataset
    assert isinstance(straight._get_train_sampler(), LengthGroupedSampler)
    assert dataset["length"] == [straight.data_collator.sequence_length(c) for c in dataset["captions"]]

    argv = tiny_argv(tmp_path / "resumed", shapes_dir, *grouping)
    interrupted = train(*parse_args(argv), callbacks=[InterruptAt(3)])
    assert interrupted.state.global_step == 3
    finished = train(*parse_args(argv))
    assert finished.state.global_step == 6
    assert_same_weights(weights(finished.model), weights(straight.model))


def test_bf16_flag_autocasts_on_cpu_and_keeps_fp32_weights(tmp_path, shapes_dir):
    common = ("--max_steps", "3", "--save_strategy", "no")
    fp32 = train(*parse_args(tiny_argv(tmp_path / "fp32", shapes_dir, *common)))
    bf16 = train(*parse_args(tiny_argv(tmp_path / "bf16", shapes_dir, *common, "--bf16", "true")))
    fp32_losses = [e["loss"] for e in fp32.state.log_history if "loss" in e]
    bf16_losses = [e["loss"] for e in bf16.state.log_history if "loss" in e]
    assert all(torch.isfinite(torch.tensor(bf16_losses)))
    assert bf16_losses != fp32_losses  # the flag took effect: bf16 matmuls round differently
    assert bf16_losses == pytest.approx(fp32_losses, rel=0.05)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}  # mixed precision, fp32 master weights


def test_caption_evaluation_during_training_reports_shapes_accuracy(tmp_path):
    # "shapes" is resolved (generated here) by the data entry point, and the evaluation split
    # carries the objects: the caption callback scores shapes accuracy as well as CIDEr.
    argv = tiny_argv(
        tmp_path / "out", "shapes", "--shapes_dir", str(tmp_path / "shapes"), "--shapes_num_train", "8",
        "--shapes_num_eval", "4", "--shapes_image_size", "32", "--max_steps", "2", "--save_strategy", "no",
        "--eval_strategy", "steps", "--eval_steps", "2", "--caption_eval_samples", "4",
    )
    trainer = train(*parse_args(argv))
    assert (tmp_path / "shapes" / "validation" / "metadata.jsonl").is_file()
    logged = [e for e in trainer.state.log_history if "eval_cider" in e]
    assert [e["step"] for e in logged] == [2]
    assert 0.0 <= logged[0]["eval_shapes_accuracy"] <= 1.0


def test_resume_late_in_the_second_epoch_ends_bit_exact(tmp_path, shapes_dir):
    # 24 images at batch 4: 6 steps an epoch. Stopped at step 9, state.epoch is 1.5 on resume: the
    # collator must go on drawing the second epoch's captions (epoch index 1, not 1.5 rounded to 2).
    common = ("--max_steps", "12", "--save_steps", "100")
    straight = train(*parse_args(tiny_argv(tmp_path / "straight", shapes_dir, *common)))
    argv = tiny_argv(tmp_path / "resumed", shapes_dir, *common)
    interrupted = train(*parse_args(argv), callbacks=[InterruptAt(9)])
    assert (interrupted.state.global_step, interrupted.state.epoch) == (9, 1.5)
    finished = train(*parse_args(argv))
    assert finished.state.global_step == 12 and finished.data_collator.epoch == 1
    assert_same_weights(weights(finished.model), weights(straight.model))


def test_checkpoint_missing_only_trainer_state_is_skipped_and_refused(tmp_path, shapes_dir, caplog):
    # The weights and optimizer of checkpoint-4 are whole; only the last file of a save is missing.
    out, argv, expected = four_steps_with_two_checkpoints(tmp_path, shapes_dir)
    broken = out / "checkpoint-4"
    (broken / "trainer_state.json").unlink()
    assert checkpoint_problem(broken) == "trainer_state.json is missing (the save was cut short)"
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(out) == str(out / "checkpoint-2")
    assert f"Skipping incomplete checkpoint {broken}: trainer_state.json is missing" in caplog.text
    with pytest.raises(ValueError, match="cannot resume from .*checkpoint-4: trainer_state.json is missing"):
        train(*parse_args(argv + ["--resume_from_checkpoint", str(broken)]))
    (out / "model.safetensors").unlink()
    resumed = train(*parse_args(argv))  # from checkpoint-2, to the same end
    assert resumed.state.global_step == 4
    assert_same_weights(weights(resumed.model), expected)


# -- evaluation and the card for every training format -------------------------------------------
def test_instruction_tuning_evaluates_captions_answers_and_boxes_during_training(tmp_path):
    from huggingface_hub import ModelCard

    argv = tiny_argv(
        tmp_path / "out", "shapes", "--shapes_dir", str(tmp_path / "shapes"), "--shapes_num_train", "8",
        "--shapes_num_eval", "4", "--shapes_image_size", "32", "--dataset_format", "shapes-instruct",
        "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps", "2",
        "--caption_eval_samples", "4", "--metric_for_best_model", "eval_cider",
    )
    trainer = train(*parse_args(argv))
    logged = [e for e in trainer.state.log_history if "eval_cider" in e]
    assert [e["step"] for e in logged] == [2]
    for key in ("eval_shapes_accuracy", "eval_vqa_accuracy", "eval_box_accuracy", "eval_box_mean_iou"):
        assert 0.0 <= logged[0][key] <= 1.0
    assert trainer.model.config.instruction_tuned is True
    card = ModelCard.load(tmp_path / "out" / "README.md")
    tasks = {(r.task_type, r.metric_type) for r in card.data.eval_results}
    assert ("image-to-text", "cider") in tasks and ("visual-question-answering", "vqa_accuracy") in tasks
    assert ("object-detection", "box_mean_iou") in tasks
    assert ("image-to-text", "vqa_accuracy") not in tasks  # each score under its own task
    assert "apply_chat_template" in card.text and "trained to caption only" not in card.text
    assert "not evaluated on questions" not in card.text and "(training formats: shapes-instruct)" in card.text


def test_a_vqa_imagefolder_trains_and_is_scored_on_its_answers(tmp_path):
    from conftest import write_vqa_imagefolder
    from huggingface_hub import ModelCard

    folder = write_vqa_imagefolder(tmp_path / "vqa", {"train": 8, "validation": 4})
    common = ("--dataset_format", "vqa", "--max_steps", "2", "--save_strategy", "no", "--eval_strategy", "steps",
              "--eval_steps", "2", "--caption_eval_samples", "4")
    # No captions in the split: CIDEr cannot pick the best model, said before training.
    with pytest.raises(ValueError, match="eval_cider: the evaluation split cannot give it .*eval_vqa_accuracy"):
        train(*parse_args(tiny_argv(tmp_path / "refused", str(folder), *common, "--metric_for_best_model", "eval_cider")))
    trainer = train(*parse_args(tiny_argv(tmp_path / "out", str(folder), *common,
                                          "--metric_for_best_model", "eval_vqa_accuracy")))
    logged = [e for e in trainer.state.log_history if "eval_vqa_accuracy" in e]
    assert [e["step"] for e in logged] == [2] and "eval_cider" not in logged[0]
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert {(r.task_type, r.metric_type, r.dataset_split) for r in card.data.eval_results} == {
        ("visual-question-answering", "vqa_accuracy", "validation")}
    assert "questions about images with their answers" in card.text and "reference captions" not in card.text
    assert 'pipeline("image-to-text"' not in card.text and "Its training data held no captions" in card.text
    assert "**Q:** what colour is the circle?" in card.text  # examples are answers, with their questions


def test_a_caption_set_read_in_the_training_view_stays_a_captioner(tmp_path, shapes_dir):
    from huggingface_hub import ModelCard

    trainer = train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, "--dataset_format", "captions",
                                          "--max_steps", "2", "--save_strategy", "no")))
    assert "messages" in trainer.train_dataset.column_names  # the training view: an empty list per row
    assert trainer.model.config.instruction_tuned is False
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "trained to caption only" in card.text and "apply_chat_template" not in card.text
    assert "visual-question-answering" not in card.data.tags


class SlowSteps(TrainerCallback):
    """Each optimizer step lasts at least `seconds` more: training time that a test can count on."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def _card_seconds(folder) -> float:
    import re

    text = (Path(folder) / "README.md").read_text()
    return float(re.search(r"Training time: ([\d.]+) s", text).group(1))


def test_training_time_adds_up_every_session_and_survives_a_rerun(tmp_path, shapes_dir):
    out = tmp_path / "out"
    argv = tiny_argv(out, shapes_dir, "--num_train_epochs", "1")  # 24 images, batch 4: 6 steps
    train(*parse_args(argv), callbacks=[InterruptAt(3, signal.SIGTERM), SlowSteps(0.3)])  # steps 1-3, saved
    train(*parse_args(argv), callbacks=[SlowSteps(0.3)])  # steps 4-6
    # Six slow steps: 1.8 s at least, though the last session alone slept 0.9 s.
    assert _card_seconds(out) >= 1.8
    assert "2 training sessions added up (the run was resumed)" in (out / "README.md").read_text()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["TrainingTimeCallback"]["args"]["seconds"] >= 1.8
    # Running the finished run again trains nothing and keeps the time it took.
    again = train(*parse_args(argv))
    assert again.state.global_step == 6 and _card_seconds(out) >= 1.8
    assert "Steps: 6 (1 epoch)" in (out / "README.md").read_text()


def test_negative_grounding_repeats_are_refused_before_any_work(tmp_path, shapes_dir):
    with pytest.raises(ValueError, match=r"--grounding_repeats is a number of extra copies, 0 or more; got -1"):
        train(*parse_args(tiny_argv(tmp_path / "out", shapes_dir, "--grounding_repeats", "-1", "--max_steps", "1")))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_recorded_before_grounding_repeats_existed_is_not_a_changed_run():
    from minivlm.training.guards import configuration_changes

    new = {"learning_rate": 0.001, "grounding_repeats": 0}
    assert configuration_changes({"learning_rate": 0.001}, new) == []  # recorded without it: it ran with 0
    assert configuration_changes({"learning_rate": 0.001}, {**new, "grounding_repeats": 1}) == ["grounding_repeats: 0 → 1"]
