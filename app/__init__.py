"""The MiniVLM app: a Gradio page to caption an image and chat about it (the `minivlm-app` command).

- `minivlm.app.engine`: loading a MiniVLM, checking uploads, streamed captions and answers with the
  image encoded once per conversation. No Gradio: usable and tested on its own.
- `minivlm.app.boxes`: the boxes of a reply (`[x1, y1, x2, y2]` on a 0–1000 grid) as the page shows them,
  read by the shipped parser and drawn by `minivlm.processing.grounding.draw_boxes`.
- `minivlm.app.ui`: the Gradio page and `main()`. Needs the optional extra: `pip install 'minivlm[app]'`.

The Space in `space/` is a thin entry point over `minivlm.app.ui.main`.
"""


def main(argv: list[str] | None = None) -> None:
    """`minivlm-app`: see `minivlm.app.ui.main` (imported here so that gradio loads only when the app runs)."""
    from .ui import main as run

    run(argv)
