"""The Space's widget (Hub metric Spaces run `app.py`); needs gradio, which the Space provides."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load(str(Path(__file__).parent))
launch_gradio_widget(module)
