"""Training entry (`run.py`) and its reusable pieces: arguments, data pipeline, prompts, metrics, loop."""
