"""Evaluation: batched captioning, metrics with their decoding settings, the evaluate script,
the pictures, and caption metrics inside the Trainer (best checkpoint by CIDEr).

Tiny random models only; noise images make their captions differ from image to image, so that
order and batching mistakes show.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from conftest import REPO_ROOT, make_config, make_images, make_model, make_processor
from minivlm.processing.grounding import parse_boxes
from minivlm.evaluation.boxes import box_metrics
from minivlm.evaluation.vqa import vqa_accuracy
from minivlm.processing.collator import ConversationCollator
from minivlm.evaluation.metrics import compute_caption_metrics
from minivlm.processing.shapes import generate_shapes_dataset, shapes_accuracy
from minivlm.evaluation.captioning import evaluate_captions, generate_captions
from minivlm.training.callbacks import ValidationScoresCallback
from minivlm.evaluation.plots import patch_feature_norms, plot_caption_grid, plot_loss_curve, plot_patch_heatmap
from minivlm.training.trainer import MiniVLMTrainer


CAPTIONS = ["a red circle", "a blue square", "two dog runs in grass", "a cat sits on the left",
            "a small green triangle", "the yellow square on top"]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls on a busy 2-core machine are ~100x slower with two spinning OpenMP threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_script(name: str):
    """A command of scripts/, imported as the installed package names it."""
    return importlib.import_module(f"minivlm.scripts.{name}")


def caption_dataset(n: int, size: int = 32) -> datasets.Dataset:
    """Uniform view over noise images, two references each."""
    return datasets.Dataset.from_dict({
        "image": make_images(n, size=size),
        "captions": [[CAPTIONS[i % 6], CAPTIONS[(i + 1) % 6]] for i in range(n)],
        "id": [f"img{i}" for i in range(n)],
    })


def assert_png(path, min_size=(50, 50)):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]


def test_generate_captions_matches_one_at_a_time_in_order(model, processor):
    ds = caption_dataset(7)
    model.train()  # generate_captions must switch to eval and back
    batched = generate_captions(model, processor, ds, batch_size=3, max_new_tokens=6, progress=False)
    assert model.training

    model.eval()
    single = []
    for image in ds["image"]:
        inputs = processor(images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        single.append(processor.post_process_image_text_to_text(out[:, inputs["input_ids"].shape[1]:])[0])

    assert batched == single
    assert len(set(single)) > 2, "captions should differ between images, or order is not tested"
    # A list of images is captioned like the dataset.
    assert generate_captions(model, processor, list(ds["image"]), batch_size=4, max_new_tokens=6,
                             progress=False) == single


def test_generate_captions_strips_the_prompt(model, processor):
    ds = caption_dataset(3)
    captions = generate_captions(model, processor, ds, prompt="this image shows", max_new_tokens=4, progress=False)
    assert len(captions) == 3 and all(captions)
    assert not any(c.startswith("this image") for c in captions), captions


def test_generate_captions_cuts_exactly_the_prompt_off():
    # The prompt's last word ("shows") is an ordinary token: a cut one position early keeps it in
    # the caption, one position late drops the first generated word. A wide initialisation keeps the
    # random model from echoing the prompt's last word, so its captions differ from image to image.
    config = make_config(text_config={"initializer_range": 0.5})
    model, processor = make_model(config), make_processor(config)
    ds = caption_dataset(4)
    batched = generate_captions(model, processor, ds, prompt="this image shows", batch_size=3, max_new_tokens=5,
                                progress=False)
    prompt_ids = processor.tokenizer("this image shows", add_special_tokens=False)["input_ids"]
    single = []
    for image in ds["image"]:
        inputs = processor(images=[image], text="this image shows", return_tensors="pt")
        assert inputs["input_ids"][0, -len(prompt_ids):].tolist() == prompt_ids  # the prompt ends the input
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        assert len(new_tokens) == 5 or new_tokens[-1] == processor.tokenizer.eos_token_id
        single.append(processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    assert batched == single
    assert len(set(single)) > 1 and not any(c.startswith("shows") for c in single), single


class ScriptedCaptioner(torch.nn.Module):
    """A stand-in model whose `generate` appends the next scripted captions, in call order, to the
    input ids: the predictions are known, so the expected scores can be worked out by hand."""

    def __init__(self, tokenizer, captions: list[str]):
        super().__init__()
        self.tokenizer, self.captions = tokenizer, list(captions)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    @property
    def device(self):
        return self.anchor.device

    def generate(self, input_ids, pixel_values, attention_mask=None, **decoding):
        assert pixel_values.shape[0] == input_ids.shape[0]
        rows = [self.tokenizer(self.captions.pop(0), add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                for _ in range(input_ids.shape[0])]
        new = torch.full((len(rows), max(map(len, rows))), self.tokenizer.pad_token_id)
        for i, row in enumerate(rows):
            new[i, : len(row)] = torch.tensor(row)
        return torch.cat([input_ids, new], dim=1)


def test_evaluate_captions_scores_against_every_reference_with_hand_computed_values(processor):
    # Each prediction equals the *second* reference of its own image: scored against all references
    # (and the right image's), every n-gram up to 3 matches and the lengths agree.
    predictions = ["a red circle", "a blue square", "the green triangle"]
    ds = datasets.Dataset.from_dict({
        "image": make_images(3, size=32),
        "captions": [["a blue square", "a red circle"], ["a green triangle", "a blue square"],
                     ["a red square", "the green triangle"]],
        "id": ["x", "y", "z"],
        # The second image holds a blue *circle*: 2 of the 3 captions name the objects right.
        "objects": [[{"colour": "red", "shape": "circle"}], [{"colour": "blue", "shape": "circle"}],
                    [{"colour": "green", "shape": "triangle"}]],
    })
    decoding = {"max_new_tokens": 5, "num_beams": 2}
    scripted, metrics = evaluate_captions(ScriptedCaptioner(processor.tokenizer, predictions), processor, ds,
                                          decoding=decoding, batch_size=2, meteor=False, progress=False)

    assert [p["caption"] for p in scripted] == predictions
    assert [p["id"] for p in scripted] == ["x", "y", "z"]
    assert [p["references"] for p in scripted] == ds["captions"]
    for n in (1, 2, 3):
        assert metrics[f"bleu_{n}"] == pytest.approx(1.0)
    # No 4-gram in a 3-word caption: pycocoevalcap's smoothing gives p4 = 1e-15 / 1e-9, BLEU-4 = (1e-6) ** (1/4).
    assert metrics["bleu_4"] == pytest.approx(10 ** -1.5, rel=1e-6)
    assert metrics["rouge_l"] == pytest.approx(1.0)
    assert metrics["shapes_accuracy"] == pytest.approx(2 / 3)
    assert metrics["meteor"] is None
    assert metrics["decoding"] == {"max_new_tokens": 5, "num_beams": 2, "do_sample": False, "prompt": ""}
    _, without_objects = evaluate_captions(ScriptedCaptioner(processor.tokenizer, predictions), processor,
                                           ds.remove_columns("objects"), meteor=False, progress=False)
    assert "shapes_accuracy" not in without_objects


def test_evaluate_script_writes_predictions_metrics_and_pictures(saved_model_dir, tmp_path, capsys):
    main = load_script("evaluate_model").main

    shapes_dir = generate_shapes_dataset(tmp_path / "shapes", num_train=0, num_validation=0, num_test=12, image_size=32)
    model_dir = shutil.copytree(saved_model_dir, tmp_path / "model")
    log_history = [{"loss": 3.0 - 0.1 * s, "step": s} for s in range(1, 6)] + [{"eval_loss": 2.8, "step": 5}]
    (model_dir / "trainer_state.json").write_text(json.dumps({"log_history": log_history}))
    out = tmp_path / "eval"

    main(["--model", str(model_dir), "--dataset", "shapes", "--shapes_dir", str(shapes_dir), "--split", "test",
          "--batch_size", "5", "--max_new_tokens", "6", "--skip_meteor", "--output_dir", str(out)])

    records = {r["id"]: r for r in map(json.loads, (shapes_dir / "test" / "metadata.jsonl").read_text().splitlines())}
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 12
    assert sorted(p["id"] for p in predictions) == sorted(records)
    assert all(p["references"] == records[p["id"]]["captions"] for p in predictions)

    metrics = json.loads((out / "metrics.json").read_text())
    captions = [p["caption"] for p in predictions]
    expected = compute_caption_metrics(captions, [p["references"] for p in predictions], meteor=False)
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        assert metrics[key] == pytest.approx(expected[key])
    assert metrics["meteor"] is None and "meteor" in metrics["unavailable"]
    assert metrics["shapes_accuracy"] == shapes_accuracy(captions, [records[p["id"]]["objects"] for p in predictions])
    assert metrics["decoding"] == {"max_new_tokens": 6, "num_beams": 1, "do_sample": False, "prompt": ""}
    assert (metrics["model"], metrics["dataset"], metrics["split"], metrics["num_images"]) == (
        str(model_dir), "shapes", "test", 12)

    # The shapes set's questions are answered and scored too: answers by VQA accuracy, boxes by IoU.
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    asked = [(r["id"], qa["question"], qa["answer"]) for r in records.values() for qa in r["questions"]]
    assert sorted((a["id"], a["question"], a["answers"][0]) for a in answers) == sorted(asked)
    assert metrics["num_questions"] == len(asked)
    plain = [a for a in answers if a["type"] != "box"]
    assert metrics["vqa_accuracy"] == pytest.approx(sum(vqa_accuracy(a["prediction"], a["answers"]) for a in plain)
                                                    / len(plain))
    boxes = [a for a in answers if a["type"] == "box"]
    expected_boxes = box_metrics([(parse_boxes(a["prediction"]) or [None])[0] for a in boxes],
                                 [parse_boxes(a["answers"][0])[0] for a in boxes])
    assert metrics["box_accuracy"] == pytest.approx(expected_boxes["box_accuracy"])
    assert metrics["box_mean_iou"] == pytest.approx(expected_boxes["box_mean_iou"])

    assert_png(out / "patch_heatmap.png")
    assert_png(out / "loss_curve.png")
    printed = capsys.readouterr().out
    assert "| cider |" in printed and "| meteor | unavailable |" in printed


def test_plots_write_valid_pngs(tmp_path):
    history = [{"loss": 2.0 / s, "step": s, "epoch": s / 4} for s in range(1, 9)] + [{"eval_loss": 0.5, "step": 8}]
    assert_png(plot_loss_curve(history, tmp_path / "loss.png"))
    with pytest.raises(ValueError, match="no training loss"):
        plot_loss_curve([{"eval_loss": 1.0, "step": 1}], tmp_path / "none.png")

    images = make_images(5)
    path = plot_caption_grid(images, ["word " * 30] * 5, ["a red circle"] * 5, CAPTIONS[:5], tmp_path / "grid.png", ncols=4)
    assert_png(path, min_size=(400, 400))
    with pytest.raises(ValueError, match="one before/after/reference"):
        plot_caption_grid(images, ["x"] * 4, ["y"] * 5, ["z"] * 5, tmp_path / "bad.png")


@pytest.mark.parametrize("patch_size, side", [(8, 4), (4, 8)])
def test_patch_heatmap_uses_the_patch_grid(tmp_path, patch_size, side):
    # The encoder output is read directly: the "default" strategy (CLS dropped for the LM) changes nothing here.
    config = make_config(vision_config={"patch_size": patch_size}, vision_feature_select_strategy="default")
    model, processor = make_model(config), make_processor(config)
    image = make_images(1)[0]

    grid = plot_patch_heatmap(model, processor, image, tmp_path / "heatmap.png")
    assert grid.shape == (side, side)
    pixel_values = processor.image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.vision_tower(pixel_values).last_hidden_state[0]
    assert hidden.shape[0] == side * side + 1
    np.testing.assert_allclose(grid, hidden[1:].norm(dim=-1).reshape(side, side).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(grid, patch_feature_norms(model, processor, image))
    assert_png(tmp_path / "heatmap.png")


def _trainer(tmp_path, callback, data, **overrides):
    config = make_config()
    processor = make_processor(config)
    kwargs = dict(
        output_dir=str(tmp_path / "run"), remove_unused_columns=False, report_to="none", max_steps=4,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=1e-2, logging_steps=1,
        use_cpu=True, disable_tqdm=True, seed=0, save_only_model=True,
    )
    kwargs.update(overrides)
    callback = callback(processor)
    trainer = MiniVLMTrainer(
        model=make_model(config), args=TrainingArguments(**kwargs), train_dataset=data,
        eval_dataset=data if kwargs.get("eval_strategy", "no") != "no" else None,
        data_collator=ConversationCollator(processor), callbacks=[callback],
    )
    return trainer


def test_caption_eval_callback_keeps_best_checkpoint_by_cider(tmp_path):
    data = caption_dataset(8)
    trainer = _trainer(
        tmp_path, lambda p: ValidationScoresCallback(p, data, max_samples=8, decoding={"max_new_tokens": 6}), data,
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        metric_for_best_model="eval_cider", greater_is_better=True, load_best_model_at_end=True,
    )
    trainer.train()

    logged = [e for e in trainer.state.log_history if "eval_cider" in e]
    assert [e["step"] for e in logged] == [2, 4]
    assert {"eval_bleu_1", "eval_bleu_4", "eval_rouge_l"} <= set(logged[0])
    ciders = [e["eval_cider"] for e in logged]
    assert max(ciders) > 0
    best = logged[int(np.argmax(ciders))]
    # The Trainer chose by CIDEr, not by eval_loss (greater_is_better would pick the worst loss).
    assert trainer.state.best_metric == max(ciders)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert "eval_cider" in trainer.evaluate()


def test_caption_eval_callback_every_n_steps_logs_without_trainer_evaluation(tmp_path):
    data = caption_dataset(8)
    trainer = _trainer(
        tmp_path, lambda p: ValidationScoresCallback(p, data, max_samples=3, every_n_steps=2, decoding={"max_new_tokens": 4}),
        data, eval_strategy="no", save_strategy="no",
    )
    trainer.train()
    logged = [e for e in trainer.state.log_history if "eval_cider" in e]
    assert [e["step"] for e in logged] == [2, 4]
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ValidationScoresCallback))
    assert len(callback.last_predictions) == 3


def test_no_script_shadows_an_installed_module():
    # Running scripts/x.py puts scripts/ first on sys.path: a script named like a dependency
    # (evaluate.py, datasets.py, ...) would be imported in its place by every script beside it.
    import importlib.util

    def installed_elsewhere(name: str) -> bool:  # the repository's own folders (on sys.path as cwd) do not count
        spec = importlib.util.find_spec(name)
        locations = [spec.origin] if spec and spec.origin else list(spec.submodule_search_locations or []) if spec else []
        return any(REPO_ROOT not in Path(location).resolve().parents for location in locations)

    shadowing = [p.name for p in (REPO_ROOT / "scripts").glob("*.py") if p.stem != "__init__" and installed_elsewhere(p.stem)]
    assert shadowing == []


def test_evaluate_script_runs_from_the_command_line():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "evaluate_model.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--num_beams" in result.stdout and "--shapes_dir" in result.stdout


def test_eval_callback_adds_answer_and_box_scores_when_given_questions():
    # A scripted model answers known texts, so every score is worked out by hand, not by calling the
    # function the callback calls (a metric bug would then cancel out).
    from conftest import WORDS

    from minivlm.processing.tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer([WORDS + " 0 250 500 1000 [0 [1000 ] , 2 no box"])
    processor = make_processor(make_config(tokenizer), tokenizer)
    images = make_images(6, size=32)
    captions = datasets.Dataset.from_dict({"image": images[:2], "captions": [["a red circle"], ["a blue square"]],
                                           "id": ["c0", "c1"]})
    questions = datasets.Dataset.from_dict({
        "image": images,
        "question": ["what colour", "how many", "what colour", "where", "where", "where"],
        "answer": ["red", "2", "green", "[0, 0, 500, 500]", "[500, 500, 1000, 1000]", "[0, 0, 1000, 1000]"],
    })
    scripted = ScriptedCaptioner(tokenizer, [
        "a red circle", "a blue square",                # the captions, equal to their references
        "red",                                          # right
        "two",                                          # right: "two" is normalised to "2"
        "blue",                                         # wrong
        "[0, 0, 500, 250]",                             # IoU 125000 / 250000 = 0.5: a hit (>= 0.5)
        "[1000, 1000, 500, 500]",                       # the target with its corners swapped: IoU 1
        "no box",                                       # IoU 0
    ])
    callback = ValidationScoresCallback(processor, captions, questions=questions, decoding={"max_new_tokens": 8})
    scores = callback.compute(scripted)
    assert scripted.captions == []  # two captions and six answers were asked for, in that order
    assert scores["vqa_accuracy"] == pytest.approx(2 / 3)
    assert scores["box_accuracy"] == pytest.approx(2 / 3)
    assert scores["box_mean_iou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert scores["bleu_1"] == pytest.approx(1.0) and scores["rouge_l"] == pytest.approx(1.0)


def test_chat_turns_are_answered_after_the_models_own_answers_as_the_pipeline_does(saved_model_dir):
    """Each turn of `evaluate_chat` equals the image-text-to-text pipeline asked with the same history."""
    from transformers import AutoModel, AutoProcessor, pipeline

    from minivlm.evaluation.answering import evaluate_chat

    model = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(saved_model_dir, trust_remote_code=True)
    images = make_images(2)
    questions = ["what colour is the circle", "how many shapes", "is there a circle"]
    rows = [{"image": image, "id": f"i{n}", "question": q, "answer": "red"} for n, image in enumerate(images)
            for q in questions]
    chats, _ = evaluate_chat(model, processor, rows, turns=3, batch_size=2, max_new_tokens=3)
    chat_pipeline = pipeline("image-text-to-text", model=str(saved_model_dir), trust_remote_code=True)
    for image, chat in zip(images, chats):
        messages = []
        for turn in chat["turns"]:
            content = ([{"type": "image", "image": image}] if not messages else []) + [{"type": "text", "text": turn["question"]}]
            messages.append({"role": "user", "content": content})
            reply = chat_pipeline(text=messages, max_new_tokens=3, return_full_text=False)[0]["generated_text"].strip()
            assert reply == turn["prediction"]
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["prediction"]}]})


def test_chat_scores_each_turn_with_hand_computed_values(monkeypatch):
    """Scripted answers: the history carries the model's own answers, boxes count at IoU >= 0.5, and the
    images with fewer questions than turns are left out."""
    from minivlm.evaluation import answering

    script = {  # (image id, turn) -> prediction
        ("a", 0): "red", ("a", 1): "[0, 0, 100, 100]", ("a", 2): "no",
        ("b", 0): "blue", ("b", 1): "[0, 0, 100, 50]", ("b", 2): "yes",
    }
    seen_histories = []

    def scripted(model, processor, images, histories, questions, **kwargs):
        seen_histories.append([list(h) for h in histories])
        return [script[(image, len(history))] for image, history in zip(images, histories)]

    monkeypatch.setattr(answering, "answer_chats", scripted)
    rows = []
    for image in ("a", "b"):
        rows += [{"image": image, "id": image, "question": "colour", "answer": "red"},
                 {"image": image, "id": image, "question": "box", "answer": "[0, 0, 100, 100]"},
                 {"image": image, "id": image, "question": "there", "answers": ["yes", "yes", "no"]}]
    rows.append({"image": "c", "id": "c", "question": "colour", "answer": "red"})  # one question: no chat
    chats, metrics = answering.evaluate_chat(None, None, rows, turns=3)
    assert [c["id"] for c in chats] == ["a", "b"]
    assert seen_histories[2] == [[("colour", "red"), ("box", "[0, 0, 100, 100]")],
                                 [("colour", "blue"), ("box", "[0, 0, 100, 50]")]]
    # Turn 1: a right, b wrong. Turn 2: IoU 1 and IoU exactly 0.5 (both right). Turn 3, references
    # yes/yes/no, each left out in turn, min(matches among the other two / 3, 1) averaged:
    yes_no = (1 / 3 + 1 / 3 + 0) / 3  # "no" matches one of the others twice, none once
    yes_yes = (1 / 3 + 1 / 3 + 2 / 3) / 3
    assert metrics["chat_accuracy_turn_1"] == 0.5
    assert metrics["chat_accuracy_turn_2"] == 1.0
    assert metrics["chat_accuracy_turn_3"] == pytest.approx((yes_no + yes_yes) / 2)
    assert metrics["chat_accuracy_later"] == pytest.approx((1.0 + 1.0 + yes_no + yes_yes) / 4)
    with pytest.raises(ValueError, match="no image has 4 questions"):
        answering.evaluate_chat(None, None, rows, turns=4)


def _own_vqa_accuracy(prediction: str, references: list[str]) -> float:
    """VQA accuracy written out for one-word answers: min(#matching references / 3, 1)."""
    matches = sum(prediction.strip().lower() == r.strip().lower() for r in references)
    return min(matches / 3, 1.0)


def test_evaluate_script_answers_a_vqa_imagefolder_that_has_no_captions(saved_model_dir, tmp_path, capsys):
    from conftest import write_vqa_imagefolder

    main = load_script("evaluate_model").main
    folder = write_vqa_imagefolder(tmp_path / "vqa", {"train": 3, "test": 5})
    out = tmp_path / "eval"
    main(["--model", str(saved_model_dir), "--dataset", str(folder), "--split", "test", "--questions", "yes",
          "--skip_meteor", "--output_dir", str(out)])

    rows = [json.loads(line) for line in (folder / "test" / "metadata.jsonl").read_text().splitlines()]
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert sorted((a["question"], a["answers"]) for a in answers) == sorted((r["question"], [r["answer"]]) for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_questions"] == 5 and metrics["num_images"] == 0
    assert metrics["vqa_accuracy"] == pytest.approx(
        sum(_own_vqa_accuracy(a["prediction"], a["answers"]) for a in answers) / 5)
    assert "cider" not in metrics and not (out / "predictions.jsonl").exists()  # no captions to score
    assert_png(out / "patch_heatmap.png")
    assert "| vqa_accuracy |" in capsys.readouterr().out

    # Questions turned off: nothing left to score, said before any model is loaded.
    with pytest.raises(ValueError, match="nothing to score: no caption column .*--questions no"):
        main(["--model", "no/such-model", "--dataset", str(folder), "--split", "test", "--questions", "no",
              "--output_dir", str(out)])


def test_evaluate_script_scores_every_turn_of_a_chat_set(saved_model_dir, tmp_path):
    from test_evaluation_tasks import chats

    main = load_script("evaluate_model").main
    datasets.DatasetDict({"test": chats(make_images(2, size=24))}).save_to_disk(tmp_path / "chat")
    out = tmp_path / "eval"
    main(["--model", str(saved_model_dir), "--dataset", str(tmp_path / "chat"), "--split", "test",
          "--skip_meteor", "--output_dir", str(out)])
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [(a["id"], a["question"]) for a in answers] == [
        ("c0", "what colour is the circle?"), ("c0", "and the square?"), ("c1", "what is it?")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_questions"] == 3 and {"vqa_accuracy", "box_accuracy", "box_mean_iou"} <= set(metrics)
