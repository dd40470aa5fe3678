"""Everything the numbered scripts share: configuration, NIfTI I/O, synthetic data, preprocessing,
data loading and augmentation, the training loop, prediction and evaluation."""

__version__ = "0.9.0"  # the project's version, recorded in exported models (model.json)
