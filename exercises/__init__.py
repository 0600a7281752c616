"""Exercises: write the U-Net's layers yourself, then check them (exercises/README.md)."""
