"""Instruction data adapters into the conversation view, cleaning with one counted warning, mixtures,
and training on them end to end; every dataset is made here, offline."""

import json
import logging

import datasets
import numpy as np
import pytest
from PIL import Image

from minivlm.processing.collator import ConversationCollator
from minivlm.processing.conversations import (
    clean_conversations, from_cauldron, from_chat, from_llava, from_vqa, mix_datasets, training_texts,
)
from minivlm.processing.loading import detect_format, to_conversations


def image(seed=0, size=16):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def roles_and_texts(messages):
    return [(m["role"], [p["text"] if p["type"] == "text" else "<image>" for p in m["content"]]) for m in messages]


def test_hf_chat_format_keeps_turns_and_images():
    ds = datasets.Dataset.from_dict({
        "messages": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "a dog"}]},
                      {"role": "user", "content": [{"type": "text", "text": "colour?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "brown"}]}]],
        "images": [[image()]],
    })
    assert detect_format(ds) == "chat"
    out = from_chat(ds)
    assert roles_and_texts(out[0]["messages"]) == [
        ("user", ["<image>", "what is it?"]), ("assistant", ["a dog"]), ("user", ["colour?"]), ("assistant", ["brown"])]
    assert len(out[0]["images"]) == 1 and out[0]["images"][0].size == (16, 16)
    assert out[0]["id"] == "0"


def test_llava_json_with_image_markers_and_relative_paths(tmp_path):
    image(1).save(tmp_path / "cat.png")
    rows = [{"id": "l1", "image": "cat.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat animal is this?"}, {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "Is it sleeping?"}, {"from": "gpt", "value": "No."}]}]
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    out = from_llava(tmp_path / "llava.json")
    assert roles_and_texts(out[0]["messages"]) == [
        ("user", ["<image>", "What animal is this?"]), ("assistant", ["A cat."]),
        ("user", ["Is it sleeping?"]), ("assistant", ["No."])]
    assert out[0]["images"][0].size == (16, 16) and out[0]["id"] == "l1"


def test_cauldron_puts_the_images_with_the_first_question():
    ds = datasets.Dataset.from_dict({
        "images": [[image(2), image(3)]],
        "texts": [[{"user": "Compare them.", "assistant": "Both are noise.", "source": "x"},
                   {"user": "Which is brighter?", "assistant": "The first.", "source": "x"}]],
    })
    assert detect_format(ds) == "cauldron"
    out = from_cauldron(ds)
    assert roles_and_texts(out[0]["messages"]) == [
        ("user", ["<image>", "<image>", "Compare them."]), ("assistant", ["Both are noise."]),
        ("user", ["Which is brighter?"]), ("assistant", ["The first."])]
    assert len(out[0]["images"]) == 2


def test_vqa_columns_answer_or_the_most_frequent_of_answers():
    single = datasets.Dataset.from_dict({"image": [image()], "question": ["how many?"], "answer": ["2"]})
    assert roles_and_texts(from_vqa(single)[0]["messages"]) == [("user", ["<image>", "how many?"]), ("assistant", ["2"])]
    dicts = datasets.Dataset.from_dict({  # VQAv2: a list of {"answer": ...}
        "image": [image()], "question": ["colour?"], "answers": [[{"answer": "red"}, {"answer": "blue"}, {"answer": "blue"}]],
    })
    strings = datasets.Dataset.from_dict({"image": [image(1)], "question": ["shape?"], "answers": [["round", "circle", "circle"]]})
    assert detect_format(dicts) == detect_format(strings) == "vqa"
    assert to_conversations(dicts)[0]["messages"][1]["content"][0]["text"] == "blue"
    assert to_conversations(strings)[0]["messages"][1]["content"][0]["text"] == "circle"


def test_bad_rows_are_dropped_with_one_counted_warning(caplog):
    def row(messages, n_images=1):
        return {"messages": messages, "images": [image(i) for i in range(n_images)]}

    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}
    good = row([user, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}])
    rows = [good, row([user]),  # no assistant turn
            row([user, {"role": "assistant", "content": [{"type": "text", "text": "  "}]}]),  # empty answer
            row([user, {"role": "assistant", "content": [{"type": "text", "text": "a"}]}], n_images=2),  # 2 images, 1 part
            good]
    ds = from_chat(datasets.Dataset.from_list(rows))
    with caplog.at_level(logging.WARNING, logger="minivlm.processing.conversations"):
        clean = clean_conversations(ds, max_bad_fraction=0.6)  # 3 of 5 may go
    assert len(clean) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "dropped 3 of 5" in warnings[0]
    for reason in ("1 no assistant turn", "1 empty answer", "1 image count not matching the image markers"):
        assert reason in warnings[0]


def test_llava_marker_count_must_match_the_images():
    rows = [{"id": "a", "image": None, "conversations": [{"from": "human", "value": "<image>\nhi"},
                                                         {"from": "gpt", "value": "hello"}]},
            {"id": "b", "conversations": [{"from": "human", "value": "no image here"}, {"from": "gpt", "value": "ok"}]}]
    clean = clean_conversations(from_llava(rows), max_bad_fraction=0.5)
    assert clean["id"] == ["b"]  # a marker without an image is dropped; a text-only row is fine


def test_mixture_with_weights_is_seeded_and_collates(processor):
    captions = datasets.Dataset.from_dict(
        {"image": [image(i) for i in range(6)], "captions": [["a red circle"]] * 6, "id": [f"c{i}" for i in range(6)]}
    ).cast_column("image", datasets.Image())
    vqa = from_vqa(datasets.Dataset.from_dict(
        {"image": [image(9)] * 3, "question": ["how many"] * 3, "answer": ["two"] * 3}))
    mixed = mix_datasets([captions, vqa], [0.7, 0.3], seed=1)
    again = mix_datasets([captions, vqa], [0.7, 0.3], seed=1)
    assert mixed["id"] == again["id"]
    assert set(mixed["id"]) == {f"c{i}" for i in range(6)} | {"0", "1", "2"}  # every row, until all are used up
    batch = ConversationCollator(processor)([mixed[i] for i in range(len(mixed))])
    assert batch["pixel_values"].shape[0] == len(mixed)
    texts = list(training_texts(mixed))
    assert "a red circle" in texts and "how many two" in texts
    with pytest.raises(ValueError, match="one positive, finite weight per dataset"):
        mix_datasets([captions, vqa], [1.0])


def test_train_script_mixes_captions_and_questions_then_continues_from_the_checkpoint(tmp_path):
    from test_training import tiny_argv

    from minivlm.processing.shapes import generate_shapes_dataset
    from minivlm.training.run import parse_args, train

    shapes = str(generate_shapes_dataset(tmp_path / "shapes", num_train=8, num_validation=4, num_test=0, image_size=32))
    first = train(*parse_args(tiny_argv(tmp_path / "stage1", shapes, "--max_steps", "2",
                                        "--dataset_format", "captions,shapes-questions",
                                        "--dataset_weights", "0.5,0.5", "--caption_eval_samples", "2")))
    assert len(first.train_dataset) >= 16  # both views of the 8 images, sampled until each is used up
    assert first.processing_class.tokenizer.convert_tokens_to_ids("locate") != first.processing_class.tokenizer.unk_token_id
    first.create_model_card()
    card = (tmp_path / "stage1" / "README.md").read_text()
    assert "vqa_accuracy" in card and "box_accuracy" in card  # the callback's answer scores reach the card
    # The saved config says the model answers questions: apps offer a chat for it.
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "stage1", trust_remote_code=True).instruction_tuned is True
    # The second stage: questions only, from the first stage's folder.
    second = train(*parse_args(tiny_argv(tmp_path / "stage2", shapes, "--max_steps", "2", "--dataset_format",
                                         "shapes-questions", "--model_name_or_path", str(tmp_path / "stage1"))))
    assert second.state.global_step == 2 and all(len(row["messages"]) > 0 for row in second.train_dataset)
