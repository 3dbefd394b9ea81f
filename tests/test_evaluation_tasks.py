"""One evaluation for every training format: the tasks rows hold, and the caption and question sets
an evaluation split of any view gives."""

import datasets
import numpy as np
import pytest
import torch
from conftest import make_images

from minivlm.processing.adapters import to_caption_dataset
from minivlm.processing.conversations import from_chat, to_training_view
from minivlm.evaluation.answering import evaluate_answers
from minivlm.evaluation.tasks import conversation_questions, data_tasks, evaluation_sets, scores_by_task


def user(*parts):
    return {"role": "user", "content": [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]}


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def chats(images):
    """Two conversations: two questions about one image; and one whose image comes with the second question."""
    return from_chat(datasets.Dataset.from_dict({
        "messages": [[user(None, "what colour is the circle?"), assistant("red"), user("and the square?"), assistant("blue")],
                     [user("hello"), assistant("hi"), user(None, "what is it?"), assistant("a dog [10, 20, 30, 40]")]],
        "images": [[images[0]], [images[1]]], "id": ["c0", "c1"],
    }, features=datasets.Features({"messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
        {"type": datasets.Value("string"), "text": datasets.Value("string")})}), "images": datasets.List(datasets.Image()),
        "id": datasets.Value("string")})))


def captions(images):
    return to_caption_dataset(datasets.Dataset.from_dict(
        {"image": images, "caption": [f"a red circle {i}" for i in range(len(images))], "id": [f"p{i}" for i in range(len(images))]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"), "id": datasets.Value("string")})))


def test_data_tasks_read_the_rows_not_the_columns():
    images = make_images(3, size=24)
    caption_view = captions(images[:2])
    assert data_tasks(caption_view) == ["captions"]
    # A caption set in the training view has an (empty) messages column: still captions only.
    assert "messages" in to_training_view(caption_view).column_names
    assert data_tasks(to_training_view(caption_view)) == ["captions"]
    assert data_tasks(chats(images)) == ["answers", "boxes"]
    no_box = chats(images).select([0])
    assert data_tasks(no_box) == ["answers"]
    mixed = datasets.concatenate_datasets([to_training_view(caption_view), to_training_view(chats(images))])
    assert data_tasks(mixed) == ["captions", "answers", "boxes"]


def test_every_assistant_turn_is_a_question_asked_with_the_turns_before_it():
    images = make_images(2, size=24)
    questions = conversation_questions(chats(images))
    rows = list(questions)
    # c1's first answer ("hi") has no image before it: it is not an image question.
    assert [(r["id"], r["question"], r["answers"]) for r in rows] == [
        ("c0", "what colour is the circle?", ["red"]),
        ("c0", "and the square?", ["blue"]),
        ("c1", "what is it?", ["a dog [10, 20, 30, 40]"]),
    ]
    assert [len(r["messages"]) for r in rows] == [1, 3, 3]  # the context up to the question
    assert [m["role"] for m in rows[1]["messages"]] == ["user", "assistant", "user"]
    assert rows[1]["messages"][1]["content"][0]["text"] == "red"  # the reference answer is the context
    assert [len(r["images"]) for r in rows] == [1, 1, 1]
    assert np.array_equal(np.asarray(rows[2]["images"][0]), np.asarray(images[1].convert("RGB")))


def test_a_later_turn_is_answered_exactly_as_its_hand_written_chat_prompt(model, processor):
    images = make_images(2, size=24)
    questions = conversation_questions(chats(images))
    records, metrics = evaluate_answers(model, processor, questions, batch_size=3)
    # The second question, by hand: the whole conversation so far through the chat template.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the circle?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
                {"role": "user", "content": [{"type": "text", "text": "and the square?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[images[0]], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=model.generation_config.max_new_tokens, do_sample=False)
    expected = processor.post_process_image_text_to_text(ids[:, inputs["input_ids"].shape[1]:])[0]
    assert records[1]["prediction"] == expected
    assert records[1]["question"] == "and the square?" and records[1]["answers"] == ["blue"]
    # Two plain answers scored by VQA accuracy, one box answer by IoU.
    assert set(metrics) == {"vqa_accuracy", "box_accuracy", "box_mean_iou"}


def test_a_training_view_split_gives_its_caption_rows_and_its_conversation_turns():
    images = make_images(4, size=24)
    mixed = datasets.concatenate_datasets([to_training_view(captions(images[:2])), to_training_view(chats(images[2:]))])
    sets = evaluation_sets(mixed, objects={"p0": [{"shape": "circle"}], "p1": []})
    assert sets.captions["id"] == ["p0", "p1"] and sets.captions["captions"] == [["a red circle 0"], ["a red circle 1"]]
    for got, want in zip(sets.captions["image"], images[:2]):
        assert np.array_equal(np.asarray(got), np.asarray(want.convert("RGB")))
    assert sets.captions["objects"] == [[{"shape": "circle"}], []]
    assert sets.questions["question"] == ["what colour is the circle?", "and the square?", "what is it?"]
    # The first rows only: one caption row, no conversation.
    first = evaluation_sets(mixed, max_rows=1)
    assert len(first.captions) == 1 and first.questions is None
    # A caption-view split has no questions; a chat split no captions; objects missing for an id: none attached.
    assert evaluation_sets(captions(images[:2])).questions is None
    assert "objects" not in evaluation_sets(captions(images[:2]), objects={"p0": []}).captions.column_names
    assert evaluation_sets(chats(images[2:])).captions is None
    assert not evaluation_sets(None)


def test_scores_are_grouped_by_task():
    scores = {"cider": 0.5, "bleu_4": 0.1, "shapes_accuracy": 1.0, "vqa_accuracy": 0.25, "vqa_accuracy_colour": 0.5,
              "box_accuracy": 0.0, "box_mean_iou": 0.125, "meteor": None, "loss": 2.0}
    assert scores_by_task(scores) == {
        "captions": {"cider": 0.5, "bleu_4": 0.1, "shapes_accuracy": 1.0},
        "answers": {"vqa_accuracy": 0.25, "vqa_accuracy_colour": 0.5},
        "boxes": {"box_accuracy": 0.0, "box_mean_iou": 0.125},
    }
    assert scores_by_task({"eval_loss": 1.0}) == {}


@pytest.mark.parametrize("column", ["answer", "answers"])
def test_vqa_questions_keep_every_reference_and_drop_rows_without_an_answer(tmp_path, column):
    from minivlm.evaluation.answering import load_questions

    images = make_images(3, size=24)
    answers = [[{"answer": "red"}], [{"answer": "red"}, {"answer": "dark red"}, {"answer": " "}], [{"answer": ""}]]
    if column == "answer":
        answers = ["red", "dark red", ""]
    ds = datasets.Dataset.from_dict({"image": images, "question": ["q0", "q1", "q2"], column: answers})
    datasets.DatasetDict({"test": ds}).save_to_disk(tmp_path / "vqa")
    questions = load_questions(str(tmp_path / "vqa"), "test")
    want = [["red"], ["red", "dark red"]] if column == "answers" else [["red"], ["dark red"]]
    assert questions["question"] == ["q0", "q1"] and questions["answers"] == want
