"""Training examples: caption + EOS as target, loss on caption tokens only, the inference prompt,
seeded reference choice per epoch, dynamic padding, truncation with EOS kept."""

import pytest
import torch
from conftest import make_images

from minivlm.processing.collator import ConversationCollator, choose_caption
from minivlm.training.callbacks import CaptionEpochCallback


def examples(n=3, captions=None):
    captions = captions or [["a red circle", "the red circle on the left", "a circle"]] * n
    return [{"image": image, "captions": caps, "id": f"img{i}"} for i, (image, caps) in enumerate(zip(make_images(n), captions))]


def test_target_is_caption_then_eos_and_loss_covers_it_only(processor, tokenizer):
    collator = ConversationCollator(processor, seed=0)
    batch = collator(examples(1, [["a red circle"]]))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    caption = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert ids == [processor.image_token_id] * 17 + caption + [tokenizer.eos_token_id]
    assert labels == [-100] * 17 + caption + [tokenizer.eos_token_id]
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


def test_prompt_is_tokenised_as_at_inference_and_masked(processor, tokenizer):
    collator = ConversationCollator(processor, prompt="this image shows")
    batch = collator(examples(1, [["a dog"]]))
    inference_ids = processor(images=make_images(1), text="this image shows")["input_ids"][0].tolist()
    n = len(inference_ids)
    assert batch["input_ids"][0, :n].tolist() == inference_ids
    assert (batch["labels"][0, :n] == -100).all()
    assert batch["labels"][0, n:].tolist() == tokenizer(" a dog", add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]


def test_batches_are_padded_to_their_longest_sequence(processor, tokenizer):
    collator = ConversationCollator(processor)
    batch = collator(examples(2, [["a"], ["a red circle on the left"]]))
    assert batch["input_ids"].shape == (2, 17 + 6 + 1)
    assert batch["attention_mask"][0].tolist() == [1] * 19 + [0] * 5
    assert (batch["input_ids"][0, 19:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, 19:] == -100).all()


def test_overlong_captions_are_truncated_with_eos_kept(processor, tokenizer):
    collator = ConversationCollator(processor, max_caption_tokens=4)
    batch = collator(examples(1, [["a red circle on the left of the square"]]))
    target = batch["labels"][0, 17:].tolist()
    assert len(target) == 4
    assert target[-1] == tokenizer.eos_token_id
    assert target[:3] == tokenizer("a red circle", add_special_tokens=False)["input_ids"]


def test_reference_choice_is_seeded_and_changes_with_the_epoch():
    captions = [f"caption {i}" for i in range(5)]
    picks = {epoch: choose_caption(captions, 42, epoch, "img7") for epoch in range(20)}
    assert picks == {epoch: choose_caption(captions, 42, epoch, "img7") for epoch in range(20)}
    assert len(set(picks.values())) > 1  # a different reference in different epochs
    other_seed = [choose_caption(captions, 43, epoch, "img7") for epoch in range(20)]
    assert other_seed != list(picks.values())


def test_epoch_callback_moves_the_collator_to_the_current_epoch(processor):
    collator = ConversationCollator(processor)
    callback = CaptionEpochCallback(collator)

    class State:
        epoch = 2.5  # halfway through the third epoch, e.g. after resuming

    callback.on_epoch_begin(None, State(), None)
    assert collator.epoch == 2
    expected = [choose_caption(e["captions"], 42, 2, e["id"]) for e in examples(3)]
    decoded = [
        processor.tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True)
        for row in collator(examples(3))["labels"].tolist()
    ]
    assert decoded == expected


def test_tokenizer_without_eos_is_rejected(processor):
    processor.tokenizer.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        ConversationCollator(processor)


def test_loss_from_the_kept_window_equals_the_full_loss(processor, model):
    batch = ConversationCollator(processor, prompt="this")(examples(3, [["a"], ["a red circle on the left"], ["the dog"]]))
    n = batch["logits_to_keep"]
    assert n == batch["input_ids"].shape[1] - 18 + 1  # from the last context token (17 image + 1 prompt) on
    windowed = model(**batch)
    full = model(**{k: v for k, v in batch.items() if k != "logits_to_keep"})
    assert windowed.logits.shape[1] == n
    torch.testing.assert_close(windowed.loss, full.loss)
    torch.testing.assert_close(windowed.logits, full.logits[:, -n:])


def test_length_column_is_the_collated_length_and_reads_no_image(processor):
    from datasets import Dataset, Features, Image, Sequence, Value

    collator = ConversationCollator(processor, prompt="this image shows", max_caption_tokens=6)
    one = collator([{"image": make_images(1)[0], "captions": ["a red circle"], "id": "x"}])
    assert collator.sequence_length(["a red circle"]) == one["input_ids"].shape[1]
    # Several references: their mean, since each epoch draws one; truncation counts.
    lengths = [len(collator.caption_ids(c)) for c in ("a", "a red circle on the left of the square")]
    assert lengths == [2, 6]
    assert collator.sequence_length(["a", "a red circle on the left of the square"]) == len(collator.context_ids()) + 4

    # Undecodable image bytes: building the column must not touch the images.
    features = Features({"image": Image(), "captions": Sequence(Value("string")), "id": Value("string")})
    dataset = Dataset.from_dict(
        {"image": [{"bytes": b"not an image", "path": None}] * 2, "captions": [["a"], ["a red circle"]], "id": ["0", "1"]},
        features=features,
    )
    with_length = collator.add_length_column(dataset)
    assert with_length["length"] == [collator.sequence_length(["a"]), collator.sequence_length(["a red circle"])]
    assert with_length.column_names == [*dataset.column_names, "length"]
