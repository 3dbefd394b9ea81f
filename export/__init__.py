"""ONNX export of a saved MiniVLM, and greedy generation with the exported files in onnxruntime.

`export_onnx(model_dir, output_dir)` (the `minivlm-export` command) writes the vision encoder with
its projector, the token embedding and the decoder with its KV cache as three ONNX graphs
(`onnx_export`); `runner.OnnxMiniVLM` runs them. Needs the `export` extra
(`pip install "minivlm[export]"`: onnx, onnxscript, onnxruntime).
"""

from .onnx_export import export_onnx


__all__ = ["export_onnx"]
