"""The model card: read back by huggingface_hub's own card parsing (metadata, model-index → eval results)."""

import re

import yaml
from conftest import make_images
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from test_training import shapes_dir, tiny_argv  # noqa: F401 (fixture)

from minivlm.training.model_card import card_examples, normalize_results, word_overlap, write_model_card
from minivlm.training.run import parse_args, train


METRICS = {
    "captions": {"bleu_4": 0.25, "cider": 1.5, "meteor": None, "unavailable": {"meteor": "no java"},
                 "dataset": "jxie/flickr8k", "split": "test", "decoding": {"num_beams": 3, "max_new_tokens": 32}},
    "answers": {"metrics": {"accuracy": 0.625}, "dataset": "shapes", "split": "validation",
                "decoding": {"do_sample": False, "max_new_tokens": 16}},
    "grounding": {"iou_50": 0.5, "mean_iou": 0.41, "dataset": "shapes", "split": "validation"},
}


def test_card_metadata_and_model_index_round_trip_through_huggingface_hub(tmp_path):
    images = make_images(2, size=32)
    examples = [{"id": "a", "prediction": "a red circle", "references": ["a red circle on the left"], "image": images[0]},
                {"id": "b", "question": "what is it?", "answer": "a square", "references": "a blue square"}]
    failures = [{"id": "c", "caption": "a green | square", "references": ["a red circle"], "score": 0.0,
                 "image": images[1]}]
    path = write_model_card(tmp_path / "model", base_model=["google/vit-large-patch16-224"], dataset="jxie/flickr8k",
                            num_train_examples=10, metrics=METRICS, examples=examples, failures=failures,
                            failure_criterion="word overlap", hardware="CPU Test (2 cores); no GPU",
                            instruction_tuned=True, trained_tasks=["captions", "answers", "boxes"])
    card = ModelCard.load(path)
    data = card.data
    assert data.pipeline_tag == "image-text-to-text" and data.library_name == "transformers"
    assert data.model_name == "model" and "image-to-text" in data.tags and "cider" in data.metrics
    assert {"accuracy", "iou_50", "mean_iou"} <= set(data.metrics)
    got = {(r.task_type, r.dataset_type, r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {
        ("image-to-text", "jxie/flickr8k", "test", "bleu_4"): 0.25,
        ("image-to-text", "jxie/flickr8k", "test", "cider"): 1.5,  # METEOR None: not a result
        ("visual-question-answering", "shapes", "validation", "accuracy"): 0.625,
        ("object-detection", "shapes", "validation", "iou_50"): 0.5,
        ("object-detection", "shapes", "validation", "mean_iou"): 0.41,
    }
    captions = next(r for r in data.eval_results if r.metric_type == "cider")
    assert captions.metric_args == {"num_beams": 3, "max_new_tokens": 32}

    # The YAML itself, as the Hub reads it.
    metadata = yaml.safe_load(path.read_text().split("---\n")[1])
    name, results = model_index_to_eval_results(metadata["model-index"])
    assert name == "model" and len(results) == 5

    text = card.text
    assert 'pipeline("image-to-text", model="model", trust_remote_code=True)' in text
    assert "processor.apply_chat_template(messages, add_generation_prompt=True)" in text  # it answers questions
    assert "### Visual question answering\n\nDataset: MiniVLM shapes (synthetic), split validation." in text and "| accuracy | 0.6250 |" in text
    assert "| meteor | unavailable |" in text and "Decoding: num_beams=3, max_new_tokens=32" in text
    assert '<img src="examples/example_0.png"' in text and (tmp_path / "model/examples/example_0.png").is_file()
    assert "**Q:** what is it? **A:** a square | a blue square |" in text
    assert "a green \\| square" in text and "| 0.00 |" in text and "(word overlap)" in text
    assert "Hardware: CPU Test (2 cores); no GPU" in text and "Training time: not measured" in text
    assert "## Intended uses and limitations" in text and "@software{minivlm," in text


def test_flat_caption_metrics_are_the_caption_task():
    results = normalize_results({"cider": 0.5, "bleu_4": 0.1, "meteor": None, "unavailable": {"meteor": "x"}},
                                {"split": "validation", "images": 4, "max_new_tokens": 32}, "shapes")
    assert list(results) == ["captions"]
    entry = results["captions"]
    assert entry["metrics"] == {"cider": 0.5, "bleu_4": 0.1, "meteor": None}
    assert entry["split"] == "validation" and entry["num_examples"] == 4 and entry["dataset"] == "shapes"


def test_a_captioner_card_says_it_was_not_evaluated_on_questions(tmp_path):
    path = write_model_card(tmp_path, dataset="shapes", metrics={"cider": 0.5})
    text = path.read_text()
    assert "apply_chat_template" not in text and "a question in the prompt" in text
    assert "No evaluation" not in text


def test_failures_are_the_lowest_scoring_predictions(tmp_path):
    predictions = [{"id": str(i), "caption": c, "references": ["a red circle", "a circle that is red"]}
                   for i, c in enumerate(["a red circle", "a blue square", "a red square", "circle red a"])]
    picked = card_examples(predictions, count=2)
    assert [f["id"] for f in picked["failures"]] == ["1", "2"]
    assert [e["id"] for e in picked["examples"]] == ["0", "1"]
    assert word_overlap("a red circle", ["a red circle"]) == 1.0 and word_overlap("x", ["a b"]) == 0.0


def test_the_saved_folder_has_a_card_with_results_examples_and_time(shapes_dir, tmp_path):  # noqa: F811
    argv = tiny_argv(tmp_path / "out", shapes_dir, "--max_steps", "2", "--save_strategy", "no",
                     "--eval_strategy", "no", "--caption_eval_samples", "4")
    train(*parse_args(argv))
    card = ModelCard.load(tmp_path / "out" / "README.md")
    cider = [r for r in card.data.eval_results if r.metric_type == "cider"]
    assert len(cider) == 1 and cider[0].dataset_split == "validation" and cider[0].task_type == "image-to-text"
    assert "Steps: 2 (0.33 epochs)" in card.text and re.search(r"Training time: \d+\.\d s\n", card.text)
    assert "## Example outputs" in card.text and (tmp_path / "out" / "examples" / "example_0.png").is_file()
    # Two steps from scratch: every caption is wrong, so the failure table is there, ranked by the
    # shapes scorer (the evaluation split carries the shapes' objects).
    assert ("Known failure cases, the lowest-scoring predictions of the evaluation (colour and shape of every "
            "object named right") in card.text
    assert (tmp_path / "out" / "examples" / "failure_0.png").is_file()


def test_card_text_follows_instruction_tuned_and_the_training_data_not_the_results(tmp_path):
    # Instruction-tuned on questions without boxes, evaluated on captions only.
    chat = write_model_card(tmp_path / "chat", dataset="shapes", metrics={"cider": 0.5}, instruction_tuned=True,
                            trained_tasks=["captions", "answers"], formats=["captions", "chat"]).read_text()
    assert "apply_chat_template" in chat and "trained to caption only" not in chat
    assert "Its answers were not scored for this card" in chat  # true: no question was evaluated
    assert "Asked to locate an object" not in chat and "grounding" not in chat.split("---")[1]  # no boxes trained
    assert "(training formats: captions, chat)" in chat
    metadata = yaml.safe_load(chat.split("---\n")[1])
    assert {r["task"]["type"] for r in metadata["model-index"][0]["results"]} == {"image-to-text"}
    # A captioner whose results happen to hold answers is still described as a captioner.
    captioner = write_model_card(tmp_path / "captioner", dataset="shapes", instruction_tuned=False,
                                 metrics={"captions": {"cider": 0.5}, "answers": {"vqa_accuracy": 0.1}}).read_text()
    assert "trained to caption only" in captioner and "apply_chat_template" not in captioner
    # Boxes in the training data: the grounding sentence and tag.
    boxes = write_model_card(tmp_path / "boxes", instruction_tuned=True,
                             trained_tasks=["captions", "answers", "boxes"]).read_text()
    assert "Asked to locate an object" in boxes and "- grounding" in boxes


def test_an_empty_prompt_is_not_quoted_and_a_given_one_is(tmp_path):
    empty = write_model_card(tmp_path / "empty", prompt="").read_text()
    assert 'prompt ""' not in empty and 'text=[""]' not in empty
    assert "The caption starts right after the image tokens" in empty
    given = write_model_card(tmp_path / "given", prompt="a photo of").read_text()
    assert 'The caption continues the prompt "a photo of" after the image tokens' in given
    assert 'text=["a photo of"]' in given
