"""The interactive app as a Hugging Face Space: the Space's root holds this file, `requirements.txt` and the
`modeling_icmoe/` folder, and runs `python app.py`.

The model is the Hub id (or folder) in the variable `ICMOE_SAM_MODEL`, set in the Space's settings; without it, the
stand-in SAM bundled with this repository (`training/standin/sam-standin`). `ICMOE_SAM_WINDOW` (a CT window preset, or
"LEVEL WIDTH") and `ICMOE_SAM_SLICE_AXIS` override what the model's training recorded. Gradio reads the address and
port from `GRADIO_SERVER_NAME` and `GRADIO_SERVER_PORT`, which Spaces set. The same app runs locally as
`icmoe-sam app --model DIR`.
"""

import os
from pathlib import Path

from modeling_icmoe.medical.app import build_app

BUNDLED_MODEL = Path(__file__).resolve().parent / "training" / "standin" / "sam-standin"

model = os.environ.get("ICMOE_SAM_MODEL") or str(BUNDLED_MODEL)
window = os.environ.get("ICMOE_SAM_WINDOW")
demo = build_app(model, window=window.split() if window else None, slice_axis=os.environ.get("ICMOE_SAM_SLICE_AXIS"))

if __name__ == "__main__":
    demo.launch(show_error=True)
