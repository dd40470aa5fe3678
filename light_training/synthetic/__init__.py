"""Synthetic datasets in the raw layouts of their dataset descriptions (the command: ``tools/generate_synthetic.py``)."""
