"""The offline demo (`make demo`): both stages wired end to end on a few steps, its outputs written."""

import json

from transformers import AutoConfig, AutoTokenizer

from minivlm.scripts import demo


def test_demo_trains_a_captioner_then_instruction_tunes_it(tmp_path, capsys):
    out = tmp_path / "demo"
    demo.main(["--output_dir", str(out), "--max_steps", "2", "--num_train_images", "64", "--num_samples", "2"])
    summary = json.loads((out / "demo_summary.json").read_text())
    # Both stages ran: the captioner, then the instruction tuning that starts from its folder.
    assert summary["train_steps"] == 4
    captioner = json.loads((out / "captioner" / "config.json").read_text())
    assert captioner.get("instruction_tuned") is not True
    assert AutoConfig.from_pretrained(out / "model", trust_remote_code=True).instruction_tuned is True
    record = json.loads((out / "model" / "_minivlm_run.json").read_text())
    assert str(out / "captioner") in json.dumps(record)
    # Every figure the README quotes is in the summary, and every picture is written.
    for key in ("shapes_accuracy", "bleu_4", "cider", "vqa_accuracy", "box_accuracy", "box_mean_iou"):
        assert 0.0 <= summary[key] <= 10.0, key
    for picture in ("loss_curve.png", "captions_before_after.png", "boxes.png"):
        assert (out / picture).stat().st_size > 0
    answers = json.loads((out / "answers.json").read_text())
    assert {a["type"] for a in answers} == {"objects", "colour", "count", "exists", "where", "box"}
    # The captioner's tokenizer, built before any question was trained, already knows every word of them.
    tokenizer = AutoTokenizer.from_pretrained(out / "captioner")
    for a in answers:
        assert tokenizer.unk_token_id not in tokenizer(f"{a['question']} {a['answers'][0]}")["input_ids"], a
    printed = capsys.readouterr().out
    assert "shapes-tiny: trained 2 steps" in printed and "shapes-instruct: trained 2 steps" in printed


def test_demo_refuses_worker_counts_before_any_work(tmp_path):
    import pytest

    for workers, message in (("3", "does not split the batch of 32 evenly"), ("0", "1 or more"), ("-2", "1 or more")):
        with pytest.raises(ValueError, match=message):
            demo.main(["--output_dir", str(tmp_path / "demo"), "--workers", workers])
    assert not (tmp_path / "demo").exists()  # nothing generated, nothing trained
