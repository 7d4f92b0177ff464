"""Training loop, checkpoints and the Predictor."""
