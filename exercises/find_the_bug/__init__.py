"""Layers with one wrong line each: find it with `python -m exercises.check FILE`."""
