"""int8 weight-only quantization with torchao through `from_pretrained(quantization_config=TorchAoConfig(...))`."""

import os

import pytest
import torch
from conftest import make_images
from transformers import TorchAoConfig

from minivlm import MiniVLMForConditionalGeneration, MiniVLMProcessor


# Outside CI torchao is optional (it is imported with every transformers model once installed, and noisy on
# CPU); CI installs the extra, so there a missing torchao fails instead of skipping.
if os.environ.get("CI"):
    import torchao  # noqa: F401
else:
    torchao = pytest.importorskip("torchao", reason='torchao is not installed: pip install -e ".[quantization]"')
from torchao.quantization import Int8WeightOnlyConfig  # noqa: E402


@pytest.fixture(scope="module")
def float_and_int8(saved_model_dir):
    reference = MiniVLMForConditionalGeneration.from_pretrained(saved_model_dir).eval()
    quantized = MiniVLMForConditionalGeneration.from_pretrained(
        saved_model_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
    ).eval()
    return reference, quantized


def test_int8_weight_only_quantizes_every_linear_layer_per_output_channel(float_and_int8):
    reference, quantized = float_and_int8
    float_linears = {n: m for n, m in reference.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized_linears = {n: m for n, m in quantized.named_modules() if isinstance(m, torch.nn.Linear)}
    assert quantized_linears.keys() == float_linears.keys()
    # Every linear layer of the vision tower, projector and text model; lm_head stays tied to the
    # (unquantized) embeddings, as transformers leaves the output embeddings.
    assert quantized.lm_head.weight is quantized.get_input_embeddings().weight
    for name, module in quantized_linears.items():
        if name == "lm_head":
            continue
        weight, original = module.weight, float_linears[name].weight.detach()
        assert weight.qdata.dtype == torch.int8, name
        # Symmetric per-output-channel int8, computed by hand: scale = max|w| / 127.5 per row, and each
        # dequantized weight is within half a step of the float one.
        scale = original.abs().amax(dim=1, keepdim=True) / 127.5
        torch.testing.assert_close(weight.scale.reshape(scale.shape), scale, rtol=1e-5, atol=1e-9, msg=name)
        error = (weight.dequantize() - original).abs()
        assert bool((error <= scale / 2 + 1e-6).all()), f"{name}: {float(error.max())} over half a step"


def test_int8_model_follows_the_float_model(float_and_int8, saved_model_dir):
    reference, quantized = float_and_int8
    processor = MiniVLMProcessor.from_pretrained(saved_model_dir)
    inputs = processor(images=make_images(2), text=["<image> a red", "<image> the small"], return_tensors="pt", padding=True)
    with torch.no_grad():
        float_logits, int8_logits = reference(**inputs).logits, quantized(**inputs).logits
        float_tokens = reference.generate(**inputs, max_new_tokens=6, do_sample=False)
        int8_tokens = quantized.generate(**inputs, max_new_tokens=6, do_sample=False)
    spread = float(float_logits.max() - float_logits.min())
    assert float((int8_logits - float_logits).abs().max()) < 0.05 * spread
    assert not torch.equal(int8_logits, float_logits)  # quantization did happen
    torch.testing.assert_close(int8_tokens, float_tokens, rtol=0, atol=0)
