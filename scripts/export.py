"""Export a saved MiniVLM to ONNX: the vision encoder + projector, the token embedding, the decoder with its KV cache.

    minivlm-export outputs/shapes-tiny outputs/shapes-tiny-onnx

Writes OUTPUT_DIR/onnx/{vision_encoder,embed_tokens,decoder_model_merged}.onnx beside the config and
processor (the layout onnxruntime and transformers.js users expect of a VLM); refuses an OUTPUT_DIR
that holds files it did not write. The export lives in `minivlm.export`; run the files with
`minivlm.export.runner.OnnxMiniVLM`. Needs `pip install "minivlm[export]"`.
"""

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="minivlm-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="Folder of a saved MiniVLM (save_pretrained or minivlm-train output).")
    parser.add_argument("output_dir", help="New or empty folder (or an earlier minivlm-export output) to write into.")
    args = parser.parse_args(argv)
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError:
        parser.exit(2, 'minivlm-export needs the export extra: pip install "minivlm[export]"\n')

    from minivlm.export import export_onnx

    try:
        written = export_onnx(args.model_dir, args.output_dir)
    except ValueError as error:
        parser.exit(2, f"minivlm-export: {error}\n")
    print(f"Wrote {len(written)} files to {args.output_dir}:", *(f"  {p}" for p in written), sep="\n", file=sys.stdout)


if __name__ == "__main__":
    main()
