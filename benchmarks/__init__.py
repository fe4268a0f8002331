"""Benchmarks of icmoe-sam: accuracy (`accuracy.py`), cost (`cost.py`) and memory growth (`memory_growth.py`)."""
