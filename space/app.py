"""The MiniVLM Space: the app of the `minivlm` package (vendored beside this file) over a model on the Hub.

Set MODEL_ID to your model's repository (and `models:` in README.md to the same id), or set the
Space variable MINIVLM_MODEL. Gradio reads the address and port from the Space's environment.
"""

import os

from minivlm.app.ui import main


MODEL_ID = os.environ.get("MINIVLM_MODEL", "your-name/minivlm")


if __name__ == "__main__":
    main(["--model", MODEL_ID])
