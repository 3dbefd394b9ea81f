"""Decoding defaults live in the model's generation_config and every generating path reads them; the one
batched generation loop (`minivlm.evaluation.generation.generate_texts`) gives what generating one
sample at a time gives."""

import pytest
import torch

from conftest import make_config, make_images, make_model, make_processor, make_tokenizer
from minivlm.app.engine import ChatModel
from minivlm.configuration_minivlm import DEFAULT_DECODING
from minivlm.evaluation.answering import answer_chats, answer_decoding, answer_questions, evaluate_answers
from minivlm.evaluation.captioning import evaluate_captions, generate_captions


@pytest.fixture
def tiny():
    tokenizer = make_tokenizer()
    config = make_config(tokenizer)
    return make_model(config, seed=3, tokenizer=tokenizer), make_processor(config, tokenizer)


def spy_generate(model) -> list[dict]:
    """Records the keyword arguments of every `model.generate` call (and still generates)."""
    calls, generate = [], model.generate

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return generate(*args, **kwargs)

    model.generate = recording
    return calls


def one_at_a_time(model, processor, image, prompt: str, max_new_tokens: int) -> str:
    """The independent path: one sample, unpadded, decoded by the tokenizer itself."""
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_the_builder_writes_the_decoding_defaults_into_generation_config(tiny):
    model, _ = tiny
    assert DEFAULT_DECODING == {"max_new_tokens": 32, "num_beams": 1, "do_sample": False}
    assert model.generation_config.max_new_tokens == 32 and model.generation_config.num_beams == 1


def test_evaluation_reads_max_new_tokens_from_generation_config_and_a_given_value_wins(tiny):
    model, processor = tiny
    model.generation_config.max_new_tokens = 5
    model.generation_config.eos_token_id = None  # never stops early: the length is the cap
    calls = spy_generate(model)
    images = make_images(2)
    captions = generate_captions(model, processor, images, progress=False)
    assert [kwargs["max_new_tokens"] for kwargs in calls] == [5]
    assert all(len(processor.tokenizer(c, add_special_tokens=False)["input_ids"]) <= 5 for c in captions)
    _, metrics = evaluate_captions(model, processor, _caption_set(images), meteor=False, progress=False)
    assert metrics["decoding"]["max_new_tokens"] == 5 and calls[-1]["max_new_tokens"] == 5
    answer_questions(model, processor, images, ["what colour", "how many"])
    assert calls[-1]["max_new_tokens"] == 5 and calls[-1]["do_sample"] is False  # answers: the same default
    assert answer_decoding(model) == {"max_new_tokens": 5, "num_beams": 1, "do_sample": False}
    generate_captions(model, processor, images, max_new_tokens=3, progress=False)
    answer_questions(model, processor, images, ["what colour", "how many"], max_new_tokens=2)
    evaluate_answers(model, processor, [{"image": images[0], "question": "what", "answer": "red"}], max_new_tokens=4)
    assert [kwargs["max_new_tokens"] for kwargs in calls[-3:]] == [3, 2, 4]  # what the caller says wins


def test_the_task_helpers_and_the_app_read_generation_config(tiny):
    model, processor = tiny
    model.generation_config.max_new_tokens = 7
    calls = spy_generate(model)
    model.caption(make_images(1)[0], processor=processor)
    assert calls[-1]["max_new_tokens"] == 7
    model.caption(make_images(1)[0], processor=processor, max_new_tokens=2)
    assert calls[-1]["max_new_tokens"] == 2
    assert ChatModel(model, processor).max_new_tokens == 7
    assert ChatModel(model, processor, max_new_tokens=9).max_new_tokens == 9
    model.generation_config.max_new_tokens = 1000  # over the page's bound: the page starts at the bound
    assert ChatModel(model, processor).max_new_tokens == 256
    with pytest.raises(ValueError, match="max_new_tokens"):
        ChatModel(model, processor, max_new_tokens=1000)  # a value the user gives out of bounds is refused


def test_a_model_saved_without_decoding_defaults_gets_the_project_default(tiny):
    model, processor = tiny
    model.generation_config.max_new_tokens = None  # as generation_config.json files written before
    calls = spy_generate(model)
    generate_captions(model, processor, make_images(1), progress=False)
    assert calls[-1]["max_new_tokens"] == DEFAULT_DECODING["max_new_tokens"]


def test_batched_captions_and_answers_match_one_sample_at_a_time(tiny):
    model, processor = tiny
    images = make_images(5, seed=4)
    captions = generate_captions(model, processor, images, batch_size=2, prompt="", progress=False)
    assert captions == [one_at_a_time(model, processor, image, processor.image_token, 32) for image in images]

    questions = ["what colour is it", "how many", "where is the red circle", "what", "is there a dog"]
    histories = [[], [("what colour", "red")], [], [("how many", "2"), ("where", "left")], []]
    answers = answer_chats(model, processor, images, histories, questions, batch_size=3, max_new_tokens=6)
    from minivlm.processing.conversations import chat_messages

    expected = [one_at_a_time(model, processor, image,
                              processor.apply_chat_template(chat_messages(history, question), add_generation_prompt=True), 6)
                for image, history, question in zip(images, histories, questions)]
    assert answers == expected
    assert len({a for a in answers}) > 1  # noise images and different prompts: the order would show


def test_generation_leaves_the_tokenizer_and_training_mode_as_they_were(tiny):
    model, processor = tiny
    processor.tokenizer.padding_side = "right"
    model.train()
    answer_questions(model, processor, make_images(2), ["what colour is it", "how many shapes are there"])
    assert processor.tokenizer.padding_side == "right" and model.training
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        generate_captions(model, processor, make_images(1), batch_size=0)


def _caption_set(images):
    import datasets

    return datasets.Dataset.from_dict({"image": images, "captions": [["a red circle"]] * len(images),
                                       "id": [str(i) for i in range(len(images))]})
