"""`minivlm-export` writes ONNX files that onnxruntime runs to the tokens of `model.generate`."""

import json

import numpy as np
import pytest
import torch
from conftest import make_images

from minivlm import MiniVLMForConditionalGeneration, MiniVLMProcessor


pytest.importorskip("onnxscript", reason='the export extra is not installed: pip install -e ".[export]"')
pytest.importorskip("onnxruntime", reason='the export extra is not installed: pip install -e ".[export]"')

from minivlm.export.onnx_export import MARKER  # noqa: E402
from minivlm.export.runner import OnnxMiniVLM  # noqa: E402
from minivlm.scripts.export import main as export_main  # noqa: E402


@pytest.fixture(scope="module")
def exported(onnx_export_dir):
    return onnx_export_dir  # one export per session, shared with the README's snippet test


def test_onnx_greedy_tokens_equal_generate(exported, saved_model_dir):
    model = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir).eval()
    processor = MiniVLMProcessor.from_pretrained(exported)  # the processor travels with the export
    # Two texts of different lengths (left padding), the second with two images.
    inputs = processor(
        images=make_images(3), text=["<image> a red", "<image> the <image> small blue circle on"],
        return_tensors="pt", padding=True,
    )
    assert inputs["attention_mask"][0].min() == 0  # the first row really is padded
    with torch.no_grad():
        expected = model.generate(
            **inputs, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    tokens, logits = OnnxMiniVLM(exported).generate(
        **{k: v.numpy() for k, v in inputs.items()}, max_new_tokens=8, output_logits=True
    )
    np.testing.assert_array_equal(tokens, expected.sequences.numpy())
    # Every step's logits, not only their argmax (a tiny random model repeats one token): a wrong
    # position, mask or cache shows here.
    assert len(logits) == len(expected.logits) == 8
    for step, (onnx_step, torch_step) in enumerate(zip(logits, expected.logits)):
        np.testing.assert_allclose(onnx_step, torch_step.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"step {step}")


def test_export_writes_the_vlm_split_and_marks_the_folder(exported):
    names = sorted(p.name for p in (exported / "onnx").iterdir())
    assert names == ["decoder_model_merged.onnx", "embed_tokens.onnx", "vision_encoder.onnx"]
    marker = json.loads((exported / MARKER).read_text())
    assert "onnx/decoder_model_merged.onnx" in marker["files"] and "config.json" in marker["files"]
    runner = OnnxMiniVLM(exported)
    assert [i.name for i in runner.decoder.get_inputs()][:5] == [
        "inputs_embeds", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value"
    ]
    assert [o.name for o in runner.decoder.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]


def test_export_refuses_a_folder_it_did_not_write(saved_model_dir, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        export_main([str(saved_model_dir), str(tmp_path)])
    assert stop.value.code == 2
    assert "not empty and was not written by minivlm-export" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_export_refuses_a_folder_that_is_no_minivlm(tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "missing"), str(tmp_path / "out")])
    assert "missing is not a folder" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "model"), str(tmp_path / "out")])
    assert "holds no config.json" in capsys.readouterr().err
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "model"), str(tmp_path / "out")])
    assert "holds a 'llava' model, not a MiniVLM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_onnx_runner_refuses_image_tokens_that_do_not_match_the_images(exported):
    runner = OnnxMiniVLM(exported)
    config = json.loads((exported / "config.json").read_text())
    input_ids = np.full((1, config["image_seq_length"] + 2), 5, dtype=np.int64)
    input_ids[0, : config["image_seq_length"]] = config["image_token_index"]
    two_images = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ValueError, match="expected .* image tokens for each of 2 image"):
        runner.generate(input_ids, pixel_values=two_images, max_new_tokens=2)


def test_the_whole_forward_exports_to_onnx_without_a_cache(saved_model_dir):
    # The image-token check is a runtime assert on a symbolic int under torch.export: the tensor-valued
    # form emitted aten._is_all_true, for which torch.onnx has no ONNX function.
    model = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir).eval()
    processor = MiniVLMProcessor.from_pretrained(saved_model_dir)
    inputs = dict(processor(images=make_images(1), text=["<image> a red"], return_tensors="pt"))
    program = torch.onnx.export(model, (), kwargs={**inputs, "use_cache": False}, dynamo=True, verbose=False)
    with torch.no_grad():
        expected = model(**inputs, use_cache=False).logits
    torch.testing.assert_close(program(**inputs)[0], expected, rtol=1e-4, atol=1e-5)
