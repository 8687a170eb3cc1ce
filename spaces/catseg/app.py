"""The catseg-hf web demo as a Hugging Face Space (the same app as `catseg-hf demo`).

The model is the Hub repository named by the Space variable `CATSEG_MODEL` (Settings -> Variables), e.g. a converted
official checkpoint such as `your-name/catseg-base`. Without it, the app runs the tiny example model of a catseg-hf
checkout (which a Space does not have), so on a Space set the variable.

Locally, from a checkout with the demo extra installed: `python spaces/catseg/app.py` (or `catseg-hf demo`).
"""

import os

from catseg_hf.demo import build_demo, launch


# Built at import, as Spaces and `gradio app.py` (reload mode) expect a module-level `demo`.
demo = build_demo(os.environ.get("CATSEG_MODEL") or None, device=os.environ.get("CATSEG_DEVICE", "auto"))

if __name__ == "__main__":
    # A Space must listen on all interfaces (it sets SPACE_ID); anywhere else, this machine only.
    launch(demo, host="0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1", port=int(os.environ.get("PORT", 7860)))
