"""Everything the numbered scripts share: configuration, NIfTI I/O, synthetic data, preprocessing,
data loading and augmentation, the training loop, prediction and evaluation."""
