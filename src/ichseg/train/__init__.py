"""Losses, sampling, checkpoints and the training loop."""
