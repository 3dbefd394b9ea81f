"""Boxes as text on the 0-1000 grid, the shapes set's questions and boxes, and the VQA / box metrics,
checked against values computed by hand."""

import pytest
from PIL import Image

from minivlm.processing.grounding import (
    box_to_grid, draw_boxes, format_box, grid_to_pixels, parse_boxes, parse_labelled_boxes,
)
from minivlm.processing.shapes import BOX_STEP, make_shapes_examples, score_caption, shapes_conversation
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


def test_boxes_are_named_by_the_words_of_their_clause():
    text = "the red circle [1, 2, 3, 4]. It is big; a blue square at [900, 0, 10, 5] and [0, 0, 1200, 5]"
    assert parse_labelled_boxes(text) == [
        ((1, 2, 3, 4), "red circle"),  # leading stopwords dropped
        ((900, 0, 10, 5), "blue square at"),  # only the clause after ";" counts; boxes come as written
        ((0, 0, 1200, 5), ""),  # "and" alone names nothing; off-grid boxes are listed, not checked
    ]
    assert parse_boxes(text) == [box for box, _ in parse_labelled_boxes(text)]


def test_drawing_enlarges_small_images_and_tags_only_when_labelled():
    image = Image.new("RGB", (30, 20), "white")
    plain = draw_boxes(image, [(0, 500, 1000, 1000)], colours="blue", width=1)
    assert plain.size == (30, 20) and plain.getpixel((15, 5)) == (255, 255, 255)  # no tag above the box
    big = draw_boxes(image, [(0, 500, 1000, 1000)], labels=[""], colours="blue", width=1, min_side=50)
    assert big.size == (90, 60)  # 20 px -> 3 x 20 = 60 >= 50, aspect kept
    assert big.getpixel((2, 29)) == (0, 0, 255)  # the tag ("box 1") sits on the box's top edge, in its colour


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

    from minivlm.processing.tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(
        ["what colour is the triangle? red", "locate the circle [10, 20, 30, 40]", "x [ a"]
    )
    assert "?" not in tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    for loaded in (tokenizer, AutoTokenizer.from_pretrained(tmp_path)):
        # The answer is predicted at the question's last word, as in training, whether or not the user types "?".
        assert loaded("What colour is the triangle?")["input_ids"] == loaded("what colour is the triangle")["input_ids"]
        assert loaded.tokenize("triangle?red") == ["triangle", "red"]
        # A box's "[" stays on its first number (one token); any other bracket is a token of its own.
        assert loaded.tokenize("[10, 20, 30, 40]") == ["[10", ",", "20", ",", "30", ",", "40", "]"]
        assert loaded.tokenize("[ 20, 30]") == ["[", "20", ",", "30", "]"]
        assert loaded.tokenize("x[10 [a") == ["x", "[10", "[", "a"]
        assert loaded.decode(loaded("[10, 20, 30, 40]", add_special_tokens=False)["input_ids"]) == "[10, 20, 30, 40]"
        assert loaded.unk_token_id not in loaded("what colour is the triangle?")["input_ids"]


def test_a_set_with_older_questions_is_written_again_and_other_folders_are_untouched(tmp_path):
    import json

    from minivlm.processing.shapes import SHAPES_MARKER, ensure_shapes_dataset, generate_shapes_dataset

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
    from minivlm.processing.collator import ConversationCollator

    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ConversationCollator(processor, multi_turn_fraction=bad)


# -- boundaries of the documented rules, values worked out by hand ---------------------------------
def test_boxes_on_a_non_square_image_scale_each_axis_by_its_own_side():
    # 200 x 100 image: x is divided by 200, y by 100.
    assert box_to_grid((50, 25, 150, 75), (200, 100)) == (250, 250, 750, 750)
    assert box_to_grid((0, 0, 200, 50), (200, 100)) == (0, 0, 1000, 500)
    assert box_to_grid((0, 0, 100, 100), (100, 200)) == (0, 0, 1000, 500)  # portrait: the other way round
    assert format_box((50, 25, 150, 75), image_size=(200, 100)) == "[250, 250, 750, 750]"
    assert grid_to_pixels((250, 250, 750, 750), (200, 100)) == (50.0, 25.0, 150.0, 75.0)


def test_grid_rounding_to_the_nearest_step_and_the_1000_edge():
    # 7 / 64 = 0.109375 -> 109.375 -> 109 (step 1); -> 10.9375 tens -> 110 (step 10); 25 / 64 -> 390.625 -> 391 / 390.
    assert box_to_grid((7, 25, 64, 64), (64, 64)) == (109, 391, 1000, 1000)
    assert box_to_grid((7, 25, 64, 64), (64, 64), step=10) == (110, 390, 1000, 1000)
    assert box_to_grid((7, 25, 64, 64), (64, 64), step=25) == (100, 400, 1000, 1000)  # 4.375 -> 4, 15.625 -> 16
    # Past the image is clipped to the grid: the right and bottom edges are 1000, never more; left/top 0.
    assert box_to_grid((-5, -1, 70, 99), (64, 64)) == (0, 0, 1000, 1000)
    assert box_to_grid((0, 0, 63, 63), (64, 64)) == (0, 0, 984, 984)  # 984.375: the last pixel's left edge
    with pytest.raises(ValueError, match="step must divide 1000"):
        box_to_grid((0, 0, 1, 1), (2, 2), step=3)


def test_the_1000_edge_is_a_box_and_1001_is_not():
    from minivlm.app.boxes import reply_boxes as page_boxes

    assert parse_boxes("at [0, 0, 1000, 1000]") == [(0, 0, 1000, 1000)]
    assert [(b.x1, b.y1, b.x2, b.y2) for b in page_boxes("the circle [0, 0, 1000, 1000]")] == [(0, 0, 1000, 1000)]
    assert page_boxes("the circle [0, 0, 1001, 1000]") == []  # off the grid: not a box in this format
    assert page_boxes("a [10, 10, 10, 50] line") == []  # no area
    box = page_boxes("the red circle [1000, 800, 200, 0]")[0]  # corners swapped on both axes
    assert (box.x1, box.y1, box.x2, box.y2, box.label) == (200, 0, 1000, 800, "red circle")
    assert box.to_pixels(300, 150) == (60.0, 0.0, 300.0, 120.0)  # non-square: x by 300, y by 150


def test_iou_takes_corners_in_any_order():
    # a = [0, 10] x [0, 10], b = [5, 15] x [5, 15]: intersection 5 x 5 = 25, union 100 + 100 - 25 = 175.
    for a in ((0, 0, 10, 10), (10, 10, 0, 0), (10, 0, 0, 10), (0, 10, 10, 0)):
        for b in ((5, 5, 15, 15), (15, 15, 5, 5), (15, 5, 5, 15)):
            assert box_iou(a, b) == pytest.approx(25 / 175), (a, b)
    assert box_iou((30, 40, 10, 20), (10, 20, 30, 40)) == 1.0
    assert box_iou((0, 0, 0, 10), (0, 0, 10, 10)) == 0.0  # empty box
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges only
    # Exactly IoU 0.5 counts as a hit (">= threshold"): [0, 1000] x [0, 500] inside [0, 1000]^2.
    metrics = box_metrics([(0, 0, 1000, 500), (1000, 1000, 0, 500), None], [(0, 0, 1000, 1000)] * 3)
    assert metrics == {"box_accuracy": pytest.approx(2 / 3), "box_mean_iou": pytest.approx((0.5 + 0.5 + 0) / 3)}


@pytest.mark.parametrize("raw, expected", [
    ("yes!", "yes"),                     # no space around "!": replaced by a space, then trimmed
    ("red, blue", "red blue"),           # ", " : removed
    ("red,blue", "red blue"),            # "," between letters: a space
    ("1,000,000", "1000000"),            # comma between digits: removed
    ("3.5", "3.5"),                      # a full stop inside a number stays
    ("it is 3.", "it is 3"),             # a final full stop goes
    ("x-ray", "x ray"),
    ("(left)", "left"),
    ("a/b", "b"),                        # "/" becomes a space; "a" is then an article
    ("it's", "it's"),                    # the apostrophe is not in the list
    ("one, two", "1 2"),
    ("\"the\" cat?", "cat"),
])
def test_vqa_normalisation_of_punctuation(raw, expected):
    assert normalize_answer(raw) == expected


def test_the_vqa_target_is_the_most_frequent_answer_and_ties_go_to_the_first_given():
    from minivlm.processing.conversations import vqa_target

    assert vqa_target(["blue", "red", "red"]) == "red"
    assert vqa_target(["blue", "red", "red", "blue"]) == "blue"  # 2 - 2: blue came first
    assert vqa_target(["red", "blue", "blue", "red"]) == "red"
    assert vqa_target([{"answer": "two"}, {"answer": " 2 "}, {"answer": "2"}]) == "2"  # stripped before counting
    assert vqa_target(["", "  ", None]) == ""
    assert vqa_target(["a", "b", "c"]) == "a"


def test_the_shapes_tokenizer_knows_every_word_of_the_set_and_every_box_on_the_grid():
    from minivlm.processing.shapes import shapes_texts
    from minivlm.processing.tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(shapes_texts())
    texts = [t for e in make_shapes_examples(200, image_size=64, seed=5)
             for t in [*e["captions"], *(q[k] for q in e["questions"] for k in ("question", "answer"))]]
    # The grid's edges in every place, written by hand, and a box whose first number is its largest.
    texts += ["[0, 0, 1000, 1000]", "[1000, 1000, 0, 0]", "[990, 10, 1000, 20]"]
    unknown = [t for t in texts if tokenizer.unk_token_id in tokenizer(t, add_special_tokens=False)["input_ids"]]
    assert unknown == []
    assert tokenizer.tokenize("[1000, 0, 10, 990]") == ["[1000", ",", "0", ",", "10", ",", "990", "]"]
