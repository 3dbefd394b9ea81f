"""The task helpers on the model (`caption`, `query`, `detect`): equal to the pipelines, boxes checked,
the image encoded once per image, the processor found the way transformers finds it."""

import pytest
import torch
from conftest import make_images, make_model
from transformers import AutoModel, AutoProcessor, pipeline

from minivlm.grounding_minivlm import parse_boxes, valid_box


QUESTIONS = ["the red circle", "a blue square on the left", "two"]


@pytest.fixture(scope="module")
def loaded(saved_model_dir):
    return AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True).eval()


def count_encodes(model) -> list[int]:
    """A one-element list counting the vision tower's forward passes."""
    calls = [0]
    model.vision_tower.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_caption_equals_the_image_to_text_pipeline(loaded, saved_model_dir):
    captioner = pipeline("image-to-text", model=str(saved_model_dir), trust_remote_code=True)
    for image in make_images(3):  # 40x40, 43x45, 46x50: non-square images too
        assert loaded.caption(image, max_new_tokens=6) == captioner(image, max_new_tokens=6)[0]["generated_text"]
        assert (loaded.caption(image, "a red", max_new_tokens=4)
                == captioner(image, prompt="a red", max_new_tokens=4)[0]["generated_text"])


def test_query_and_its_stream_equal_the_image_text_to_text_pipeline(loaded, saved_model_dir):
    chat = pipeline("image-text-to-text", model=str(saved_model_dir), trust_remote_code=True)
    image = make_images(2)[1]
    for question in QUESTIONS:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
        expected = chat(text=messages, max_new_tokens=5, return_full_text=False)[0]["generated_text"].strip()
        assert loaded.query(image, question, max_new_tokens=5) == expected
        pieces = list(loaded.query(image, question, max_new_tokens=5, stream=True))
        assert len(pieces) > 1 and "".join(pieces).strip() == expected  # streamed piece by piece
    with pytest.raises(ValueError, match="beam search cannot stream"):
        list(loaded.query(image, "the red circle", stream=True, num_beams=2))
    with pytest.raises(ValueError, match="question must be a non-empty string"):
        loaded.query(image, "  ")


def test_detect_reads_the_pipelines_answer_as_boxes(loaded, saved_model_dir):
    chat = pipeline("image-text-to-text", model=str(saved_model_dir), trust_remote_code=True)
    image = make_images(1)[0]
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "locate the red circle"}]}]
    answer = chat(text=messages, max_new_tokens=8, return_full_text=False)[0]["generated_text"].strip()
    found = loaded.detect(image, "red circle", max_new_tokens=8)
    assert found["text"] == answer
    boxes = [valid_box(box) for box in parse_boxes(answer)]
    assert [o["box"] for o in found["objects"]] == [box for box in boxes if box is not None]


def test_detect_repairs_or_drops_invalid_boxes_and_gives_pixels(loaded, monkeypatch):
    image = make_images(3)[2]  # 50 wide, 46 high
    assert image.size == (50, 46)
    answer = "the red circle [100, 200, 300, 400] [300, 400, 100, 200] [0, 0, 1200, 10] [5, 5, 5, 90] [1,2,3]"
    asked = []
    monkeypatch.setattr(loaded, "query", lambda image, question, **kwargs: asked.append(question) or answer)
    found = loaded.detect(image, " red circle ")
    assert asked == ["locate the red circle"]
    # [300, 400, 100, 200] has its corners swapped: repaired; 1200 is off the grid and [5, 5, 5, 90] has no width.
    assert [o["box"] for o in found["objects"]] == [(100, 200, 300, 400), (100, 200, 300, 400)]
    assert found["dropped"] == 2 and all(o["label"] == "red circle" for o in found["objects"])
    # pixels: x * 50 / 1000, y * 46 / 1000
    assert found["objects"][0]["box_pixels"] == pytest.approx((5.0, 9.2, 15.0, 18.4))
    assert valid_box((0, 0, 1000, 1000)) == (0, 0, 1000, 1000) and valid_box((-1, 0, 10, 10)) is None
    with pytest.raises(ValueError, match="object must name what to find"):
        loaded.detect(image, "")
    with pytest.raises(ValueError, match="prompt must hold one '\\{\\}' where the object goes"):
        loaded.detect(image, "red circle", prompt="find it")  # the object would be left out of the question


def test_a_list_of_images_is_refused_not_answered_for_the_first_only(loaded):
    with pytest.raises(ValueError, match="got 2 images; the helpers take one image at a time"):
        loaded.caption(make_images(2))


def test_one_image_is_encoded_once_across_calls(saved_model_dir):
    model = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True).eval()
    reference = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True).eval()
    calls = count_encodes(model)
    image, other = make_images(2)
    first = model.caption(image, max_new_tokens=4)
    assert model.caption(image, max_new_tokens=4) == first and calls[0] == 1  # the encoder's features reused
    answers = [model.query(image, question, max_new_tokens=4) for question in QUESTIONS]
    model.detect(image, "red circle", max_new_tokens=4)
    assert calls[0] == 2  # one KV prefix of the image for every question and the boxes
    assert answers == [reference.query(image, question, max_new_tokens=4) for question in QUESTIONS]
    model.query(other, "the red circle", max_new_tokens=4)
    model.caption(other, max_new_tokens=4)
    assert calls[0] == 4  # another image is encoded again, never answered from the first one's encoding
    assert model.caption(image, max_new_tokens=4) == first
    assert calls[0] == 5  # back to the first image: encoded again (one image's encoding is kept)
    model.to(torch.float64)  # features of the model as it was are not reused for the model as it is
    model.caption(image, max_new_tokens=4)
    assert calls[0] == 6


def test_the_processor_is_loaded_from_where_the_model_came_from_or_passed(saved_model_dir, processor, images):
    model = AutoModel.from_pretrained(saved_model_dir, trust_remote_code=True).eval()
    assert type(model.task_processor()).__name__ == "MiniVLMProcessor"  # from config._name_or_path
    built = make_model()  # in memory: no folder to find a processor in
    with pytest.raises(ValueError, match="not loaded from a folder or Hub repo.*pass processor="):
        built.caption(images[0])
    assert isinstance(built.caption(images[0], processor=processor, max_new_tokens=2), str)
    assert built.task_processor() is processor  # kept for later calls
