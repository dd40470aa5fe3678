"""Synthetic datasets in the raw layouts of their dataset descriptions (``python -m light_training.synthetic``)."""
