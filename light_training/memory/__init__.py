"""How much memory a training step or a prediction needs (estimator), and whether it fits (fit)."""
