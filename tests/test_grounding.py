"""Boxes as text on the 0-1000 grid, the shapes set's questions and boxes, and the VQA / box metrics,
checked against values computed by hand."""

import pytest
from PIL import Image

from minivlm.data.grounding import box_to_grid, draw_boxes, format_box, grid_to_pixels, parse_boxes
from minivlm.data.shapes import BOX_STEP, make_shapes_examples, score_caption, shapes_conversation
from minivlm.evaluation.boxes import box_iou, box_metrics
from minivlm.evaluation.vqa import normalize_answer, vqa_accuracy, vqa_score


def test_boxes_are_written_on_the_grid_and_parsed_back():
    assert format_box((16, 8, 48, 40), image_size=(64, 64)) == "[250, 125, 750, 625]"
    assert format_box((16, 8, 48, 40), image_size=(64, 64), step=10) == "[250, 120, 750, 620]"  # 125 -> 12.5 -> 12
    assert box_to_grid((0, 0, 70, 10), (64, 64)) == (0, 0, 1000, 156)  # clipped to the grid
    assert grid_to_pixels((250, 125, 750, 625), (64, 32)) == (16.0, 4.0, 48.0, 20.0)
    text = "the red circle [ 120, 80, 400, 360 ] and [5,6,7,8], not [1, 2, 3]"
    assert parse_boxes(text) == [(120, 80, 400, 360), (5, 6, 7, 8)]
    assert parse_boxes("no box here") == []
    with pytest.raises(ValueError, match="must divide 1000"):
        box_to_grid((0, 0, 1, 1), (64, 64), step=3)


def test_drawn_box_outlines_the_right_pixels():
    image = Image.new("RGB", (100, 50), "white")
    drawn = draw_boxes(image, [(100, 200, 500, 800)], labels=["x"], colours="red", width=1)
    assert drawn.getpixel((10, 25)) == (255, 0, 0)  # left edge: x = 100/1000 * 100
    assert drawn.getpixel((30, 25)) == (255, 255, 255)  # inside stays
    assert image.getpixel((10, 25)) == (255, 255, 255)  # the original is untouched


def test_shapes_questions_follow_from_the_objects():
    for example in make_shapes_examples(40, image_size=64, seed=3):
        objects, by_type = example["objects"], {}
        for qa in example["questions"]:
            by_type.setdefault(qa["type"], []).append(qa)
        assert score_caption(by_type["objects"][0]["answer"], objects)
        assert by_type["count"][0]["answer"] == str(len(objects))
        assert sorted(qa["answer"] for qa in by_type["exists"]) == ["no", "yes"]
        for qa in by_type["exists"]:
            colour, shape = qa["question"].removeprefix("is there a ").rstrip("?").split()
            assert ((colour, shape) in [(o["colour"], o["shape"]) for o in objects]) == (qa["answer"] == "yes")
            # The absent one is near: it shares its colour or its shape with an object in the image.
            assert any(o["colour"] == colour or o["shape"] == shape for o in objects)
        names = [f"{o['colour']} {o['shape']}" for o in objects]

        def named(name):  # the one object a question names, by colour and shape or by its shape alone
            (obj,) = [o for o, full in zip(objects, names) if name in (full, o["shape"])]
            return obj

        for qa in by_type.get("box", []):
            obj = named(qa["question"].removeprefix("locate the "))
            (box,) = parse_boxes(qa["answer"])
            assert all(v % BOX_STEP == 0 for v in box)
            assert box_iou(box, box_to_grid(obj["bbox"], (64, 64))) > 0.9
        for qa in by_type.get("where", []):
            obj = named(qa["question"].removeprefix("where is the ").rstrip("?"))
            assert qa["answer"] == obj["position"]
        for qa in by_type.get("colour", []):
            shape = qa["question"].removeprefix("what colour is the ").rstrip("?")
            assert [o["colour"] for o in objects if o["shape"] == shape] == [qa["answer"]]
    asked = [qa["question"] for e in make_shapes_examples(40, image_size=64, seed=3) for qa in e["questions"]]
    assert "where is the circle?" in asked and "where is the red circle?" in asked  # both ways of naming occur
    # Images and captions are those of before: the questions draw from a random stream of their own.
    assert make_shapes_examples(1, seed=3)[0]["captions"] == make_shapes_examples(1, seed=3)[0]["captions"]


def test_held_out_split_differs_and_questions_become_one_conversation():
    train, test = make_shapes_examples(5, split="train"), make_shapes_examples(5, split="test")
    assert [e["questions"] for e in train] != [e["questions"] for e in test]
    messages = shapes_conversation(train[0]["questions"])
    assert [m["role"] for m in messages] == ["user", "assistant"] * len(train[0]["questions"])
    assert messages[0]["content"][0]["type"] == "image"
    assert all(p["type"] == "text" for m in messages[1:] for p in m["content"])


def test_vqa_normalisation_follows_the_official_rules():
    assert normalize_answer("Two") == "2"
    assert normalize_answer("The red one.") == "red 1"
    assert normalize_answer("dont know!") == "don't know"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("yes, it is") == "yes it is"


def test_vqa_accuracy_is_min_of_matches_over_three_averaged_leave_one_out():
    assert vqa_accuracy("Red.", "red") == 1.0
    assert vqa_accuracy("blue", "red") == 0.0
    # 2 of 10 humans said "2": leaving out one of them 1 match (1/3), else 2 (2/3): (2/3 + 16/3) / 10 = 0.6.
    assert vqa_accuracy("two", ["2"] * 2 + ["3"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("3", ["2"] * 2 + ["3"] * 8) == pytest.approx(1.0)
    assert vqa_score(["yes", "no"], ["yes", ["yes"]]) == 0.5


def test_box_metrics_by_hand():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    metrics = box_metrics([(0, 0, 10, 10), (0, 0, 10, 5), None], [(0, 0, 10, 10)] * 3)
    assert metrics == {"box_accuracy": pytest.approx(2 / 3), "box_mean_iou": pytest.approx((1 + 0.5 + 0) / 3)}


def test_word_level_tokenizer_drops_question_marks_and_survives_a_reload(tmp_path):
    from transformers import AutoTokenizer

    from minivlm.data.tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(["what colour is the triangle? red", "locate the circle [10, 20, 30, 40]"])
    assert "?" not in tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    for loaded in (tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        # The answer is predicted at the question's last word, as in training, whether or not the user types "?".
        assert loaded("What colour is the triangle?")["input_ids"] == loaded("what colour is the triangle")["input_ids"]
        assert loaded.tokenize("triangle?red") == ["triangle", "red"]
        assert loaded.tokenize("[10, 20, 30, 40]") == ["[", "10", ",", "20", ",", "30", ",", "40", "]"]
        assert loaded.unk_token_id not in loaded("what colour is the triangle?")["input_ids"]


def test_a_set_with_older_questions_is_written_again_and_other_folders_are_untouched(tmp_path):
    import json

    from minivlm.data.shapes import SHAPES_MARKER, ensure_shapes_dataset, generate_shapes_dataset

    folder = generate_shapes_dataset(tmp_path / "shapes", num_train=3, num_validation=0, num_test=0, image_size=32)
    marker = folder / SHAPES_MARKER
    record = json.loads(marker.read_text())
    assert record["questions_version"] == 2
    ensure_shapes_dataset(folder, num_train=3, num_validation=0, num_test=0, image_size=32)  # current: reused
    assert json.loads(marker.read_text()) == record
    # A set written by the earlier generator: same images, older questions, no version in its record.
    old = {k: v for k, v in record.items() if k != "questions_version"}
    marker.write_text(json.dumps(old))
    stale = folder / "train" / "metadata.jsonl"
    stale.write_text(stale.read_text().replace("is there a", "is there one"))
    ensure_shapes_dataset(folder, num_train=3, num_validation=0, num_test=0, image_size=32)
    assert json.loads(marker.read_text())["questions_version"] == 2 and "is there one" not in stale.read_text()


def test_multi_turn_fraction_outside_zero_to_one_is_refused(processor):
    from minivlm.data.collator import ConversationCollator

    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ConversationCollator(processor, multi_turn_fraction=bad)
